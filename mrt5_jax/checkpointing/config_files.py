"""A model directory's files: ``model_config.json`` and where its checkpoints live."""
from __future__ import annotations

import logging
import os
from typing import Optional


from mrt5_jax.model.config import MrT5Config


logger = logging.getLogger("mrt5_jax")


CONFIG_FILE = "model_config.json"


PROJECT_DIR = "checkpoints"


def checkpoint_dir(model_dir: str) -> str:
  return os.path.join(os.path.abspath(model_dir), PROJECT_DIR)


def write_config(model_dir: str, config: MrT5Config) -> str:
  os.makedirs(model_dir, exist_ok=True)
  path = os.path.join(model_dir, CONFIG_FILE)
  with open(path, "w") as f:
    f.write(config.to_json())
  return path


def find_config(model_dir: Optional[str]) -> Optional[MrT5Config]:
  """``model_config.json`` of ``model_dir``, or None when there is none."""
  if model_dir is None:
    return None
  path = os.path.join(model_dir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    text = f.read()
  try:
    return MrT5Config.from_json(text)
  except (ValueError, TypeError) as error:
    raise ValueError(f"{path} is not a valid MrT5Config: {error}") from error


def read_config(model_dir: str) -> MrT5Config:
  """``model_config.json`` of ``model_dir``; an error when it is missing."""
  config = find_config(model_dir)
  if config is None:
    raise ValueError(f"no {CONFIG_FILE} in {model_dir!r}: not an mrt5-jax model directory")
  return config
