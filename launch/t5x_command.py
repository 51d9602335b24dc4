"""Command lines for ``python -m t5x.{train,eval,infer}`` with mrt5-jax gin files.

Pure functions that return argv lists; the launchers print or run them. gin
bindings follow ``mrt5-train``'s convention (``mrt5_jax.cli.gin_values``): bare
strings are quoted for gin, values already in gin syntax pass unchanged, and
``--gin.NAME=VALUE`` is accepted as well as ``--gin=NAME=VALUE``.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from typing import Iterable, Mapping, Optional, Sequence

from mrt5_jax.cli import gin_values

TOOLS = ("train", "eval", "infer")

# Directory gin bindings that each t5x tool requires (t5x/configs/runs/*.gin).
_DIR_BINDINGS = {
    "train": {"model_dir": "MODEL_DIR"},
    "eval": {"checkpoint_path": "CHECKPOINT_PATH", "output_dir": "EVAL_OUTPUT_DIR"},
    "infer": {"checkpoint_path": "CHECKPOINT_PATH", "output_dir": "INFER_OUTPUT_DIR"},
}


def gin_string(value: str) -> str:
  """A gin string literal for a path or name (single-quoted)."""
  if any(c in value for c in "'\"\\\n"):
    raise ValueError(f"paths passed to gin may not contain quotes or backslashes: {value!r}")
  return f"'{value}'"


def parse_bindings(items: Iterable[str]) -> list[tuple[str, str]]:
  """``["KEY=VALUE", ...]`` -> [(KEY, gin text of VALUE), ...].

  ``TRAIN_STEPS=5000`` stays 5000; ``INITIAL_CHECKPOINT_PATH=gs://b/c`` and
  ``INITIAL_CHECKPOINT_PATH='gs://b/c'`` both become ``'gs://b/c'``.
  """
  pairs = []
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key.strip() or not value.strip():
      raise ValueError(f"gin binding must look like KEY=VALUE, got {item!r}")
    pairs.append((key.strip(), gin_values.gin_value(value)))
  return pairs


def gin_flags_as_argparse(argv: Sequence[str]) -> list[str]:
  """``--gin.NAME=VALUE`` (mrt5-train's spelling) -> ``--gin=NAME=VALUE``."""
  return ["--gin=" + arg[len("--gin."):] if arg.startswith("--gin.") else arg for arg in argv]


def dir_bindings(tool: str, **dirs: Optional[str]) -> list[tuple[str, str]]:
  """The directory bindings of ``tool`` (e.g. train: model_dir -> MODEL_DIR).

  Raises ValueError naming the missing argument when one is absent.
  """
  if tool not in TOOLS:
    raise ValueError(f"tool must be one of {TOOLS}, got {tool!r}")
  unknown = sorted(set(dirs) - set(_DIR_BINDINGS[tool]))
  if unknown:
    raise ValueError(f"t5x.{tool} takes no {unknown}")
  pairs = []
  for arg, gin_name in _DIR_BINDINGS[tool].items():
    value = dirs.get(arg)
    if not value:
      raise ValueError(f"t5x.{tool} needs --{arg.replace('_', '-')}")
    pairs.append((gin_name, gin_string(value)))
  return pairs


def t5x_argv(tool: str,
             gin_files: Sequence[str],
             gin_search_paths: Sequence[str],
             bindings: Sequence[tuple[str, str]] = (),
             *,
             python: str = "python3",
             tfds_data_dir: Optional[str] = None,
             extra_flags: Sequence[str] = ()) -> list[str]:
  """argv of ``python -m t5x.<tool>`` with gin files, search paths and bindings."""
  if tool not in TOOLS:
    raise ValueError(f"tool must be one of {TOOLS}, got {tool!r}")
  if not gin_files:
    raise ValueError("at least one --gin-file is needed")
  argv = [python, "-m", f"t5x.{tool}",
          "--gin_search_paths=" + ",".join(gin_search_paths)]
  argv += [f"--gin_file={f}" for f in gin_files]
  argv += [f"--gin.{key}={value}" for key, value in bindings]
  if tfds_data_dir:
    argv.append(f"--tfds_data_dir={tfds_data_dir}")
  argv += list(extra_flags)
  argv.append("--alsologtostderr")
  return argv


_SAFE_IN_DOUBLE_QUOTES = re.compile(r'^[^"$`\\!]*$')


def shell_quote(arg: str) -> str:
  """Quotes one word for a POSIX shell; double quotes when that reads better.

  ``--gin.MODEL_DIR='gs://b/m'`` becomes ``"--gin.MODEL_DIR='gs://b/m'"``
  rather than shlex's ``'--gin.MODEL_DIR='"'"'gs://b/m'"'"''``.
  """
  quoted = shlex.quote(arg)
  if quoted != arg and "'" in arg and _SAFE_IN_DOUBLE_QUOTES.match(arg):
    return f'"{arg}"'
  return quoted


def shell_join(argv: Sequence[str]) -> str:
  return " ".join(shell_quote(a) for a in argv)


def run_all(commands: Sequence[Sequence[str]], dry_run: bool,
            env: Optional[Mapping[str, str]] = None) -> int:
  """Prints each command (one shell-quoted line); runs them unless ``dry_run``.

  Stops at the first command that fails and returns its exit status.
  """
  for argv in commands:
    print(shell_join(argv), flush=True)
    if dry_run:
      continue
    status = subprocess.run(list(argv), env=env, check=False).returncode
    if status != 0:
      print(f"command failed with exit status {status}", file=sys.stderr)
      return status
  return 0
