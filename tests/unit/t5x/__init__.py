"""Tests of mrt5_jax.t5x."""
