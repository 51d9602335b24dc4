"""An ``InferenceRunner`` for the model of a model directory (its newest or a given step)."""
from __future__ import annotations

from typing import Optional

from mrt5_jax.checkpointing import loading
from mrt5_jax.inference.encode_path import InferenceConfig
from mrt5_jax.inference.runner import InferenceRunner


def runner_from_model_dir(model_dir: str, step: Optional[int] = None, *,
                          mode: Optional[str] = None,
                          inference: InferenceConfig = InferenceConfig()) -> InferenceRunner:
  """``loading.load_model`` then ``InferenceRunner``; a damaged step is an error naming it."""
  loaded = loading.load_model(model_dir, step, step_flag="step={step}")
  return InferenceRunner(loaded.config, loaded.params, mode=mode, inference=inference)
