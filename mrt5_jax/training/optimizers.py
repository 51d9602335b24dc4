"""Optimizers and learning-rate schedules (optax), gin-configurable.

AdamW is what the MrT5 paper uses (lr 1e-4, linear decay, no warmup);
Adafactor with an inverse-square-root schedule is what ByT5 was trained with.
Schedules map the step (int) to a learning rate.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import gin
import jax.numpy as jnp
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]
OPTIMIZERS = ("adamw", "adafactor")


@gin.configurable
def constant(base_learning_rate: float = 1e-4, warmup_steps: int = 0) -> Schedule:
  """base, with an optional linear warmup from 0."""
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(1.0, (step + 1.0) / max(warmup_steps, 1)) if warmup_steps else 1.0
    return base_learning_rate * warm
  return schedule


@gin.configurable
def linear_decay(base_learning_rate: float = 1e-4, decay_steps: int = 5000,
                 warmup_steps: int = 0, final_learning_rate: float = 0.0) -> Schedule:
  """Linear warmup (optional) then linear decay to ``final_learning_rate`` at ``decay_steps``.

  Matches Hugging Face's ``get_linear_schedule_with_warmup`` (the paper's
  trainer): lr(t) = base * (T - t) / (T - W) after warmup W.
  """
  if decay_steps <= warmup_steps:
    raise ValueError(f"decay_steps ({decay_steps}) must exceed warmup_steps ({warmup_steps})")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = step / max(warmup_steps, 1)
    frac = jnp.clip((decay_steps - step) / (decay_steps - warmup_steps), 0.0, 1.0)
    decayed = final_learning_rate + (base_learning_rate - final_learning_rate) * frac
    return jnp.where(step < warmup_steps, base_learning_rate * warm, decayed)
  return schedule


@gin.configurable
def rsqrt(base_learning_rate: float = 1.0, warmup_steps: int = 10000) -> Schedule:
  """T5/ByT5: base / sqrt(max(step, warmup_steps)) (constant during warmup)."""
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    return base_learning_rate / jnp.sqrt(jnp.maximum(step, float(warmup_steps)))
  return schedule


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """name: 'adamw' or 'adafactor'; learning_rate: a schedule (``@linear_decay()``) or float.

  AdamW fields follow torch/HF defaults (the paper's trainer); Adafactor fields
  follow T5 (decay 0.8, parameter-scale multiplication, update clipping 1.0).
  """
  name: str = "adamw"
  learning_rate: Optional[Callable] = None
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  clip_grad_norm: Optional[float] = None
  adafactor_decay_rate: float = 0.8
  adafactor_clipping_threshold: Optional[float] = 1.0
  adafactor_multiply_by_parameter_scale: bool = True

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f"OptimizerConfig.name must be one of {OPTIMIZERS}, got {self.name!r}")

  @property
  def schedule(self) -> Schedule:
    lr = self.learning_rate
    if lr is None:
      return constant()
    if callable(lr):
      return lr
    return constant(float(lr))

  def build(self) -> optax.GradientTransformation:
    schedule = self.schedule
    if self.name == "adamw":
      tx = optax.adamw(schedule, b1=self.b1, b2=self.b2, eps=self.eps,
                       weight_decay=self.weight_decay)
    else:
      tx = optax.adafactor(
          schedule, decay_rate=self.adafactor_decay_rate,
          clipping_threshold=self.adafactor_clipping_threshold,
          multiply_by_parameter_scale=self.adafactor_multiply_by_parameter_scale,
          weight_decay_rate=self.weight_decay or None)
    if self.clip_grad_norm:
      tx = optax.chain(optax.clip_by_global_norm(self.clip_grad_norm), tx)
    return tx
