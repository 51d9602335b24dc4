"""The deletion-rate controller that steers the gate regularizer weight alpha.

The error is ``e = target - measured`` (the sign of the published MrT5 code and
of the paper's ``δ̂ - δ`` with δ̂ the target): too little deletion raises alpha.

  P:   alpha <- max(0, alpha + k_p * e)
  PI:  p <- 0.9 p + 0.1 k_p e;  i <- i + k_i e;  alpha <- max(0, p + i)
  bounded_pi (this project's; two-sided, with anti-windup):
       p <- k_p e;  i <- i + k_i e unless that pushes p + i further past a bound;
       alpha <- clip(p + i, alpha_min, alpha_max)

P and PI are the published code's and stay exactly that with the defaults
(``alpha_min = 0``, no ``alpha_max``); a negative ``alpha_min`` lets alpha pull
the gate back (a negative weight on L_G rewards keeping positions) when the
model deletes more than the target.

The state is a dict of scalar arrays, kept by the trainer as the flax mutable
collection ``'controller'`` (t5x: ``flax_mutables``) and checkpointed with it.
``step`` counts training steps seen; updates happen when
``step >= regularizer_delay`` and ``step % controller_step == 0``; before the
delay the loss sees alpha = 0. With ``target_ramp_steps`` = R > 0 the target
the controller steers to rises linearly from 0 once the delay has passed:
target(step) = target_deletion_rate * min(1, (step - delay + 1) / R), so the
gate is pushed to delete a little at first and more as it learns (a
curriculum; the published code has no ramp).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import gin
import jax
import jax.numpy as jnp

COLLECTION = "controller"
KINDS = ("p", "pi", "bounded_pi", "constant")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ControllerConfig:
  """kind: 'p', 'pi', 'bounded_pi', or 'constant' (alpha stays at initial_alpha).

  Defaults follow the published MrT5 training script (k_p 0.5, k_i 1e-5,
  update every step). ``alpha_min`` / ``alpha_max`` bound alpha (None: no
  upper bound); every kind clips to them. ``target_ramp_steps``: steps over
  which the target rises from 0 after the delay (0: the full target at once).
  """
  kind: str = "p"
  target_deletion_rate: float = 0.5
  k_p: float = 0.5
  k_i: float = 1e-5
  controller_step: int = 1
  regularizer_delay: int = 0
  initial_alpha: float = 0.0
  alpha_min: float = 0.0
  alpha_max: Optional[float] = None
  target_ramp_steps: int = 0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"ControllerConfig.kind must be one of {KINDS}, got {self.kind!r}")
    if not 0.0 <= self.target_deletion_rate <= 1.0:
      raise ValueError(
          f"target_deletion_rate must be in [0, 1], got {self.target_deletion_rate}")
    if self.controller_step < 1:
      raise ValueError(f"controller_step must be >= 1, got {self.controller_step}")
    if self.regularizer_delay < 0:
      raise ValueError("regularizer_delay must be >= 0")
    if self.target_ramp_steps < 0:
      raise ValueError(f"target_ramp_steps must be >= 0, got {self.target_ramp_steps}")
    upper = float("inf") if self.alpha_max is None else self.alpha_max
    if not self.alpha_min <= self.initial_alpha <= upper:
      raise ValueError(f"initial_alpha={self.initial_alpha} must lie in [alpha_min="
                       f"{self.alpha_min}, alpha_max={self.alpha_max}]")


def _upper(config: ControllerConfig) -> float:
  return float("inf") if config.alpha_max is None else config.alpha_max


def _clip(value: jax.Array, config: ControllerConfig) -> jax.Array:
  """max(alpha_min, value), then min(alpha_max, .) when there is an upper bound."""
  value = jnp.maximum(config.alpha_min, value)
  if config.alpha_max is not None:
    value = jnp.minimum(config.alpha_max, value)
  return value


def init_state(config: ControllerConfig) -> dict[str, jax.Array]:
  """Fresh controller state: alpha, p, i (float32 scalars) and step (int32)."""
  return {
      "alpha": jnp.asarray(config.initial_alpha, jnp.float32),
      "p": jnp.zeros((), jnp.float32),
      "i": jnp.zeros((), jnp.float32),
      "step": jnp.zeros((), jnp.int32),
  }


def is_active(state: Mapping[str, jax.Array], config: ControllerConfig) -> jax.Array:
  """True once the regularizer delay has passed."""
  return state["step"] >= config.regularizer_delay


def effective_alpha(state: Mapping[str, jax.Array], config: ControllerConfig) -> jax.Array:
  """The weight the loss applies to L_G now: alpha, or 0 during the delay."""
  return jnp.where(is_active(state, config), state["alpha"], 0.0).astype(jnp.float32)


def current_target(state: Mapping[str, jax.Array], config: ControllerConfig) -> jax.Array:
  """The deletion rate the controller steers to at this step (the ramp's, if any)."""
  target = jnp.asarray(config.target_deletion_rate, jnp.float32)
  if config.target_ramp_steps == 0:
    return target
  progress = (state["step"] - config.regularizer_delay + 1).astype(jnp.float32)
  return target * jnp.clip(progress / config.target_ramp_steps, 0.0, 1.0)


def update(state: Mapping[str, jax.Array], measured_rate: jax.Array,
           config: ControllerConfig) -> dict[str, jax.Array]:
  """Advance one training step with the measured deletion rate (scalar in [0, 1])."""
  error = jnp.asarray(current_target(state, config) - measured_rate, jnp.float32)
  alpha, p, i = state["alpha"], state["p"], state["i"]
  clip = lambda value: _clip(value, config)
  if config.kind == "p":
    new_alpha, new_p, new_i = clip(alpha + config.k_p * error), p, i
  elif config.kind == "pi":
    new_p = 0.9 * p + 0.1 * config.k_p * error
    new_i = i + config.k_i * error
    new_alpha = clip(new_p + new_i)
  elif config.kind == "bounded_pi":
    new_p = config.k_p * error
    integrated = i + config.k_i * error
    unclipped = new_p + integrated
    winding_up = ((unclipped > _upper(config)) & (error > 0)) | (
        (unclipped < config.alpha_min) & (error < 0))
    new_i = jnp.where(winding_up, i, integrated)
    new_alpha = clip(new_p + new_i)
  else:
    new_alpha, new_p, new_i = alpha, p, i
  apply = jnp.logical_and(is_active(state, config),
                          state["step"] % config.controller_step == 0)
  return {
      "alpha": jnp.where(apply, new_alpha, alpha).astype(jnp.float32),
      "p": jnp.where(apply, new_p, p).astype(jnp.float32),
      "i": jnp.where(apply, new_i, i).astype(jnp.float32),
      "step": state["step"] + 1,
  }
