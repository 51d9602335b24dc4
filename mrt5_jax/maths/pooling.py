"""Shortening by pooling: the paper's BP and CP baselines, as pure functions.

BP (boundary predictor, dynamic token pooling after Nawrot et al. 2023): a
score per position says where a segment ends; the positions of a segment are
mean-pooled into one slot. In training the boundaries are a relaxed-Bernoulli
sample at a temperature, thresholded at 0.5 with a straight-through gradient,
and a binomial prior steers their rate; at inference a boundary is a
probability above 0.5.

CP (convolutional pooling, CANINE style): a strided 1-D convolution whose
kernel width equals its stride turns every ``rate`` positions into one slot.

Both return the pooled slots with what the rest of the encoder needs: which
slots hold data, the position each slot takes in the relative position bias,
and its packed segment. As in the published code, a slot's position is the
position of the first byte it pools (the segment's start; the window's start).

Shapes: B batch, L input length, S slots, E d_model.
"""
from __future__ import annotations

import math
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

BOUNDARY_THRESHOLD = 0.5
POOL_WEIGHT_EPS = 1e-9


@flax.struct.dataclass
class Pooled:
  """Slots of a pooled sequence.

  hidden: (B, S, E) pooled states.
  valid: (B, S) bool, the slot holds pooled positions.
  positions: (B, S) int32 first input position of each slot (0 when invalid).
  segment_ids: (B, S) int32 packed segment of each slot (0 when invalid), or None.
  num_dropped: (B,) int32 segments that did not fit into S slots.
  """
  hidden: jax.Array
  valid: jax.Array
  positions: jax.Array
  segment_ids: Optional[jax.Array]
  num_dropped: jax.Array


# ----------------------------------------------------------------------------- BP


def relaxed_bernoulli(rng: jax.Array, logits: jax.Array, temperature: float) -> jax.Array:
  """A relaxed-Bernoulli (binary Concrete) sample: sigmoid((logits + log u - log(1 - u)) / T).

  u ~ U(0, 1) clipped to [eps, 1 - eps] (float32 eps), as torch's
  ``RelaxedBernoulli.rsample``. Differentiable in ``logits``.
  """
  eps = jnp.finfo(jnp.float32).eps
  u = jnp.clip(jax.random.uniform(rng, logits.shape, jnp.float32), eps, 1.0 - eps)
  noise = jnp.log(u) - jnp.log1p(-u)
  return jax.nn.sigmoid((logits.astype(jnp.float32) + noise) / temperature)


def straight_through(soft: jax.Array, threshold: float = BOUNDARY_THRESHOLD) -> jax.Array:
  """Exactly ``soft > threshold`` (0/1 float32) forward; the gradient of ``soft`` backward."""
  hard = (soft > threshold).astype(jnp.float32)
  return hard + (soft - jax.lax.stop_gradient(soft))


def inference_boundaries(logits: jax.Array) -> jax.Array:
  """Boundaries from the probabilities: sigmoid(logits) > 0.5, i.e. logits > 0 (float32 0/1)."""
  return (logits > 0).astype(jnp.float32)


def last_real_positions(real: jax.Array, segment_ids: Optional[jax.Array] = None) -> jax.Array:
  """(B, L) bool: the last real position of each row, or of each packed segment."""
  real = real > 0
  groups = real.astype(jnp.int32) if segment_ids is None else jnp.where(real, segment_ids, 0)
  following = jnp.concatenate([groups[:, 1:], jnp.zeros_like(groups[:, :1])], axis=1)
  return real & (following != groups)


def segment_boundaries(boundaries: jax.Array, real: jax.Array,
                       segment_ids: Optional[jax.Array] = None) -> jax.Array:
  """Boundaries ready to pool: 0 on pads, 1 on the last real position of every
  row (packed segment), so no segment crosses into padding or the next example.

  The forced ones carry no gradient (the published code overwrites them).
  """
  forced = last_real_positions(real, segment_ids)
  return jnp.where(forced, 1.0, jnp.where(real > 0, boundaries.astype(jnp.float32), 0.0))


