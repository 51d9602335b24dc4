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
``state/`` dir. Readers return NumPy arrays in host memory, in the layout
they were saved in (``layers_{i}``, or stacked by ``scan_layers``;
``layer_stacking.to_layout`` / ``like`` bring them into a model's layout).

Integrity (``checkpoint_integrity``): every step the project writes carries
``_INTEGRITY.json`` (sizes and CRC-32 of its files), written before orbax
commits the step. Readers verify a step before using it; a damaged step raises
``DamagedCheckpointError`` naming the step, the file and the newest intact
step. ``restore_newest`` (the trainer's resume) falls back past damaged steps
and moves them to ``<model_dir>/checkpoints_damaged/`` (never deletes them).
A failed save raises one ``CheckpointSaveError`` naming the step and the cause.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import time
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from mrt5_jax import checkpoint_integrity as integrity
from mrt5_jax.checkpoint_integrity import (CheckpointSaveError, Damage,  # noqa: F401
                                           DamagedCheckpointError)
from mrt5_jax.config import MrT5Config

logger = logging.getLogger("mrt5_jax")

STATE = "state"
DATA_ITERATOR = "data_iterator"
CONFIG_FILE = "model_config.json"
PROJECT_DIR = "checkpoints"
T5X_STEP = re.compile(r"^checkpoint_(\d+)$")
PYTREE_METADATA = "_METADATA"
T5X_MSGPACK = "checkpoint"
PARAMS_KEYS = {"project": "params", "t5x": "target"}
DAMAGED_DIR = "checkpoints_damaged"
ON_DAMAGED = ("fall_back", "error")
ORBAX_TMP_MARKER = ".orbax-checkpoint-tmp"


class CheckpointLayoutError(ValueError):
  """The path holds no checkpoint this module knows, or not the expected entries."""


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


_OS_ERROR_CODE = re.compile(r"\[os_error_code='?(\d+)'?\]")
_QUOTED_PATH = re.compile(r'"(/[^"]+)"')


def describe_failure(error: BaseException) -> str:
  """One line for an I/O failure: ``No space left on device [ENOSPC] (path)`` or the message."""
  seen, current = set(), error
  while current is not None and id(current) not in seen:
    seen.add(id(current))
    text = str(current)
    code, path = None, None
    if isinstance(current, OSError) and current.errno:
      code, path = current.errno, current.filename
    elif (match := _OS_ERROR_CODE.search(text)):
      code = int(match.group(1))
      paths = _QUOTED_PATH.findall(text[:match.start()])
      path = paths[-1] if paths else None
    if code:
      name = errno.errorcode.get(code, str(code))
      return f"{os.strerror(code)} [{name}]" + (f" while writing {path}" if path else "")
    current = current.__cause__ or current.__context__
  return _first_line(str(error)) or type(error).__name__


def _first_line(text: str, limit: int = 300) -> str:
  line = text.strip().split("\n")[0].split(" [tensorstore_spec=")[0]
  return line if len(line) <= limit else line[:limit] + "..."


class Manager(ocp.CheckpointManager):
  """orbax's CheckpointManager with the two items, integrity records and clean save errors.

  Every save runs orbax's async checkpointer; ``async_save=False`` waits for
  each save to commit before returning. Process 0 writes the step's integrity
  record after orbax finalizes the items and before it commits the step. A
  failed save (disk full, permission denied, a vanished directory) raises one
  ``CheckpointSaveError`` from ``save`` or ``wait_until_finished`` (and again
  from later calls); ``close`` after it raises nothing. Partial steps of
  earlier runs (``<step>.orbax-checkpoint-tmp``) are removed on start.
  """

  def __init__(self, directory: str, *, max_to_keep: Optional[int] = None,
               async_save: bool = True):
    self._saving: Optional[int] = None
    self._blocking = not async_save
    self.failure: Optional[CheckpointSaveError] = None
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=True, create=True,
        cleanup_tmp_directories=True,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._record,
                                       # a directory that cannot be made fails the save at
                                       # once, not after background writers time out
                                       create_directories_asynchronously=False))
    super().__init__(directory, options=options, item_names=(STATE, DATA_ITERATOR))

  def _record(self) -> None:
    """orbax's post-finalization hook: all items written, the step not yet committed."""
    if jax.process_index() != 0 or self._saving is None:
      return
    directory, step = str(self.directory), self._saving
    pending = [name for name in os.listdir(directory)
               if name.startswith(f"{step}{ORBAX_TMP_MARKER}")]
    step_dir = os.path.join(directory, pending[0] if pending else str(step))
    integrity.write_record(step_dir, step)

  def _failed(self, step: Optional[int], error: Exception) -> CheckpointSaveError:
    self.failure = CheckpointSaveError(step, str(self.directory), describe_failure(error))
    return self.failure

  def save(self, step: int, *args, **kwargs) -> bool:
    self.wait_until_finished()
    self._saving = int(step)
    try:
      saved = super().save(step, *args, **kwargs)
    except CheckpointSaveError:
      raise
    except Exception as error:  # orbax / TensorStore / OS errors of any kind
      raise self._failed(step, error) from error
    if self._blocking:
      self.wait_until_finished()
    return saved

  def wait_until_finished(self) -> None:
    if self.failure is not None:
      raise self.failure
    try:
      super().wait_until_finished()
    except Exception as error:
      raise self._failed(self._saving, error) from error

  def close(self) -> None:
    failed_before = self.failure is not None
    try:
      super().close()
    except CheckpointSaveError:
      if not failed_before:
        raise


