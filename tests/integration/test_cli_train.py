"""mrt5-train / mrt5-eval end to end (subprocesses, as a user runs them)."""
import json
import os

import pytest

from tests.fixtures import run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("demo")
  out = run_cli("mrt5_jax.cli.train", "--gin_file=runs/local.gin", "--gin.TRAIN_STEPS=20",
             f"--gin.MODEL_DIR={model_dir}", "--gin.train.log_every=10",
             "--gin.train.eval_every=20", "--gin.train.eval_steps=1",
             "--gin.train.checkpoint_every=10", "--gin.BATCH_SIZE=8")
  assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-2000:]
  return model_dir, out.stdout


def test_train_cli_runs_the_demo_and_reports(trained):
  model_dir, stdout = trained
  assert "step 10/20" in stdout and "step 20/20" in stdout
  assert "(target 0.200)" in stdout
  checkpoint = os.path.join(str(model_dir), "checkpoints", "20")
  assert f"checkpoint: {checkpoint}" in stdout
  assert os.path.isdir(os.path.join(checkpoint, "state"))
  assert os.path.isfile(os.path.join(str(model_dir), "model_config.json"))
  assert any(name.startswith("events.out.tfevents")
             for name in os.listdir(os.path.join(str(model_dir), "train")))
  assert "eval (hard deletion)" in stdout


def test_rerunning_a_finished_run_reports_its_summary_again(trained):
  model_dir, stdout = trained
  out = run_cli("mrt5_jax.cli.train", "--gin_file=runs/local.gin", "--gin.TRAIN_STEPS=20",
             f"--gin.MODEL_DIR={model_dir}", "--gin.train.eval_every=20",
             "--gin.train.eval_steps=1", "--gin.BATCH_SIZE=8")
  assert out.returncode == 0, out.stderr[-3000:]
  first = {line.split(",")[0] for line in stdout.splitlines() if line.startswith("final train")}
  again = {line.split(",")[0] for line in out.stdout.splitlines()
           if line.startswith("final train")}
  assert first and first == again
  for line in ("deletion rate", "eval (soft deletion)", "eval (hard deletion)",
               "most deleted input bytes"):
    assert line in out.stdout, out.stdout
  assert "step 1/20" not in out.stdout


def test_eval_cli_reads_the_trained_dir(trained, tmp_path):
  model_dir, _ = trained
  report_path = tmp_path / "report.json"
  out = run_cli("mrt5_jax.cli.evaluate", "--gin_file=runs/local.gin", f"--gin.MODEL_DIR={model_dir}",
             "--gin.BATCH_SIZE=8", "--gin.evaluate.num_batches=1",
             "--gin.evaluate.seqio_metrics=True", "--gin.evaluate.seqio_num_examples=8",
             "--gin.evaluate.speed_repeats=1", f"--gin.evaluate.report_path='{report_path}'")
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.splitlines()
  header = next(i for i, line in enumerate(lines) if line.startswith("task "))
  assert "CE hard" in lines[header] and "enc speedup" in lines[header]
  assert "sequence_accuracy" in lines[header]
  assert lines[header + 2].startswith("mrt5.diagnostic.vowel_removal")
  assert f"report: {report_path}" in out.stdout
  results = json.loads(report_path.read_text())
  assert results["checkpoint"].endswith(os.path.join("checkpoints", "20"))
  for mode in ("soft", "hard"):
    assert 0.0 <= results[mode]["deletion_rate"] <= 1.0
    assert results[mode]["cross_entropy_per_token"] > 0
  (row,) = results["tasks"]
  assert row["task"] == "mrt5.diagnostic.vowel_removal" and row["examples"] == 8
  assert row["speed"]["encoder_hard_ms_per_example"] > 0
  assert "sequence_accuracy" in row["seqio"] and "deletion/rate" in row["seqio"]
  assert "sequence_accuracy" in results["seqio"]["mrt5.diagnostic.vowel_removal"]
  assert isinstance(results["most_deleted"], list)  # data, not a preformatted line
  assert all(set(e) == {"byte", "id", "deleted", "seen", "rate"} for e in results["most_deleted"])
  assert "most deleted: " in out.stdout


def test_inspect_cli_marks_the_eval_dataset(trained, tmp_path):
  model_dir, _ = trained
  html_path = tmp_path / "deletion.html"
  out = run_cli("mrt5_jax.cli.inspect", "--gin_file=runs/local.gin", f"--gin.MODEL_DIR={model_dir}",
             "--gin.inspect_deletion.num_examples=4",
             f"--gin.inspect_deletion.html_path='{html_path}'")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "legend: [deleted]  {partly deleted}  kept" in out.stdout  # not a terminal: no colours
  assert "\x1b[" not in out.stdout
  assert f"report: {html_path}" in out.stdout
  page = html_path.read_text(encoding="utf-8")
  assert page.count('src="data:image/png;base64,') == 3
  assert "mrt5.diagnostic.vowel_removal (validation)" in page


def test_inspect_texts_in_process(trained, tmp_path):
  import gin
  from mrt5_jax.jobs import inspect as inspect_job
  model_dir, _ = trained
  gin.clear_config()
  result = inspect_job.inspect_deletion(
      model_dir=str(model_dir), texts=["#bcdeaiou", "Καλημέρα"], max_length=16,
      html_path=str(tmp_path / "t.html"))
  assert [s.label for s in result["samples"]] == ["text", "text"]
  assert len(result["samples"][0].tokens) == 10 and len(result["samples"][1].tokens) == 16
  assert result["summary"]["samples"] == 2
  with pytest.raises(ValueError, match="nothing to inspect"):
    inspect_job.inspect_deletion(model_dir=str(model_dir))
  with pytest.raises(FileNotFoundError, match="no file matches"):
    inspect_job.inspect_deletion(model_dir=str(model_dir), files=[str(tmp_path / "*.none")])


def test_unknown_binding_exits_with_a_clear_message(tmp_path):
  out = run_cli("mrt5_jax.cli.train", "--gin_file=runs/local.gin", "--gin.train.bogus_knob=3",
             f"--gin.MODEL_DIR={tmp_path}")
  assert out.returncode == 2
  assert "bogus_knob" in out.stderr and "Traceback" not in out.stderr


def test_missing_tfds_data_reaches_the_user(tmp_path):
  out = run_cli("mrt5_jax.cli.train", "--gin_file=runs/local.gin",
             "--gin.MIXTURE_OR_TASK_NAME=mrt5.span_corruption.mc4.en",
             "--gin.TASK_FEATURE_LENGTHS=None", "--gin.TRAIN_STEPS=1",
             f"--gin.mrt5_jax.tasks.tfds_data_dir.path={tmp_path / 'tfds'}",
             f"--gin.MODEL_DIR={tmp_path / 'run'}")
  assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
  assert "c4" in out.stderr and "Traceback" not in out.stderr
