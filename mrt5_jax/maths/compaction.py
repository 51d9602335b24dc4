"""Hard deletion: choose the kept positions and gather them into a static length.

All functions are pure and shape-static: the compacted length ``length`` is a
Python int, so XLA compiles one program per length.
"""
from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Compaction:
  """Where each compacted slot comes from.

  indices: (B, Lc) int32 original position of each slot (kept ones first, in
    order; unused slots point at position 0 and are invalid).
  valid: (B, Lc) bool, the slot holds a kept position.
  num_dropped: (B,) int32 kept positions that did not fit into Lc.
  """
  indices: jax.Array
  valid: jax.Array
  num_dropped: jax.Array


def keep_mask(gate: jax.Array, real: jax.Array, threshold: float,
              segment_ids: Optional[jax.Array] = None) -> jax.Array:
  """(B, L) bool: G > threshold on real positions, at least one kept per sequence.

  A sequence (a row, or a packed segment when ``segment_ids`` is given) where
  nothing passes keeps its real position with the highest G (the first on
  ties); a row with no real position at all keeps position 0.
  """
  length = gate.shape[-1]
  real = real > 0
  keep = jnp.logical_and(gate > threshold, real)
  segments = real.astype(jnp.int32) if segment_ids is None else jnp.where(real, segment_ids, 0)
  position = jnp.arange(length, dtype=jnp.int32)

  def rescue_row(gate_row, real_row, keep_row, segment_row):
    """The first highest-G real position of each sequence of the row that keeps nothing."""
    masked = jnp.where(real_row, gate_row, -jnp.inf)
    best = jax.ops.segment_max(masked, segment_row, num_segments=length + 1)
    has_kept = jax.ops.segment_max(keep_row.astype(jnp.int32), segment_row,
                                   num_segments=length + 1)
    is_best = jnp.logical_and(real_row, masked == best[segment_row])
    first_best = jax.ops.segment_min(jnp.where(is_best, position, length), segment_row,
                                     num_segments=length + 1)
    rescue = jnp.logical_and(position == first_best[segment_row], has_kept[segment_row] == 0)
    return jnp.logical_and(rescue, real_row)

  # per row (vmap), so a batch sharded over devices needs no communication
  rescue = jax.vmap(rescue_row)(gate, real, keep, segments)
  no_real = ~jnp.any(real, axis=-1, keepdims=True)
  first_position = position[None, :] == 0
  return keep | rescue | (no_real & first_position)


def count_kept(gate: jax.Array, real: jax.Array, threshold: float,
               segment_ids: Optional[jax.Array] = None) -> jax.Array:
  """(B,) int32 number of positions hard deletion keeps per row."""
  return jnp.sum(keep_mask(gate, real, threshold, segment_ids), axis=-1).astype(jnp.int32)


def compact_indices(keep: jax.Array, gate: jax.Array, length: int) -> Compaction:
  """Pick up to ``length`` kept positions per row, preserving their order.

  When a row keeps more than ``length`` positions the ones with the highest G
  survive (ties: earlier position first) and the rest count as dropped.
  """
  batch, full = keep.shape
  if not 1 <= length <= full:
    raise ValueError(f"compacted length {length} must lie in [1, {full}]")
  num_kept = jnp.sum(keep, axis=-1).astype(jnp.int32)
  priority = jnp.where(keep, gate.astype(jnp.float32), -jnp.inf)
  order = jnp.argsort(-priority, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1, stable=True)
  selected = jnp.logical_and(keep, rank < length)
  position = jnp.arange(full, dtype=jnp.int32)[None, :]
  sort_key = jnp.where(selected, position, full + position)
  indices = jnp.argsort(sort_key, axis=-1, stable=True)[:, :length].astype(jnp.int32)
  valid = jnp.take_along_axis(selected, indices, axis=-1)
  indices = jnp.where(valid, indices, 0)
  num_dropped = num_kept - jnp.sum(valid, axis=-1).astype(jnp.int32)
  return Compaction(indices=indices, valid=valid, num_dropped=num_dropped)


def gather(values: jax.Array, indices: jax.Array) -> jax.Array:
  """values (B, L, ...) gathered along L at indices (B, Lc) -> (B, Lc, ...)."""
  expanded = indices.reshape(indices.shape + (1,) * (values.ndim - 2))
  return jnp.take_along_axis(values, expanded, axis=1)