def manager(model_dir: str, *, max_to_keep: Optional[int] = None,
            async_save: bool = True) -> Manager:
  """The checkpoint Manager over ``<model_dir>/checkpoints``."""
  return Manager(checkpoint_dir(model_dir), max_to_keep=max_to_keep, async_save=async_save)


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


def all_steps(model_dir: str) -> list[int]:
  """The committed checkpoint steps under ``model_dir``, ascending (partial saves excluded)."""
  return sorted(_numeric_children(checkpoint_dir(model_dir)))


def latest_step(model_dir: str) -> Optional[int]:
  """The newest complete checkpoint step under ``model_dir``, or None."""
  steps = all_steps(model_dir)
  return steps[-1] if steps else None


def move_aside(step_dir: str, step: int, reason: str = "") -> str:
  """Move a damaged step dir to ``<model_dir>/checkpoints_damaged/<step>`` (a new name if
  taken), with ``<step>.txt`` saying why. Returns the new path."""
  aside = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(step_dir))), DAMAGED_DIR)
  os.makedirs(aside, exist_ok=True)
  destination = os.path.join(aside, str(step))
  if os.path.exists(destination):
    destination += time.strftime("-%Y%m%d-%H%M%S")
  os.rename(step_dir, destination)
  with open(destination + ".txt", "w") as f:
    f.write(f"moved from {step_dir} on {time.strftime('%Y-%m-%d %H:%M:%S')}: {reason}\n")
  return destination


def _read_failure(error: BaseException, step_dir: str, default: str = "") -> tuple[str, str]:
  """(file relative to ``step_dir``, reason) of a failed read: the deepest path inside the
  step that the message names, else ``default`` (OCDBT errors name only the array; ``""``
  stands for the step dir itself)."""
  text = str(error)
  root = step_dir.rstrip("/") + "/"
  paths = [p.rstrip("/") for p in _QUOTED_PATH.findall(text) if p.startswith(root)]
  paths = [p for p in paths if p != root.rstrip("/")]
  relative = os.path.relpath(max(paths, key=len), step_dir) if paths else default
  array = re.search(r'Error reading "([^"]+)"', text)
  reason = "cannot be read" + (f" (array {array.group(1)})" if array else "")
  return relative, f"{reason}: {_first_line(text)}"


