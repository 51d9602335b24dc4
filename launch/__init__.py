"""Launchers for t5x runs of mrt5-jax: on a Cloud TPU VM slice and locally."""
