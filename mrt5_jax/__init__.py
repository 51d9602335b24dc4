"""mrt5-jax: MrT5 (ByT5 with a learned delete gate) in JAX/Flax.

``MrT5Config`` and ``preset`` load on first use, so that dependency-free
modules (``mrt5_jax.cli.gin_values``, used by the launchers) import without gin
or JAX installed.
"""
import importlib

__all__ = ["MrT5Config", "preset"]
__version__ = "0.1.0"


def __getattr__(name):
  if name in __all__:
    return getattr(importlib.import_module("mrt5_jax.model.config"), name)
  raise AttributeError(f"module 'mrt5_jax' has no attribute {name!r}")
