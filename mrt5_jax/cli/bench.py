"""``mrt5-bench``: speed measurements.

  mrt5-bench inference [--config cpu|small|base] [--length 1024] [--batch 2]
                       [--rates 0.25,0.5,0.75] [--repeats 3] [--output results.json]
  mrt5-bench deletion  [--tasks vowel_removal,contextual_vowel_removal,span_corruption]
                       [--recipes shipped,published,previous_demo] [--targets 0.3,0.5]
                       [--steps 1500] [--work_dir /tmp/mrt5_deletion] [--output rows.json]
                       [--gin BINDING ...]

``--config auto`` (the default) picks ``small`` (ByT5-small) on a GPU/TPU and
the 2-core-CPU model otherwise.
"""
from __future__ import annotations

import argparse
import sys

import jax

from mrt5_jax import benchmarking


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="mrt5-bench", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  inference = sub.add_parser("inference", help="ByT5 vs MrT5 hard deletion at forced rates")
  inference.add_argument("--config", default="auto", choices=["auto", "cpu", "small", "base"])
  inference.add_argument("--length", type=int, default=1024)
  inference.add_argument("--target_length", type=int, default=189)
  inference.add_argument("--batch", type=int, default=2)
  inference.add_argument("--rates", default="0.25,0.5,0.75")
  inference.add_argument("--repeats", type=int, default=3)
  inference.add_argument("--output", default=None, help="write the results as JSON here")
  deletion = sub.add_parser("deletion", help="deletion control: recipes x tasks, soft vs hard")
  deletion.add_argument("--tasks", default="vowel_removal,contextual_vowel_removal")
  deletion.add_argument("--recipes", default="shipped,published")
  deletion.add_argument("--targets", default="0.3,0.5")
  deletion.add_argument("--steps", type=int, default=1500, help="diagnostic tasks' steps")
  deletion.add_argument("--pretrain_steps", type=int, default=3000,
                        help="span corruption: ByT5-tiny steps before the gate is added")
  deletion.add_argument("--continue_steps", type=int, default=1000,
                        help="span corruption: steps of the continued MrT5 / ByT5")
  deletion.add_argument("--work_dir", default="/tmp/mrt5_deletion")
  deletion.add_argument("--gin", action="append", default=[],
                        help="an extra gin binding for every run (repeatable)")
  deletion.add_argument("--output", default=None, help="write the rows as JSON here")
  return parser


def _deletion(args) -> int:
  import dataclasses
  import json
  from mrt5_jax import deletion_study
  from mrt5_jax.cli import common
  common.setup_logging()
  recipes = []
  for name in args.recipes.split(","):
    if name not in deletion_study.RECIPES:
      raise SystemExit(f"unknown recipe {name!r}; choose from {sorted(deletion_study.RECIPES)}")
    recipes.append(deletion_study.RECIPES[name])
  targets = [float(t) for t in args.targets.split(",") if t]
  rows = deletion_study.run_study(
      args.tasks.split(","), recipes, targets, work_dir=args.work_dir, steps=args.steps,
      pretrain_steps=args.pretrain_steps, continue_steps=args.continue_steps,
      extra_bindings=args.gin)
  print(deletion_study.markdown_table(rows))
  if args.output:
    with open(args.output, "w") as f:
      json.dump([dataclasses.asdict(row) for row in rows], f, indent=2)
    print(f"wrote {args.output}")
  return 0


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.command == "deletion":
    return _deletion(args)
  rates = [float(r) for r in args.rates.split(",") if r]
  if not rates or any(not 0.0 <= r < 1.0 for r in rates):
    raise SystemExit(f"--rates must be comma-separated values in [0, 1), got {args.rates!r}")
  if args.length < 64:
    raise SystemExit("--length must be at least 64")
  config = args.config
  if config == "auto":
    config = "cpu" if jax.devices()[0].platform == "cpu" else "small"
  result = benchmarking.run_inference_benchmark(config, rates, args.length, args.target_length,
                                                args.batch, args.repeats)
  if args.output:
    benchmarking.write_json(result, args.output)
    print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
