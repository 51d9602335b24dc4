"""mrt5-continue: the paper's path, ByT5 -> MrT5 by continued training, compared per language.

  mrt5-continue --gin_file=runs/byt5_to_mrt5.gin [--gin.WORK_DIR=/tmp/byt5_to_mrt5]
  mrt5-continue --gin_file=runs/byt5_to_mrt5.gin --gin_file=models/mrt5_small.gin \
      --gin.continue_from_byt5.byt5_checkpoint=/ckpt/byt5_small --gin.WORK_DIR=/runs/small

Runs ``mrt5_jax.jobs.continue_from_byt5.continue_from_byt5``: a gate-less ByT5
(trained here unless ``byt5_checkpoint`` is given), that model continued as
MrT5 and continued as long without a gate, both evaluated per task of the
eval mixture, and the HTML report of what MrT5 deletes. Each stage logs its
progress; a rerun skips finished stages. Ends by printing the per-language
table (ByT5's and MrT5's cross entropy, deletion rate, kept length, the
longest kept row and the bucket it ran in, the measured hard-deletion
speedup and its FLOP ideal), where the checkpoints and the HTML are, and
what to run next. An interrupted training stage checkpoints and exits 130;
the same command resumes it.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from mrt5_jax.cli import common  # noqa: E402
from mrt5_jax.cli import gin_flags  # noqa: E402
# Every gin entry point is imported, so a run file's bindings of any of them parse.
from mrt5_jax.jobs import continue_from_byt5, evaluate, inspect, train  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  files, bindings, paths, _ = gin_flags.split_flags(argv)

  def job():
    jobs = continue_from_byt5.Jobs(train=train.train, evaluate=evaluate.evaluate,
                                   inspect_deletion=inspect.inspect_deletion)
    return continue_from_byt5.continue_from_byt5(
        jobs, gin_file_names=files, gin_bindings=bindings, extra_paths=paths)

  code, result = common.run_gin_job("mrt5-continue", __doc__, argv, job)
  if code is not None:
    return code
  if result["interrupted"]:
    print(f"stage {result['interrupted']} was interrupted after a checkpoint; run the same "
          "command again to resume it", flush=True)
    return 130
  print(result["summary"], flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
