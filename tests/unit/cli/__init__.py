"""Tests of mrt5_jax.cli."""
