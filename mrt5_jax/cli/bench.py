"""``mrt5-bench``: speed measurements.

  mrt5-bench inference [--config cpu|small|base] [--length 1024] [--batch 2]
                       [--rates 0.25,0.5,0.75] [--repeats 3] [--output results.json]

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
  return parser


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
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
