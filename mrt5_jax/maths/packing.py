"""Packed hard deletion: the kept positions of all rows packed densely into fewer rows.

Per-row compaction (``compaction``) runs every row at the length of the
batch's longest kept row; packing places whole rows' kept positions side by
side in packed rows of length ``row_length`` (any length that holds the longest row;
inference chooses it, ``EncodePath.packing_plan``), so the
layers after the gate run on about ``sum(kept) / row_length`` rows instead of
``batch`` rows. Each packed slot remembers its row and original position:
attention stays within a (row, segment) and the relative position bias reads
the original positions, so the result equals per-row hard deletion.

The plan (which packed row and offset each row gets) is made on the host from
the per-row kept counts (first-fit decreasing); the packing itself is traced
with static shapes. Rows are packed within groups of consecutive rows (one
group per data-parallel shard), so under SPMD every gather stays on its device
and every device runs the same shape.

Shapes: B rows, L input length, G groups, R packed rows per group, Lp packed
row length, S = R * Lp slots per group, Lc unpacked (per-row) length.
"""
from __future__ import annotations

import math
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


def first_fit_decreasing(kept: np.ndarray, row_length: int) -> tuple[np.ndarray, int]:
  """Place rows of ``kept`` (n,) positions into bins of ``row_length`` slots.

  Returns each row's first slot (bin * row_length + offset), (n,) int32, and
  the number of bins used. Rows are placed longest first into the first bin
  with room.
  """
  kept = np.asarray(kept, np.int64)
  if kept.size and (kept.max() > row_length or kept.min() < 0):
    raise ValueError(f"kept counts must lie in [0, {row_length}], got {kept.min()}..{kept.max()}")
  free = np.full(len(kept), row_length, np.int64)
  starts = np.zeros(len(kept), np.int32)
  used = 0
  for row in np.argsort(-kept, kind="stable"):
    need = kept[row]
    fits = np.flatnonzero(free[:used] >= need) if used else np.empty(0, np.int64)
    index = int(fits[0]) if fits.size else used
    used = max(used, index + 1)
    starts[row] = index * row_length + (row_length - free[index])
    free[index] -= need
  return starts, used


def rows_bucket(needed: int, rows: int, num_buckets: int) -> int:
  """``needed`` packed rows rounded up to a multiple of ceil(rows / num_buckets),
  at most ``rows``: at most ``num_buckets`` distinct shapes per batch size."""
  step = max(1, math.ceil(rows / max(1, num_buckets)))
  return min(rows, max(step, step * math.ceil(needed / step)))


@flax.struct.dataclass
class PackingPlan:
  """Where each row's kept positions go (host-made, traced as data).

  starts: (B,) int32 first slot of each row within its group's S slots.
  kept: (B,) int32 kept positions of each row.
  num_groups, rows_per_group, row_length: the static packed shape
    (G * R rows of Lp slots).
  """
  starts: jax.Array
  kept: jax.Array
  num_groups: int = flax.struct.field(pytree_node=False, default=1)
  rows_per_group: int = flax.struct.field(pytree_node=False, default=1)
  row_length: int = flax.struct.field(pytree_node=False, default=1)

  @property
  def packed_rows(self) -> int:
    return self.num_groups * self.rows_per_group


def make_plan(kept: np.ndarray, row_length: int, num_groups: int = 1,
              num_buckets: int = 8) -> PackingPlan:
  """First-fit decreasing within each group of consecutive rows; the packed row
  count is the largest group's need, bucketed (``rows_bucket``), so every group
  (device) gets the same shape."""
  kept = np.asarray(kept, np.int64).reshape(-1)
  if num_groups < 1 or kept.size % num_groups:
    raise ValueError(f"{kept.size} rows do not split into {num_groups} equal groups")
  per_group = kept.size // num_groups
  starts, needed = [], 1
  for group in kept.reshape(num_groups, per_group):
    group_starts, used = first_fit_decreasing(group, row_length)
    starts.append(group_starts)
    needed = max(needed, used)
  rows = rows_bucket(needed, per_group, num_buckets)
  return PackingPlan(starts=np.concatenate(starts).astype(np.int32),
                     kept=kept.astype(np.int32), num_groups=num_groups,
                     rows_per_group=rows, row_length=row_length)


