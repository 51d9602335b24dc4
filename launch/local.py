"""Run mrt5-jax with t5x on this machine (CPU, one GPU or a single TPU host).

``--dry-run`` prints the exact command and runs nothing::

  python launch/local.py train --gin-file=t5x/mrt5_tiny_cpu.gin --model-dir=/tmp/mrt5_tiny
  python launch/local.py eval --gin-file=t5x/mrt5_tiny_eval.gin \\
      --checkpoint-path=/tmp/mrt5_tiny/checkpoint_60 --output-dir=/tmp/mrt5_tiny/eval
  python launch/local.py infer --gin-file=t5x/mrt5_tiny_infer.gin \\
      --checkpoint-path=/tmp/mrt5_tiny/checkpoint_60 --output-dir=/tmp/mrt5_tiny/infer

t5x must be importable by ``--python`` (default: this interpreter).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from launch import t5x_command  # pylint: disable=g-import-not-at-top

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def command_for(args) -> list[str]:
  """The t5x command line of the chosen tool."""
  if args.tool == "train":
    dirs = {"model_dir": args.model_dir}
  else:
    dirs = {"checkpoint_path": args.checkpoint_path, "output_dir": args.output_dir}
  dirs = {k: os.path.abspath(v) if v and "://" not in v else v for k, v in dirs.items()}
  bindings = t5x_command.dir_bindings(args.tool, **dirs) + t5x_command.parse_bindings(args.gin)
  return t5x_command.t5x_argv(args.tool, args.gin_file, [CONFIGS_DIR], bindings,
                              python=args.python, tfds_data_dir=args.tfds_data_dir)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dry-run", action="store_true", help="print the command only")
  parser.add_argument("--python", default=sys.executable,
                      help="python interpreter that has t5x installed")
  tools = parser.add_subparsers(dest="tool", required=True)
  for tool in t5x_command.TOOLS:
    sub = tools.add_parser(tool, help=f"run t5x.{tool}")
    sub.add_argument("--gin-file", action="append", required=True,
                     help="gin file relative to configs/ (repeatable)")
    if tool == "train":
      sub.add_argument("--model-dir", required=True)
    else:
      sub.add_argument("--checkpoint-path", required=True)
      sub.add_argument("--output-dir", required=True)
    sub.add_argument("--tfds-data-dir", default=None)
    sub.add_argument("--gin", action="append", default=[], metavar="KEY=VALUE",
                     help="extra gin binding (repeatable)")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    command = command_for(args)
  except ValueError as e:
    parser.error(str(e))
  return t5x_command.run_all([command], args.dry_run)


if __name__ == "__main__":
  sys.exit(main())
