"""The delete gate's regularizers as pure functions (weighted by the controller's alpha,
or by their own coefficients); ``mrt5_jax.model.shortening.delete_gate`` applies them.

Shapes: B batch, L encoder input length.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

GATE_LOSSES = ("gate_mean", "clamped_logits_mean", "logits_mean", "gate_var")


def gate_regularizer(kind: str, gate: jax.Array, logits: jax.Array, real: jax.Array,
                     threshold: float, num_real: jax.Array) -> jax.Array:
  """L_G of one (micro-)batch; gate, logits, real (B, L).

  The mean-type losses divide their sum over real positions by ``num_real``
  (the whole batch's count, so micro-batches add up); ``gate_var`` is minus
  the unbiased variance of G over this batch's real positions.
  """
  real = real.astype(bool)
  gate = gate.astype(jnp.float32)
  logits = logits.astype(jnp.float32)
  if kind == "gate_var":
    count = jnp.sum(real).astype(jnp.float32)
    mean = jnp.sum(jnp.where(real, gate, 0.0)) / jnp.maximum(count, 1.0)
    squares = jnp.sum(jnp.where(real, jnp.square(gate - mean), 0.0))
    return -squares / jnp.maximum(count - 1.0, 1.0)
  if kind == "gate_mean":
    values = gate
  elif kind == "clamped_logits_mean":
    values = jnp.maximum(logits, 2.0 * threshold)
  elif kind == "logits_mean":
    values = logits
  else:
    raise ValueError(f"gate_loss must be one of {GATE_LOSSES}, got {kind!r}")
  return jnp.sum(jnp.where(real, values, 0.0)) / jnp.maximum(num_real, 1.0)


def gate_entropy(gate: jax.Array) -> jax.Array:
  """The published per-value entropy H(g) = -(e^g g + (1 - e^g) log(1 - e^g))."""
  gexp = jnp.exp(gate)
  tiny = jnp.finfo(gexp.dtype).eps
  return -(gexp * gate + (1.0 - gexp) * jnp.log1p(-jnp.minimum(gexp, 1.0 - tiny)))


def entropy_regularizer(gate: jax.Array, coeff_1: float, coeff_2: float) -> jax.Array:
  """``c1 mean_b mean_i H(G_bi) - c2 mean_b H(logsumexp_i G_bi - log L)``; gate (B, L)
  over every position (pads included, as the published code)."""
  gate = gate.astype(jnp.float32)
  per_position = jnp.mean(gate_entropy(gate), axis=1)
  pooled = jax.nn.logsumexp(gate, axis=1) - jnp.log(jnp.float32(gate.shape[1]))
  return coeff_1 * jnp.mean(per_position) - coeff_2 * jnp.mean(gate_entropy(pooled))