_READ_DAMAGE = ("Error reading", "DATA_LOSS", "OUT_OF_RANGE", "Truncated", "Not enough data",
                "Failed to decode", "corrupt")


def _is_read_damage(error: BaseException) -> bool:
  """Whether a failed restore failed on the bytes (a missing, short or undecodable file),
  not on a target of another structure or shape."""
  seen, current = set(), error
  while current is not None and id(current) not in seen:
    seen.add(id(current))
    if isinstance(current, (OSError, json.JSONDecodeError)):
      return True
    if any(marker in str(current) for marker in _READ_DAMAGE):
      return True
    current = current.__cause__ or current.__context__
  return False


def restore_newest(mngr: ocp.CheckpointManager, target: Mapping[str, Any], shardings: Any = None,
                   *, on_damaged: str = "fall_back", data_iterator: Any = None
                   ) -> Optional[tuple[int, dict, Optional[dict]]]:
  """(step, state, data_state) of the newest intact step of ``mngr``; None when it has none.

  ``data_iterator`` is moved to the restored step's data position (``restore``).

  Each step, newest first, is verified against its integrity record and then
  restored. A step that fails either is damaged: with ``on_damaged='fall_back'``
  the next older one is tried and, once one restores, the damaged ones are moved
  to ``checkpoints_damaged/`` and one warning line says so; with ``'error'`` a
  DamagedCheckpointError names the step, the file and the newest intact step.
  A step that matches its record but does not restore into ``target`` is not
  damaged (another model or optimizer): that error is raised as is. A step
  without a record is accepted when it restores, with a warning; when it fails
  to read (a missing, short or undecodable file) it is damaged.
  """
  if on_damaged not in ON_DAMAGED:
    raise ValueError(f"on_damaged_checkpoint must be one of {ON_DAMAGED}, got {on_damaged!r}")
  directory = str(mngr.directory)
  damaged: list[Damage] = []
  for step in sorted(mngr.all_steps(), reverse=True):
    step_dir = os.path.join(directory, str(step))
    try:
      recorded = integrity.verify(step_dir, step)
    except DamagedCheckpointError as error:
      damaged.extend(error.damages)
      continue
    if damaged and on_damaged == "error":
      raise DamagedCheckpointError(damaged, step, _by_hand(damaged, step))
    try:
      state, data_state = restore(mngr, step, target, shardings, data_iterator=data_iterator)
    except Exception as error:
      if recorded or not _is_read_damage(error):
        raise
      damaged.append(Damage(step, step_dir, *_read_failure(error, step_dir, STATE)))
      continue
    if not recorded:
      logger.warning("checkpoint step %d has no integrity record (written before records "
                     "existed, or copied without one): it restored, but flipped bytes cannot "
                     "be ruled out", step)
    if damaged:
      _set_aside(mngr, damaged, step)
    return step, state, data_state
  if damaged:
    raise DamagedCheckpointError(damaged, None, _by_hand(damaged, None))
  return None


def _by_hand(damaged: list[Damage], intact: Optional[int]) -> str:
  steps = " ".join(damage.step_dir for damage in damaged)
  aside = os.path.join(os.path.dirname(os.path.dirname(damaged[0].step_dir)), DAMAGED_DIR)
  if intact is None:
    return (f"No intact checkpoint is left and nothing was moved; to start over, move them "
            f"aside (mkdir -p {aside} && mv {steps} {aside}/)")
  return (f"The newest intact step is {intact}; to resume from it, move the damaged step "
          f"aside (mkdir -p {aside} && mv {steps} {aside}/), or let mrt5-train do that with "
          "--gin.train.on_damaged_checkpoint=fall_back")


