"""T5 attention modules: relative position biases and multi-head attention (t5x names).

The maths (softmax1, masks, dense and blocked kernels) is ``mrt5_jax.maths.attention``;
this module owns the parameters and the decoding cache.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrt5_jax.maths import attention as attn_lib
from mrt5_jax.maths import relpos as relpos_lib
from mrt5_jax.model.layers import (Dense, attention_kernel_init, param_with_axes, relpos_init,
                                   with_sharding_constraint)

relative_position_bucket = relpos_lib.relative_position_bucket


class RelativePositionBiases(nn.Module):
  """Learned per-head bias from bucketed relative positions, one table per stack.

  Positions are given explicitly, so hard deletion can pass the original
  positions of the kept bytes. ``__call__`` returns (B or 1, H, Q, K);
  ``table()`` the (H, num_buckets) parameter itself, which the blocked
  attention reads to build the bias block by block.
  """
  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  bidirectional: bool = True
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.rel_embedding = param_with_axes(
        "rel_embedding", relpos_init, (self.num_heads, self.num_buckets), jnp.float32,
        axes=("heads", "relpos_buckets"), module=self)

  def table(self) -> jax.Array:
    return self.rel_embedding

  def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    """query_positions (B|1, Q), key_positions (B|1, K) int32."""
    return relpos_lib.bias_from_table(
        self.rel_embedding, query_positions, key_positions, bidirectional=self.bidirectional,
        max_distance=self.max_distance).astype(self.dtype)


def _write_at(cache: jax.Array, step: jax.Array, index: jax.Array) -> jax.Array:
  """cache (B, T, H, D) with ``step`` (B, 1, H, D) written at position ``index``:
  a scalar (every row) or a (B,) vector (one position per row)."""
  if index.ndim == 0:
    return jax.lax.dynamic_update_slice(cache, step, (0, index, 0, 0))
  one_hot = jax.nn.one_hot(index, cache.shape[1], dtype=cache.dtype)[:, :, None, None]
  return cache * (1 - one_hot) + step * one_hot


def _query_row(bias: jax.Array, index: jax.Array, batch: int) -> jax.Array:
  """Row ``index`` (scalar or (B,)) of a (B|1, H|1, T, T) bias -> (B|1, H|1, 1, T)."""
  if index.ndim == 0:
    return jax.lax.dynamic_slice_in_dim(bias, index, 1, axis=-2)
  bias = jnp.broadcast_to(bias, (batch,) + bias.shape[1:])
  return jax.vmap(lambda b, i: jax.lax.dynamic_slice_in_dim(b, i, 1, axis=-2))(bias, index)


class MultiHeadAttention(nn.Module):
  """T5 multi-head attention with t5x names (query/key/value/out) and a KV cache.

  ``bias`` (B|1, H|1, Q, K) carries masks, relative positions and delete-gate
  values. With ``decode=True`` and an initialised cache, ``inputs_q`` is one
  step (B, 1, E) and keys/values are written at the cache index; ``bias`` then
  must already cover the full cache length. ``prefill=True`` writes a whole
  prompt (B, T, E) into the cache and sets each row's index to
  ``prefill_lengths`` (B,), as t5x's prompt prefilling expects; after that
  the index is per row.

  ``bias`` may instead be an ``attention.AttentionBias`` (the encoder's
  self-attention with ``attention_impl='blocked'``): the attention then runs
  blocked (``blocked_attention``, key blocks of ``block_size``, query blocks
  of ``query_block_size``), building the bias block by block.
  """
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  use_softmax1: bool = False
  float32_logits: bool = True
  collect_score_penalty: bool = False
  dtype: jnp.dtype = jnp.float32
  block_size: int = 512
  query_block_size: Optional[int] = None

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array,
               bias=None, *, penalty_valid: Optional[jax.Array] = None,
               decode: bool = False, prefill: bool = False,
               prefill_lengths: Optional[jax.Array] = None,
               deterministic: bool = True) -> jax.Array:
    blocked = isinstance(bias, attn_lib.AttentionBias)
    if blocked and (decode or prefill):
      raise ValueError("blocked attention serves encoder self-attention; it has no KV cache")
    inner = self.num_heads * self.head_dim
    depth_scaling = math.sqrt(self.head_dim)

    def query_init(*args):
      return attention_kernel_init(*args) / depth_scaling

    projection = functools.partial(Dense, inner, ("embed", "joined_kv"), dtype=self.dtype)
    batch = inputs_q.shape[0]
    split = lambda x: x.reshape(batch, x.shape[1], self.num_heads, self.head_dim)
    query = split(projection(kernel_init=query_init, name="query")(inputs_q))
    key = split(projection(kernel_init=attention_kernel_init, name="key")(inputs_kv))
    value = split(projection(kernel_init=attention_kernel_init, name="value")(inputs_kv))
    query = with_sharding_constraint(query, ("batch", "length", "heads", "kv"))
    key = with_sharding_constraint(key, ("batch", "length", "heads", "kv"))
    value = with_sharding_constraint(value, ("batch", "length", "heads", "kv"))

    if decode or prefill:
      initialised = self.has_variable("cache", "cached_key")
      cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
      cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
      if prefill:
        if not initialised or key.shape != cached_key.value.shape:
          raise ValueError("prefill writes a whole prompt into an initialised cache of the "
                           f"same length; got keys {key.shape}")
        cached_key.value, cached_value.value = key, value
        cache_index.value = jnp.broadcast_to(prefill_lengths, (batch,)).astype(jnp.int32)
      elif initialised:
        if query.shape[1] != 1:
          raise ValueError(f"cached decoding takes one position per step, got {query.shape[1]}")
        index = cache_index.value
        # t5x's beam search keeps a prefilled index as (batch, beams) while it
        # flattens the keys to (batch * beams, ...): same order as reshape(-1).
        flat_index = index.reshape(-1) if index.ndim > 1 else index
        key = _write_at(cached_key.value, key, flat_index)
        value = _write_at(cached_value.value, value, flat_index)
        cached_key.value, cached_value.value = key, value
        cache_index.value = index + 1
        if bias is not None and bias.shape[-2] != 1:
          bias = _query_row(bias, flat_index, batch)

    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng("dropout")
    common = dict(use_softmax1=self.use_softmax1, float32_logits=self.float32_logits,
                  dropout_rng=dropout_rng, dropout_rate=self.dropout_rate,
                  deterministic=deterministic, dtype=self.dtype)
    if blocked:
      result = attn_lib.blocked_dot_product_attention(
          query, key, value, bias, key_block_size=self.block_size,
          query_block_size=self.query_block_size, return_penalty=self.collect_score_penalty,
          **common)
      out = result
      if self.collect_score_penalty:
        out, (total, count) = result
        self.sow("intermediates", "score_penalty", total / jnp.maximum(count, 1.0))
    else:
      out, logits = attn_lib.dot_product_attention(query, key, value, bias, return_logits=True,
                                                   **common)
      if self.collect_score_penalty:
        self.sow("intermediates", "score_penalty", attn_lib.score_penalty(logits, penalty_valid))
    out = out.reshape(batch, out.shape[1], inner)
    return Dense(inputs_q.shape[-1], ("joined_kv", "embed"), kernel_init=attention_kernel_init,
                 dtype=self.dtype, name="out")(out)
