"""Hard-deletion inference benchmark: ``python benchmarks/inference.py [flags]``.

Same as ``mrt5-bench inference``; see mrt5_jax/studies/inference_speed.py for the method.
"""
import sys

from mrt5_jax.cli import bench

if __name__ == "__main__":
  sys.exit(bench.main(["inference"] + sys.argv[1:]))