def segment_pool(hidden: jax.Array, boundaries: jax.Array, real: jax.Array, num_slots: int,
                 segment_ids: Optional[jax.Array] = None) -> Pooled:
  """Mean-pool each segment into a slot.

  boundaries (B, L): 1 where a segment ends (``segment_boundaries``); position
  l belongs to segment ``sum(boundaries[:l])``. Segments past ``num_slots``
  are dropped (counted in ``num_dropped``). The pooling weights are built as
  in the published code, ``1 - (s - sum(boundaries[:l]))`` on the members of
  slot s, normalised per slot: their value is the plain mean, and their
  gradient reaches the boundaries (the straight-through path of the task loss).
  """
  if num_slots < 1:
    raise ValueError(f"num_slots must be positive, got {num_slots}")
  batch, length = boundaries.shape
  real = real > 0
  boundaries = boundaries.astype(jnp.float32)
  before = jnp.cumsum(boundaries, axis=1) - boundaries
  index = jnp.round(jax.lax.stop_gradient(before)).astype(jnp.int32)
  slots = jnp.arange(num_slots, dtype=jnp.int32)
  member = (index[:, :, None] == slots) & real[:, :, None]
  raw = jnp.where(member, 1.0 - (slots.astype(jnp.float32) - before[:, :, None]), 0.0)
  weights = raw / (jnp.sum(raw, axis=1, keepdims=True) + POOL_WEIGHT_EPS)
  pooled = jnp.einsum("bls,ble->bse", weights.astype(hidden.dtype), hidden)
  valid = jnp.any(member, axis=1)
  position = jnp.arange(length, dtype=jnp.int32)[None, :, None]
  positions = jnp.min(jnp.where(member, position, length), axis=1)
  positions = jnp.where(valid, positions, 0).astype(jnp.int32)
  pooled_segments = None
  if segment_ids is not None:
    pooled_segments = jnp.max(jnp.where(member, segment_ids[:, :, None], 0), axis=1)
    pooled_segments = pooled_segments.astype(jnp.int32)
  num_segments = jnp.sum(jnp.where(real, jnp.round(jax.lax.stop_gradient(boundaries)), 0.0),
                         axis=1).astype(jnp.int32)
  num_dropped = jnp.maximum(num_segments - num_slots, 0)
  return Pooled(hidden=pooled, valid=valid, positions=positions,
                segment_ids=pooled_segments, num_dropped=num_dropped)


def boundary_log_prob(num_boundaries: jax.Array, trials: jax.Array, prior: float) -> jax.Array:
  """log Binomial(k; n, p), differentiable in k (lgamma)."""
  k = num_boundaries.astype(jnp.float32)
  n = trials.astype(jnp.float32)
  return (jax.lax.lgamma(n + 1.0) - jax.lax.lgamma(k + 1.0) - jax.lax.lgamma(n - k + 1.0)
          + k * jnp.log(prior) + (n - k) * jnp.log1p(-prior))


def boundary_loss(boundaries: jax.Array, real: jax.Array, prior: float) -> jax.Array:
  """Mean over rows of -log Binomial(k; n, prior) / n.

  k: the row's boundaries (straight-through, so the loss reaches the
  predictor); n: its real positions. The published code takes n as the
  padded length; on unpadded rows the two agree. Rows without real positions
  are left out.
  """
  real = real > 0
  trials = jnp.sum(real, axis=1).astype(jnp.float32)
  count = jnp.sum(jnp.where(real, boundaries.astype(jnp.float32), 0.0), axis=1)
  per_row = -boundary_log_prob(count, trials, prior) / jnp.maximum(trials, 1.0)
  has_real = trials > 0
  return (jnp.sum(jnp.where(has_real, per_row, 0.0))
          / jnp.maximum(jnp.sum(has_real).astype(jnp.float32), 1.0))


def capacity_slots(length: int, fraction: float) -> int:
  """Static number of segment slots for training: ceil(fraction * L), at least 1."""
  return max(1, min(length, math.ceil(fraction * length)))


