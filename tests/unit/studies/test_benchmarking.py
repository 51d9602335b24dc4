import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrt5_jax.maths import relpos
from mrt5_jax.model import flops
from mrt5_jax.studies import inference_speed
from mrt5_jax.studies import packing_ops_speed
from mrt5_jax.model.config import preset
from tests.fixtures import REPO_ROOT


def test_flop_model_matches_hand_count():
  cfg = preset("tiny", d_model=4, d_ff=6, num_heads=1, head_dim=2, num_encoder_layers=3,
               num_decoder_layers=1, delete_gate_layer=1)
  per_layer = lambda n: 4 * n * 4 * 2 * 2 + 2 * n * n * 2 * 2 + 3 * n * 4 * 6 * 2
  assert flops.layer_flops(10, cfg) == per_layer(10)
  assert flops.encoder_flops(cfg, 10) == 3 * per_layer(10)
  assert flops.encoder_flops(cfg, 10, kept=5) == per_layer(10) + 2 * per_layer(5)
  assert flops.ideal_speedup(cfg, 10, 5) == 3 * per_layer(10) / (
      per_layer(10) + 2 * per_layer(5))
  assert flops.ideal_speedup(cfg, 10, 10, target_length=3) == 1.0


def test_forced_rows_delete_their_own_rates():
  rng = np.random.RandomState(0)
  tokens = rng.randint(3, 259, size=(4, 40)).astype(np.int32)
  tokens[1, 20:] = 0
  rates = inference_speed.row_rates(0.5, 0.2, 4, seed=0)
  assert len(set(np.round(rates, 6))) == 4
  np.testing.assert_array_equal(inference_speed.row_rates(0.5, 0.0, 4, 0), 0.5)
  logits = rng.randn(4, 40).astype(np.float32)
  gate, kept = inference_speed.forced_gate(logits, tokens, rates, -30.0)
  real = tokens > 0
  for row in range(4):
    kept_here = (gate[row] > -15.0) & real[row]
    assert kept_here.sum() == kept[row] == max(1, round((1 - rates[row]) * real[row].sum()))
    # the highest logits are the kept ones
    assert logits[row][kept_here].min() >= logits[row][real[row] & ~kept_here].max()
  assert not np.any((gate > -15.0) & ~real)


