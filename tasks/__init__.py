"""seqio tasks and mixtures of mrt5-jax (importing this module registers them)."""
