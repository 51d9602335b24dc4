import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrt5_jax.maths import packing


def test_first_fit_decreasing_places_rows_without_overlap():
  kept = np.array([5, 9, 3, 7, 1, 10, 2])
  starts, used = packing.first_fit_decreasing(kept, 10)
  occupied = np.zeros(used * 10, int)
  for start, n in zip(starts, kept):
    assert start // 10 == (start + max(n, 1) - 1) // 10, "a row crosses a packed row"
    occupied[start:start + n] += 1
  assert occupied.max() == 1
  assert used == 4  # 37 positions need at least 4 rows of 10; FFD finds 4
  with pytest.raises(ValueError, match="kept counts"):
    packing.first_fit_decreasing(np.array([11]), 10)


def test_rows_bucket_rounds_up_to_few_shapes():
  assert [packing.rows_bucket(n, 32, 8) for n in (1, 4, 5, 17, 32)] == [4, 4, 8, 20, 32]
  assert packing.rows_bucket(3, 3, 8) == 3
  shapes = {packing.rows_bucket(n, 1024, 8) for n in range(1, 1025)}
  assert len(shapes) == 8


def test_plan_is_per_group_and_shared_shape():
  kept = np.array([8, 8, 8, 8, 1, 1, 1, 1])
  plan = packing.make_plan(kept, 8, num_groups=2, num_buckets=4)
  assert (plan.num_groups, plan.rows_per_group, plan.row_length) == (2, 4, 8)
  assert sorted(plan.starts[:4].tolist()) == [0, 8, 16, 24]
  assert sorted(plan.starts[4:].tolist()) == [0, 1, 2, 3]
  with pytest.raises(ValueError, match="equal groups"):
    packing.make_plan(kept[:7], 8, num_groups=2)


def reference_pack(keep, segment_ids, plan, length):
  """NumPy: every kept (row, position) at its planned slot."""
  groups, per = plan.num_groups, keep.shape[0] // plan.num_groups
  slots = plan.rows_per_group * plan.row_length
  source = np.zeros((groups, slots), int)
  valid = np.zeros((groups, slots), bool)
  segment = np.zeros((groups, slots), int)
  for row in range(keep.shape[0]):
    g, local = divmod(row, per)
    for rank, position in enumerate(np.flatnonzero(keep[row])):
      slot = plan.starts[row] + rank
      source[g, slot] = local * length + position
      valid[g, slot] = True
      seg = 1 if segment_ids is None else segment_ids[row, position]
      segment[g, slot] = local * (length + 1) + seg
  return source, valid, segment


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("with_segments", [False, True])
def test_pack_and_unpack_match_numpy(groups, with_segments):
  rng = np.random.RandomState(0)
  batch, length, width = 4, 12, 3
  keep = rng.rand(batch, length) < rng.uniform(0.2, 0.8, size=(batch, 1))
  keep[:, 0] = True
  segment_ids = (1 + (np.arange(length) >= 6)).repeat(batch).reshape(length, batch).T \
      if with_segments else None
  plan = packing.make_plan(keep.sum(-1), length, groups, num_buckets=batch)
  packed = packing.pack(jnp.asarray(keep), plan,
                        None if segment_ids is None else jnp.asarray(segment_ids))
  source, valid, segment = reference_pack(keep, segment_ids, plan, length)
  shape = (plan.packed_rows, length)
  np.testing.assert_array_equal(np.asarray(packed.valid), valid.reshape(shape))
  np.testing.assert_array_equal(np.asarray(packed.source)[packed.valid],
                                source.reshape(shape)[valid.reshape(shape)])
  np.testing.assert_array_equal(np.asarray(packed.segment_ids), segment.reshape(shape))
  np.testing.assert_array_equal(np.asarray(packed.positions)[packed.valid],
                                source.reshape(shape)[valid.reshape(shape)] % length)

  values = rng.randn(batch, length, width).astype(np.float32)
  gathered = np.asarray(packing.gather_packed(jnp.asarray(values), packed, groups))
  per = batch // groups
  flat = values.reshape(groups, per * length, width)
  expected = np.stack([flat[g][source[g]] for g in range(groups)]).reshape(shape + (width,))
  np.testing.assert_array_equal(gathered[np.asarray(packed.valid)],
                                expected[valid.reshape(shape)])

  unpacked_length = int(keep.sum(-1).max())
  slots, slot_valid = packing.unpack_slots(plan, unpacked_length)
  back = np.asarray(packing.gather_unpacked(jnp.asarray(gathered), slots, groups))
  for row in range(batch):
    kept_positions = np.flatnonzero(keep[row])
    np.testing.assert_array_equal(np.asarray(slot_valid)[row],
                                  np.arange(unpacked_length) < len(kept_positions))
    np.testing.assert_array_equal(back[row, :len(kept_positions)], values[row, kept_positions])


