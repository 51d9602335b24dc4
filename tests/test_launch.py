"""Dry runs of the launchers in launch/: the exact commands, no gcloud needed."""
import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from launch import local, t5x_command, tpu_vm  # noqa: E402

WHERE = ["--name=mrt5", "--zone=us-central2-b", "--project=my-proj", "--gcloud=/no/such/gcloud"]


def _dry_run(module, argv, capsys):
  assert module.main(["--dry-run", *argv]) == 0
  return [shlex.split(line) for line in capsys.readouterr().out.splitlines()]


def _remote(argv):
  """The shell command a gcloud ssh argv runs on the workers, and the worker flag."""
  command = [a for a in argv if a.startswith("--command=")]
  worker = [a for a in argv if a.startswith("--worker=")]
  assert len(command) == 1 and len(worker) == 1, argv
  return command[0][len("--command="):], worker[0][len("--worker="):]


def test_create_passes_zone_accelerator_and_runtime(capsys):
  (argv,) = _dry_run(tpu_vm, [*WHERE, "create", "--accelerator-type=v4-64",
                              "--runtime-version=tpu-ubuntu2204-base", "--spot"], capsys)
  assert argv == ["/no/such/gcloud", "compute", "tpus", "tpu-vm", "create", "mrt5",
                  "--zone=us-central2-b", "--project=my-proj", "--accelerator-type=v4-64",
                  "--version=tpu-ubuntu2204-base", "--spot"]


def test_setup_installs_t5x_and_the_project_on_every_worker(capsys, tmp_path):
  commands = _dry_run(tpu_vm, [*WHERE, "setup", f"--archive-dir={tmp_path}"], capsys)
  assert [c[4] for c in commands if c[0] != "git"] == ["ssh", "scp", "ssh"]
  t5x_install, worker = _remote(commands[0])
  assert worker == "all"
  assert f"checkout {tpu_vm.T5X_COMMIT}" in t5x_install
  assert 'pip install -e "$HOME/t5x[tpu,gcp]"' in t5x_install
  archive = os.path.join(str(tmp_path), "mrt5-jax.tar.gz")
  assert commands[1] == ["git", "-C", REPO, "archive", "--format=tar.gz", "-o", archive, "HEAD"]
  assert commands[2][5:7] == [archive, "mrt5:mrt5-jax.tar.gz"]
  assert "--worker=all" in commands[2]
  project_install, worker = _remote(commands[3])
  assert worker == "all" and 'pip install -e "$HOME/mrt5-jax"' in project_install
  assert not os.path.exists(archive), "a dry run must not build the archive"


def test_setup_from_a_git_url_clones_on_the_workers(capsys):
  commands = _dry_run(tpu_vm, [*WHERE, "setup", "--repo-url=https://example.com/mrt5-jax.git",
                               "--ref=v0.1.0"], capsys)
  assert len(commands) == 2
  remote, _ = _remote(commands[1])
  assert 'git clone https://example.com/mrt5-jax.git "$HOME/mrt5-jax"' in remote
  assert 'checkout v0.1.0' in remote


def test_train_starts_t5x_on_all_workers_with_gcs_model_dir(capsys):
  (argv,) = _dry_run(tpu_vm, [*WHERE, "train", "--gin-file=t5x/mrt5_small_span_corruption.gin",
                              "--model-dir=gs://bucket/mrt5_small",
                              "--tfds-data-dir=gs://bucket/tfds",
                              "--gin=TRAIN_STEPS=5000", "--gin=BATCH_SIZE=1024"], capsys)
  remote, worker = _remote(argv)
  assert worker == "all"
  words = shlex.split(remote)
  start = words.index("(nohup")
  t5x_args = words[start + 1:words.index(">")]
  assert t5x_args == [
      "python3", "-m", "t5x.train", "--gin_search_paths=configs",
      "--gin_file=t5x/mrt5_small_span_corruption.gin",
      "--gin.MODEL_DIR='gs://bucket/mrt5_small'", "--gin.TRAIN_STEPS=5000",
      "--gin.BATCH_SIZE=1024", "--tfds_data_dir=gs://bucket/tfds", "--alsologtostderr"]
  assert words[:3] == ["cd", "$HOME/mrt5-jax", "&&"]
  assert "$HOME/mrt5-train.log" in words and "$HOME/mrt5-train.pid)" in words


