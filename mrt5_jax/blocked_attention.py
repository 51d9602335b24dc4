"""Blocked attention: an online softmax over key blocks, memory linear in the length.

For each block of queries (``lax.map``), a ``lax.scan`` over key blocks keeps
a running maximum ``m``, denominator ``l`` and weighted value sum ``acc``; the
bias of each (query block, key block) pair is built from positions, masks,
segments and the gate's key bias (``attention.AttentionBias``), never at
(L, L). softmax1 is the same recurrence with the implicit extra logit 0: ``m``
starts at 0 and ``l`` at exp(0 - m) = 1, so a row whose keys are all masked
returns zeros, as the dense ``softmax1`` does. Each query block is
rematerialised in the backward pass (``jax.checkpoint``), so a layer keeps
O(query block x L) activations instead of O(L^2); gradients reach the
relative position table and the key bias through ordinary autodiff.

The attention-score regularizer (``attention.score_penalty``) is accumulated
block by block as a running sum of ``max(logit, 5) - 5`` over allowed pairs
and a running count, so it is supported and equals the dense value.

Attention-weight dropout draws one mask per (query block, key block) from
``fold_in(fold_in(rng, query block), key block)``; ``dropout_keep`` is that
draw, so a reference can rebuild the full mask.
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from mrt5_jax import attention as attn_lib

# Logit of the keys added to fill the last block: far below MASK_VALUE, so a
# fully masked row still averages over its real keys only, as the dense path.
PAD_LOGIT = 2.0 * attn_lib.MASK_VALUE


def block_sizes(query_length: int, key_length: int, key_block_size: int,
                query_block_size: Optional[int] = None) -> tuple[int, int]:
  """(query block, key block), each capped at its length."""
  key_block = min(key_block_size, key_length)
  query_block = min(query_block_size or key_block_size, query_length)
  return query_block, key_block


def dropout_keep(rng: jax.Array, query_block: jax.Array, key_block: jax.Array, shape,
                 rate: float) -> jax.Array:
  """The keep mask (B, H, Qb, Kb) of one (query block, key block) pair."""
  block_rng = jax.random.fold_in(jax.random.fold_in(rng, query_block), key_block)
  return jax.random.bernoulli(block_rng, 1.0 - rate, shape)


def _pad(x: Optional[jax.Array], axis: int, amount: int, value=0) -> Optional[jax.Array]:
  if x is None or amount == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, amount)
  return jnp.pad(x, widths, constant_values=value)


def _split(x: Optional[jax.Array], axis: int, block: int) -> Optional[jax.Array]:
  """(..., n * block, ...) along ``axis`` -> (n, ..., block, ...)."""
  if x is None:
    return None
  n = x.shape[axis] // block
  x = x.reshape(x.shape[:axis] + (n, block) + x.shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def _blocks(x: Optional[jax.Array], axis: int, block: int, amount: int, value=0):
  return _split(_pad(x, axis, amount, value), axis, block)


def blocked_dot_product_attention(query: jax.Array,
                                  key: jax.Array,
                                  value: jax.Array,
                                  bias: attn_lib.AttentionBias,
                                  *,
                                  key_block_size: int = 512,
                                  query_block_size: Optional[int] = None,
                                  use_softmax1: bool = False,
                                  float32_logits: bool = True,
                                  dropout_rng: Optional[jax.Array] = None,
                                  dropout_rate: float = 0.0,
                                  deterministic: bool = True,
                                  dtype=jnp.float32,
                                  return_penalty: bool = False):
  """Attention of query (B, Q, H, D) over key/value (B, K, H, D) -> (B, Q, H, D).

  Equal to ``attention.dot_product_attention(q, k, v, *bias.build())`` up to
  float rounding. With ``return_penalty`` also returns (sum, count) of the
  score regularizer's excess over allowed (query, key, head) triples, so that
  ``sum / max(count, 1)`` is ``attention.score_penalty`` of the dense logits.
  """
  batch, q_len, heads, depth = query.shape
  k_len = key.shape[1]
  if bias.query_length != q_len or bias.key_length != k_len:
    raise ValueError(f"AttentionBias covers ({bias.query_length}, {bias.key_length}) "
                     f"positions; attention has ({q_len}, {k_len})")
  dropout = not deterministic and dropout_rate > 0.0
  if dropout and dropout_rng is None:
    raise ValueError("attention dropout needs a dropout rng")
  q_block, k_block = block_sizes(q_len, k_len, key_block_size, query_block_size)
  num_q, num_k = math.ceil(q_len / q_block), math.ceil(k_len / k_block)
  q_pad, k_pad = num_q * q_block - q_len, num_k * k_block - k_len
  if float32_logits:
    query, key = query.astype(jnp.float32), key.astype(jnp.float32)

  key_xs = (
      jnp.arange(num_k),
      _blocks(key, 1, k_block, k_pad),
      _blocks(value.astype(dtype), 1, k_block, k_pad),
      _blocks(bias.key_positions, 1, k_block, k_pad),
      _blocks(bias.key_valid, 1, k_block, k_pad, False),
      _blocks(bias.key_segments, 1, k_block, k_pad),
      _blocks(bias.key_bias, 1, k_block, k_pad),
      _split(jnp.arange(num_k * k_block) < k_len, 0, k_block),
  )
  query_xs = (
      jnp.arange(num_q),
      _blocks(query, 1, q_block, q_pad),
      _blocks(bias.query_positions, 1, q_block, q_pad),
      _blocks(bias.query_valid, 1, q_block, q_pad, False),
      _blocks(bias.query_segments, 1, q_block, q_pad),
  )

  def one_query_block(xs):
    q_index, q, q_positions, q_valid, q_segments = xs

    def key_step(carry, kx):
      m, l, acc, penalty_sum, penalty_count = carry
      k_index, k, v, k_positions, k_valid, k_segments, k_bias, k_real = kx
      block = bias.replace(query_positions=q_positions, key_positions=k_positions,
                           query_valid=q_valid, key_valid=k_valid,
                           query_segments=q_segments, key_segments=k_segments,
                           key_bias=k_bias)
      block_bias, allowed = block.build()
      logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
      logits = (logits + block_bias.astype(logits.dtype)).astype(jnp.float32)
      logits = jnp.where(k_real[None, None, None, :], logits, PAD_LOGIT)
      if return_penalty:
        weight = allowed.astype(jnp.float32)
        excess = jnp.maximum(logits, attn_lib.SCORE_PENALTY_MARGIN) - attn_lib.SCORE_PENALTY_MARGIN
        penalty_sum = penalty_sum + jnp.sum(excess * weight)
        penalty_count = penalty_count + jnp.sum(weight) * heads
      m_new = jnp.maximum(m, jax.lax.stop_gradient(jnp.max(logits, axis=-1)))
      correction = jnp.exp(m - m_new)
      p = jnp.exp(logits - m_new[..., None])
      l = l * correction + jnp.sum(p, axis=-1)
      if dropout:
        keep = dropout_keep(dropout_rng, q_index, k_index, p.shape, dropout_rate)
        p = p * keep.astype(p.dtype) / (1.0 - dropout_rate)
      acc = acc * correction[..., None] + jnp.einsum(
          "bhqk,bkhd->bhqd", p.astype(dtype), v, preferred_element_type=jnp.float32)
      return (m_new, l, acc, penalty_sum, penalty_count), None

    stats_shape = (batch, heads, q_block)
    if use_softmax1:
      m0, l0 = jnp.zeros(stats_shape, jnp.float32), jnp.ones(stats_shape, jnp.float32)
    else:
      m0 = jnp.full(stats_shape, jnp.finfo(jnp.float32).min, jnp.float32)
      l0 = jnp.zeros(stats_shape, jnp.float32)
    init = (m0, l0, jnp.zeros(stats_shape + (depth,), jnp.float32),
            jnp.float32(0.0), jnp.float32(0.0))
    (_, l, acc, penalty_sum, penalty_count), _ = jax.lax.scan(key_step, init, key_xs)
    out = (acc / l[..., None]).astype(dtype)
    return jnp.transpose(out, (0, 2, 1, 3)), penalty_sum, penalty_count

  outs, sums, counts = jax.lax.map(jax.checkpoint(one_query_block, prevent_cse=False),
                                   query_xs)
  out = jnp.moveaxis(outs, 0, 1).reshape(batch, num_q * q_block, heads, depth)[:, :q_len]
  if return_penalty:
    return out, (jnp.sum(sums), jnp.sum(counts))
  return out