@flax.struct.dataclass
class Packed:
  """The packed layout, (G * R, Lp) each.

  source: index of each slot's position in its group's flattened (B / G * L)
    inputs (0 where invalid).
  valid: the slot holds a kept position.
  positions: its original position within its row (relative position bias).
  segment_ids: a positive id per (row, input segment) within the group; 0 invalid.
  """
  source: jax.Array
  valid: jax.Array
  positions: jax.Array
  segment_ids: jax.Array


def pack(keep: jax.Array, plan: PackingPlan,
         segment_ids: Optional[jax.Array] = None) -> Packed:
  """The packed layout of the kept positions ``keep`` (B, L) under ``plan``:
  each row's first ``plan.kept`` kept positions (all of them, unless the plan
  capped them: ``plan_in_graph_capped``)."""
  batch, length = keep.shape
  groups, lp = plan.num_groups, plan.row_length
  per_group = batch // groups
  slots = plan.rows_per_group * lp
  rank = jnp.cumsum(keep.astype(jnp.int32), axis=-1) - 1
  placed_here = keep & (rank < plan.kept[:, None])
  target = jnp.where(placed_here, plan.starts[:, None] + rank, slots).reshape(groups, -1)
  local_row = (jnp.arange(batch, dtype=jnp.int32) % per_group)[:, None]
  source = (local_row * length + jnp.arange(length, dtype=jnp.int32)[None, :]).reshape(groups, -1)

  def scatter(group_target, group_source):
    placed = jnp.full((slots + 1,), -1, jnp.int32).at[group_target].set(group_source, mode="drop")
    return placed[:slots]

  placed = jax.vmap(scatter)(target, source)
  valid = placed >= 0
  placed = jnp.maximum(placed, 0)
  row, position = placed // length, placed % length
  if segment_ids is None:
    input_segment = jnp.ones_like(placed)
  else:
    input_segment = jnp.take_along_axis(
        jnp.asarray(segment_ids, jnp.int32).reshape(groups, -1), placed, axis=1)
  segment = jnp.where(valid, row * (length + 1) + input_segment, 0)
  shape = (groups * plan.rows_per_group, lp)
  return Packed(source=placed.reshape(shape), valid=valid.reshape(shape),
                positions=position.reshape(shape), segment_ids=segment.reshape(shape))