def test_plan_in_graph_matches_the_host_plan_and_reports_overflow():
  rng = np.random.RandomState(3)
  kept = rng.randint(1, 17, size=12)
  host = packing.make_plan(kept, 16, num_groups=2, num_buckets=6)
  traced, fits = jax.jit(packing.plan_in_graph, static_argnums=(1, 2, 3))(
      jnp.asarray(kept), 16, 2, host.rows_per_group)
  assert bool(fits)
  np.testing.assert_array_equal(np.asarray(traced.starts), host.starts)
  _, fits = packing.plan_in_graph(jnp.asarray(kept), 16, 2, 1)
  assert not bool(fits)



@pytest.mark.parametrize("rows_per_group", [1, 2, 3, 6])
def test_capped_plan_fits_by_capping_only_the_longest_rows(rows_per_group):
  """The cap chosen is the largest candidate with which NumPy's first-fit
  decreasing (``first_fit_decreasing``, the host's) fits every group into
  ``rows_per_group`` rows; rows drop only what is past it, their last kept
  positions."""
  rng = np.random.RandomState(7)
  kept = rng.randint(0, 17, size=12)
  plan, dropped = jax.jit(packing.plan_in_graph_capped, static_argnums=(1, 2, 3))(
      jnp.asarray(kept), 16, 2, rows_per_group)
  caps = packing.overflow_caps(16, 6, rows_per_group)
  assert caps[0] == 16 and caps[-1] == 16 // -(-6 // rows_per_group)
  fitting = [cap for cap in caps
             if all(packing.first_fit_decreasing(np.minimum(group, cap), 16)[1] <= rows_per_group
                    for group in kept.reshape(2, 6))]
  assert fitting and fitting[-1] == caps[-1]  # the smallest cap always fits
  cap = fitting[0]
  np.testing.assert_array_equal(np.asarray(plan.kept), np.minimum(kept, cap))
  np.testing.assert_array_equal(np.asarray(dropped), kept - np.minimum(kept, cap))
  if rows_per_group == 6:
    assert cap == 16 and not np.asarray(dropped).any()
  else:
    assert np.asarray(dropped).sum() > 0
  # every group's rows lie in disjoint slots inside its rows_per_group rows of 16
  for group in range(2):
    used = np.zeros(16 * rows_per_group, int)
    for row in range(6 * group, 6 * group + 6):
      used[int(plan.starts[row]):int(plan.starts[row]) + int(plan.kept[row])] += 1
    assert used.max() <= 1

  # the packed layout holds each row's first plan.kept kept positions, nothing else
  keep = np.zeros((12, 16), bool)
  for row, count in enumerate(kept):
    keep[row, np.sort(rng.choice(16, count, replace=False))] = True
  packed = packing.pack(jnp.asarray(keep), plan)
  source = np.asarray(packed.source).reshape(2, -1)
  valid = np.asarray(packed.valid).reshape(2, -1)
  for row in range(12):
    group, local = divmod(row, 6)
    held = np.sort(source[group][valid[group] & (source[group] // 16 == local)] % 16)
    np.testing.assert_array_equal(held, np.flatnonzero(keep[row])[:int(plan.kept[row])])
