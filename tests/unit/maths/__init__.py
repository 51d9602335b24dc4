"""Tests of mrt5_jax.maths."""
