"""Tests of mrt5_jax.parallel."""