def gather_packed(values: jax.Array, packed: Packed, num_groups: int) -> jax.Array:
  """values (B, L, ...) -> their packed slots (G * R, Lp, ...)."""
  batch, length = values.shape[:2]
  grouped = values.reshape((num_groups, (batch // num_groups) * length) + values.shape[2:])
  index = packed.source.reshape(num_groups, -1)
  index = index.reshape(index.shape + (1,) * (values.ndim - 2))
  out = jnp.take_along_axis(grouped, index, axis=1)
  return out.reshape(packed.source.shape + values.shape[2:])


def unpack_slots(plan: PackingPlan, length: int) -> tuple[jax.Array, jax.Array]:
  """Each row's first ``length`` kept slots in the packed layout: (index into
  its group's S slots, valid), both (B, Lc = length)."""
  j = jnp.arange(length, dtype=jnp.int32)[None, :]
  valid = j < plan.kept[:, None]
  return jnp.where(valid, plan.starts[:, None] + j, 0), valid


def gather_unpacked(values: jax.Array, slots: jax.Array, num_groups: int) -> jax.Array:
  """values (G * R, Lp, ...) at per-row ``slots`` (B, Lc) -> (B, Lc, ...)."""
  rows, lp = values.shape[:2]
  grouped = values.reshape((num_groups, (rows // num_groups) * lp) + values.shape[2:])
  batch, length = slots.shape
  index = slots.reshape(num_groups, -1)
  index = index.reshape(index.shape + (1,) * (values.ndim - 2))
  out = jnp.take_along_axis(grouped, index, axis=1)
  return out.reshape((batch, length) + values.shape[2:])


_PLAN_UNROLL = 32


def _first_fit_in_graph(kept: jax.Array, row_length: int,
                        rows_per_group: int) -> tuple[jax.Array, jax.Array]:
  """``first_fit_decreasing`` traced into ``rows_per_group`` bins, for every
  leading index of ``kept`` (..., n) at once: (starts (..., n), fits (...,)).

  One scan over the n rows with the leading dimensions batched into its body,
  unrolled (in steps of up to ``_PLAN_UNROLL`` rows): a loop of small steps
  costs a launch and a host round trip per step on a GPU.
  """
  lead, n = kept.shape[:-1], kept.shape[-1]
  flat = kept.reshape(-1, n)
  order = jnp.argsort(-flat, axis=-1, stable=True)
  sorted_need = jnp.take_along_axis(flat, order, axis=-1)
  column = jnp.arange(rows_per_group, dtype=jnp.int32)

  def place(free, need):
    room = free >= need[:, None]
    index = jnp.argmax(room, axis=-1)
    has_room = jnp.any(room, axis=-1)
    chosen = column[None, :] == index[:, None]
    start = index * row_length + (row_length - jnp.sum(jnp.where(chosen, free, 0), axis=-1))
    free = free - jnp.where(chosen & has_room[:, None], need[:, None], 0)
    return free, (start, has_room)

  free = jnp.full((flat.shape[0], rows_per_group), row_length, jnp.int32)
  _, (starts, placed) = jax.lax.scan(place, free, sorted_need.T, unroll=min(n, _PLAN_UNROLL))
  starts = jnp.zeros_like(flat).at[jnp.arange(flat.shape[0])[:, None], order].set(starts.T)
  return starts.reshape(lead + (n,)), jnp.all(placed, axis=0).reshape(lead)


def plan_in_graph(kept: jax.Array, row_length: int, num_groups: int,
                  rows_per_group: int) -> tuple[PackingPlan, jax.Array]:
  """``make_plan`` traced, for a packed shape fixed in advance (training).

  First-fit decreasing of each group's rows into ``rows_per_group`` rows of
  ``row_length`` slots. Returns the plan and whether every row found room
  (a scalar bool); where one did not, the plan must not be used.
  """
  kept = jnp.asarray(kept, jnp.int32)
  starts, fits = _first_fit_in_graph(kept.reshape(num_groups, -1), row_length, rows_per_group)
  plan = PackingPlan(starts=starts.reshape(-1), kept=kept, num_groups=num_groups,
                     rows_per_group=rows_per_group, row_length=row_length)
  return plan, jnp.all(fits)


def overflow_caps(row_length: int, rows: int, rows_per_group: int,
                  num_caps: int = 8) -> tuple[int, ...]:
  """Per-row caps on kept positions, longest first, for ``plan_in_graph_capped``.

  The last, ``row_length // ceil(rows / rows_per_group)``, always fits: with
  every row at most that long, first-fit decreasing puts at least
  ceil(rows / rows_per_group) rows into every packed row before one is full.
  """
  floor = row_length // math.ceil(rows / rows_per_group)
  caps = np.linspace(row_length, floor, max(2, num_caps)).round().astype(int)
  return tuple(sorted({int(c) for c in caps} | {floor}, reverse=True))


def plan_in_graph_capped(kept: jax.Array, row_length: int, num_groups: int,
                         rows_per_group: int, num_caps: int = 8
                         ) -> tuple[PackingPlan, jax.Array]:
  """``plan_in_graph`` that always fits: where the rows do not fit as they
  are, every row keeps at most the largest of ``overflow_caps`` with which
  all groups fit, and drops its kept positions past it (its last ones).

  Returns the plan (its ``kept``: each row's count placed) and the dropped
  positions per row, (B,) int32: zero where the rows fit as they are, and
  then the plan is ``plan_in_graph``'s.
  """
  kept = jnp.asarray(kept, jnp.int32)
  caps = jnp.asarray(overflow_caps(row_length, kept.shape[0] // num_groups, rows_per_group,
                                   num_caps), jnp.int32)
  capped = jnp.minimum(kept[None, :], caps[:, None]).reshape(len(caps), num_groups, -1)
  starts, fits = _first_fit_in_graph(capped, row_length, rows_per_group)
  chosen = jnp.argmax(jnp.all(fits, axis=1))  # the first (largest) cap that fits; the last does
  starts = starts[chosen].reshape(-1)
  placed = jnp.minimum(kept, caps[chosen])
  plan = PackingPlan(starts=starts, kept=placed, num_groups=num_groups,
                     rows_per_group=rows_per_group, row_length=row_length)
  return plan, kept - placed
