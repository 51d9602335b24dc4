"""Dense against blocked encoder attention per length: ``python benchmarks/attention.py [flags]``.

Same as ``mrt5-bench attention``; see mrt5_jax/memory_benchmarking.py for the method.
"""
import sys

from mrt5_jax.cli import bench

if __name__ == "__main__":
  sys.exit(bench.main(["attention"] + sys.argv[1:]))
