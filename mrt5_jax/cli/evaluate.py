"""mrt5-eval: evaluate a trained model directory task by task, with soft and hard deletion.

  mrt5-eval --gin_file=runs/local.gin [--gin.MODEL_DIR=/tmp/mrt5_local]
            [--gin.EVAL_MIXTURE_OR_TASK_NAME=mrt5.span_corruption.sample.multilingual15]
            [--gin.evaluate.num_batches=8] [--gin.evaluate.seqio_metrics=True]
            [--gin.evaluate.speed_batches=1] [--gin.evaluate.report_path=/tmp/report.json]

Reads ``<MODEL_DIR>/model_config.json`` and the newest checkpoint (or
``--gin.evaluate.step=N``) and evaluates the run's eval dataset
(``eval/DatasetConfig``) one task at a time: a mixture such as
``mrt5.span_corruption.mc4.multilingual15`` gives one row per language.
Each row holds soft and hard cross-entropy per target byte, the deletion
rate, the mean kept / real input length, and the hard-deletion speed measured
on that task's batches (encoder and teacher-forced forward pass, full length
against hard deletion, timed alternately, beside the FLOP-count ideal); with
``seqio_metrics`` also the tasks' seqio metrics (accuracy, F1, ...) from
greedy decoding and scoring with hard deletion. Prints the table and the bytes
deleted most often, and writes everything as JSON (path printed last).
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from mrt5_jax.cli import common  # noqa: E402
# Every gin entry point is imported, so a run file's bindings of any of them parse.
from mrt5_jax.jobs import continue_from_byt5, evaluate, inspect, train  # noqa: E402,F401
from mrt5_jax.evaluation import deletion_analysis, task_report  # noqa: E402
from mrt5_jax.model.shortening.base import Shortening  # noqa: E402
from mrt5_jax.model.shortening.registry import SHORTENINGS  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
  def job():
    return evaluate.evaluate()

  code, results = common.run_gin_job("mrt5-eval", __doc__, argv, job)
  if code is not None:
    return code
  print(f"checkpoint: {results['checkpoint']}")
  print(f"{results['mixture_or_task_name']} ({results['split']} split), "
        f"{results['examples']} examples")
  print(task_report.format_table(results))
  shortening = SHORTENINGS.get(results.get("deletion_type"), Shortening)
  print(f"{shortening.most_deleted_label}: "
        f"{deletion_analysis.describe_most_deleted(results['most_deleted'])}")
  if results.get("report_path"):
    print(f"report: {results['report_path']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
