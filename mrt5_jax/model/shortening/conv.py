"""CP, the convolutional-pooling baseline (CANINE style; its maths: ``mrt5_jax.maths.pooling``).

``ConvPool`` (``encoder/conv_pool``) reads the hidden state entering encoder
layer ``delete_gate_layer``: RMSNorm, then a strided convolution (kernel
``(rate, d_model, d_model)``, bias) and exact GELU, so every
``ConvPoolingConfig.rate`` positions become one slot (a slot's relative position is its window's first
position). Soft and hard are the same. Its per-position "gate" is
``pooling.slot_markers`` of the window starts.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrt5_jax.maths import compaction
from mrt5_jax.maths import pooling
from mrt5_jax.model import layers
from mrt5_jax.model.shortening import base
from mrt5_jax.model.shortening.base import ModelConfig

# Logical name of CP's kernel-window axis (never sharded nor factored).
POOL_WINDOW_AXIS = "pool_window"


class ConvPool(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, hidden: jax.Array, real: jax.Array,
               segment_ids: Optional[jax.Array] = None) -> pooling.Pooled:
    """hidden (B, L, E) -> ceil(L / rate) pooled slots."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="layer_norm")(hidden)
    # torch Conv1d's default init: U(+-1/sqrt(fan_in)), fan_in = rate * d_model.
    init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    kernel = layers.param_with_axes(
        "kernel", init, (cfg.shortening.rate, cfg.d_model, cfg.d_model), jnp.float32,
        axes=(POOL_WINDOW_AXIS, "embed", "mlp"))
    fan_in = cfg.shortening.rate * cfg.d_model
    bound = fan_in ** -0.5
    bias = layers.param_with_axes(
        "bias", lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound),
        (cfg.d_model,), jnp.float32, axes=("mlp",))
    return pooling.conv_pool(x, kernel, bias, real, cfg.shortening.rate, segment_ids)


class ConvPooling(base.Shortening):
  """CP: ceil(L / rate) slots, soft and hard alike."""
  name = "conv"
  title = "CP (convolutional pooling)"
  verb = "pooled"
  module_name = "conv_pool"
  shortens = True
  hard_differs = False
  converts = False
  metric_titles = base.LENGTH_REDUCTION_TITLES
  most_deleted_label = "pooled away most (not a slot of its own)"

  def make_module(self):
    return ConvPool(self.config)

  def read(self, host, module, hidden, tokens, segment_ids, deterministic) -> base.Reading:
    """Its window markers (the convolution runs in ``soft``)."""
    real = tokens > 0
    marks = pooling.slot_markers(pooling.window_markers(real, self.config.shortening.rate), real,
                                 self.config.sigmoid_mask_scale)
    return base.Reading(gate=marks, gate_logits=marks)

  def soft(self, module, hidden, reading, tokens, segment_ids, compacted_length):
    return base.pooled_slots(module(hidden, tokens > 0, segment_ids))

  @property
  def length_reduction_target(self) -> Optional[float]:
    return 1.0 - 1.0 / self.config.shortening.rate

  def target_rate(self, controller_target: float) -> Optional[float]:
    return self.length_reduction_target

  def kept_counts(self, gate, tokens, segment_ids):
    return compaction.count_kept(gate, tokens > 0, self.config.deletion_threshold, segment_ids)
