"""mrt5-eval: evaluate a trained model directory with soft and hard deletion.

  mrt5-eval --gin_file=runs/local.gin [--gin.MODEL_DIR=/tmp/mrt5_local]
            [--gin.evaluate.num_batches=8] [--gin.evaluate.seqio_metrics=True]

Reads ``<MODEL_DIR>/model_config.json`` and the newest checkpoint (or
``--gin.evaluate.step=N``), evaluates the run's eval dataset (``eval/DatasetConfig``
of the run file) and prints CE, accuracy, deletion rate and kept length for
soft and hard deletion, the bytes deleted most often, and optionally the task's
seqio metrics (greedy decoding and scoring with hard deletion).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from mrt5_jax.cli import common  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
  def job():
    from mrt5_jax import evaluation
    return evaluation.evaluate()

  code, results = common.run_gin_job("mrt5-eval", __doc__, argv, job)
  if code is not None:
    return code
  print(json.dumps(results, indent=2, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
