"""Hugging Face folders (config.json + safetensors) and all-or-nothing output directories."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator

import numpy as np

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"


def check_output(output_dir: str, overwrite: bool) -> None:
  """Refuse an existing output unless ``overwrite`` (call before any long work)."""
  if os.path.lexists(output_dir) and not overwrite:
    raise ValueError(f"output directory {output_dir!r} already exists; pass --overwrite to "
                     "replace it")
  if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
    raise ValueError(f"output {output_dir!r} exists and is not a directory")


def _apply_umask(root: str) -> None:
  """Give the staged tree the usual permissions (mkdtemp and safetensors use 0700 / 0600)."""
  umask = os.umask(0)
  os.umask(umask)
  for directory, _, files in os.walk(root):
    os.chmod(directory, 0o777 & ~umask)
    for name in files:
      os.chmod(os.path.join(directory, name), 0o666 & ~umask)


@contextlib.contextmanager
def atomic_directory(output_dir: str, overwrite: bool = False) -> Iterator[str]:
  """Yield a fresh temp directory beside ``output_dir``; rename it into place on success.

  On any error the temp directory is removed and ``output_dir`` is untouched.
  """
  check_output(output_dir, overwrite)
  output_dir = os.path.abspath(output_dir)
  parent = os.path.dirname(output_dir)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.partial-", dir=parent)
  try:
    yield staging
    _apply_umask(staging)
    check_output(output_dir, overwrite)
    if os.path.lexists(output_dir):
      retired = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.old-", dir=parent)
      os.rename(output_dir, os.path.join(retired, "previous"))
      os.rename(staging, output_dir)
      shutil.rmtree(retired)
    else:
      os.rename(staging, output_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


def write_hf_folder(directory: str, config: dict[str, Any],
                    state_dict: dict[str, np.ndarray]) -> None:
  """Write ``config.json`` and ``model.safetensors`` (format 'pt') into ``directory``."""
  from safetensors.numpy import save_file
  with open(os.path.join(directory, CONFIG_FILE), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
    f.write("\n")
  save_file(state_dict, os.path.join(directory, WEIGHTS_FILE), metadata={"format": "pt"})


def read_hf_config(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(path):
    raise ValueError(f"{directory!r} has no {CONFIG_FILE}; not a Hugging Face model folder")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as error:
    raise ValueError(f"{path} is not valid JSON: {error}") from error


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  try:
    return load_file(path)
  except (SafetensorError, OSError, ValueError) as error:
    raise ValueError(f"cannot read weights file {path!r} (truncated or corrupt?): "
                     f"{error}") from error


def _read_torch(path: str) -> dict[str, Any]:
  try:
    import torch
  except ImportError as error:
    raise ValueError(f"reading {path!r} needs torch (pip install 'mrt5-jax[torch]')") from error
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as error:  # torch raises many types for a bad pickle / zip
    raise ValueError(f"cannot read weights file {path!r} (truncated or corrupt?): "
                     f"{error}") from error


def _shards(directory: str, index_name: str) -> list[str]:
  with open(os.path.join(directory, index_name)) as f:
    index = json.load(f)
  return sorted(set(index["weight_map"].values()))


def read_hf_state_dict(directory: str) -> dict[str, Any]:
  """All tensors of a folder: safetensors (single or sharded) or pytorch_model.bin."""
  def path(name):
    return os.path.join(directory, name)

  if os.path.exists(path(WEIGHTS_FILE)):
    return _read_safetensors(path(WEIGHTS_FILE))
  if os.path.exists(path(SAFETENSORS_INDEX)):
    tensors = {}
    for shard in _shards(directory, SAFETENSORS_INDEX):
      tensors.update(_read_safetensors(path(shard)))
    return tensors
  if os.path.exists(path(TORCH_WEIGHTS)):
    return _read_torch(path(TORCH_WEIGHTS))
  if os.path.exists(path(TORCH_INDEX)):
    tensors = {}
    for shard in _shards(directory, TORCH_INDEX):
      tensors.update(_read_torch(path(shard)))
    return tensors
  raise ValueError(f"{directory!r} has no {WEIGHTS_FILE}, {SAFETENSORS_INDEX}, {TORCH_WEIGHTS} "
                   f"or {TORCH_INDEX}")
