"""The delete gate (MrT5) and its baselines: learned gates (``scaled_sigmoid``,
``log_sigmoid``), and the ``random`` and ``fixed`` deletion baselines.

G (B, L) lies in (k, 0) with k = ``sigmoid_mask_scale`` (default -30) (the
log-sigmoid gate: (-inf, 0)). A position counts as deleted when G < threshold
(default k/2). Pad positions always get G = k. Soft deletion adds G to the
attention logits of the remaining encoder layers and of the decoder's
cross-attention; hard deletion keeps the positions with G above the threshold
(``mrt5_jax.maths.compaction``).

Every kind owns ``encoder/delete_gate`` (parameters only for the learned ones:
``layer_norm/scale``, ``dense/kernel``, ``dense/bias``).
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mrt5_jax.maths import rng as rng_lib
from mrt5_jax.maths import compaction
from mrt5_jax.maths import gate_losses
from mrt5_jax.model import layers
from mrt5_jax.model.shortening.settings import FIXED_DELETION_SEPARATOR_IDS
from mrt5_jax.model.shortening import base
from mrt5_jax.model.shortening.base import ModelConfig
from mrt5_jax.model.shortening.base import GATE_SCORE_AXIS

GUMBEL_EPS = 1e-10


# ----------------------------------------------------------------------------- maths


def scaled_initializer(init: nn.initializers.Initializer, factor: float):
  """``init`` times ``factor`` (1.0: ``init`` itself, the published draw untouched)."""
  if factor == 1.0:
    return init
  return lambda key, shape, dtype=jnp.float32: factor * init(key, shape, dtype)


def scaled_sigmoid(logits: jax.Array, scale: float) -> jax.Array:
  """G = k * sigmoid(-logits)."""
  return scale * jax.nn.sigmoid(-logits)


def log_sigmoid(logits: jax.Array) -> jax.Array:
  """G = log sigmoid(logits) (the published LogSigmoidDeleteGate), in (-inf, 0)."""
  return jax.nn.log_sigmoid(logits)


def gumbel_noise(rng: jax.Array, shape) -> jax.Array:
  """-log(-log u), u ~ U[1e-10, 1): the published ``gumbel_noise_like`` (float32)."""
  uniform = jax.random.uniform(rng, shape, jnp.float32, minval=GUMBEL_EPS, maxval=1.0)
  return -jnp.log(-jnp.log(uniform))


def mask_pads(gate: jax.Array, real: jax.Array, scale: float) -> jax.Array:
  """Set G = k where ``real`` (B, L) is false."""
  return jnp.where(real > 0, gate, jnp.asarray(scale, gate.dtype))


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


# ----------------------------------------------------------------------------- Flax modules


class DeleteGate(nn.Module):
  """The learned gate (``scaled_sigmoid``): scores each position of the hidden
  state entering ``delete_gate_layer``.

  Params: ``layer_norm/scale`` (optional), ``dense/kernel`` (d_model, 1) and
  ``dense/bias`` (1,). Xavier-uniform kernel and bias 1 make G ~ -8 on
  average at start (the logit's spread of about sqrt(2) already deletes
  roughly a quarter of positions in a fresh gate).
  """
  config: ModelConfig

  def values(self, logits: jax.Array) -> jax.Array:
    """G from the gate logits."""
    return scaled_sigmoid(logits, self.config.sigmoid_mask_scale)

  @nn.compact
  def __call__(self, hidden: jax.Array, real: jax.Array,
               tokens: Optional[jax.Array] = None,
               deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    """hidden (B, L, E), real (B, L) -> (G, gate logits), both (B, L) float32.

    With ``DeleteGateConfig.use_gumbel_noise`` and ``deterministic=False`` (training) Gumbel
    noise from the ``gate_noise`` rng is added to the logits before G is
    computed; the returned logits include it, as the published code's do.
    """
    cfg = self.config
    x = hidden
    if cfg.shortening.gate_layer_norm:
      x = layers.RMSNorm(epsilon=cfg.layer_norm_epsilon, dtype=jnp.float32,
                         name="layer_norm")(x)
    logits = layers.Dense(1, ("embed", GATE_SCORE_AXIS),
                          kernel_init=scaled_initializer(nn.initializers.xavier_uniform(),
                                                         cfg.shortening.gate_kernel_init_scale),
                          use_bias=True,
                          bias_init=nn.initializers.constant(cfg.shortening.gate_bias_init),
                          bias_axes=(GATE_SCORE_AXIS,),
                          dtype=jnp.float32, name="dense")(x.astype(jnp.float32))[..., 0]
    if cfg.shortening.use_gumbel_noise and not deterministic:
      logits = logits + gumbel_noise(self.make_rng(rng_lib.GATE_NOISE), logits.shape)
    return mask_pads(self.values(logits), real, cfg.sigmoid_mask_scale), logits


class LogSigmoidGate(DeleteGate):
  """The learned gate with G = log sigmoid(logits) (same parameters)."""

  def values(self, logits: jax.Array) -> jax.Array:
    return log_sigmoid(logits)


class RandomGate(nn.Module):
  """Random deletion (no parameters): G from the ``deletion`` rng; returns (G, G)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, hidden, real, tokens=None, deterministic: bool = True):
    cfg = self.config
    gate = random_gate(self.make_rng(rng_lib.DELETION), real,
                       cfg.shortening.random_deletion_probability,
                       cfg.sigmoid_mask_scale)
    return mask_pads(gate, real, cfg.sigmoid_mask_scale), gate


