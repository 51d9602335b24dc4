"""mrt5-bench shortening end to end at a few steps: one ByT5 pretrained, MrT5 and CP (the
architectures with learned and fixed shortening; the others' bindings are unit-tested)
continued from it, evaluated per language and timed against ByT5, the JSON's rows and fields,
the plot, and a rerun that skips every stage."""
import json
import os

import pytest

from tests.fixtures import run_cli

# CP's reduction only (0.75), one seed: three continued models; the real run file and jobs.
SMALL = ["shortening", "--targets", "0.75", "--seeds", "0", "--architectures", "mrt5,cp",
         "--pretrain_steps", "4",
         "--continue_steps", "3", "--speed_repeats", "1", "--gin", "BATCH_SIZE = 8",
         "--gin", "mrt5_jax.tasks.span_corruption_config.inputs_length = 64",
         "--gin", "evaluate.num_batches = 1"]
ARCHITECTURES = ["byt5", "mrt5", "cp"]


@pytest.mark.slow
def test_architectures_from_one_byt5_then_a_rerun_from_the_records(tmp_path):
  work, output = str(tmp_path / "work"), str(tmp_path / "out" / "comparison.json")
  first = run_cli("mrt5_jax.cli.bench", *SMALL, "--work_dir", work, "--output", output)
  assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-3000:]
  result = json.load(open(output))
  rows = result["rows"]
  assert [r["architecture"] for r in rows] == ARCHITECTURES
  for row in rows:
    assert row["seed"] == 0 and row["hard_cross_entropy"] > 0 and row["soft_cross_entropy"] > 0
    assert len(row["languages"]) == 15 and "th" in row["languages"]
    assert row["target"] == (None if row["architecture"] == "byt5" else 0.75)
    assert 0.0 <= row["reduction"] <= 1.0
  by_arch = {r["architecture"]: r for r in rows}
  assert by_arch["byt5"]["reduction"] == 0.0
  assert by_arch["byt5"]["encoder_ideal_speedup"] == pytest.approx(1.0)  # ByT5 against itself
  assert by_arch["cp"]["reduction"] == pytest.approx(0.75, abs=0.02)  # 1 - 1/4, padding aside
  # CP's encoder after the pooling layer runs a quarter of ByT5's positions
  assert by_arch["cp"]["encoder_ideal_speedup"] > 1.5
  for architecture in ARCHITECTURES:
    assert by_arch[architecture]["encoder_speedup"] > 0
    assert by_arch[architecture]["speed_reference"].startswith(os.path.join(work, "s0.byt5"))
  # every architecture continued the one pretrained ByT5
  for architecture in ARCHITECTURES:
    name = f"s0.{architecture}" + ("" if architecture == "byt5" else "@0.75")
    record = json.load(open(os.path.join(work, "stages", name + ".json")))
    assert os.path.join(work, "byt5_pretrained") in "\n".join(record["settings"])
  assert len(result["summary"]) == 3
  assert {d["against"] for d in result["differences"]} == {"byt5", "cp"}
  with open(result["plot_path"], "rb") as f:
    assert f.read(4) == b"\x89PNG"
  assert os.path.dirname(result["plot_path"]) == os.path.dirname(output)
  assert "| architecture | target | reduction |" in first.stdout
  assert "MrT5 - CP (conv pooling)" in first.stdout

  again = run_cli("mrt5_jax.cli.bench", *SMALL, "--work_dir", work, "--output", output)
  assert again.returncode == 0, again.stderr[-3000:]
  assert (again.stdout + again.stderr).count("finished before") == 7  # pretraining + 3 x 2
  assert json.load(open(output))["rows"] == rows
