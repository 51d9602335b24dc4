"""Tests of mrt5_jax.conversion."""
