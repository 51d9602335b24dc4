"""The ``data_iterator`` item of a training checkpoint, as an orbax handler.

Layout of ``<step>/data_iterator/``:
  ``metadata``                           JSON position (``BatchIterator.state()``),
                                         written by the primary process; the
                                         same file orbax's JsonCheckpointHandler
                                         reads, so older readers still work
  ``shard_<i>-of-<n>.{index,data-*}``    tf.data iterator state of data shard i,
                                         written by the process that reads it

Restoring hands the directory to ``BatchIterator.restore_iterators``, which
continues from the saved iterators (or, for a checkpoint without them,
replays). Without an iterator to restore into, only the JSON is returned.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

from etils import epath
import jax
import orbax.checkpoint as ocp

POSITION_FILE = "metadata"


class DataIteratorHandler(ocp.CheckpointHandler):
  """Saves and restores a ``mrt5_jax.data.pipeline.BatchIterator`` (see the module docstring)."""

  def __init__(self, primary_host: int = 0):
    self._primary_host = primary_host

  def save(self, directory: epath.Path, args: "DataIteratorSave") -> None:
    iterator = args.iterator
    iterator.save_iterators(str(directory))
    if jax.process_index() == self._primary_host:
      (directory / POSITION_FILE).write_text(json.dumps(iterator.state()))

  def restore(self, directory: epath.Path,
              args: Optional["DataIteratorRestore"] = None) -> dict[str, Any]:
    path = directory / POSITION_FILE
    if not path.exists():
      raise FileNotFoundError(f"data iterator position {path} not found")
    position = json.loads(path.read_text())
    if args is not None and args.iterator is not None:
      position["resumed_by"] = args.iterator.restore_iterators(str(directory), position)
    return position


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
  iterator: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
  iterator: Any = None
