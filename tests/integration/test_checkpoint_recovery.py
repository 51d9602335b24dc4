"""Damaged checkpoints and failed saves as users meet them: the trainer, the CLI tools, SIGKILL.

Trajectories are compared against a run that stopped at the intact step and continued.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from mrt5_jax.checkpointing import integrity
from mrt5_jax.checkpointing import config_files
from mrt5_jax.checkpointing import readers
from mrt5_jax.checkpointing import writer
from tests.fixtures import (LogRecords, damage_checkpoint, diagnostic_dataset, run_cli, run_python,
                            train_run)
from tests.fixtures import REPO_ROOT

DEMO = ["--gin_file=runs/local.gin", "--gin.TRAIN_STEPS=20", "--gin.train.checkpoint_every=10",
        "--gin.BATCH_SIZE=8", "--gin.train.eval_every=0", "--gin.train.log_every=10",
        "--gin.train.keep_checkpoints=None"]
ROOT = REPO_ROOT


def _copy(source, tmp_path, name="run"):
  destination = tmp_path / name
  shutil.copytree(source, destination)
  return destination


def _step_dir(model_dir, step):
  return os.path.join(config_files.checkpoint_dir(str(model_dir)), str(step))


def _one_error_line(stderr):
  lines = [line for line in stderr.splitlines() if line.startswith("mrt5-")]
  assert len(lines) == 1, stderr[-3000:]
  assert "Traceback" not in stderr and "Event loop is closed" not in stderr, stderr[-3000:]
  return lines[0]


# ----------------------------------------------------------------------------- the trainer


@pytest.mark.slow
def test_resume_past_each_damage_matches_the_run_that_stopped_at_the_intact_step(tmp_path):
  dataset = diagnostic_dataset("vowel_removal", batch_size=4, seed=7)
  base = tmp_path / "base"
  train_run(base, 6, dataset=dataset, checkpoint_every=2)
  assert writer.all_steps(str(base)) == [2, 4, 6]

  stopped = _copy(base, tmp_path, "stopped_at_4")
  shutil.rmtree(_step_dir(stopped, 6))
  reference = train_run(stopped, 6, dataset=dataset, checkpoint_every=2).history
  assert [h["step"] for h in reference] == [5, 6]

  for kind in ("truncate_data", "delete_file", "flip_bytes", "truncate_metadata"):
    run = _copy(base, tmp_path, kind)
    damaged = damage_checkpoint(_step_dir(run, 6), kind)
    with LogRecords() as log:
      result = train_run(run, 6, dataset=dataset, checkpoint_every=2)
    [line] = [m for m in log.warnings() if "damaged" in m]
    assert "step 6 is damaged" in line and damaged in line and "resuming from step 4" in line
    assert [h["step"] for h in result.history] == [5, 6], kind
    for key in ("loss", "cross_entropy_per_token", "deletion_rate", "grad_norm", "alpha"):
      np.testing.assert_allclose([h[key] for h in result.history], [h[key] for h in reference],
                                 rtol=0, atol=1e-6, err_msg=f"{kind}: {key}")
    assert os.path.isdir(os.path.join(str(run), writer.DAMAGED_DIR, "6"))
    assert integrity.verify(_step_dir(run, 6), 6)  # the step saved again, intact


# ----------------------------------------------------------------------------- the CLI tools


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("demo") / "run"
  out = run_cli("mrt5_jax.cli.train", *DEMO, f"--gin.MODEL_DIR={model_dir}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert writer.all_steps(str(model_dir)) == [10, 20]
  return model_dir


@pytest.mark.slow
def test_train_cli_error_mode_names_the_damage_and_stops(demo_run, tmp_path):
  run = _copy(demo_run, tmp_path)
  damaged = damage_checkpoint(_step_dir(run, 20), "truncate_sharding")
  out = run_cli("mrt5_jax.cli.train", *DEMO, f"--gin.MODEL_DIR={run}", "--gin.TRAIN_STEPS=30",
             "--gin.train.on_damaged_checkpoint=error")
  assert out.returncode == 1
  line = _one_error_line(out.stderr)
  assert "checkpoint step 20 is damaged" in line and damaged in line
  assert "The newest intact step is 10" in line and "on_damaged_checkpoint=fall_back" in line
  assert writer.all_steps(str(run)) == [10, 20]


@pytest.mark.slow
def test_eval_and_convert_name_the_damage_and_suggest_the_intact_step(demo_run, tmp_path,
                                                                      capsys):
  run = _copy(demo_run, tmp_path)
  damaged = damage_checkpoint(_step_dir(run, 20), "flip_bytes")
  out = run_cli("mrt5_jax.cli.evaluate", "--gin_file=runs/local.gin", f"--gin.MODEL_DIR={run}",
             "--gin.BATCH_SIZE=8", "--gin.evaluate.num_batches=1")
  assert out.returncode == 1
  line = _one_error_line(out.stderr)
  assert "checkpoint step 20 is damaged" in line and damaged in line
  assert line.endswith("rerun with --gin.evaluate.step=10")

  from mrt5_jax.cli import convert
  capsys.readouterr()
  assert convert.main(["to-pytorch", "--checkpoint", str(run), "--output",
                       str(tmp_path / "hf")]) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert "checkpoint step 20 is damaged" in line and damaged in line
  assert line.endswith("rerun with --step 10")
  assert not (tmp_path / "hf").exists()
  assert convert.main(["to-pytorch", "--checkpoint", str(run), "--step", "10", "--output",
                       str(tmp_path / "hf")]) == 0


FAIL_AT_STEP_20 = """
import errno, os, sys
from mrt5_jax.checkpointing import integrity as checkpoint_integrity
original = checkpoint_integrity.write_record
def write_record(step_dir, step):
  if step == 20:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(step_dir, "state"))
  return original(step_dir, step)
