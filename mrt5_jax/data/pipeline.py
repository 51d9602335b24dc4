"""seqio task/mixture -> feature-converted numpy batches, resumable without replay.

The global batch is split into ``num_shards`` data shards, each its own
seqio pipeline (``seqio.ShardInfo``) giving ``batch_size / num_shards`` rows;
a process reads a contiguous block of shards and stacks their rows. The data
order therefore depends on the number of shards, not on the number of
processes: one process reading two shards sees the same global batches as two
processes reading one each.

Checkpoints hold each shard's tf.data iterator state (``tf.train.Checkpoint``,
as t5x saves its dataset iterator), written by the process that reads the
shard, plus a JSON position (batches consumed). Resuming restores the
iterators, so nothing is read again; a checkpoint without iterator state (older
runs, or a pipeline tf.data cannot serialise, such as ``from_generator``)
falls back to rebuilding the deterministic pipeline and skipping the consumed
batches.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from typing import Any, Mapping, Optional

import gin
import numpy as np
import seqio
import tensorflow as tf

from mrt5_jax import tasks
from mrt5_jax.data import iterator_checkpoint

logger = logging.getLogger("mrt5_jax")

FEATURE_CONVERTERS = ("enc_dec",)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """What one train or eval stream reads (t5x's DatasetConfig, trimmed).

  task_feature_lengths: {'inputs': L, 'targets': T}; bind e.g.
    ``@mrt5_jax.tasks.feature_lengths()`` for span corruption.
  batch_size: global batch size (all data-parallel replicas together).
  module: imported first so that its tasks are registered.
  num_shards: data shards the global batch is read from (None: one per
    process); a multiple of the number of processes, dividing batch_size.
    Keep it fixed to resume on another number of processes.
  """
  mixture_or_task_name: str = "mrt5.span_corruption.sample"
  task_feature_lengths: Optional[Mapping[str, int]] = None
  split: str = "train"
  batch_size: int = 8
  shuffle: bool = True
  seed: Optional[int] = 0
  pack: bool = False
  use_cached: bool = False
  num_epochs: Optional[int] = None
  module: Optional[str] = "mrt5_jax.tasks"
  num_shards: Optional[int] = None

  def __post_init__(self):
    if self.batch_size < 1:
      raise ValueError(f"DatasetConfig.batch_size must be >= 1, got {self.batch_size}")
    if self.num_shards is not None and self.num_shards < 1:
      raise ValueError(f"DatasetConfig.num_shards must be >= 1, got {self.num_shards}")


def import_task_module(config: DatasetConfig) -> None:
  if config.module:
    importlib.import_module(config.module)


def resolve_feature_lengths(config: DatasetConfig) -> dict[str, int]:
  lengths = config.task_feature_lengths
  if lengths is None:
    import_task_module(config)
    lengths = tasks.feature_lengths()
  if set(lengths) != {"inputs", "targets"}:
    raise ValueError(f"task_feature_lengths must have keys 'inputs' and 'targets', got {lengths}")
  return {k: int(v) for k, v in lengths.items()}


def get_task(config: DatasetConfig):
  import_task_module(config)
  try:
    return seqio.get_mixture_or_task(config.mixture_or_task_name)
  except ValueError as e:
    raise ValueError(f"unknown seqio task or mixture {config.mixture_or_task_name!r} "
                     f"(registered by importing {config.module!r}): {e}") from None


def get_dataset(config: DatasetConfig, *, shard_id: int = 0, num_shards: int = 1,
                batches_to_skip: int = 0):
  """A tf.data.Dataset of one shard's batches (batch_size / num_shards rows each)."""
  task = get_task(config)
  if config.split not in task.splits:
    raise ValueError(f"{config.mixture_or_task_name!r} has no split {config.split!r}; "
                     f"it has {tuple(task.splits)}")
  if config.batch_size % num_shards:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by {num_shards} hosts")
  ds = seqio.get_dataset(
      config.mixture_or_task_name,
      task_feature_lengths=resolve_feature_lengths(config),
      dataset_split=config.split,
      shuffle=config.shuffle,
      num_epochs=config.num_epochs,
      feature_converter=seqio.EncDecFeatureConverter(pack=config.pack),
      shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards) if num_shards > 1 else None,
      verbose=False,
      use_cached=config.use_cached,
      seed=config.seed)
  ds = ds.batch(config.batch_size // num_shards, drop_remainder=True)
  if batches_to_skip:
    ds = ds.skip(batches_to_skip)
  return ds


def process_shards(config: DatasetConfig, process_index: int, process_count: int
                   ) -> tuple[int, range]:
  """(num_shards, the shard ids process ``process_index`` reads)."""
  num_shards = config.num_shards or process_count
  if num_shards % process_count:
    raise ValueError(f"DatasetConfig.num_shards={num_shards} is not a multiple of the "
                     f"{process_count} processes")
  if config.batch_size % num_shards:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by {num_shards} data "
                     "shards (DatasetConfig.num_shards, default: one per process)")
  per_process = num_shards // process_count
  return num_shards, range(process_index * per_process, (process_index + 1) * per_process)


