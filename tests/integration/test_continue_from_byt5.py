"""mrt5-continue (README's first command) end to end, at a few steps: the stages run, the
per-language summary and the HTML are written, a rerun skips every stage, and a run with
other settings in the same work dir is refused."""
import json
import os

import pytest

from tests.fixtures import run_cli

# A few steps of each stage on shorter inputs; the job and its files are the real ones.
SMALL = ["--gin_file=runs/byt5_to_mrt5.gin", "--gin.continue_from_byt5.pretrain_steps=12",
         "--gin.continue_from_byt5.continue_steps=8", "--gin.BATCH_SIZE=8",
         "--gin.mrt5_jax.tasks.span_corruption_config.inputs_length=64",
         "--gin.evaluate.speed_repeats=1", "--gin.inspect_deletion.num_examples=2"]
STAGES = ["byt5", "mrt5", "byt5_continued", "eval_mrt5", "eval_byt5_continued", "inspect"]


@pytest.mark.slow
def test_paper_path_runs_every_stage_then_reruns_from_its_records(tmp_path):
  work = str(tmp_path / "run")
  first = run_cli("mrt5_jax.cli.continue_from_byt5", *SMALL, f"--gin.WORK_DIR={work}")
  assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-3000:]
  for index, stage in enumerate(STAGES, 1):
    assert f"[stage {index}/6] {stage}" in first.stdout
  summary = json.load(open(os.path.join(work, "summary.json")))
  languages = [row["language"] for row in summary["rows"]]
  assert len(languages) == 16 and languages[-1] == "all" and "th" in languages
  for row in summary["rows"]:
    assert row["byt5_cross_entropy"] > 0 and row["mrt5_hard_cross_entropy"] > 0
    assert 0.0 <= row["deletion_rate"] <= 1.0
    assert row["longest_kept"] <= max(row["buckets"]) <= 64
  # the ByT5 row and MrT5's come from two different models: both checkpoints exist
  assert os.path.isdir(os.path.join(work, "mrt5", "checkpoints", "8"))
  assert os.path.isdir(os.path.join(work, "byt5_continued", "checkpoints", "8"))
  assert os.path.isdir(os.path.join(work, "byt5", "checkpoints", "12"))
  html = open(os.path.join(work, "deletion.html"), encoding="utf-8").read()
  assert "MrT5 deletion report" in html
  table_lines = [line for line in first.stdout.splitlines() if line.startswith("| ")]
  assert len(table_lines) == 18  # header, 15 languages, all

  second = run_cli("mrt5_jax.cli.continue_from_byt5", *SMALL, f"--gin.WORK_DIR={work}")
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stdout.count("finished before") == 6
  assert [line for line in second.stdout.splitlines() if line.startswith("| ")] == table_lines

  changed = run_cli("mrt5_jax.cli.continue_from_byt5", *SMALL, f"--gin.WORK_DIR={work}",
                    "--gin.TARGET_DELETION_RATE=0.3")
  assert changed.returncode == 1
  message = changed.stderr.strip().splitlines()[-1]
  assert "TARGET_DELETION_RATE = 0.3" in message and "another WORK_DIR" in message
  assert f"byt5_checkpoint={work}/byt5" in message
