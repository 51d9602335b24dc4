"""Checkpoints: the project's orbax layout for training, and one reader for every layout.

Layouts read (``locate`` tells them apart):
  project  ``<model_dir>/checkpoints/<step>/state/``  orbax pytree {'params', 'step'[,
           'opt_state', 'flax_mutables': {'controller': ...}]}, written by the
           trainer and by ``mrt5-convert from-pytorch`` (params and step only);
           ``<model_dir>/checkpoints/<step>/data_iterator/`` JSON position (and,
           written by the trainer, tf.data iterator state: mrt5_jax.data_checkpoint);
           ``<model_dir>/model_config.json`` (``MrT5Config.to_json()``).
  t5x      ``<model_dir>/checkpoint_<step>/`` holding {'target': params, 'state': ...},
           either an orbax pytree or t5x's own format (a msgpack file
           ``checkpoint`` whose large arrays are TensorStore specs of zarr
           arrays beside it); no model config.
A path may be a model dir, its ``checkpoints/`` dir, a step dir, or a step's
``state/`` dir. Readers return NumPy arrays in host memory.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from mrt5_jax.config import MrT5Config

STATE = "state"
DATA_ITERATOR = "data_iterator"
CONFIG_FILE = "model_config.json"
PROJECT_DIR = "checkpoints"
T5X_STEP = re.compile(r"^checkpoint_(\d+)$")
PYTREE_METADATA = "_METADATA"
T5X_MSGPACK = "checkpoint"
PARAMS_KEYS = {"project": "params", "t5x": "target"}


# ----------------------------------------------------------------------------- model config


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


# ----------------------------------------------------------------------------- training


def manager(model_dir: str, *, max_to_keep: Optional[int] = None,
            async_save: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager over ``<model_dir>/checkpoints`` with the two items."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                         enable_async_checkpointing=async_save,
                                         create=True)
  return ocp.CheckpointManager(checkpoint_dir(model_dir), options=options,
                               item_names=(STATE, DATA_ITERATOR))


def save(mngr: ocp.CheckpointManager, step: int, state: Mapping[str, Any],
         data_state: Any = None, *, force: bool = True) -> bool:
  """Save the train state pytree (and the data iterator) at ``step``.

  ``data_state``: a JSON mapping (the position only) or an object with
  ``checkpoint_args()`` (``data.BatchIterator``: its tf.data iterators too).
  """
  items = {STATE: ocp.args.StandardSave(dict(state))}
  if hasattr(data_state, "checkpoint_args"):
    items[DATA_ITERATOR] = data_state.checkpoint_args()
  elif data_state is not None:
    items[DATA_ITERATOR] = ocp.args.JsonSave(dict(data_state))
  return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def _abstract(tree: Any, shardings: Any = None) -> Any:
  if shardings is None:
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)


def restore(mngr: ocp.CheckpointManager, step: int, target: Mapping[str, Any],
            shardings: Any = None, data_iterator: Any = None) -> tuple[dict, Optional[dict]]:
  """Restore (state, data_state) at ``step`` into the structure of ``target``.

  ``shardings`` (same tree as target) places every array where the train step
  expects it; without it arrays land on the default device. ``data_iterator``
  (``data.BatchIterator``) is moved to the saved data position.
  """
  step_dir = os.path.join(str(mngr.directory), str(step))
  items = {STATE: ocp.args.StandardRestore(_abstract(target, shardings))}
  has_data = os.path.isdir(os.path.join(step_dir, DATA_ITERATOR))
  if has_data:
    items[DATA_ITERATOR] = (data_iterator.restore_args() if data_iterator is not None
                            else ocp.args.JsonRestore())
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  return dict(restored[STATE]), (dict(restored[DATA_ITERATOR]) if has_data else None)


def latest_step(model_dir: str) -> Optional[int]:
  """The newest complete checkpoint step under ``model_dir``, or None."""
  if not os.path.isdir(checkpoint_dir(model_dir)):
    return None
  with manager(model_dir, async_save=False) as mngr:
    return mngr.latest_step()


def save_params_checkpoint(model_dir: str, params: Any, config: MrT5Config, step: int = 0) -> str:
  """Write a params-only checkpoint plus model_config.json (for converters). Returns its dir."""
  write_config(model_dir, config)
  params = jax.tree_util.tree_map(np.asarray, params)
  with manager(model_dir, async_save=False) as mngr:
    mngr.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave({"params": params, "step": np.asarray(step, np.int64)})}),
              force=True)
    mngr.wait_until_finished()
  return os.path.join(checkpoint_dir(model_dir), str(step))


# ----------------------------------------------------------------------------- reading any layout


@dataclasses.dataclass(frozen=True)
class Location:
  """Where one checkpoint step lives: its layout, directory, step and model dir."""
  layout: str
  step_dir: str
  step: int
  model_dir: Optional[str]


@dataclasses.dataclass
class Checkpoint:
  """Params (nested dicts of NumPy arrays), the model config if known, and the origin."""
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


def locate(path: str, step: Optional[int] = None) -> Location:
  """The checkpoint at or under ``path``: its newest step, or ``step``."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise ValueError(f"checkpoint directory {path!r} does not exist")
  if os.path.basename(path) == STATE and os.path.basename(os.path.dirname(path)).isdigit():
    path = os.path.dirname(path)
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
        raise ValueError(f"no step {chosen} in {path!r}; available: {sorted(steps)}")
      return Location(layout, steps[chosen], chosen, model_dir)
  raise ValueError(
      f"no checkpoint found at {path!r} (unknown checkpoint layout): expected "
      f"<model_dir>/{PROJECT_DIR}/<step>/ "
      "(mrt5-jax trainer) or <model_dir>/checkpoint_<step>/ (t5x), or one such step directory")


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


