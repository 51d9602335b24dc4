"""Writing training checkpoints: the orbax manager with integrity records, and resuming
past damaged steps (``restore_newest``), which are moved aside, never deleted."""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from mrt5_jax.checkpointing import integrity
from mrt5_jax.checkpointing.integrity import CheckpointSaveError, Damage, DamagedCheckpointError
from mrt5_jax.model.config import MrT5Config
from mrt5_jax.checkpointing.config_files import checkpoint_dir, write_config
from mrt5_jax.checkpointing.readers import STATE, _QUOTED_PATH, _first_line, _numeric_children, _read_failure

logger = logging.getLogger("mrt5_jax")


DATA_ITERATOR = "data_iterator"


DAMAGED_DIR = "checkpoints_damaged"


ON_DAMAGED = ("fall_back", "error")


ORBAX_TMP_MARKER = ".orbax-checkpoint-tmp"


_OS_ERROR_CODE = re.compile(r"\[os_error_code='?(\d+)'?\]")


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
    multihost_utils.sync_global_devices("mrt5_jax.checkpointing.writer.set_aside")
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
