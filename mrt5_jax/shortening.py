"""The Flax modules of the pooling baselines (their maths: ``mrt5_jax.pooling``).

Both read the hidden state entering encoder layer ``delete_gate_layer``, as
the delete gate does, and own only their parameters:

* ``BoundaryPredictor`` (BP, ``encoder/boundary_predictor``): RMSNorm, then
  dense (d_model -> d_ff) + exact GELU + dense (d_ff -> 1), Xavier-uniform
  kernels and biases -1 as the published code; one boundary logit per position.
* ``ConvPool`` (CP, ``encoder/conv_pool``): RMSNorm, then a strided
  convolution (kernel ``(cp_rate, d_model, d_model)``, bias) and exact GELU.

``boundaries`` and ``pool`` are what ``network.Encoder`` calls.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrt5_jax import layers
from mrt5_jax import pooling
from mrt5_jax.config import MrT5Config
from mrt5_jax.gate import GATE_SCORE_AXIS

# Logical name of CP's kernel-window axis (never sharded nor factored).
POOL_WINDOW_AXIS = "pool_window"
BP_BIAS_INIT = -1.0


class BoundaryPredictor(nn.Module):
  config: MrT5Config

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


class ConvPool(nn.Module):
  config: MrT5Config

  @nn.compact
  def __call__(self, hidden: jax.Array, real: jax.Array,
               segment_ids: Optional[jax.Array] = None) -> pooling.Pooled:
    """hidden (B, L, E) -> ceil(L / cp_rate) pooled slots."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="layer_norm")(hidden)
    # torch Conv1d's default init: U(+-1/sqrt(fan_in)), fan_in = rate * d_model.
    init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    kernel = layers.param_with_axes(
        "kernel", init, (cfg.cp_rate, cfg.d_model, cfg.d_model), jnp.float32,
        axes=(POOL_WINDOW_AXIS, "embed", "mlp"))
    fan_in = cfg.cp_rate * cfg.d_model
    bound = fan_in ** -0.5
    bias = layers.param_with_axes(
        "bias", lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound),
        (cfg.d_model,), jnp.float32, axes=("mlp",))
    return pooling.conv_pool(x, kernel, bias, real, cfg.cp_rate, segment_ids)


def boundaries(logits: jax.Array, real: jax.Array, segment_ids: Optional[jax.Array], *,
               config: MrT5Config, rng: Optional[jax.Array]) -> jax.Array:
  """BP's pooling boundaries (B, L): a straight-through relaxed-Bernoulli sample
  with ``rng`` (training), or the probabilities above 0.5 (``rng`` None)."""
  if rng is None:
    chosen = pooling.inference_boundaries(logits)
  else:
    chosen = pooling.straight_through(
        pooling.relaxed_bernoulli(rng, logits, config.bp_temperature))
  return pooling.segment_boundaries(chosen, real, segment_ids)


def boundary_slots(config: MrT5Config, length: int, compacted_length: Optional[int],
                   deletion: str) -> int:
  """BP's static slot count: ``compacted_length`` if given, else the training
  capacity (soft) or the input length (hard, which never drops a segment)."""
  if compacted_length is not None:
    if not 1 <= compacted_length <= length:
      raise ValueError(f"compacted length {compacted_length} must lie in [1, {length}]")
    return compacted_length
  if deletion == "hard":
    return length
  return pooling.capacity_slots(length, config.bp_capacity_fraction)


def markers(kept: jax.Array, real: jax.Array, scale: float) -> jax.Array:
  """The pooling baselines' stand-in for G: 0 on the one position that
  represents each slot (a segment's boundary, a window's first position), k
  elsewhere and on pads; so a position counts as "deleted" exactly when it
  does not start a slot, and the deletion rate is the length reduction."""
  return jnp.where(jnp.logical_and(kept > 0, real > 0), 0.0, scale).astype(jnp.float32)