def _is_t5x_msgpack(location: Location) -> bool:
  step_dir = location.step_dir
  return (location.layout == "t5x" and os.path.isfile(os.path.join(step_dir, T5X_MSGPACK))
          and not os.path.exists(os.path.join(step_dir, PYTREE_METADATA)))


def _restore_t5x_msgpack(step_dir: str, key: str) -> Optional[dict]:
  """One top-level entry (``target``, ``flax_mutables``) of t5x's msgpack format."""
  from flax import serialization
  with open(os.path.join(step_dir, T5X_MSGPACK), "rb") as f:
    contents = serialization.msgpack_restore(f.read())
  state = contents.get("optimizer", contents) if isinstance(contents, dict) else None
  if not isinstance(state, dict):
    raise ValueError(f"t5x checkpoint file in {step_dir!r} is not a mapping "
                     f"({type(contents).__name__})")
  if key not in state and key not in contents:
    return None
  tree = state.get(key, contents.get(key))
  return jax.tree_util.tree_map(
      lambda leaf: _read_tensorstore(leaf, step_dir) if _is_tensorstore_spec(leaf)
      else np.asarray(leaf), tree, is_leaf=_is_tensorstore_spec)


def _restore_pytree_entry(location: Location, key: str) -> Optional[Any]:
  """One top-level entry of an orbax pytree checkpoint as NumPy (None if absent)."""
  directory = _pytree_dir(location.step_dir)
  with ocp.PyTreeCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(directory)
    tree = getattr(metadata, "item_metadata", None) or metadata
    tree = getattr(tree, "tree", tree)
    if not hasattr(tree, "get") or key not in tree:
      return None
    wanted = {key: tree[key]}
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                          wanted)
    restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
        item=wanted, restore_args=restore_args, partial_restore=True))
  return restored[key]


def _restore_entry(location: Location, key: str) -> Optional[Any]:
  if _is_t5x_msgpack(location):
    return _restore_t5x_msgpack(location.step_dir, key)
  return _restore_pytree_entry(location, key)


def restore_params(path: str, step: Optional[int] = None) -> dict:
  """The params (NumPy) of the checkpoint at or under ``path``, any layout."""
  return _params_at(locate(path, step))


def _params_at(location: Location) -> dict:
  key = PARAMS_KEYS[location.layout]
  params = _restore_entry(location, key)
  if params is None:
    raise ValueError(f"{location.step_dir!r} is a {location.layout} checkpoint but has no "
                     f"{key!r} entry at the top of its tree; unknown checkpoint layout")
  if set(params) == {"params"}:  # a saved flax variables dict
    params = params["params"]
  return jax.tree_util.tree_map(np.asarray, params)


def restore_controller(path: str, step: Optional[int] = None) -> Optional[dict]:
  """The deletion controller's state of a training checkpoint (None when it has none:
  params-only checkpoints, or a run without the controller collection)."""
  location = locate(path, step)
  mutables = _restore_entry(location, "flax_mutables")
  if not mutables or "controller" not in mutables:
    return None
  return {k: np.asarray(v) for k, v in mutables["controller"].items()}


def read_checkpoint(path: str, step: Optional[int] = None) -> Checkpoint:
  """Params and model config of the checkpoint at or under ``path`` (newest step unless ``step``)."""
  location = locate(path, step)
  return Checkpoint(params=_params_at(location), config=find_config(location.model_dir),
                    layout=location.layout, step=location.step, path=location.step_dir)
