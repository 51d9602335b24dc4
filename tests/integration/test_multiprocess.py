"""Two CPU processes train one model (jax.distributed, gloo collectives) exactly as one
process does, checkpoint once, and resume; plus how DistributedConfig is read."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from mrt5_jax.parallel import distributed
from tests.fixtures import TESTS_DIR

HERE = TESTS_DIR
WORKER = os.path.join(HERE, "multiprocess_worker.py")
METRICS = ("loss", "cross_entropy_per_token", "deletion_rate", "alpha", "grad_norm")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run(tmp_path, name, model_dir, steps, stop_after, processes=None):
  """Start the worker(s); returns their JSON reports (process order)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
  env.pop("XLA_FLAGS", None)
  outs = [str(tmp_path / f"{name}_{i}.json") for i in range(processes or 1)]
  if processes is None:
    argvs = [[outs[0], str(model_dir), str(steps), str(stop_after)]]
  else:
    port = _free_port()
    argvs = [[outs[i], str(model_dir), str(steps), str(stop_after), str(i), str(processes),
              str(port)] for i in range(processes)]
  procs = [subprocess.Popen([sys.executable, WORKER, *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for argv in argvs]
  logs = [p.communicate(timeout=600)[0] for p in procs]
  for proc, log in zip(procs, logs):
    assert proc.returncode == 0, log[-4000:]
  return [json.load(open(out)) for out in outs]


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume(tmp_path):
  steps, first = 6, 3
  (single,) = _run(tmp_path, "single", tmp_path / "single", steps, 0)
  assert single["mode"] == "single" and single["process_count"] == 1
  part1 = _run(tmp_path, "part1", tmp_path / "multi", steps, first, processes=2)
  model_dir = tmp_path / "multi"
  for report in part1:
    assert (report["mode"], report["process_count"], report["device_count"]) == (
        "explicit", 2, 2)
    assert report["interrupted"] and report["step"] == first
  assert [r["process_index"] for r in part1] == [0, 1]
  # written once: one state, one JSON position, one iterator file per data shard
  step_dir = model_dir / "checkpoints" / str(first)
  assert sorted(os.listdir(model_dir / "checkpoints")) == [str(first)]
  data_files = sorted(set(os.listdir(step_dir / "data_iterator")) - {"commit_success.txt"})
  assert data_files == ["metadata"] + sorted(f"shard_0000{s}-of-00002{ext}" for s in (0, 1)
                                             for ext in (".data-00000-of-00001", ".index"))
  position = json.load(open(step_dir / "data_iterator" / "metadata"))
  assert (position["batches_consumed"], position["num_shards"]) == (first, 2)
  part2 = _run(tmp_path, "part2", model_dir, steps, 0, processes=2)
  for report in part2:
    assert report["step"] == steps and not report["interrupted"]
    assert report["resumed"] and report["resumed"][0].endswith(f"at step {first} (data: iterator)")
  for process in range(2):
    history = part1[process]["history"] + part2[process]["history"]
    assert [h["step"] for h in history] == [h["step"] for h in single["history"]] == list(
        range(1, steps + 1))
    for key in METRICS:
      np.testing.assert_allclose([h[key] for h in history], [h[key] for h in single["history"]],
                                 rtol=0, atol=1e-5, err_msg=f"process {process}: {key}")
    for mode in ("soft", "hard"):  # evaluation (hard deletion picks one bucket for all processes)
      for key in ("cross_entropy_per_token", "deletion_rate", "compacted_length"):
        np.testing.assert_allclose(part2[process]["eval"][mode][key], single["eval"][mode][key],
                                   rtol=0, atol=1e-5, err_msg=f"process {process}: {mode} {key}")
    assert part2[process]["profile"] == single["profile"] and single["profile"]
  assert single["history"][-1]["alpha"] > 0  # the controller moved: alpha agreement means something


def test_plan_reads_explicit_settings_tpu_vms_and_clusters():
  config = distributed.DistributedConfig
  assert distributed.plan(config(), tpu_vm=False) is None
  assert distributed.plan(config(), tpu_vm=True) == {"initialization_timeout": 300}
  assert distributed.plan(config(auto_tpu=False), tpu_vm=True) is None
  explicit = config(coordinator_address="10.0.0.1:8476", num_processes=4, process_id=3,
                    local_device_ids=(0, 1))
  assert distributed.plan(explicit, tpu_vm=True) == {
      "coordinator_address": "10.0.0.1:8476", "num_processes": 4, "process_id": 3,
      "initialization_timeout": 300, "local_device_ids": [0, 1]}
  assert distributed.plan(config(coordinator_address="h:1", num_processes=1, process_id=0),
                          tpu_vm=False) is None
  assert distributed.plan(config(cluster_detection_method="slurm"), tpu_vm=False) == {
      "cluster_detection_method": "slurm", "initialization_timeout": 300}
  with pytest.raises(ValueError, match="missing: coordinator_address, process_id"):
    distributed.plan(config(num_processes=2), tpu_vm=False)
  with pytest.raises(ValueError, match=r"process_id=2 must lie in \[0, num_processes=2\)"):
    config(num_processes=2, process_id=2)


def test_mrt5_train_joins_the_run_before_training(monkeypatch, tmp_path, capsys):
  """The CLI's gin flags reach jax.distributed.initialize, which runs before the trainer."""
  import jax
  from mrt5_jax.cli import train as cli
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(("init", kw)))
  monkeypatch.setattr(jax.config, "update", lambda *a: calls.append(("config", a)))

  def fake_train():
    calls.append(("train", None))
    raise ValueError("stop here")

  from mrt5_jax.jobs import train as train_job
  monkeypatch.setattr(train_job, "train", fake_train)
  code = cli.main(["--gin_file=runs/local.gin", f"--gin.MODEL_DIR={tmp_path}",
                   "--gin.DistributedConfig.coordinator_address=127.0.0.1:1234",
                   "--gin.DistributedConfig.num_processes=2",
                   "--gin.DistributedConfig.process_id=1"])
  assert code == 1 and "stop here" in capsys.readouterr().err
  assert calls == [("config", ("jax_cpu_collectives_implementation", "gloo")),
                   ("init", {"coordinator_address": "127.0.0.1:1234", "num_processes": 2,
                             "process_id": 1, "initialization_timeout": 300}),
                   ("train", None)]
