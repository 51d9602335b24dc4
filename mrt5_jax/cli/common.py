"""What every gin-driven command shares: logging, flag parsing, error exits."""
from __future__ import annotations

import logging
import re
import sys
from typing import Any, Callable, Optional, Sequence

from mrt5_jax.checkpointing.integrity import CheckpointSaveError
from mrt5_jax.cli import gin_flags


def _is_orbax(filename: str) -> bool:
  return "/orbax/" in filename.replace("\\", "/")


class _NotOrbax(logging.Filter):
  """Drops log records emitted from orbax's code or carrying a traceback through it, and
  asyncio's notes on abandoned futures (orbax's error logs and the futures it gives up
  after the first failed array repeat every failed save or restore, which reaches the
  user once, as the command's error)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.name == "asyncio" and record.getMessage().endswith("exception was never retrieved"):
      return False
    frame = sys._getframe(1)
    for _ in range(16):  # logging's and absl's frames, then the caller's
      if frame is None:
        break
      if _is_orbax(frame.f_code.co_filename):
        return False
      frame = frame.f_back
    if record.exc_info and record.exc_info[2] is not None:
      import traceback
      if any(_is_orbax(entry.filename) for entry in traceback.extract_tb(record.exc_info[2])):
        return False
    return True


def _closed_loop_filter(previous):
  """An unraisable-exception hook without the ``RuntimeError: Event loop is closed`` that
  TensorStore callbacks raise after orbax has given up on a failed write or read."""
  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)
  hook.filters_closed_loop = True
  return hook


def quiet_checkpoint_noise() -> None:
  """Hide the secondary output of a failed checkpoint save or read (orbax error logs with
  tracebacks, closed-event-loop callbacks); the command reports the failure itself."""
  for name in ("absl", "asyncio", ""):
    target = logging.getLogger(name)
    if not any(isinstance(f, _NotOrbax) for f in target.filters):
      target.addFilter(_NotOrbax())
  for handler in logging.getLogger().handlers:
    if not any(isinstance(f, _NotOrbax) for f in handler.filters):
      handler.addFilter(_NotOrbax())
  if not getattr(sys.unraisablehook, "filters_closed_loop", False):
    sys.unraisablehook = _closed_loop_filter(sys.unraisablehook)


def setup_logging() -> None:
  """Our progress lines on stdout with a timestamp; other libraries' chatter only on errors."""
  logging.basicConfig(level=logging.ERROR, force=True)
  quiet_checkpoint_noise()
  handler = logging.StreamHandler(sys.stdout)
  handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
  logger = logging.getLogger("mrt5_jax")
  logger.handlers = [handler]
  logger.setLevel(logging.INFO)
  logger.propagate = False


def _message(error: BaseException) -> str:
  """The error's text without the ``In call to configurable ...`` lines gin appends."""
  return str(error).split("\n  In call to configurable")[0]


_PYTHON_ERROR_LINE = re.compile(r"^(ValueError|FileNotFoundError): (.+)$", re.MULTILINE)


def input_error_inside_tensorflow(error: BaseException) -> Optional[str]:
  """The one-line reason of a ValueError/FileNotFoundError that a data source raised inside
  tf.data (``Dataset.from_generator``), which TensorFlow re-raises as an ``OpError`` whose
  message carries the Python traceback; None for any other error."""
  if not type(error).__module__.startswith("tensorflow"):
    return None
  matches = _PYTHON_ERROR_LINE.findall(str(getattr(error, "message", error)))
  return matches[-1][1] if matches else None


def run_gin_job(prog: str, doc: str, argv: Optional[Sequence[str]],
                job: Callable[[], Any]) -> tuple[Optional[int], Any]:
  """Parse ``--gin_file``/``--gin.NAME=VALUE`` flags and run ``job()``.

  Returns ``(None, result)`` on success, else ``(exit_code, None)`` after
  printing a one-line reason: 0 for --help, 2 for bad flags or a missing
  binding, 1 for bad input the job refused (ValueError, FileNotFoundError;
  a damaged checkpoint is one, also when a data source raised it inside tf.data)
  and for a checkpoint that could not be saved.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  if any(a in ("-h", "--help") for a in argv):
    print(doc)
    return 0, None
  setup_logging()
  try:
    rest = gin_flags.parse_argv(argv)
  except ValueError as e:
    print(f"{prog}: {e}", file=sys.stderr)
    return 2, None
  if rest:
    print(f"{prog}: unknown arguments {rest} (use --gin_file and --gin.NAME=VALUE)",
          file=sys.stderr)
    return 2, None
  try:
    return None, job()
  except CheckpointSaveError as e:
    print(f"{prog}: {_message(e)}", file=sys.stderr)
    return 1, None
  except RuntimeError as e:
    if "Required bindings" not in str(e):
      raise
    print(f"{prog}: missing gin binding: {e}", file=sys.stderr)
    return 2, None
  except (ValueError, FileNotFoundError) as e:
    print(f"{prog}: {_message(e)}", file=sys.stderr)
    return 1, None
  except Exception as e:  # noqa: BLE001  (re-raised unless it wraps bad input)
    reason = input_error_inside_tensorflow(e)
    if reason is None:
      raise
    print(f"{prog}: {reason}", file=sys.stderr)
    return 1, None
