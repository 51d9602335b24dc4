"""Tests of mrt5_jax.training."""