def test_eval_binds_checkpoint_and_output_dir(capsys):
  (argv,) = _dry_run(tpu_vm, [*WHERE, "eval", "--gin-file=t5x/mrt5_small_eval.gin",
                              "--checkpoint-path=gs://b/m/checkpoint_5000",
                              "--output-dir=gs://b/eval"], capsys)
  words = shlex.split(_remote(argv)[0])
  assert "t5x.eval" in words
  assert "--gin.CHECKPOINT_PATH='gs://b/m/checkpoint_5000'" in words
  assert "--gin.EVAL_OUTPUT_DIR='gs://b/eval'" in words
  assert "$HOME/mrt5-eval.log" in words


def test_tail_stop_and_delete(capsys):
  (tail,) = _dry_run(tpu_vm, [*WHERE, "tail", "--job=eval", "--lines=20"], capsys)
  assert _remote(tail) == ('tail -n 20 -f "$HOME/mrt5-eval.log"', "0")
  (stop,) = _dry_run(tpu_vm, [*WHERE, "stop"], capsys)
  remote, worker = _remote(stop)
  assert worker == "all" and 'kill "$(cat "$HOME/mrt5-train.pid")"' in remote
  (delete,) = _dry_run(tpu_vm, [*WHERE, "delete"], capsys)
  assert delete == ["/no/such/gcloud", "compute", "tpus", "tpu-vm", "delete", "mrt5",
                    "--zone=us-central2-b", "--project=my-proj", "--quiet"]


@pytest.mark.parametrize("argv, message", [
    (["train", "--gin-file=a.gin", "--model-dir=/local/dir"], "must be a gs:// path"),
    (["train", "--gin-file=a.gin", "--model-dir=gs://b/m", "--gin=NOVALUE"], "KEY=VALUE"),
    (["eval", "--gin-file=a.gin", "--checkpoint-path=gs://b/c", "--output-dir=gs://b/it's"],
     "quotes"),
    (["setup", "--repo-url=https://x/y.git", "--source=/src"], "exactly one of"),
])
def test_bad_arguments_are_refused_with_a_message(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    tpu_vm.main(["--dry-run", *WHERE, *argv])
  assert exit_info.value.code == 2
  captured = capsys.readouterr()
  assert message in captured.err and captured.out == ""


def test_local_launcher_command_line(capsys, tmp_path):
  model_dir = tmp_path / "model"
  (argv,) = _dry_run(local, ["--python=/venv/bin/python", "train",
                             "--gin-file=t5x/mrt5_tiny_cpu.gin", f"--model-dir={model_dir}",
                             "--gin=TRAIN_STEPS=60"], capsys)
  assert argv == ["/venv/bin/python", "-m", "t5x.train",
                  f"--gin_search_paths={os.path.join(REPO, 'configs')}",
                  "--gin_file=t5x/mrt5_tiny_cpu.gin", f"--gin.MODEL_DIR='{model_dir}'",
                  "--gin.TRAIN_STEPS=60", "--alsologtostderr"]
  assert not model_dir.exists()
  (argv,) = _dry_run(local, ["infer", "--gin-file=t5x/mrt5_tiny_infer.gin",
                             "--checkpoint-path=gs://b/checkpoint_60", "--output-dir=out"], capsys)
  assert argv[2] == "t5x.infer"
  assert "--gin.CHECKPOINT_PATH='gs://b/checkpoint_60'" in argv
  assert f"--gin.INFER_OUTPUT_DIR='{os.path.abspath('out')}'" in argv


def test_named_gin_files_ship_in_configs():
  for name in ("mrt5_small_span_corruption.gin", "mrt5_tiny_cpu.gin", "mrt5_tiny_eval.gin",
               "mrt5_tiny_infer.gin", "mrt5_small_eval.gin"):
    assert os.path.isfile(os.path.join(REPO, "configs", "t5x", name)), name


def test_run_all_stops_at_the_first_failure(tmp_path, capsys):
  marker = tmp_path / "second_ran"
  status = t5x_command.run_all(
      [[sys.executable, "-c", "raise SystemExit(3)"],
       [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]], dry_run=False)
  assert status == 3 and not marker.exists()
  assert "exit status 3" in capsys.readouterr().err


def test_script_runs_as_a_file_without_gcloud():
  out = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch", "tpu_vm.py"), "--dry-run", *WHERE, "delete"],
      capture_output=True, text=True, check=True).stdout
  assert out.strip() == ("/no/such/gcloud compute tpus tpu-vm delete mrt5 --zone=us-central2-b "
                         "--project=my-proj --quiet")