def _set_aside(mngr: ocp.CheckpointManager, damaged: list[Damage], resume_step: int) -> None:
  moved = []
  for damage in damaged:
    if jax.process_index() == 0:
      destination = move_aside(damage.step_dir, damage.step, damage.describe())
    else:
      destination = os.path.join(os.path.dirname(os.path.dirname(damage.step_dir)),
                                 DAMAGED_DIR, str(damage.step))
    moved.append(f"step {damage.step} is damaged ({damage.describe()}), moved to {destination}")
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("mrt5_jax.checkpoints.set_aside")
  mngr.reload()
  logger.warning("checkpoint %s; resuming from step %d", "; ".join(moved), resume_step)


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
    raise CheckpointLayoutError(
        f"{step_dir!r} holds no orbax pytree checkpoint (no {PYTREE_METADATA} file there or in "
        "one sub-directory); unknown checkpoint layout")
  raise CheckpointLayoutError(f"{step_dir!r} holds several orbax items {items}; cannot tell "
                              "which one holds the params")


def _is_tensorstore_spec(value: Any) -> bool:
  return isinstance(value, dict) and {"driver", "kvstore"} <= set(value)


class _UnreadableFile(Exception):
  """A file of a step (``relative`` to the step dir) that its reader could not use."""

  def __init__(self, relative: str, message: str):
    super().__init__(message)
    self.relative = relative


def _read_tensorstore(spec: dict, step_dir: str) -> np.ndarray:
  """Read one zarr array of a t5x msgpack checkpoint; its path is relative to the step dir."""
  import tensorstore as ts
  spec = dict(spec)
  relative = spec["kvstore"].get("path") or spec.pop("path", None)
  if relative is None:
    raise CheckpointLayoutError(f"TensorStore spec without a path in {step_dir!r}: {spec}")
  spec["kvstore"] = {"driver": "file", "path": os.path.join(step_dir, relative)}
  try:
    return ts.open(spec, open=True).result().read().result()
  except Exception as error:  # tensorstore raises ValueError / its own status errors
    raise _UnreadableFile(relative.rstrip("/"), str(error)) from error


def _is_t5x_msgpack(location: Location) -> bool:
  step_dir = location.step_dir
  return (location.layout == "t5x" and os.path.isfile(os.path.join(step_dir, T5X_MSGPACK))
          and not os.path.exists(os.path.join(step_dir, PYTREE_METADATA)))


def _restore_t5x_msgpack(step_dir: str, key: str) -> Optional[dict]:
  """One top-level entry (``target``, ``flax_mutables``) of t5x's msgpack format."""
  from flax import serialization
  try:
    with open(os.path.join(step_dir, T5X_MSGPACK), "rb") as f:
      contents = serialization.msgpack_restore(f.read())
  except Exception as error:  # msgpack's own errors for truncated or altered bytes
    raise _UnreadableFile(T5X_MSGPACK, f"not a valid msgpack file ({error})") from error
  state = contents.get("optimizer", contents) if isinstance(contents, dict) else None
  if not isinstance(state, dict):
    raise _UnreadableFile(T5X_MSGPACK, f"not a mapping ({type(contents).__name__})")
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


def _params_at(location: Location) -> dict:
  key = PARAMS_KEYS[location.layout]
  params = _restore_entry(location, key)
  if params is None:
    raise CheckpointLayoutError(
        f"{location.step_dir!r} is a {location.layout} checkpoint but has no {key!r} entry at "
        "the top of its tree; unknown checkpoint layout")
  if set(params) == {"params"}:  # a saved flax variables dict
    params = params["params"]
  return jax.tree_util.tree_map(np.asarray, params)


# ----------------------------------------------------------------------------- verified reads

_VERIFIED: dict[str, tuple] = {}


def _signature(step_dir: str) -> tuple:
  """(path, size, mtime) of every file: a step verified once is not hashed again unchanged."""
  entries = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      stat = os.stat(os.path.join(root, name))
      entries.append((os.path.join(root, name), stat.st_size, stat.st_mtime_ns))
  return tuple(sorted(entries))


