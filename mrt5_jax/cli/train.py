"""mrt5-train: train MrT5/ByT5 from gin files.

  mrt5-train --gin_file=runs/local.gin [--gin.TRAIN_STEPS=400] [--gin.MODEL_DIR=/tmp/run]
  python -m mrt5_jax.cli.train --gin_file=runs/mrt5_small_continued_pretraining.gin \
      --gin.MODEL_DIR=gs://... --gin.INIT_CHECKPOINT=/path/to/converted/byt5_small

Runs ``mrt5_jax.jobs.train.train`` with the bound arguments; ends by printing the
deletion rate reached against the target and where the checkpoint is. A
damaged newest checkpoint is moved to MODEL_DIR/checkpoints_damaged/ and the
run resumes from the newest intact one (``--gin.train.on_damaged_checkpoint=error``
stops instead); a checkpoint that cannot be saved ends the run with one line
and exit code 1. Several processes form one run through ``DistributedConfig``
(``mrt5_jax.parallel.distributed``: automatic on a Cloud TPU VM slice, else
``--gin.DistributedConfig.{coordinator_address,num_processes,process_id}=...``),
initialised before anything uses JAX.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from mrt5_jax.cli import common  # noqa: E402
# Every gin entry point is imported, so a run file's bindings of any of them parse.
from mrt5_jax.jobs import continue_from_byt5, evaluate, inspect, train  # noqa: E402,F401
from mrt5_jax.evaluation.evaluator import describe_profile  # noqa: E402
from mrt5_jax.parallel import distributed  # noqa: E402


def summary(result) -> str:
  """The closing report of a run."""
  lines = [f"finished at step {result.step} in {result.wall_seconds:.0f} s"
           + (" (interrupted; resume with the same command)" if result.interrupted else "")]
  metrics = result.metrics
  if metrics:
    lines.append(f"final train loss {metrics['loss']:.4f}, cross entropy "
                 f"{metrics['cross_entropy_per_token']:.4f} per target byte")
  if result.target_deletion_rate is not None and metrics:
    lines.append(f"deletion rate {metrics['deletion_rate']:.3f} (target "
                 f"{result.target_deletion_rate:.3f}), alpha {metrics.get('alpha', 0.0):.4g}")
  for mode, values in (result.eval_metrics or {}).items():
    lines.append(f"eval ({mode} deletion): cross entropy {values['cross_entropy_per_token']:.4f}, "
                 f"deletion rate {values['deletion_rate']:.3f}, kept length "
                 f"{values['kept_length']:.1f}/{values['real_length']:.1f}")
  if result.deletion_profile:
    lines.append("most deleted input bytes (eval): " + describe_profile(result.deletion_profile))
  lines.append(f"checkpoint: {result.checkpoint_dir}")
  lines.append(f"TensorBoard: tensorboard --logdir {result.model_dir}")
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  def job():
    distributed.initialize()
    return train.train()

  code, result = common.run_gin_job("mrt5-train", __doc__, argv, job)
  if code is not None:
    return code
  print(summary(result), flush=True)
  return 130 if result.interrupted else 0


if __name__ == "__main__":
  sys.exit(main())
