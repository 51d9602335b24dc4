"""One reader for every checkpoint layout (project orbax, t5x orbax, t5x msgpack + TensorStore).

Checkpoints: the project's orbax layout for training, and one reader for every layout.

Layouts read (``locate`` tells them apart):
  project  ``<model_dir>/checkpoints/<step>/state/``  orbax pytree {'params', 'step'[,
           'opt_state', 'flax_mutables': {'controller': ...}]}, written by the
           trainer and by ``mrt5-convert from-pytorch`` (params and step only);
           ``<model_dir>/checkpoints/<step>/data_iterator/`` JSON position (and,
           written by the trainer, tf.data iterator state: mrt5_jax.data.iterator_checkpoint);
           ``<model_dir>/model_config.json`` (``MrT5Config.to_json()``).
  t5x      ``<model_dir>/checkpoint_<step>/`` holding {'target': params, 'state': ...},
           either an orbax pytree or t5x's own format (a msgpack file
           ``checkpoint`` whose large arrays are TensorStore specs of zarr
           arrays beside it); no model config.
A path may be a model dir, its ``checkpoints/`` dir, a step dir, or a step's
``state/`` dir. Readers return NumPy arrays in host memory, in the layout
they were saved in (``layers_{i}``, or stacked by ``scan_layers``;
``layer_stacking.to_layout`` / ``like`` bring them into a model's layout).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from mrt5_jax.checkpointing import integrity
from mrt5_jax.checkpointing.integrity import Damage, DamagedCheckpointError
from mrt5_jax.model.config import MrT5Config
from mrt5_jax.checkpointing.config_files import PROJECT_DIR, checkpoint_dir, find_config

logger = logging.getLogger("mrt5_jax")


STATE = "state"


T5X_STEP = re.compile(r"^checkpoint_(\d+)$")


PYTREE_METADATA = "_METADATA"


T5X_MSGPACK = "checkpoint"


PARAMS_KEYS = {"project": "params", "t5x": "target"}


class CheckpointLayoutError(ValueError):
  """The path holds no checkpoint this module knows, or not the expected entries."""


_QUOTED_PATH = re.compile(r'"(/[^"]+)"')


def _first_line(text: str, limit: int = 300) -> str:
  line = text.strip().split("\n")[0].split(" [tensorstore_spec=")[0]
  return line if len(line) <= limit else line[:limit] + "..."


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
