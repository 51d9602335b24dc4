"""mrt5-jax: MrT5 (ByT5 with a learned delete gate) in JAX/Flax."""
from mrt5_jax.config import MrT5Config, preset

__all__ = ["MrT5Config", "preset"]
__version__ = "0.1.0"
