"""The delete gate: pure maths plus the thin Flax module that owns its params.

G (B, L) lies in (k, 0) with k = ``sigmoid_mask_scale`` (default -30). A
position counts as deleted when G < threshold (default k/2). Pad positions
always get G = k.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mrt5_jax import layers
from mrt5_jax.config import FIXED_DELETION_SEPARATOR_IDS, MrT5Config

# Logical name of the gate's one-wide output axis (never sharded nor factored).
GATE_SCORE_AXIS = "gate_score"


def scaled_sigmoid(logits: jax.Array, scale: float) -> jax.Array:
  """G = k * sigmoid(-logits)."""
  return scale * jax.nn.sigmoid(-logits)


def log_sigmoid(logits: jax.Array) -> jax.Array:
  """G = log sigmoid(logits) (the published LogSigmoidDeleteGate), in (-inf, 0)."""
  return jax.nn.log_sigmoid(logits)


def gate_values(logits: jax.Array, config: MrT5Config) -> jax.Array:
  """G from the gate logits for a learned gate (``config.deletion_type``)."""
  if config.deletion_type == "log_sigmoid":
    return log_sigmoid(logits)
  return scaled_sigmoid(logits, config.sigmoid_mask_scale)


GUMBEL_EPS = 1e-10


def gumbel_noise(rng: jax.Array, shape) -> jax.Array:
  """-log(-log u), u ~ U[1e-10, 1): the published ``gumbel_noise_like`` (float32)."""
  uniform = jax.random.uniform(rng, shape, jnp.float32, minval=GUMBEL_EPS, maxval=1.0)
  return -jnp.log(-jnp.log(uniform))


def mask_pads(gate: jax.Array, real: jax.Array, scale: float) -> jax.Array:
  """Set G = k where ``real`` (B, L) is false."""
  return jnp.where(real > 0, gate, jnp.asarray(scale, gate.dtype))


def deleted_positions(gate: jax.Array, real: jax.Array, threshold: float) -> jax.Array:
  """(B, L) bool: real positions whose G lies below the threshold.

  The one definition of "deleted" behind every deletion rate (training
  metrics, the controller, evaluation, prediction aux, the deletion profile).
  """
  return jnp.logical_and(gate < threshold, real > 0)


def deletion_rate(num_deleted: jax.Array, num_real: jax.Array) -> jax.Array:
  """Deleted share of real positions from counts (0 when there are none)."""
  return jnp.asarray(num_deleted, jnp.float32) / jnp.maximum(
      jnp.asarray(num_real, jnp.float32), 1.0)


def random_gate(rng: jax.Array, real: jax.Array, probability: float, scale: float) -> jax.Array:
  """Random-deletion baseline: each real position deleted (G = k) with ``probability``."""
  deleted = jax.random.bernoulli(rng, probability, real.shape)
  return jnp.where(deleted, scale, 0.0).astype(jnp.float32)


def fixed_gate(tokens: jax.Array, amount: float, scale: float) -> jax.Array:
  """Fixed-deletion baseline: in every word, delete its trailing ``amount`` share.

  Words are the runs between separator bytes (space, ASCII punctuation, EOS).
  A word of n bytes keeps its first ceil((1 - amount) * n) bytes; separators
  start a new word and are kept. Returns G (B, L) in {k, 0}.
  """
  separators = jnp.asarray(np.array(FIXED_DELETION_SEPARATOR_IDS, np.int32))
  is_sep = jnp.any(tokens[..., None] == separators, axis=-1) | (tokens == 0)
  length = tokens.shape[-1]
  axis = tokens.ndim - 1
  idx = jnp.broadcast_to(jnp.arange(length), tokens.shape)
  previous_sep = jax.lax.cummax(jnp.where(is_sep, idx, -1), axis=axis)
  next_sep = jax.lax.cummin(jnp.where(is_sep, idx, length), axis=axis, reverse=True)
  word_length = (next_sep - previous_sep - 1).astype(jnp.float32)
  offset = idx - previous_sep - 1
  keep_count = jnp.ceil((1.0 - amount) * word_length).astype(jnp.int32)
  keep = is_sep | (offset < keep_count)
  return jnp.where(keep, 0.0, scale).astype(jnp.float32)


class DeleteGate(nn.Module):
  """Scores each position; reads the hidden state entering ``delete_gate_layer``.

  Params: ``layer_norm/scale`` (optional), ``dense/kernel`` (d_model, 1) and
  ``dense/bias`` (1,). Xavier-uniform kernel and bias 1 make G ~ -8 on
  average at start (the logit's spread of about sqrt(2) already deletes
  roughly a quarter of positions in a fresh gate).
  """
  config: MrT5Config

  @nn.compact
  def __call__(self, hidden: jax.Array, real: jax.Array,
               tokens: Optional[jax.Array] = None,
               deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    """hidden (B, L, E), real (B, L) -> (G, gate logits), both (B, L) float32.

    With ``use_gumbel_noise`` and ``deterministic=False`` (training) Gumbel
    noise from the ``gate_noise`` rng is added to the logits before G is
    computed; the returned logits include it, as the published code's do.
    """
    cfg = self.config
    if cfg.has_learned_gate:
      x = hidden
      if cfg.gate_layer_norm:
        x = layers.RMSNorm(epsilon=cfg.layer_norm_epsilon, dtype=jnp.float32,
                           name="layer_norm")(x)
      logits = layers.Dense(1, ("embed", GATE_SCORE_AXIS),
                            kernel_init=nn.initializers.xavier_uniform(), use_bias=True,
                            bias_init=nn.initializers.ones, bias_axes=(GATE_SCORE_AXIS,),
                            dtype=jnp.float32, name="dense")(x.astype(jnp.float32))[..., 0]
      if cfg.use_gumbel_noise and not deterministic:
        logits = logits + gumbel_noise(self.make_rng("gate_noise"), logits.shape)
      gate = gate_values(logits, cfg)
    elif cfg.deletion_type == "random":
      gate = random_gate(self.make_rng("deletion"), real, cfg.random_deletion_probability,
                         cfg.sigmoid_mask_scale)
      logits = gate
    elif cfg.deletion_type == "fixed":
      if tokens is None:
        raise ValueError("the fixed-deletion baseline needs the input tokens")
      gate = fixed_gate(tokens, cfg.fixed_deletion_amount, cfg.sigmoid_mask_scale)
      logits = gate
    else:
      raise ValueError(f"DeleteGate used with deletion_type={cfg.deletion_type!r}")
    return mask_pads(gate, real, cfg.sigmoid_mask_scale), logits
