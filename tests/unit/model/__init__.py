"""Tests of mrt5_jax.model."""
