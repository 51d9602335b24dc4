"""Read params from orbax checkpoints (this project's or t5x's) and write the project layout.

Layouts:
  project: ``<model_dir>/checkpoints/<step>/`` holding the train state (params
    under ``params``), plus ``<model_dir>/model_config.json``.
  t5x: ``<model_dir>/checkpoint_<step>/`` holding ``{'target': params,
    'state': ...}``, no model config; either an orbax pytree or t5x's own
    format (a msgpack file ``checkpoint`` whose large arrays are TensorStore
    specs of zarr arrays beside it).
A step directory may hold the pytree itself or one item sub-directory (as
orbax's CheckpointManager writes). Only the params are restored, as NumPy.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Optional

import jax
import numpy as np

from mrt5_jax.checkpoints import CONFIG_FILE as MODEL_CONFIG_FILE
from mrt5_jax.config import MrT5Config

PROJECT_DIR = "checkpoints"
T5X_STEP = re.compile(r"^checkpoint_(\d+)$")
PYTREE_METADATA = "_METADATA"
T5X_MSGPACK = "checkpoint"
PARAMS_KEYS = {"project": "params", "t5x": "target"}


@dataclasses.dataclass
class Checkpoint:
  """Params (nested dicts of float NumPy arrays) and where they came from."""
  params: dict
  config: Optional[MrT5Config]
  layout: str
  step: int
  path: str


def _numeric_children(directory: str) -> dict[int, str]:
  if not os.path.isdir(directory):
    return {}
  return {int(name): os.path.join(directory, name) for name in os.listdir(directory)
          if name.isdigit() and os.path.isdir(os.path.join(directory, name))}


def _t5x_children(directory: str) -> dict[int, str]:
  if not os.path.isdir(directory):
    return {}
  steps = {}
  for name in os.listdir(directory):
    match = T5X_STEP.match(name)
    if match and os.path.isdir(os.path.join(directory, name)):
      steps[int(match.group(1))] = os.path.join(directory, name)
  return steps


def locate(checkpoint_dir: str, step: Optional[int] = None) -> tuple[str, str, int, Optional[str]]:
  """-> (layout, step directory, step, model dir holding model_config.json or None).

  ``checkpoint_dir`` may be a model dir, its ``checkpoints/`` dir, or one step dir.
  """
  path = os.path.abspath(checkpoint_dir)
  if not os.path.isdir(path):
    raise ValueError(f"checkpoint directory {checkpoint_dir!r} does not exist")
  name, parent = os.path.basename(path), os.path.dirname(path)
  candidates = [
      ("project", _numeric_children(os.path.join(path, PROJECT_DIR)), path),
      ("t5x", _t5x_children(path), path),
      ("project", _numeric_children(path) if name == PROJECT_DIR else {}, parent),
  ]
  if name.isdigit() and os.path.basename(parent) == PROJECT_DIR:
    candidates.append(("project", {int(name): path}, os.path.dirname(parent)))
  if T5X_STEP.match(name):
    candidates.append(("t5x", {int(T5X_STEP.match(name).group(1)): path}, parent))
  for layout, steps, model_dir in candidates:
    if steps:
      chosen = max(steps) if step is None else step
      if chosen not in steps:
        raise ValueError(f"no step {chosen} in {checkpoint_dir!r}; available: {sorted(steps)}")
      return layout, steps[chosen], chosen, model_dir
  raise ValueError(
      f"unknown checkpoint layout at {checkpoint_dir!r}: expected "
      f"<model_dir>/{PROJECT_DIR}/<step>/ (mrt5-jax trainer) or <model_dir>/checkpoint_<step>/ "
      "(t5x), or one such step directory")


def _pytree_dir(step_dir: str) -> str:
  """The orbax pytree directory inside a step directory."""
  if os.path.exists(os.path.join(step_dir, PYTREE_METADATA)):
    return step_dir
  items = sorted(name for name in os.listdir(step_dir)
                 if os.path.exists(os.path.join(step_dir, name, PYTREE_METADATA)))
  if len(items) == 1:
    return os.path.join(step_dir, items[0])
  if not items:
    raise ValueError(f"{step_dir!r} holds no orbax pytree checkpoint (no {PYTREE_METADATA} file "
                     "there or in one sub-directory); unknown checkpoint layout")
  raise ValueError(f"{step_dir!r} holds several orbax items {items}; cannot tell which one "
                   "holds the params")


def _is_tensorstore_spec(value: Any) -> bool:
  return isinstance(value, dict) and {"driver", "kvstore"} <= set(value)


def _read_tensorstore(spec: dict, step_dir: str) -> np.ndarray:
  """Read one zarr array of a t5x msgpack checkpoint; its path is relative to the step dir."""
  import tensorstore as ts
  spec = dict(spec)
  relative = spec["kvstore"].get("path") or spec.pop("path", None)
  if relative is None:
    raise ValueError(f"TensorStore spec without a path in {step_dir!r}: {spec}")
  spec["kvstore"] = {"driver": "file", "path": os.path.join(step_dir, relative)}
  try:
    return ts.open(spec, open=True).result().read().result()
  except Exception as error:  # tensorstore raises ValueError / its own status errors
    raise ValueError(f"cannot read array {relative!r} of t5x checkpoint {step_dir!r}: "
                     f"{error}") from error


def _restore_t5x_msgpack(step_dir: str) -> dict:
  """Params of t5x's msgpack + TensorStore format: ``{'optimizer': {'target': ...}}``."""
  from flax import serialization
  with open(os.path.join(step_dir, T5X_MSGPACK), "rb") as f:
    contents = serialization.msgpack_restore(f.read())
  state = contents.get("optimizer", contents) if isinstance(contents, dict) else None
  if not isinstance(state, dict) or "target" not in state:
    top = sorted(contents) if isinstance(contents, dict) else type(contents).__name__
    raise ValueError(f"t5x checkpoint file in {step_dir!r} has no 'target' params (found {top})")
  return jax.tree_util.tree_map(
      lambda leaf: _read_tensorstore(leaf, step_dir) if _is_tensorstore_spec(leaf)
      else np.asarray(leaf), state["target"], is_leaf=_is_tensorstore_spec)


