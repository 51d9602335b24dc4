"""Tests of mrt5_jax.evaluation."""
