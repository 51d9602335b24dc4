"""Attention maths: softmax / softmax1, masks as additive biases, dot-product attention.

Shapes: query (B, Q, H, D), key/value (B, K, H, D), bias broadcastable to
(B, H, Q, K). Logits are not scaled by 1/sqrt(D): T5 folds that into the
query initialisation. ``AttentionBias`` is the encoder's self-attention bias
in factored form (positions, masks, key bias), built whole here or one block
at a time by ``mrt5_jax.maths.attention``.

Blocked attention (``blocked_dot_product_attention``): Blocked attention: an online softmax over key blocks, memory linear in the length.

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

import flax.struct
import jax
import jax.numpy as jnp

from mrt5_jax.maths import relpos as relpos_lib

MASK_VALUE = -1e10
SCORE_PENALTY_MARGIN = 5.0


def softmax1(logits: jax.Array, axis: int = -1) -> jax.Array:
  """``exp(x_i) / (1 + sum_j exp(x_j))``, computed stably.

  The implicit extra logit 0 lets a row put (almost) no weight anywhere, so a
  row whose keys are all masked returns zeros rather than NaN or a uniform
  average.
  """
  shift = jnp.maximum(jnp.max(logits, axis=axis, keepdims=True), 0.0)
  shift = jax.lax.stop_gradient(shift)
  exps = jnp.exp(logits - shift)
  return exps / (jnp.exp(-shift) + jnp.sum(exps, axis=axis, keepdims=True))


def mask_to_bias(mask: jax.Array, dtype=jnp.float32) -> jax.Array:
  """Boolean/0-1 mask -> additive bias: 0 where allowed, MASK_VALUE elsewhere."""
  return jnp.where(mask > 0, 0.0, MASK_VALUE).astype(dtype)


def make_attention_mask(query_valid: jax.Array, key_valid: jax.Array) -> jax.Array:
  """(B, Q), (B, K) -> (B, 1, Q, K) bool: both positions real."""
  return jnp.logical_and(query_valid[:, None, :, None] > 0, key_valid[:, None, None, :] > 0)


def make_segment_mask(query_segments: jax.Array, key_segments: jax.Array) -> jax.Array:
  """(B, Q), (B, K) -> (B, 1, Q, K) bool: same packed segment."""
  return jnp.equal(query_segments[:, None, :, None], key_segments[:, None, None, :])


def make_causal_mask(length: int) -> jax.Array:
  """(1, 1, L, L) bool lower-triangular mask."""
  idx = jnp.arange(length)
  return (idx[None, :] <= idx[:, None])[None, None]


@flax.struct.dataclass
class AttentionBias:
  """Relative position bias + padding/segment mask + per-key bias, not yet materialised.

  relpos_table: (H, num_buckets) float32, or None (no relative positions).
  query_positions / key_positions: (B|1, Q) / (B|1, K) int32 positions the
    relative bias is computed from (after hard deletion: the original
    positions of the kept bytes).
  query_valid / key_valid: (B, Q) / (B, K) bool, real positions.
  query_segments / key_segments: (B, Q) / (B, K) int32 packed segment ids, or None.
  key_bias: (B, K) float32 added to every query's logits (soft deletion: G), or None.
  bidirectional, max_distance: the bucketing (static).
  """
  relpos_table: Optional[jax.Array]
  query_positions: jax.Array
  key_positions: jax.Array
  query_valid: jax.Array
  key_valid: jax.Array
  query_segments: Optional[jax.Array] = None
  key_segments: Optional[jax.Array] = None
  key_bias: Optional[jax.Array] = None
  bidirectional: bool = flax.struct.field(pytree_node=False, default=True)
  max_distance: int = flax.struct.field(pytree_node=False, default=128)

  @property
  def query_length(self) -> int:
    return self.query_valid.shape[1]

  @property
  def key_length(self) -> int:
    return self.key_valid.shape[1]

  def with_key_bias(self, key_bias: Optional[jax.Array]) -> "AttentionBias":
    return self.replace(key_bias=key_bias)

  def allowed(self) -> jax.Array:
    """(B, 1, Q, K) bool: both positions real and in the same segment."""
    allowed = make_attention_mask(self.query_valid, self.key_valid)
    if self.query_segments is not None:
      allowed = jnp.logical_and(allowed,
                                make_segment_mask(self.query_segments, self.key_segments))
    return allowed

  def build(self) -> tuple[jax.Array, jax.Array]:
    """(bias (B|1, H|1, Q, K) float32, allowed (B, 1, Q, K) bool), materialised."""
    allowed = self.allowed()
    bias = mask_to_bias(allowed, jnp.float32)
    if self.relpos_table is not None:
      relpos = relpos_lib.bias_from_table(
          self.relpos_table.astype(jnp.float32), self.query_positions, self.key_positions,
          bidirectional=self.bidirectional, max_distance=self.max_distance)
      bias = relpos + bias
    if self.key_bias is not None:
      bias = bias + self.key_bias[:, None, None, :].astype(bias.dtype)
    return bias, allowed


def score_penalty(logits: jax.Array, valid: Optional[jax.Array] = None) -> jax.Array:
  """The attention-score regularizer term ``mean(max(scores, 5) - 5)``.

  ``valid`` (broadcastable to ``logits``) restricts the mean to real
  query/key pairs; masked pairs carry MASK_VALUE and would contribute 0 anyway.
  """
  excess = jnp.maximum(logits, SCORE_PENALTY_MARGIN) - SCORE_PENALTY_MARGIN
  if valid is None:
    return jnp.mean(excess)
  valid = jnp.broadcast_to(valid, logits.shape).astype(logits.dtype)
  return jnp.sum(excess * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def dot_product_attention(query: jax.Array,
                          key: jax.Array,
                          value: jax.Array,
                          bias: Optional[jax.Array] = None,
                          *,
                          use_softmax1: bool = False,
                          float32_logits: bool = True,
                          dropout_rng: Optional[jax.Array] = None,
                          dropout_rate: float = 0.0,
                          deterministic: bool = True,
                          dtype=jnp.float32,
                          return_logits: bool = False):
  """Multi-head attention weights applied to values. Returns (B, Q, H, D).

  With ``return_logits`` also returns the biased logits (B, H, Q, K).
  """
  if float32_logits:
    query = query.astype(jnp.float32)
    key = key.astype(jnp.float32)
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key)
  if bias is not None:
    logits = logits + bias.astype(logits.dtype)
  normalize = softmax1 if use_softmax1 else jax.nn.softmax
  weights = normalize(logits.astype(jnp.float32)).astype(dtype)
  if not deterministic and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = weights * keep.astype(dtype) / jnp.asarray(1.0 - dropout_rate, dtype)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights, value.astype(dtype))
  if return_logits:
    return out, logits
  return out


# --- Blocked attention ---------------------------------------------------------
# Logit of the keys added to fill the last block: far below MASK_VALUE, so a
# fully masked row still averages over its real keys only, as the dense path.
PAD_LOGIT = 2.0 * MASK_VALUE


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
                                  bias: AttentionBias,
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
        excess = jnp.maximum(logits, SCORE_PENALTY_MARGIN) - SCORE_PENALTY_MARGIN
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
