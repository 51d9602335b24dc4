"""Tests of mrt5_jax.checkpointing."""