# ----------------------------------------------------------------------------- CP


def pooled_length(length: int, rate: int) -> int:
  """ceil(L / rate): the input is zero-padded to whole windows."""
  return -(-length // rate)


def _windows(x: jax.Array, rate: int, fill) -> jax.Array:
  """(B, L, ...) -> (B, ceil(L / rate), rate, ...), padded at the end with ``fill``."""
  length = x.shape[1]
  extra = pooled_length(length, rate) * rate - length
  if extra:
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, extra)
    x = jnp.pad(x, pad, constant_values=fill)
  return x.reshape((x.shape[0], x.shape[1] // rate, rate) + x.shape[2:])


def strided_conv(hidden: jax.Array, kernel: jax.Array, bias: jax.Array, rate: int) -> jax.Array:
  """Conv1d with kernel width = stride = ``rate``, then exact GELU (CANINE's downsampling).

  hidden (B, L, E), kernel (rate, E, E') (torch ``weight[o, i, t]`` is
  ``kernel[t, i, o]``), bias (E',) -> (B, ceil(L / rate), E'). A last
  partial window is zero-padded (the published code, whose lengths are
  multiples of the rate, never has one).
  """
  windows = _windows(hidden, rate, 0)
  flat = windows.reshape(windows.shape[:2] + (-1,))
  y = jnp.dot(flat, kernel.reshape(-1, kernel.shape[-1]).astype(hidden.dtype))
  return jax.nn.gelu(y + bias.astype(hidden.dtype), approximate=False)


def downsample_mask(real: jax.Array, rate: int) -> jax.Array:
  """(B, L) -> (B, ceil(L / rate)) bool: a window holds data if any position does
  (the published max-pool of the attention mask)."""
  return jnp.any(_windows(real > 0, rate, False), axis=-1)


def downsample_segments(segment_ids: jax.Array, rate: int) -> jax.Array:
  """(B, L) -> (B, ceil(L / rate)) int32: the largest packed segment id of each window."""
  return jnp.max(_windows(segment_ids, rate, 0), axis=-1).astype(jnp.int32)


def window_starts(batch: int, length: int, rate: int) -> jax.Array:
  """(B, ceil(L / rate)) int32 first position of each window: 0, rate, 2 rate, ..."""
  starts = jnp.arange(pooled_length(length, rate), dtype=jnp.int32) * rate
  return jnp.broadcast_to(starts, (batch, starts.shape[0]))


def conv_pool(hidden: jax.Array, kernel: jax.Array, bias: jax.Array, real: jax.Array, rate: int,
              segment_ids: Optional[jax.Array] = None) -> Pooled:
  """CP: the strided convolution with its downsampled mask, positions and segments."""
  batch, length = real.shape
  valid = downsample_mask(real, rate)
  pooled_segments = None
  if segment_ids is not None:
    pooled_segments = jnp.where(valid, downsample_segments(segment_ids, rate), 0)
  positions = jnp.where(valid, window_starts(batch, length, rate), 0)
  return Pooled(hidden=strided_conv(hidden, kernel, bias, rate), valid=valid,
                positions=positions, segment_ids=pooled_segments,
                num_dropped=jnp.zeros((batch,), jnp.int32))


def window_markers(real: jax.Array, rate: int) -> jax.Array:
  """(B, L) bool: the first position of every window that holds data (one per CP slot)."""
  batch, length = real.shape
  starts = (jnp.arange(length) % rate == 0)[None, :]
  valid = jnp.repeat(downsample_mask(real, rate), rate, axis=1)[:, :length]
  return starts & valid


def slot_markers(kept: jax.Array, real: jax.Array, scale: float) -> jax.Array:
  """The pooling baselines' stand-in for the gate values G: 0 on the one
  position that represents each slot (a segment's boundary, a window's first
  position), ``scale`` (k) elsewhere and on pads; so a position counts as
  "deleted" exactly when it does not start a slot, and the deletion rate is
  the length reduction."""
  return jnp.where(jnp.logical_and(kept > 0, real > 0), 0.0, scale).astype(jnp.float32)