def restore_params(step_dir: str, layout: str) -> dict:
  """Restore only the params subtree of a step directory, as NumPy arrays."""
  import orbax.checkpoint as ocp
  if (layout == "t5x" and os.path.isfile(os.path.join(step_dir, T5X_MSGPACK))
      and not os.path.exists(os.path.join(step_dir, PYTREE_METADATA))):
    return _restore_t5x_msgpack(step_dir)
  directory = _pytree_dir(step_dir)
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(directory).item_metadata.tree
  key = PARAMS_KEYS[layout]
  if not isinstance(tree, dict) or key not in tree:
    top = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
    raise ValueError(f"{directory!r} is a {layout} checkpoint but has no {key!r} entry at the "
                     f"top of its tree (found {top}); unknown checkpoint layout")
  wanted = {key: tree[key]}
  restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
      item=wanted, restore_args=restore_args, partial_restore=True))
  params = restored[key]
  if set(params) == {"params"}:  # a saved flax variables dict
    params = params["params"]
  return jax.tree_util.tree_map(np.asarray, params)


def read_config(model_dir: Optional[str]) -> Optional[MrT5Config]:
  """``model_config.json`` beside the checkpoints, or None when there is none."""
  if model_dir is None:
    return None
  path = os.path.join(model_dir, MODEL_CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    text = f.read()
  try:
    return MrT5Config.from_json(text)
  except (ValueError, TypeError) as error:
    raise ValueError(f"{path} is not a valid MrT5Config: {error}") from error


def read_checkpoint(checkpoint_dir: str, step: Optional[int] = None) -> Checkpoint:
  """Locate (latest step unless ``step``), then restore params and the model config."""
  layout, step_dir, chosen, model_dir = locate(checkpoint_dir, step)
  params = restore_params(step_dir, layout)
  return Checkpoint(params=params, config=read_config(model_dir), layout=layout, step=chosen,
                    path=step_dir)
