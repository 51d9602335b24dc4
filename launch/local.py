"""Run mrt5-jax with t5x on this machine (CPU, one GPU or a single TPU host).

``setup`` builds the tested t5x environment (launch/t5x-constraints.txt, via
launch/t5x_env.py); ``train``/``eval``/``infer`` run t5x from it. Flags may
come before or after the subcommand; ``--dry-run`` prints the exact commands
and runs nothing::

  python launch/local.py setup --venv ~/t5x-venv
  python launch/local.py train --venv ~/t5x-venv --gin-file=t5x/mrt5_tiny_cpu.gin \\
      --model-dir=/tmp/mrt5_tiny
  python launch/local.py eval --venv ~/t5x-venv --gin-file=t5x/mrt5_tiny_eval.gin \\
      --checkpoint-path=/tmp/mrt5_tiny/checkpoint_60 --output-dir=/tmp/mrt5_tiny/eval
  python launch/local.py infer --venv ~/t5x-venv --gin-file=t5x/mrt5_tiny_infer.gin \\
      --checkpoint-path=/tmp/mrt5_tiny/checkpoint_60 --output-dir=/tmp/mrt5_tiny/infer

gin bindings: ``--gin.NAME=VALUE`` or ``--gin=NAME=VALUE``, strings without
quotes (as ``mrt5-train``). Before a run the interpreter's packages are
checked against the pinned set; a mismatch is reported, not fatal
(``--skip-check`` skips it). Without ``--venv``, ``--python`` (default: this
interpreter) must have t5x installed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Optional, Sequence

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from launch import t5x_command  # pylint: disable=g-import-not-at-top
from launch import t5x_env  # pylint: disable=g-import-not-at-top

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def interpreter(args) -> str:
  """The python that runs t5x: the venv's, or --python."""
  if args.venv:
    return os.path.join(os.path.abspath(os.path.expanduser(args.venv)), "bin", "python")
  return args.python or sys.executable


def command_for(args) -> list[str]:
  """The t5x command line of the chosen tool."""
  if args.tool == "train":
    dirs = {"model_dir": args.model_dir}
  else:
    dirs = {"checkpoint_path": args.checkpoint_path, "output_dir": args.output_dir}
  dirs = {k: os.path.abspath(v) if v and "://" not in v else v for k, v in dirs.items()}
  bindings = t5x_command.dir_bindings(args.tool, **dirs) + t5x_command.parse_bindings(args.gin)
  return t5x_command.t5x_argv(args.tool, args.gin_file, [CONFIGS_DIR], bindings,
                              python=interpreter(args), tfds_data_dir=args.tfds_data_dir)


def _shared_flags(parser: argparse.ArgumentParser, top: bool) -> None:
  """Flags accepted before and after the subcommand (defaults only on the top parser)."""
  default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
  parser.add_argument("--dry-run", action="store_true", default=default(False),
                      help="print the commands only")
  parser.add_argument("--venv", default=default(None),
                      help="the t5x environment (built by `setup`; train/eval/infer use its "
                      "python)")
  parser.add_argument("--python", default=default(None),
                      help="train/eval/infer: python that has t5x installed (instead of --venv); "
                      "setup: the interpreter that creates the venv")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  _shared_flags(parser, top=True)
  tools = parser.add_subparsers(dest="tool", required=True)
  setup = tools.add_parser("setup", help="build the tested t5x environment in --venv")
  _shared_flags(setup, top=False)
  setup.add_argument("--tpu", action="store_true", help="jax[tpu] (a single TPU VM host)")
  setup.add_argument("--source", action="append", default=[], metavar="NAME=DIR",
                     help="t5x, airio or jestimator from a local checkout (repeatable)")
  setup.add_argument("--extras", default="", help="extras of this project, e.g. 'test'")
  for tool in t5x_command.TOOLS:
    sub = tools.add_parser(tool, help=f"run t5x.{tool}")
    _shared_flags(sub, top=False)
    sub.add_argument("--gin-file", action="append", required=True,
                     help="gin file relative to configs/ (repeatable)")
    if tool == "train":
      sub.add_argument("--model-dir", required=True)
    else:
      sub.add_argument("--checkpoint-path", required=True)
      sub.add_argument("--output-dir", required=True)
    sub.add_argument("--tfds-data-dir", default=None)
    sub.add_argument("--gin", action="append", default=[], metavar="KEY=VALUE",
                     help="extra gin binding (repeatable); strings need no quotes")
    sub.add_argument("--skip-check", action="store_true",
                     help="do not compare the environment with launch/t5x-constraints.txt")
  return parser


def setup_steps(args) -> list[list[str]]:
  if not args.venv:
    raise ValueError("setup needs --venv DIR")
  return t5x_env.build_steps(
      os.path.abspath(os.path.expanduser(args.venv)), python=args.python or sys.executable,
      local_sources=t5x_env.parse_sources(args.source), tpu=args.tpu,
      extras=[e for e in args.extras.split(",") if e])


def check_environment(python: str, constraints: str = t5x_env.CONSTRAINTS) -> None:
  """Warns (on stderr) when ``python``'s packages differ from the pinned set."""
  done = subprocess.run([python, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                              "t5x_env.py"), "--check",
                         "--constraints", constraints],
                        capture_output=True, text=True, check=False)
  if done.returncode != 0:
    lines = [l for l in done.stderr.splitlines() if l.startswith("t5x environment check")]
    print("warning: this environment is not the tested t5x set "
          "(python launch/local.py setup --venv DIR builds it):\n  "
          + "\n  ".join(lines or done.stderr.strip().splitlines()[-3:]), file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = build_parser()
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parser.parse_args(t5x_command.gin_flags_as_argparse(argv))
  if args.venv and args.python and args.tool != "setup":
    parser.error("give --venv or --python, not both")
  try:
    if args.tool == "setup":
      return t5x_env.run_steps(setup_steps(args), args.dry_run)
    command = command_for(args)
  except ValueError as e:
    parser.error(str(e))
  if not args.dry_run and not args.skip_check:
    check_environment(command[0])
  return t5x_command.run_all([command], args.dry_run)


if __name__ == "__main__":
  sys.exit(main())