def _check_structure(location: Location) -> None:
  """A step without an integrity record: its orbax tree metadata must parse."""
  if _is_t5x_msgpack(location):
    return
  tree_dir = (os.path.join(location.step_dir, STATE) if location.layout == "project"
              and os.path.isdir(os.path.join(location.step_dir, STATE))
              else _pytree_dir(location.step_dir))
  metadata = os.path.join(tree_dir, PYTREE_METADATA)
  try:
    with open(metadata) as f:
      json.load(f)
  except (OSError, ValueError) as error:
    raise DamagedCheckpointError([Damage(
        location.step, location.step_dir, os.path.relpath(metadata, location.step_dir),
        f"orbax tree metadata unreadable ({error})")]) from None


def verify(location: Location) -> bool:
  """Check a step before use: against its integrity record (True), or, lacking one
  (t5x, older steps), its structure (False). Raises DamagedCheckpointError."""
  signature = _signature(location.step_dir)
  if _VERIFIED.get(location.step_dir) == signature:
    return True
  if not integrity.verify(location.step_dir, location.step):
    _check_structure(location)
    return False
  _VERIFIED[location.step_dir] = signature
  return True


def _siblings(location: Location) -> dict[int, str]:
  if location.model_dir is None:
    return {}
  if location.layout == "project":
    return _numeric_children(checkpoint_dir(location.model_dir))
  return _t5x_children(location.model_dir)


def newest_intact(location: Location, exclude: int) -> Optional[int]:
  """The newest other step beside ``location`` that verifies (and, lacking a record, whose
  params read), or None."""
  for step, step_dir in sorted(_siblings(location).items(), reverse=True):
    if step == exclude:
      continue
    candidate = Location(location.layout, step_dir, step, location.model_dir)
    try:
      if not verify(candidate):
        _params_at(candidate)
      return step
    except Exception:  # any failure: not intact
      continue
  return None


def _read(location: Location, read: Callable[[], Any]) -> Any:
  """``read()`` after verifying the step. Damage found by either raises a
  DamagedCheckpointError naming the step, the file and the newest intact step."""
  try:
    verify(location)
    try:
      return read()
    except (CheckpointLayoutError, DamagedCheckpointError):
      raise
    except _UnreadableFile as error:
      damage = Damage(location.step, location.step_dir,
                      *_read_failure(error, location.step_dir, error.relative))
      raise DamagedCheckpointError([damage]) from error
    except Exception as error:  # orbax / TensorStore errors of a damaged step
      default = STATE if location.layout == "project" else ""
      damage = Damage(location.step, location.step_dir,
                      *_read_failure(error, location.step_dir, default))
      raise DamagedCheckpointError([damage]) from error
  except DamagedCheckpointError as error:
    raise DamagedCheckpointError(error.damages, newest_intact(location, error.step)) from None


def restore_params(path: str, step: Optional[int] = None) -> dict:
  """The params (NumPy) of the checkpoint at or under ``path``, any layout, verified."""
  location = locate(path, step)
  return _read(location, lambda: _params_at(location))


def restore_controller(path: str, step: Optional[int] = None) -> Optional[dict]:
  """The deletion controller's state of a training checkpoint (None when it has none:
  params-only checkpoints, or a run without the controller collection)."""
  location = locate(path, step)
  mutables = _read(location, lambda: _restore_entry(location, "flax_mutables"))
  if not mutables or "controller" not in mutables:
    return None
  return {k: np.asarray(v) for k, v in mutables["controller"].items()}


def read_checkpoint(path: str, step: Optional[int] = None) -> Checkpoint:
  """Params and model config of the checkpoint at or under ``path`` (newest step unless
  ``step``), verified before use."""
  location = locate(path, step)
  params = _read(location, lambda: _params_at(location))
  return Checkpoint(params=params, config=find_config(location.model_dir),
                    layout=location.layout, step=location.step, path=location.step_dir)
