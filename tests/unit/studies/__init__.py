"""Tests of mrt5_jax.studies."""
