"""Hard-deletion speed on an accelerator: ``python benchmarks/accelerator.py --output_dir D``.

Runs the measurements of ``mrt5-bench inference`` and ``mrt5-bench train_step``
(the same functions, ``studies.inference_speed`` and ``studies.train_step_speed``)
with only jax, flax, optax and gin-config installed: no seqio or TensorFlow,
which the ``mrt5-bench`` front end imports and a bare GPU image may lack. Each
part writes its JSON to ``--output_dir`` as soon as it ends, so a run cut short
keeps what it finished. Parts, in order:

  rows_spread  --rates 0.5 --row_rate_spread 0.1 (each row its own rate)
  rows_equal   --rates 0.5 --row_rate_spread 0   (every row the batch's rate)
  train_step   soft, per-row hard and packed hard train steps, the recipe's average
  packing_ops  what a packed hard step adds, op by op (``studies.packing_ops_speed``;
               seconds to compile, where ``train_step`` takes minutes)

for every ``--dtypes`` entry, at ``--config`` (ByT5 Small by default), length
1024, ``--batch`` rows; no BP/CP baselines (``mrt5-bench inference`` has them).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mrt5_jax.studies import inference_speed  # noqa: E402
from mrt5_jax.studies import packing_ops_speed  # noqa: E402
from mrt5_jax.studies import train_step_speed  # noqa: E402

PARTS = ("rows_spread", "rows_equal", "train_step", "packing_ops")


def _run_part(part: str, args, dtype: str) -> dict:
  if part == "packing_ops":
    return packing_ops_speed.run_packing_ops_benchmark(
        batch=args.batch, length=args.length, packed_rows=max(1, 5 * args.batch // 8),
        repeats=max(args.repeats, 5))
  if part == "train_step":
    return train_step_speed.run_train_step_benchmark(
        args.config, length=args.length, target_length=args.target_length, batch=args.batch,
        rate=0.5, repeats=args.repeats, dtype=dtype)
  spread = 0.1 if part == "rows_spread" else 0.0
  return inference_speed.run_inference_benchmark(
      args.config, rates=(0.5,), length=args.length, target_length=args.target_length,
      batch=args.batch, repeats=args.repeats,
      baselines=False, row_rate_spread=spread, dtype=dtype)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--config", default="small", choices=["cpu", "small", "base"])
  parser.add_argument("--length", type=int, default=1024)
  parser.add_argument("--target_length", type=int, default=189)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--parts", default=",".join(PARTS))
  parser.add_argument("--dtypes", default="float32")
  args = parser.parse_args(argv)
  parts = [p for p in args.parts.split(",") if p]
  unknown = sorted(set(parts) - set(PARTS))
  if unknown or not parts:
    parser.error(f"--parts must come from {list(PARTS)}, got {args.parts!r}")
  os.makedirs(args.output_dir, exist_ok=True)
  start = time.time()
  for dtype in [d for d in args.dtypes.split(",") if d]:
    for part in parts:
      print(f"[{time.time() - start:6.0f} s] {part} {dtype}", flush=True)
      result = _run_part(part, args, dtype)
      with open(os.path.join(args.output_dir, f"{part}_{dtype}.json"), "w") as f:
        json.dump(result, f, indent=2)
  print(f"[{time.time() - start:6.0f} s] done", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
