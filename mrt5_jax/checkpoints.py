"""Orbax checkpoints in the project's layout.

  <model_dir>/model_config.json                MrT5Config.to_json()
  <model_dir>/checkpoints/<step>/state/        pytree {'params', 'step'[, 'opt_state',
                                                'flax_mutables': {'controller': ...}]}
  <model_dir>/checkpoints/<step>/data_iterator/  JSON {'batches_consumed': n, ...}

Training checkpoints hold everything; converted checkpoints (``mrt5-convert
from-pytorch``) hold only params and step. ``restore_params`` reads params from
either.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from mrt5_jax.config import MrT5Config

STATE = "state"
DATA_ITERATOR = "data_iterator"
CONFIG_FILE = "model_config.json"


def checkpoint_dir(model_dir: str) -> str:
  return os.path.join(os.path.abspath(model_dir), "checkpoints")


def write_config(model_dir: str, config: MrT5Config) -> str:
  os.makedirs(model_dir, exist_ok=True)
  path = os.path.join(model_dir, CONFIG_FILE)
  with open(path, "w") as f:
    f.write(config.to_json())
  return path


def read_config(model_dir: str) -> MrT5Config:
  path = os.path.join(model_dir, CONFIG_FILE)
  if not os.path.exists(path):
    raise ValueError(f"no {CONFIG_FILE} in {model_dir!r}: not an mrt5-jax model directory")
  with open(path) as f:
    return MrT5Config.from_json(f.read())


def manager(model_dir: str, *, max_to_keep: Optional[int] = None,
            async_save: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager over ``<model_dir>/checkpoints`` with the two items."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                         enable_async_checkpointing=async_save,
                                         create=True)
  return ocp.CheckpointManager(checkpoint_dir(model_dir), options=options,
                               item_names=(STATE, DATA_ITERATOR))


def save(mngr: ocp.CheckpointManager, step: int, state: Mapping[str, Any],
         data_state: Optional[Mapping[str, Any]] = None, *, force: bool = True) -> bool:
  """Save the train state pytree (and the data iterator position) at ``step``."""
  items = {STATE: ocp.args.StandardSave(dict(state))}
  if data_state is not None:
    items[DATA_ITERATOR] = ocp.args.JsonSave(dict(data_state))
  return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def _abstract(tree: Any, shardings: Any = None) -> Any:
  if shardings is None:
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)


def restore(mngr: ocp.CheckpointManager, step: int, target: Mapping[str, Any],
            shardings: Any = None) -> tuple[dict, Optional[dict]]:
  """Restore (state, data_state) at ``step`` into the structure of ``target``.

  ``shardings`` (same tree as target) places every array where the train step
  expects it; without it arrays land on the default device.
  """
  step_dir = os.path.join(str(mngr.directory), str(step))
  items = {STATE: ocp.args.StandardRestore(_abstract(target, shardings))}
  has_data = os.path.isdir(os.path.join(step_dir, DATA_ITERATOR))
  if has_data:
    items[DATA_ITERATOR] = ocp.args.JsonRestore()
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  return dict(restored[STATE]), (dict(restored[DATA_ITERATOR]) if has_data else None)


def latest_step(model_dir: str) -> Optional[int]:
  """The newest complete checkpoint step under ``model_dir``, or None."""
  if not os.path.isdir(checkpoint_dir(model_dir)):
    return None
  with manager(model_dir, async_save=False) as mngr:
    return mngr.latest_step()


def resolve_checkpoint(path: str) -> str:
  """Accept a model dir, its checkpoints dir, or a step dir; return the step's state dir."""
  path = os.path.abspath(path)
  candidates = [path, os.path.join(path, STATE)]
  for candidate in candidates:
    if os.path.basename(candidate) == STATE and os.path.isdir(candidate):
      return candidate
  for root in (checkpoint_dir(path), path):
    if os.path.isdir(root):
      steps = [int(d) for d in os.listdir(root) if d.isdigit()
               and os.path.isdir(os.path.join(root, d, STATE))]
      if steps:
        return os.path.join(root, str(max(steps)), STATE)
  raise ValueError(f"no checkpoint found at {path!r} (expected <model_dir>/checkpoints/<step>/"
                   f"{STATE}/ or a path to one)")


def restore_params(path: str) -> Any:
  """The 'params' tree (numpy, host memory) of the checkpoint at or under ``path``."""
  state_dir = resolve_checkpoint(path)
  with ocp.PyTreeCheckpointer() as ckptr:
    metadata = ckptr.metadata(state_dir)
    tree = getattr(metadata, "item_metadata", None) or metadata
    tree = getattr(tree, "tree", tree)
    if "params" not in tree:
      raise ValueError(f"checkpoint {state_dir!r} has no 'params' entry")
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                          tree["params"])
    restored = ckptr.restore(
        state_dir, args=ocp.args.PyTreeRestore(
            item={"params": tree["params"]}, restore_args={"params": restore_args},
            partial_restore=True))
  return restored["params"]


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


def restore_controller(path: str) -> Optional[dict]:
  """The controller state of a training checkpoint (None for params-only checkpoints)."""
  state_dir = resolve_checkpoint(path)
  with ocp.PyTreeCheckpointer() as ckptr:
    metadata = ckptr.metadata(state_dir)
    tree = getattr(metadata, "item_metadata", None) or metadata
    tree = getattr(tree, "tree", tree)
    mutables = tree.get("flax_mutables") if hasattr(tree, "get") else None
    if not mutables or "controller" not in mutables:
      return None
    sub = {"flax_mutables": {"controller": mutables["controller"]}}
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), sub)
    restored = ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=sub, restore_args=restore_args, partial_restore=True))
  return {k: np.asarray(v) for k, v in restored["flax_mutables"]["controller"].items()}
