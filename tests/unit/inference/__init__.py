"""Tests of mrt5_jax.inference."""
