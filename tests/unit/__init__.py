"""Unit tests, one folder per package of mrt5_jax (and tasks/)."""
