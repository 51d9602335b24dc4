"""gin files: models/, runs/, t5x/. Installed as package data; see mrt5_jax.cli.gin_flags."""