def test_benchmark_runs_end_to_end_on_a_short_input(monkeypatch):
  monkeypatch.setattr(inference_speed, "CPU_BENCH_SIZE",
                      dict(d_model=32, d_ff=64, num_heads=2, head_dim=16,
                           num_encoder_layers=4, num_decoder_layers=1))
  lines = []
  result = inference_speed.run_inference_benchmark("cpu", rates=(0.5,), length=256,
                                                   target_length=16, batch=8, repeats=1,
                                                   row_rate_spread=0.1, log=lines.append)
  assert result["default_mode"] == inference_speed.DEFAULT_MODE == "packed"
  (rate,) = result["rates"]
  assert rate["row_rate_spread"] == 0.1 and 0.4 < rate["measured_deletion_rate"] < 0.6
  modes = {m["mode"]: m for m in rate["modes"]}
  assert list(modes) == list(inference_speed.MODES)
  config = inference_speed.benchmark_config("cpu")
  longest = rate["longest_kept"]
  assert modes["pow2"]["compacted_length"] == (256 if longest > 128 else 128)
  assert modes["step"]["compacted_length"] == 64 * -(-longest // 64)
  packed = modes["packed"]
  assert packed["stage_two_rows"] < 8 and packed["compacted_length"] == modes["step"][
      "compacted_length"]
  # packed rows are eighths of the input length, at least the longest row, at most twice
  # the input length (packed_row_limit 2)
  assert packed["stage_two_length"] % 32 == 0 and longest <= packed["stage_two_length"] <= 512
  assert modes["step"]["stage_two_rows"] == 8
  # rows within the input length are among the lengths packed chooses from: never fewer FLOPs
  within = modes["packed_within"]
  assert longest <= within["stage_two_length"] <= 256
  assert packed["encoder_ideal_speedup"] >= within["encoder_ideal_speedup"] - 1e-9
  # what ran, by hand: 8 rows through the 3 layers before the gate, the packed rows after it
  by_hand = (8 * 4 * flops.layer_flops(256, config)
             / (8 * 3 * flops.layer_flops(256, config)
                + packed["stage_two_rows"] * flops.layer_flops(packed["stage_two_length"],
                                                               config)))
  assert packed["encoder_ideal_speedup"] == pytest.approx(by_hand)
  for mode in modes.values():
    assert mode["exact_ideal_speedup"] == packed["exact_ideal_speedup"]
    assert mode["encoder_ideal_speedup"] <= mode["exact_ideal_speedup"] + 1e-9
    assert np.isfinite(mode["encoder_speedup"]) and np.isfinite(mode["scoring_speedup"])
    assert mode["programs"] >= 1
  assert rate["encoder_speedup"] == packed["encoder_speedup"]
  assert sum("rate 0.50" in line for line in lines) == len(modes)
  bp, cp = result["baselines"]
  assert (bp["method"], cp["method"]) == ("BP", "CP")
  # BP matched to MrT5's reduction: the fullest row keeps half its positions as
  # segments (plus its forced last boundary), bucketed like hard deletion
  assert bp["compacted_length"] == 128 and 0.5 <= bp["measured_length_reduction"] < 0.55
  assert cp["rate"] == 0.75 and cp["compacted_length"] == 64
  assert cp["measured_length_reduction"] == pytest.approx(0.75)
  assert np.isfinite(bp["encoder_speedup"]) and np.isfinite(cp["scoring_speedup"])


@pytest.mark.slow
def test_memory_benchmark_compiles_train_steps_and_reports_peaks():
  from mrt5_jax.studies import memory as memory_benchmarking
  lines = []
  result = memory_benchmarking.run_memory_benchmark(
      "tiny", lengths=(32,), policies=("none", "full"), batch=2, scan_layers=True,
      dtype="float32", target="host", log=lines.append)
  rows = result["rows"]
  assert [(r["input_length"], r["remat_policy"]) for r in rows] == [(32, "none"), (32, "full")]
  for row in rows:
    assert row["peak_bytes"] == (row["argument_bytes"] + row["output_bytes"]
                                 - row["alias_bytes"] + row["temp_bytes"])
    assert row["argument_bytes"] > 0 and row["target_length"] == 8
  assert rows[0]["peak_vs_no_remat"] == 1.0
  assert any("remat=full" in line for line in lines)


@pytest.mark.slow
def test_attention_benchmark_times_and_measures_both_paths(monkeypatch):
  from mrt5_jax.studies import memory as memory_benchmarking
  monkeypatch.setattr(memory_benchmarking, "CPU_ATTENTION_SIZE",
                      dict(d_model=32, d_ff=64, num_heads=2, head_dim=16, num_encoder_layers=2,
                           num_decoder_layers=1, delete_gate_layer=1))
  lines = []
  result = memory_benchmarking.run_attention_benchmark(
      "cpu", lengths=(64, 96), block_size=32, repeats=1, target="host", log=lines.append)
  for row in result["rows"]:
    assert row["max_abs_difference"] < 1e-4  # the same encoder output
    assert row["dense_seconds"] > 0 and row["blocked_seconds"] > 0
    for key in ("forward", "train"):
      assert row[f"{key}_memory_ratio"] == (row[f"blocked_{key}_peak_bytes"]
                                            / row[f"dense_{key}_peak_bytes"])
  assert result["jax_nn_dot_product_attention"]["xla"] == "compiles"
  assert len(lines) == 4


class Raising:
  """A lowered program whose compilation fails with ``message``."""

  def __init__(self, message):
    self.message = message

  def compile(self):
    raise RuntimeError(self.message)


def test_a_program_that_does_not_fit_is_reported_with_what_xla_said_it_needs():
  from mrt5_jax.studies import compiled
  stats = compiled.memory_stats(Raising(
      "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
      "temporaries (189.19G) exceeds available HBM (15.25G)."))
  assert not stats.fits
  assert stats.peak_bytes == int(189.19 * 1024 ** 3)
  assert stats.capacity_bytes == int(15.25 * 1024 ** 3)
  assert "does not fit" in stats.describe()
  older = compiled.memory_stats(Raising(
      "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 41.50G of 30.75G hbm."))
  assert (older.fits, older.needed_bytes) == (False, int(41.5 * 1024 ** 3))
  with pytest.raises(RuntimeError, match="something else"):
    compiled.memory_stats(Raising("INVALID_ARGUMENT: something else"))


def test_bench_cli_validates_its_flags():
  from mrt5_jax.cli import bench
  with pytest.raises(SystemExit, match="--policies"):
    bench.main(["memory", "--policies", "none,some"])
  with pytest.raises(SystemExit, match="--lengths"):
    bench.main(["attention", "--lengths", "1024,x"])


def test_train_step_benchmark_times_three_arms(monkeypatch):
  from mrt5_jax.studies import train_step_speed
  monkeypatch.setattr(inference_speed, "CPU_BENCH_SIZE",
                      dict(d_model=32, d_ff=64, num_heads=2, head_dim=16,
                           num_encoder_layers=4, num_decoder_layers=1))
  lines = []
  result = train_step_speed.run_train_step_benchmark(
      "cpu", length=64, target_length=8, batch=8, rate=0.6, packed_rows=0.75, repeats=1,
      dtype="bfloat16", log=lines.append)
  assert result["dtype"] == "bfloat16" and "dtype=bfloat16" in lines[0]
  arms = {row["arm"]: row for row in result["arms"]}
  assert list(arms) == list(train_step_speed.ARMS)
  assert (arms["soft"]["hard_batches"], arms["hard"]["hard_batches"]) == (0.0, 1.0)
  assert (arms["hard"]["packed_batches"], arms["packed"]["packed_batches"]) == (0.0, 1.0)
  for row in arms.values():
    assert abs(row["deletion_rate"] - 0.6) < 0.05 and row["step_seconds"] > 0
  assert arms["soft"]["vs_soft"] == 1.0
  assert result["recipe_vs_soft"]["recipe_packed"] == pytest.approx(
      0.5 + 0.5 * arms["packed"]["vs_soft"])
  assert any(line.startswith("recipe") for line in lines)


def test_accelerator_script_writes_each_part_as_it_ends(monkeypatch, tmp_path):
  """benchmarks/accelerator.py (the study functions without the CLI's seqio /
  TensorFlow imports): one JSON per part and dtype."""
  monkeypatch.setattr(inference_speed, "CPU_BENCH_SIZE",
                      dict(d_model=32, d_ff=64, num_heads=2, head_dim=16,
                           num_encoder_layers=4, num_decoder_layers=1))
  spec = importlib.util.spec_from_file_location(
      "accelerator", os.path.join(REPO_ROOT, "benchmarks", "accelerator.py"))
  accelerator = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(accelerator)
  assert accelerator.main(["--output_dir", str(tmp_path), "--config", "cpu", "--length", "64",
                           "--target_length", "8", "--batch", "4", "--repeats", "1",
                           "--parts", "rows_equal", "--dtypes", "bfloat16"]) == 0
  assert os.listdir(tmp_path) == ["rows_equal_bfloat16.json"]
  result = json.load(open(tmp_path / "rows_equal_bfloat16.json"))
  assert result["dtype"] == "bfloat16" and result["row_rate_spread"] == 0.0
  assert result["target_length"] == 8 and result["baselines"] == []
  assert [m["mode"] for m in result["rates"][0]["modes"]] == list(inference_speed.MODES)
  ops_dir = tmp_path / "ops"
  assert accelerator.main(["--output_dir", str(ops_dir), "--length", "32", "--batch", "8",
                           "--repeats", "1", "--parts", "packing_ops"]) == 0
  ops = json.load(open(ops_dir / "packing_ops_float32.json"))
  assert (ops["batch"], ops["length"], ops["packed_rows"]) == (8, 32, 5)
  assert sorted(ops["ms"]) == sorted(packing_ops_speed.OPS)
  assert all(ms > 0 for ms in ops["ms"].values())
  with pytest.raises(SystemExit):
    accelerator.main(["--output_dir", str(tmp_path), "--parts", "everything"])


def test_one_hot_bias_is_the_gathered_bias_and_has_its_gradient():
  """The candidate formulation of the packed step's relative position bias against the
  model's (T5's bucket table gathered per (query, key)), on packed-row positions."""
  rng = np.random.default_rng(0)
  table = jnp.asarray(rng.normal(size=(3, 32)), jnp.float32)
  positions = jnp.asarray(np.sort(rng.integers(0, 400, size=(2, 24)), axis=1), jnp.int32)
  cotangent = jnp.asarray(rng.normal(size=(2, 3, 24, 24)), jnp.float32)

  def loss(formulation, t):
    return jnp.sum(formulation(t, positions, positions, bidirectional=True) * cotangent)

  gathered = relpos.bias_from_table(table, positions, positions, bidirectional=True)
  np.testing.assert_allclose(packing_ops_speed.one_hot_bias(
      table, positions, positions, bidirectional=True), gathered, rtol=1e-6, atol=1e-6)
  buckets = np.asarray(relpos.relative_position_bucket(
      positions[:, None, :] - positions[:, :, None], True))
  expected = np.zeros((3, 32))  # d loss / d table[h, n]: the cotangent summed over bucket n
  np.add.at(expected.T, buckets, np.moveaxis(np.asarray(cotangent), 1, -1))
  for formulation in (relpos.bias_from_table, packing_ops_speed.one_hot_bias):
    np.testing.assert_allclose(jax.grad(lambda t: loss(formulation, t))(table), expected,
                               rtol=1e-4, atol=1e-4)
