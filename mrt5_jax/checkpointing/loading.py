"""Load a model from a model directory: the one way eval, inspect and the runner read a checkpoint.

``load_model`` reads the network's settings (``model_config.json``), locates
the step (the newest, or ``step``), verifies and reads its parameters and
controller state, and brings the parameters into the config's layer layout
(``layer_stacking.to_layout``: plain ``layers_{i}`` or scanned stacks, whatever
the checkpoint holds). A damaged step is an error naming the step, the file,
the newest intact step and the flag that selects it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from mrt5_jax.checkpointing import config_files
from mrt5_jax.checkpointing import readers
from mrt5_jax.checkpointing.integrity import DamagedCheckpointError
from mrt5_jax.model import layer_stacking
from mrt5_jax.model.config import MrT5Config


@dataclasses.dataclass
class LoadedModel:
  """config; params in the config's layout (host NumPy arrays); the checkpoint's
  controller state or None (a checkpoint written without training); where it came from."""
  config: MrT5Config
  params: Any
  controller_state: Optional[dict]
  step: int
  step_dir: str


def load_model(model_dir: str, step: Optional[int] = None, *, params: Any = None,
               step_flag: str = "--gin.evaluate.step={step}") -> LoadedModel:
  """The model of ``model_dir`` at ``step`` (default: its newest step).

  ``params`` given (a caller that already holds them) are used instead of the
  checkpoint's. ``step_flag`` is how the caller's users select another step;
  a damaged step's error suggests it with the newest intact step filled in.
  """
  config = config_files.read_config(model_dir)
  location = readers.locate(model_dir, step)
  try:
    if params is None:
      params = readers.restore_params(location.step_dir)
    controller_state = readers.restore_controller(location.step_dir)
  except DamagedCheckpointError as error:
    raise error.suggesting(step_flag) from None
  return LoadedModel(config=config, params=layer_stacking.to_layout(params, config),
                     controller_state=controller_state, step=location.step,
                     step_dir=location.step_dir)
