"""Tests of mrt5_jax.data."""
