"""seqio task/mixture -> feature-converted numpy batches, with a resumable position.

The position saved in checkpoints is the number of batches consumed. Resuming
rebuilds the (deterministically seeded) pipeline and skips that many batches,
so a resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Iterator, Mapping, Optional

import gin
import numpy as np
import seqio

FEATURE_CONVERTERS = ("enc_dec",)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """What one train or eval stream reads (t5x's DatasetConfig, trimmed).

  task_feature_lengths: {'inputs': L, 'targets': T}; bind e.g.
    ``@mrt5_jax.tasks.feature_lengths()`` for span corruption.
  batch_size: global batch size (all data-parallel replicas together).
  module: imported first so that its tasks are registered.
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

  def __post_init__(self):
    if self.batch_size < 1:
      raise ValueError(f"DatasetConfig.batch_size must be >= 1, got {self.batch_size}")


def import_task_module(config: DatasetConfig) -> None:
  if config.module:
    importlib.import_module(config.module)


def resolve_feature_lengths(config: DatasetConfig) -> dict[str, int]:
  lengths = config.task_feature_lengths
  if lengths is None:
    import_task_module(config)
    from mrt5_jax import tasks
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
  """A tf.data.Dataset of host-local batches of the encoder-decoder features."""
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


class BatchIterator:
  """Numpy batches plus the count consumed (the checkpointed data position)."""

  def __init__(self, config: DatasetConfig, *, shard_id: int = 0, num_shards: int = 1,
               batches_consumed: int = 0):
    self.config = config
    self.batches_consumed = int(batches_consumed)
    self._dataset = get_dataset(config, shard_id=shard_id, num_shards=num_shards,
                                batches_to_skip=self.batches_consumed)
    self._iterator: Iterator[Mapping[str, np.ndarray]] = self._dataset.as_numpy_iterator()

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    self.batches_consumed += 1
    return dict(batch)

  def state(self) -> dict[str, Any]:
    return {"batches_consumed": self.batches_consumed,
            "mixture_or_task_name": self.config.mixture_or_task_name,
            "seed": self.config.seed, "batch_size": self.config.batch_size}
