"""Train-step memory with and without remat: ``python benchmarks/memory.py [flags]``.

Same as ``mrt5-bench memory``; see mrt5_jax/memory_benchmarking.py for the method.
"""
import sys

from mrt5_jax.cli import bench

if __name__ == "__main__":
  sys.exit(bench.main(["memory"] + sys.argv[1:]))
