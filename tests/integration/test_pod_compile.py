"""mrt5-bench compile: the real sharded train step compiled on an 8-device CPU topology (its
shardings are the partitioning rules', its FLOPs the hand count's), and the TPU target
without libtpu refused with a clear message."""
import pytest

from mrt5_jax.studies import compiled
from mrt5_jax.studies import t5x_compile
from tests.fixtures import run_check_script, run_cli


@pytest.fixture(scope="module")
def report():
  return run_check_script("pod_compile_check.py", timeout=900)


@pytest.mark.slow
def test_compiled_step_carries_the_partitioning_rules_shardings(report):
  assert report["devices"] == 8
  assert report["state_in_mesh"] == {"data": 4, "model": 2}
  assert report["state_in_matches_rules"] and report["state_out_matches_rules"]
  assert "('model', None)" in report["param_specs"]  # vocab / heads / mlp split
  assert "(None, 'model')" in report["param_specs"]
  assert report["batch_specs"] == ["('data',)"]
  assert report["metric_specs"] == ["()"]
  assert report["hard_delete_train_prob"] > 0  # the shipped recipe's hard batches compiled in


@pytest.mark.slow
def test_rows_count_the_hand_flops_at_every_loop_and_partitioning(report):
  rows = report["benchmark"]["rows"]
  assert len(rows) == 4 and all(row["fits"] for row in rows)
  fields = ("size", "topology", "num_partitions", "num_microbatches", "remat_policy",
            "peak_bytes_per_chip", "hbm_bytes_per_chip", "fits", "flops_per_step",
            "hand_flops_per_step", "collective_bytes_per_step", "estimated_step_seconds",
            "estimated_mfu", "compile_seconds")
  for row in rows:
    assert set(fields) <= set(row)
    ratio = row["flops_per_step"] / row["hand_flops_per_step"]
    if row["remat_policy"] == "none":
      # the hand count has only the matmuls of model.flops; the gate's projection and
      # the optimizer add < 0.1 %, though the 4 micro-batches run in a loop
      assert ratio == pytest.approx(1.0, abs=2e-3), row
    else:
      # full remat recomputes (part of) the forward of the same step without remat, and at
      # most all of it: between the partner's count and 4/3 of the hand count
      partner = next(r for r in rows if r["remat_policy"] == "none"
                     and r["num_partitions"] == row["num_partitions"])
      recomputed = row["flops_per_step"] - partner["flops_per_step"]
      assert recomputed > 0.1 * row["hand_flops_per_step"], (row, partner)
      assert recomputed <= row["hand_flops_per_step"] / 3 * (1 + 2e-3), (row, partner)
    assert row["collective_bytes_per_step"] > 0  # data parallelism all-reduces gradients
    assert row["peak_bytes_per_chip"] > 0
  # XLA's own cost analysis counts a loop body once: with 4 micro-batches it sees less
  scanned = [r for r in rows if r["num_microbatches"] == 4 and r["remat_policy"] == "none"]
  assert all(r["xla_cost_flops_per_step"] < 0.6 * r["hand_flops_per_step"] for r in scanned)
  # CPU devices have no published figures, so no roofline and no best pick
  assert report["benchmark"]["best"] is None and rows[0]["estimated_step_seconds"] is None


@pytest.mark.slow
def test_inference_programs_count_the_hand_flops_of_every_bucket_and_the_packed_rows(report):
  (result,) = report["inference"]
  assert (result["num_data_partitions"], result["num_partitions"]) == (4, 2)
  # stage one's output (hidden, gate, mask) stays on the data axis: no gather before stage two
  assert all(spec.startswith("('data'") for spec in result["stage_one_output_specs"]), result
  programs = {row["program"]: row for row in result["programs"]}
  assert list(programs) == ["encode_full", "stage_one", "stage_two@16", "stage_two@32",
                            "stage_two@64", "stage_two_packed"]
  for row in programs.values():
    assert row["fits"] and row["peak_bytes_per_chip"] > 0
    # the gate's projection is the only matmul model.flops leaves out (stage one, full)
    assert row["flops_per_step"] == pytest.approx(row["hand_flops_per_step"], rel=5e-3), row
  # tiny: 4 encoder layers, one before the gate and three after it
  full, one = programs["encode_full"]["flops_per_step"], programs["stage_one"]["flops_per_step"]
  assert one == pytest.approx(full / 4, rel=5e-3)
  assert programs["stage_two@64"]["flops_per_step"] == pytest.approx(full * 3 / 4, rel=5e-3)
  batch = result["batch"]
  # rows deleting about 75% of 64 keep at most 23: every row runs in the 32 bucket
  assert batch["longest_kept"] <= 32 and batch["bucket"] == 32
  assert batch["runs"]["bucketed"] == "stage_two@32"
  for mode in ("bucketed", "packed"):
    expected = full / (one + programs[batch["runs"][mode]]["flops_per_step"])
    assert batch[f"{mode}_flop_speedup"] == pytest.approx(expected), mode
  # 1 of 4 layers at 64 and 3 at 32 of 64 positions: stage two's matmuls at half length,
  # its attention scores at a quarter
  assert batch["bucketed_flop_speedup"] > 1.5


@pytest.mark.slow
def test_t5x_step_compiles_on_the_slice_with_the_hand_flops(report):
  """Only in the t5x environment (CI has no t5x: the refusal below is tested instead)."""
  if not t5x_compile.t5x_available():
    pytest.skip("t5x is not installed (launch/t5x_env.py)")
  rows = {row["num_microbatches"]: row for row in report["t5x"]}
  assert set(rows) == {1, 4}
  for row in rows.values():
    assert row["trainer"] == "t5x" and row["fits"]
    assert (row["num_data_partitions"], row["num_partitions"]) == (4, 2)
    # t5x's own micro-batch loop is counted at its trip count: the hand count either way
    assert row["flops_per_step"] == pytest.approx(row["hand_flops_per_step"], rel=2e-3), row
    assert row["collective_bytes_per_step"] > 0
  # the same model under the two trainers: the same matmul FLOPs per step
  (project,) = report["t5x_project_rows"]
  assert rows[1]["flops_per_step"] == pytest.approx(project["flops_per_step"], rel=1e-3)


def test_t5x_rows_without_t5x_are_refused_clearly():
  if t5x_compile.t5x_available():
    pytest.skip("t5x is installed: its rows compile (above)")
  out = run_cli("mrt5_jax.cli.bench", "compile", "--target", "host", "--size", "tiny",
                "--length", "64", "--batch", "8", "--microbatches", "1", "--remat", "none",
                "--programs", "t5x")
  assert out.returncode != 0
  assert "needs t5x" in out.stderr and "launch/t5x_env.py" in out.stderr


@pytest.mark.slow
def test_tpu_target_without_libtpu_is_refused_clearly():
  small = ["compile", "--target", "tpu", "--topology", "v4:2x2x1", "--size", "tiny",
           "--length", "64", "--batch", "8", "--microbatches", "1", "--remat", "none"]
  out = run_cli("mrt5_jax.cli.bench", *small)
  if compiled.libtpu_available():
    assert out.returncode == 0, out.stderr[-2000:]
    assert "TPU v4" in out.stdout
  else:
    assert out.returncode != 0
    assert "needs libtpu" in out.stderr and "--target host" in out.stderr
