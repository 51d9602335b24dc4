"""Run as a script: one process of a multi-process CPU training run (or the 1-process reference).

  python tests/multiprocess_worker.py OUT.json MODEL_DIR STEPS STOP_AFTER \\
      [PROCESS_ID NUM_PROCESSES PORT]

Binds ``DistributedConfig`` through gin as ``mrt5-train`` users do, joins the
run with ``mrt5_jax.parallel.distributed.initialize`` (CPU collectives over gloo), trains
the tests' small model (``tests/fixtures.py``) on the vowel-removal task read in
two data shards, evaluates at the last step, and writes the per-step metrics, the
evaluation, the deletion profile and the resume mode as JSON.
tests/integration/test_multiprocess.py starts it.
"""
import json
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses  # noqa: E402

from mrt5_jax.parallel import distributed  # noqa: E402
from mrt5_jax.cli import gin_flags  # noqa: E402
import mrt5_jax.jobs.evaluate  # noqa: E402,F401  (the jobs are registered with gin)
import mrt5_jax.jobs.inspect  # noqa: E402,F401
import mrt5_jax.jobs.train  # noqa: E402,F401
from mrt5_jax.jobs import gin_files  # noqa: E402

BATCH = 4
SHARDS = 2


def main(out, model_dir, steps, stop_after, process_id=None, num_processes=None, port=None):
  bindings = []
  if num_processes is not None:
    bindings = [gin_flags.binding_from_flag(f"DistributedConfig.{k}", str(v)) for k, v in (
        ("coordinator_address", f"127.0.0.1:{port}"), ("num_processes", num_processes),
        ("process_id", process_id), ("initialization_timeout", 120))]
  gin_files.parse([], bindings, finalize=False)
  mode = distributed.initialize()

  import jax
  from mrt5_jax.maths import controller as ctl
  from tests.fixtures import diagnostic_dataset, train_run

  records = []

  class Capture(logging.Handler):
    def emit(self, record):
      records.append(record.getMessage())

  logging.getLogger("mrt5_jax").addHandler(Capture())
  logging.getLogger("mrt5_jax").setLevel(logging.INFO)
  dataset = dataclasses.replace(diagnostic_dataset("vowel_removal", batch_size=BATCH, seed=7),
                                num_shards=SHARDS)
  eval_dataset = diagnostic_dataset("vowel_removal", batch_size=BATCH, split="validation")
  result = train_run(model_dir, int(steps), dataset=dataset,
                     controller=ctl.ControllerConfig(kind="pi", target_deletion_rate=0.9,
                                                     k_p=2.0, k_i=0.5),
                     stop_after=int(stop_after) if int(stop_after) else None,
                     eval_dataset=eval_dataset, eval_every=int(steps), eval_steps=1)
  with open(out, "w") as f:
    json.dump({"mode": mode, "process_index": jax.process_index(),
               "process_count": jax.process_count(), "device_count": jax.device_count(),
               "history": result.history, "step": result.step,
               "eval": result.eval_metrics, "profile": result.deletion_profile,
               "interrupted": result.interrupted,
               "resumed": [m for m in records if m.startswith("resumed from")]}, f)


if __name__ == "__main__":
  main(*sys.argv[1:])
