"""Attention maths: softmax / softmax1, masks as additive biases, dot-product attention.

Shapes: query (B, Q, H, D), key/value (B, K, H, D), bias broadcastable to
(B, H, Q, K). Logits are not scaled by 1/sqrt(D): T5 folds that into the
query initialisation. ``AttentionBias`` is the encoder's self-attention bias
in factored form (positions, masks, key bias), built whole here or one block
at a time by ``mrt5_jax.blocked_attention``.
"""
from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from mrt5_jax import relpos as relpos_lib

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
