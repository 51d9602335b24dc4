"""BP, the boundary-predictor baseline (dynamic token pooling after Nawrot et al.
2023; its maths: ``mrt5_jax.maths.pooling``).

``BoundaryPredictor`` (``encoder/boundary_predictor``) reads the hidden state
entering encoder layer ``delete_gate_layer``: RMSNorm, then dense (d_model ->
d_ff) + exact GELU + dense (d_ff -> 1), Xavier-uniform kernels and biases -1
as the published code; one boundary logit per position. In training the
boundaries are a straight-through relaxed-Bernoulli sample (``gate_noise``
rng) and a binomial prior (``BoundaryPoolingConfig.prior``) steers their rate;
the positions of each segment are mean-pooled into one slot, and the remaining
layers run on the slots (a slot's relative position is its first input position).

Its per-position "gate" is ``pooling.slot_markers``: 0 on each segment's
boundary, k elsewhere, so the deletion metrics read as length reduction.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrt5_jax.maths import compaction
from mrt5_jax.maths import pooling
from mrt5_jax.model import layers
from mrt5_jax.maths import rng as rng_lib
from mrt5_jax.model.shortening import base
from mrt5_jax.model.shortening.base import ModelConfig
from mrt5_jax.model.shortening.base import GATE_SCORE_AXIS

BP_BIAS_INIT = -1.0


class BoundaryPredictor(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, hidden: jax.Array) -> jax.Array:
    """hidden (B, L, E) -> boundary logits (B, L) float32."""
    cfg = self.config
    x = layers.RMSNorm(cfg.layer_norm_epsilon, jnp.float32, name="layer_norm")(hidden)
    dense = lambda features, axes, name: layers.Dense(
        features, axes, kernel_init=nn.initializers.xavier_uniform(), use_bias=True,
        bias_init=nn.initializers.constant(BP_BIAS_INIT), bias_axes=axes[1:],
        dtype=jnp.float32, name=name)
    h = jax.nn.gelu(dense(cfg.d_ff, ("embed", "mlp"), "hidden")(x.astype(jnp.float32)),
                    approximate=False)
    return dense(1, ("mlp", GATE_SCORE_AXIS), "score")(h)[..., 0]


def boundaries(logits: jax.Array, real: jax.Array, segment_ids: Optional[jax.Array], *,
               config: ModelConfig, rng: Optional[jax.Array]) -> jax.Array:
  """BP's pooling boundaries (B, L): a straight-through relaxed-Bernoulli sample
  with ``rng`` (training), or the probabilities above 0.5 (``rng`` None)."""
  if rng is None:
    chosen = pooling.inference_boundaries(logits)
  else:
    chosen = pooling.straight_through(
        pooling.relaxed_bernoulli(rng, logits, config.shortening.temperature))
  return pooling.segment_boundaries(chosen, real, segment_ids)


def boundary_slots(config: ModelConfig, length: int, compacted_length: Optional[int],
                   deletion: str) -> int:
  """BP's static slot count: ``compacted_length`` if given, else the training
  capacity (soft) or the input length (hard, which never drops a segment)."""
  if compacted_length is not None:
    if not 1 <= compacted_length <= length:
      raise ValueError(f"compacted length {compacted_length} must lie in [1, {length}]")
    return compacted_length
  if deletion == "hard":
    return length
  return pooling.capacity_slots(length, config.shortening.capacity_fraction)


class BoundaryPooling(base.Shortening):
  """BP: boundaries, segment mean-pooling into static slots, the binomial prior.

  Soft (training) pools into ``compacted_length`` slots (default:
  ``BoundaryPoolingConfig.capacity_fraction`` of the input length), hard into
  ``compacted_length`` (default: the input length).
  """
  name = "boundary"
  title = "BP (boundary predictor)"
  verb = "pooled"
  module_name = "boundary_predictor"
  shortens = True
  hard_differs = True
  converts = False
  optional_metrics = ("boundary_loss",)
  metric_titles = base.LENGTH_REDUCTION_TITLES
  most_deleted_label = "pooled away most (not a slot of its own)"

  def make_module(self):
    return BoundaryPredictor(self.config)

  def read(self, host, module, hidden, tokens, segment_ids, deterministic) -> base.Reading:
    """Boundary logits and boundaries (sampled in training; outside training too
    with ``BoundaryPoolingConfig.sample_at_inference``, from the 'deletion' rng,
    else a fixed key)."""
    cfg = self.config
    real = tokens > 0
    logits = module(hidden)
    rng = None
    if not deterministic:
      rng = host.make_rng(rng_lib.GATE_NOISE)
    elif cfg.shortening.sample_at_inference:
      rng = (host.make_rng(rng_lib.DELETION) if host.has_rng(rng_lib.DELETION)
             else rng_lib.inference_key())
    chosen = boundaries(logits, real, segment_ids, config=cfg, rng=rng)
    marks = pooling.slot_markers(jax.lax.stop_gradient(chosen), real, cfg.sigmoid_mask_scale)
    return base.Reading(gate=marks, gate_logits=logits, boundaries=chosen)

  def _pool(self, hidden, reading, tokens, segment_ids, slots: int) -> base.Shortened:
    pooled = pooling.segment_pool(hidden, reading.boundaries, tokens > 0, slots, segment_ids)
    return base.pooled_slots(pooled)

  def soft(self, module, hidden, reading, tokens, segment_ids, compacted_length):
    slots = boundary_slots(self.config, tokens.shape[1], compacted_length, "soft")
    return self._pool(hidden, reading, tokens, segment_ids, slots)

  def hard(self, module, hidden, reading, tokens, segment_ids, compacted_length):
    slots = boundary_slots(self.config, tokens.shape[1], compacted_length, "hard")
    return self._pool(hidden, reading, tokens, segment_ids, slots)

  def auxiliary_losses(self, forward, real, *, objective, num_real, num_microbatches):
    """The binomial prior on the boundaries (no gate regularizer)."""
    losses = super().auxiliary_losses(forward, real, objective=objective, num_real=num_real,
                                      num_microbatches=num_microbatches)
    losses["boundary_loss"] = pooling.boundary_loss(forward["boundaries"], real,
                                                    self.config.shortening.prior) / num_microbatches
    return losses

  @property
  def length_reduction_target(self) -> Optional[float]:
    return 1.0 - self.config.shortening.prior

  def target_rate(self, controller_target: float) -> Optional[float]:
    return self.length_reduction_target

  def kept_counts(self, gate, tokens, segment_ids):
    return compaction.count_kept(gate, tokens > 0, self.config.deletion_threshold, segment_ids)

