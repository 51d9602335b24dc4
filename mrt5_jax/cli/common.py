"""What every gin-driven command shares: logging, flag parsing, error exits."""
from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Optional, Sequence


def setup_logging() -> None:
  """Our progress lines on stdout with a timestamp; other libraries' chatter only on errors."""
  logging.basicConfig(level=logging.ERROR, force=True)
  handler = logging.StreamHandler(sys.stdout)
  handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
  logger = logging.getLogger("mrt5_jax")
  logger.handlers = [handler]
  logger.setLevel(logging.INFO)
  logger.propagate = False


def run_gin_job(prog: str, doc: str, argv: Optional[Sequence[str]],
                job: Callable[[], Any]) -> tuple[Optional[int], Any]:
  """Parse ``--gin_file``/``--gin.NAME=VALUE`` flags and run ``job()``.

  Returns ``(None, result)`` on success, else ``(exit_code, None)`` after
  printing a one-line reason: 0 for --help, 2 for bad flags or a missing
  binding, 1 for bad input the job refused (ValueError, FileNotFoundError).
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  if any(a in ("-h", "--help") for a in argv):
    print(doc)
    return 0, None
  setup_logging()
  from mrt5_jax import gin_utils
  try:
    rest = gin_utils.parse_argv(argv)
  except ValueError as e:
    print(f"{prog}: {e}", file=sys.stderr)
    return 2, None
  if rest:
    print(f"{prog}: unknown arguments {rest} (use --gin_file and --gin.NAME=VALUE)",
          file=sys.stderr)
    return 2, None
  try:
    return None, job()
  except RuntimeError as e:
    if "Required bindings" not in str(e):
      raise
    print(f"{prog}: missing gin binding: {e}", file=sys.stderr)
    return 2, None
  except (ValueError, FileNotFoundError) as e:
    print(f"{prog}: {e}", file=sys.stderr)
    return 1, None