def shard_file(shard_id: int, num_shards: int) -> str:
  """The tf.train.Checkpoint prefix of one shard's iterator inside the data_iterator item."""
  return f"shard_{shard_id:05d}-of-{num_shards:05d}"


def _serialisable(dataset):
  """Saving the iterator fails (instead of silently losing state) on Python-side sources."""
  options = tf.data.Options()
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.FAIL
  return dataset.with_options(options)


class BatchIterator:
  """One process's numpy batches: its data shards' rows, stacked in shard order.

  ``state()`` is the JSON position; ``save_iterators`` / ``restore_iterators``
  write and read the tf.data iterator state of this process's shards (see the
  module docstring).
  """

  def __init__(self, config: DatasetConfig, *, process_index: int = 0, process_count: int = 1):
    self.config = config
    self.batches_consumed = 0
    self.num_shards, self.shard_ids = process_shards(config, process_index, process_count)
    self._iterators = [iter(_serialisable(get_dataset(config, shard_id=shard,
                                                      num_shards=self.num_shards)))
                       for shard in self.shard_ids]
    self._unserialisable: Optional[str] = None

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [next(iterator) for iterator in self._iterators]
    self.batches_consumed += 1
    if len(parts) == 1:
      return {name: value.numpy() for name, value in parts[0].items()}
    return {name: np.concatenate([part[name].numpy() for part in parts])
            for name in parts[0]}

  def skip(self, batches: int) -> None:
    """Read and drop ``batches`` batches (the fallback when there is no iterator state)."""
    for _ in range(int(batches)):
      for iterator in self._iterators:
        next(iterator)
      self.batches_consumed += 1

  def state(self) -> dict[str, Any]:
    return {"batches_consumed": self.batches_consumed,
            "mixture_or_task_name": self.config.mixture_or_task_name,
            "seed": self.config.seed, "batch_size": self.config.batch_size,
            "num_shards": self.num_shards,
            "iterator_state": self._unserialisable is None}

  def save_iterators(self, directory: str) -> bool:
    """Write this process's shard iterators into ``directory``; False when tf.data cannot."""
    if self._unserialisable is not None:
      return False
    try:
      for shard, iterator in zip(self.shard_ids, self._iterators):
        tf.train.Checkpoint(iterator=iterator).write(
            os.path.join(directory, shard_file(shard, self.num_shards)))
    except (tf.errors.FailedPreconditionError, tf.errors.UnimplementedError) as error:
      self._unserialisable = str(error).splitlines()[0]
      logger.warning("the data pipeline of %r cannot be checkpointed (%s); checkpoints keep "
                     "only the position and a resume replays the consumed batches",
                     self.config.mixture_or_task_name, self._unserialisable)
      for name in os.listdir(directory):
        if name.startswith("shard_"):
          os.remove(os.path.join(directory, name))
      return False
    return True

  def restore_iterators(self, directory: str, position: Mapping[str, Any]) -> str:
    """Continue from a checkpoint's data state: its iterators, else by replaying.

    Returns how: ``"iterator"`` or ``"replay"``.
    """
    saved_shards = position.get("num_shards")
    if saved_shards is not None and saved_shards != self.num_shards:
      raise ValueError(f"the checkpoint's data was read in {saved_shards} shards, this run reads "
                       f"{self.num_shards}: set DatasetConfig.num_shards = {saved_shards} to "
                       "continue the same data stream")
    consumed = int(position.get("batches_consumed", 0))
    prefixes = [os.path.join(directory, shard_file(shard, self.num_shards))
                for shard in self.shard_ids]
    if position.get("iterator_state", False) and all(
        os.path.exists(prefix + ".index") for prefix in prefixes):
      for prefix, iterator in zip(prefixes, self._iterators):
        tf.train.Checkpoint(iterator=iterator).read(prefix).assert_consumed()
      self.batches_consumed = consumed
      return "iterator"
    logger.warning("no data iterator state in %s: replaying %d batches to reach the position",
                   directory, consumed)
    self.skip(consumed)
    return "replay"

  def checkpoint_args(self):
    """orbax save args of the ``data_iterator`` item (``mrt5_jax.data.iterator_checkpoint``)."""
    return iterator_checkpoint.DataIteratorSave(self)

  def restore_args(self):
    return iterator_checkpoint.DataIteratorRestore(self)