class FixedGate(nn.Module):
  """Fixed deletion (no parameters): G from the input bytes; returns (G, G)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, hidden, real, tokens=None, deterministic: bool = True):
    cfg = self.config
    if tokens is None:
      raise ValueError("the fixed-deletion baseline needs the input tokens")
    gate = fixed_gate(tokens, cfg.shortening.fixed_deletion_amount, cfg.sigmoid_mask_scale)
    return mask_pads(gate, real, cfg.sigmoid_mask_scale), gate


# ----------------------------------------------------------------------------- shortenings


class GateShortening(base.Shortening):
  """What every delete gate shares: G as key bias (soft) or compaction (hard),
  the gate regularizers, the controller's target rate."""
  module_name = "delete_gate"
  module_class = DeleteGate
  shortens = True
  hard_differs = True
  packs = True
  trains_hard = True

  def make_module(self):
    return self.module_class(self.config)

  def read(self, host, module, hidden, tokens, segment_ids, deterministic) -> base.Reading:
    gate, logits = module(hidden, tokens > 0, tokens, deterministic=deterministic)
    return base.Reading(gate=gate, gate_logits=logits)

  def soft(self, module, hidden, reading, tokens, segment_ids, compacted_length):
    return base.full_length(hidden, tokens, segment_ids, reading.gate)

  def hard(self, module, hidden, reading, tokens, segment_ids, compacted_length):
    """Kept positions (G above the threshold) gathered in order into
    ``compacted_length`` slots. At the input length (the default) nothing is
    gathered: every position stays in place and the deleted ones are masked,
    which computes the same and costs no more than soft deletion."""
    gate = reading.gate
    keep = self.keep_mask(gate, tokens, segment_ids)
    if compacted_length is None or compacted_length >= tokens.shape[1]:
      in_place = base.full_length(hidden, tokens, segment_ids)
      return in_place.replace(
          valid=keep, key_bias=jnp.zeros(keep.shape, jnp.float32),
          segment_ids=None if segment_ids is None else jnp.where(keep, segment_ids, 0))
    chosen = compaction.compact_indices(keep, gate, compacted_length)
    compacted_segments = None
    if segment_ids is not None:
      compacted_segments = jnp.where(chosen.valid, compaction.gather(segment_ids, chosen.indices),
                                     0)
    return base.Shortened(
        hidden=compaction.gather(hidden, chosen.indices), positions=chosen.indices,
        valid=chosen.valid, segment_ids=compacted_segments, kept_positions=chosen.indices,
        num_dropped=chosen.num_dropped, key_bias=jnp.zeros(chosen.valid.shape, jnp.float32))

  def auxiliary_losses(self, forward, real, *, objective, num_real, num_microbatches):
    """L_G (``objective.gate_loss``) and the published entropy regularizer."""
    gate = forward["gate"]
    losses = super().auxiliary_losses(forward, real, objective=objective, num_real=num_real,
                                      num_microbatches=num_microbatches)
    gate_loss = gate_losses.gate_regularizer(objective.gate_loss, gate, forward["gate_logits"],
                                             real, self.config.deletion_threshold, num_real)
    if objective.gate_loss == "gate_var":
      gate_loss = gate_loss / num_microbatches
    losses["gate_loss"] = gate_loss
    if objective.entropy_coeff_1 or objective.entropy_coeff_2:
      losses["entropy_penalty"] = gate_losses.entropy_regularizer(
          gate, objective.entropy_coeff_1, objective.entropy_coeff_2) / num_microbatches
    return losses

  def target_rate(self, controller_target: float) -> Optional[float]:
    return controller_target

  def keep_mask(self, gate, tokens, segment_ids):
    return compaction.keep_mask(gate, tokens > 0, self.config.deletion_threshold, segment_ids)

  def kept_counts(self, gate, tokens, segment_ids):
    return compaction.count_kept(gate, tokens > 0, self.config.deletion_threshold, segment_ids)


class ScaledSigmoidGate(GateShortening):
  """MrT5: G = k sigmoid(-logit)."""
  name = "scaled_sigmoid"
  title = "MrT5 (delete gate)"
  learned_gate = True


class LogSigmoidDeleteGate(GateShortening):
  """The published code's log-sigmoid gate: G = log sigmoid(logit)."""
  name = "log_sigmoid"
  title = "MrT5 (log-sigmoid delete gate)"
  module_class = LogSigmoidGate
  learned_gate = True


class RandomDeletion(GateShortening):
  """Each real position deleted with ``random_deletion_probability``."""
  name = "random"
  title = "random deletion"
  module_class = RandomGate
  needs_deletion_rng = True


class FixedDeletion(GateShortening):
  """The trailing ``fixed_deletion_amount`` share of every word deleted."""
  name = "fixed"
  title = "fixed deletion"
  module_class = FixedGate