checkpoint_integrity.write_record = write_record
from mrt5_jax.cli import train
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_train_cli_save_failure_is_one_message_and_a_nonzero_exit(tmp_path):
  """ENOSPC simulated at the write layer: the integrity record of step 20 fails to write."""
  run = tmp_path / "run"
  out = run_python(["-c", FAIL_AT_STEP_20, *DEMO, f"--gin.MODEL_DIR={run}"])
  assert out.returncode == 1, out.stderr[-3000:]
  line = _one_error_line(out.stderr)
  assert "could not save checkpoint step 20" in line
  assert "No space left on device [ENOSPC]" in line and "the newest is step 10" in line
  assert writer.all_steps(str(run)) == [10]
  assert integrity.verify(_step_dir(run, 10), 10)
  assert readers.restore_params(str(run), step=10)


def _mount_tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
  return result.returncode == 0


@pytest.mark.slow
def test_train_cli_on_a_full_disk_stops_cleanly_and_resumes_after_space_is_freed(tmp_path):
  """A real 8 MiB tmpfs (needs mount permission, e.g. root in a container; skipped otherwise):
  some checkpoints of the demo fit (how many depends on the size of the data iterator's
  state), a later one does not."""
  mount_point = tmp_path / "small_disk"
  if not _mount_tmpfs(mount_point, "8m"):
    pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
  try:
    run = mount_point / "run"
    args = [*DEMO, f"--gin.MODEL_DIR={run}", "--gin.TRAIN_STEPS=40"]
    out = run_cli("mrt5_jax.cli.train", *args)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    line = _one_error_line(out.stderr)
    failed = int(re.search(r"could not save checkpoint step (\d+)", line).group(1))
    assert 20 <= failed <= 40 and "No space left on device" in line, line
    kept = list(range(10, failed, 10))
    assert writer.all_steps(str(run)) == kept
    for step in kept:
      assert integrity.verify(_step_dir(run, step), step)

    subprocess.run(["mount", "-o", "remount,size=64m", str(mount_point)], check=True)
    out = run_cli("mrt5_jax.cli.train", *args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stdout and f"at step {kept[-1]}" in out.stdout
    assert writer.all_steps(str(run)) == [10, 20, 30, 40]
    assert not [n for n in os.listdir(config_files.checkpoint_dir(str(run))) if not n.isdigit()]
  finally:
    subprocess.run(["umount", str(mount_point)], capture_output=True)


# ----------------------------------------------------------------------------- SIGKILL


@pytest.mark.slow
def test_sigkill_during_saves_resumes_from_the_last_complete_step_to_the_same_loss(demo_run,
                                                                                   tmp_path):
  """Async saves every 2 steps, killed twice as a save is under way, then run to the end:
  the loss equals the uninterrupted demo run's (same data, seed and steps)."""
  run = tmp_path / "killed"
  args = ["-m", "mrt5_jax.cli.train", *DEMO, "--gin.train.checkpoint_every=2",
          "--gin.train.async_checkpointing=True", "--gin.train.tensorboard=False",
          f"--gin.MODEL_DIR={run}"]
  ckpt = config_files.checkpoint_dir(str(run))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  killed_mid_save = 0
  for delay in (0.0, 0.02):
    before = set(writer.all_steps(str(run)))
    with tempfile.TemporaryFile() as sink:
      proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=sink,
                              stderr=sink)
      while proc.poll() is None:  # kill once a save of a step not saved before is under way
        names = os.listdir(ckpt) if os.path.isdir(ckpt) else []
        if any(n.split(".")[0].isdigit() and int(n.split(".")[0]) not in before
               and not n.isdigit() for n in names):
          time.sleep(delay)
          proc.send_signal(signal.SIGKILL)
          break
        time.sleep(0.002)
      proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_mid_save += any(not n.isdigit() for n in os.listdir(ckpt))
    for step in writer.all_steps(str(run)):  # committed steps are whole
      assert integrity.verify(_step_dir(run, step), step)
  assert killed_mid_save >= 1
  out = run_python(args)
  assert out.returncode == 0, out.stderr[-3000:]
  assert not os.path.exists(os.path.join(str(run), writer.DAMAGED_DIR))
  summaries = [json.load(open(os.path.join(str(d), "train_summary.json")))
               for d in (demo_run, run)]
  for key in ("loss", "cross_entropy_per_token", "deletion_rate"):
    np.testing.assert_allclose(summaries[1][key], summaries[0][key], rtol=0, atol=1e-6,
                               err_msg=key)
