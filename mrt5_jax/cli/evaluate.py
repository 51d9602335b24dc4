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


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if any(a in ("-h", "--help") for a in argv):
    print(__doc__)
    return 0
  from mrt5_jax.cli.train import _setup_logging
  _setup_logging()
  from mrt5_jax import gin_utils
  try:
    rest = gin_utils.parse_argv(argv)
  except ValueError as e:
    print(f"mrt5-eval: {e}", file=sys.stderr)
    return 2
  if rest:
    print(f"mrt5-eval: unknown arguments {rest} (use --gin_file and --gin.NAME=VALUE)",
          file=sys.stderr)
    return 2
  from mrt5_jax import evaluation
  try:
    results = evaluation.evaluate()
  except RuntimeError as e:
    if "Required bindings" not in str(e):
      raise
    print(f"mrt5-eval: missing gin binding: {e}", file=sys.stderr)
    return 2
  except (ValueError, FileNotFoundError) as e:
    print(f"mrt5-eval: {e}", file=sys.stderr)
    return 1
  print(json.dumps(results, indent=2, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
