"""Tests of mrt5_jax.tasks."""
