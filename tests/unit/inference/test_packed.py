"""Packed hard deletion equals per-row (bucketed) hard deletion."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrt5_jax.inference.encode_path import EncodePath, InferenceConfig
from mrt5_jax.inference.runner import InferenceRunner
from mrt5_jax.model import layer_stacking
from tests.fixtures import as_tuple, byte_batch, init_params, model_config, run_check_script

jax.config.update("jax_default_matmul_precision", "highest")
BUCKETS = InferenceConfig(mode="bucketed", min_bucket_length=4, bucket_step=4)
VARIANTS = {
    "dense": {},
    "blocked": dict(attention_impl="blocked", attention_block_size=8,
                    attention_query_block_size=8),
    "scanned": dict(scan_layers=True),
}


def gated_model(variant, rows=6, pad_from=(None, 20, 9, 1, 30, 14)):
  """A tiny MrT5 whose rows keep very different numbers of positions."""
  cfg = model_config(**VARIANTS[variant])
  batch = as_tuple(byte_batch(batch=rows, length=32, pad_from=pad_from))
  _, params = init_params(model_config(), batch)
  params["encoder"]["delete_gate"]["dense"]["bias"] = jnp.array([0.0], jnp.float32)
  return cfg, batch, layer_stacking.to_layout(params, cfg)


def assert_same_output(packed, bucketed):
  np.testing.assert_array_equal(packed.mask, bucketed.mask)
  np.testing.assert_array_equal(packed.kept_positions, bucketed.kept_positions)
  valid = np.asarray(bucketed.mask) > 0
  np.testing.assert_allclose(np.asarray(packed.encoded)[valid],
                             np.asarray(bucketed.encoded)[valid], atol=1e-5)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_packed_equals_bucketed_encode_score_generate(variant):
  cfg, (enc, dec_in, tgt), params = gated_model(variant)
  bucketed = InferenceRunner(cfg, params, inference=BUCKETS)
  packed = InferenceRunner(cfg, params, inference=BUCKETS.replace(mode="packed"))
  assert packed.mode == "packed"
  kept = np.asarray(bucketed.encode(enc).mask).sum(-1)
  assert kept.max() > 2 * kept.min()  # rows differ, so packing moves them around
  plan = packed.path.choose_packing(kept, enc.shape[1], bucketed.encode(enc).compacted_length)
  assert plan is not None and plan.packed_rows < enc.shape[0]
  assert_same_output(packed.encode(enc), bucketed.encode(enc))
  np.testing.assert_allclose(packed.score(enc, dec_in, tgt), bucketed.score(enc, dec_in, tgt),
                             atol=1e-5)
  np.testing.assert_array_equal(packed.generate(enc, 8), bucketed.generate(enc, 8))


def test_packed_with_input_segments_and_all_pad_rows():
  cfg, (enc, dec_in, tgt), params = gated_model("dense", rows=4, pad_from=(None, 0, 20, 0))
  segments = np.where(enc > 0, 1 + (np.arange(enc.shape[1]) >= 12), 0).astype(np.int32)
  bucketed = InferenceRunner(cfg, params, inference=BUCKETS)
  packed = InferenceRunner(cfg, params, inference=BUCKETS.replace(mode="packed"))
  a = packed.encode(enc, segments)
  b = bucketed.encode(enc, segments)
  assert_same_output(a, b)
  np.testing.assert_array_equal(a.segment_ids, b.segment_ids)
  assert np.all(np.isfinite(np.asarray(a.encoded)))


def test_groups_pack_separately_with_one_shape():
  cfg, (enc, _, _), params = gated_model("dense")
  module = InferenceRunner(cfg, params).module
  reference = EncodePath(module, BUCKETS).encode(params, jnp.asarray(enc))
  path = EncodePath(module, BUCKETS.replace(mode="packed"), num_groups=2)
  reading, kept = path.read_gate(params, jnp.asarray(enc))
  plan = path.packing_plan(kept, enc.shape[1])
  assert plan.num_groups == 2 and plan.packed_rows % 2 == 0
  # each group's rows start inside the group's own slots
  assert np.all(np.asarray(plan.starts) < plan.rows_per_group * plan.row_length)
  assert_same_output(path.encode(params, jnp.asarray(enc)), reference)


def test_packed_programs_follow_row_buckets():
  cfg, (enc, _, _), params = gated_model("dense")
  packed = InferenceRunner(cfg, params, inference=BUCKETS.replace(mode="packed",
                                                                  packed_row_buckets=2))
  rng = np.random.RandomState(1)
  for _ in range(6):
    packed.encode(np.where(rng.rand(*enc.shape) < 0.2, 0, enc))
  # stage one, and stage two per (packed row count, unpacked bucket): 2 row buckets x 8
  # length buckets at most, far fewer in practice
  assert packed.num_compiled_programs <= 1 + 2 * 8


def test_pooling_kinds_run_packed_as_bucketed():
  cfg = model_config(deletion_type="boundary")
  enc, dec_in, tgt = as_tuple(byte_batch(length=32))
  _, params = init_params(cfg, (enc, dec_in, tgt))
  runner = InferenceRunner(cfg, params, inference=BUCKETS.replace(mode="packed"))
  assert runner.mode == "bucketed"
  assert runner.encode(enc).encoded.shape[0] == enc.shape[0]


def test_packed_rows_shorten_when_that_costs_fewer_flops():
  cfg, _, params = gated_model("dense")
  path = EncodePath(InferenceRunner(cfg, params).module, BUCKETS.replace(mode="packed"))
  # d_model 32, d_ff 64, 4 x 8 heads: a layer costs 20480 n + 128 n^2 FLOPs per row of n;
  # packed rows are 4, 8, ..., 64 long (eighths of 32, up to twice 32). Six rows of 6 cost
  # least two to a row of 12 (3 x 264k), against one to a row of 8 (6 x 172k), three to 20
  # (2 x 461k) or all six in a row of 36 (903k)
  short = path.packing_plan(np.full(6, 6), 32)
  assert (short.row_length, short.packed_rows) == (12, 3)
  # a row of 20 and five of 3 (35 positions) cost least in one row of 36, longer than the
  # input (903k), against 20 alone and the rest in a second row of 20 (2 x 461k)
  long = path.packing_plan(np.array([20, 3, 3, 3, 3, 3]), 32)
  assert (long.row_length, long.packed_rows) == (36, 1)
  assert path.stage_two_shape(np.array([20, 3, 3, 3, 3, 3]), 32, 20) == (1, 36)
  # with packed rows of at most the input length (packed_row_limit 1) it is the second
  within = EncodePath(InferenceRunner(cfg, params).module,
                      BUCKETS.replace(mode="packed", packed_row_limit=1.0))
  assert within.packing_plan(np.array([20, 3, 3, 3, 3, 3]), 32).row_length == 20
  # with quarters of the input length up to the input length (8, 16, 24, 32) the plans are
  # coarser
  halves = EncodePath(InferenceRunner(cfg, params).module,
                      BUCKETS.replace(mode="packed", packed_row_lengths=4, packed_row_limit=1.0))
  assert halves.packing_plan(np.full(6, 6), 32).row_length == 8
  assert halves.packing_plan(np.array([20, 3, 3, 3, 3, 3]), 32).row_length == 24
  # rows that pack no better than their per-row bucket run per row
  assert path.choose_packing(np.array([20, 18, 17, 19]), 32, 20) is None
  assert path.stage_two_shape(np.array([20, 18, 17, 19]), 32, 20) == (4, 20)


def test_hard_deletion_at_the_input_length_masks_in_place():
  """Nothing gathered at the full bucket: deleted positions masked where they are."""
  cfg, (enc, dec_in, tgt), params = gated_model("dense")
  runner = InferenceRunner(cfg, params, inference=BUCKETS)
  compacted = runner.encode(enc)
  reading, _ = runner.path.read_gate(params, jnp.asarray(enc))
  in_place = runner.path.finish(params, reading, jnp.asarray(enc), length=enc.shape[1])
  keep = np.asarray(in_place.mask) > 0
  np.testing.assert_array_equal(keep.sum(-1), np.asarray(compacted.mask).sum(-1))
  for row in range(enc.shape[0]):
    kept = np.flatnonzero(keep[row])
    np.testing.assert_array_equal(kept, np.asarray(compacted.kept_positions)[row, :len(kept)])
    np.testing.assert_allclose(np.asarray(in_place.encoded)[row, kept],
                               np.asarray(compacted.encoded)[row, :len(kept)], atol=1e-5)
  np.testing.assert_allclose(runner.score_from(in_place, dec_in, tgt),
                             runner.score_from(compacted, dec_in, tgt), atol=1e-5)


def test_packed_equals_bucketed_on_an_8_device_mesh():
  """tests/packing_sharding_check.py: one plan per data shard, no collective."""
  report = run_check_script("packing_sharding_check.py")
  for name, mesh in (("data8", {"data": 8, "model": 1}), ("data4", {"data": 4, "model": 2})):
    row = report[name]
    assert row["mesh"] == mesh
    assert row["max_abs_difference"] < 1e-5 and row["same_kept_positions"]
    assert row["packed_rows"] == row["rows_per_group"] * mesh["data"]
  # rows pack within their own shard: the data-parallel program moves nothing between devices
  assert sum(report["data8"]["collectives"].values()) == 0, report["data8"]["collectives"]
