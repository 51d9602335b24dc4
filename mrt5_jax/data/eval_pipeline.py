"""Evaluation batches: one epoch of a split, task by task, the last batch padded.

Batches keep the eval batch size; the last one is filled up with all-pad rows
(which no metric counts), so a split smaller than a batch is evaluated whole.
"""
from __future__ import annotations

import itertools
import re
from typing import Iterator, Optional

import numpy as np
import seqio

from mrt5_jax.data import pipeline as data_lib

_LANGUAGE = re.compile(r"^[a-z]{2,3}$")


def leaf_tasks(dataset: data_lib.DatasetConfig) -> list[str]:
  """Names of the tasks of ``dataset``'s mixture (or its one task), in mixture order."""
  task_or_mixture = data_lib.get_task(dataset)
  return [task.name for task in seqio.get_subtasks(task_or_mixture)]


def padded_batches(dataset: data_lib.DatasetConfig, num_batches: Optional[int], *,
                   shard_id: int = 0, num_shards: int = 1
                   ) -> Iterator[tuple[dict[str, np.ndarray], int]]:
  """(batch, real rows) over one epoch of ``dataset``'s split, at most ``num_batches``.

  Every batch has ``batch_size // num_shards`` rows; the last one is filled
  up with all-pad rows.
  """
  task = data_lib.get_task(dataset)
  if dataset.split not in task.splits:
    raise ValueError(f"{dataset.mixture_or_task_name!r} has no split {dataset.split!r}; "
                     f"it has {tuple(task.splits)}")
  rows = dataset.batch_size // num_shards
  ds = seqio.get_dataset(
      dataset.mixture_or_task_name,
      task_feature_lengths=data_lib.resolve_feature_lengths(dataset),
      dataset_split=dataset.split, shuffle=dataset.shuffle, num_epochs=1,
      feature_converter=seqio.EncDecFeatureConverter(pack=dataset.pack),
      shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards) if num_shards > 1 else None,
      verbose=False, use_cached=dataset.use_cached, seed=dataset.seed)
  batches = ds.batch(rows).as_numpy_iterator()
  if num_batches is not None:
    batches = itertools.islice(batches, num_batches)
  for batch in batches:
    real = len(next(iter(batch.values())))
    if real < rows:
      batch = {k: np.concatenate([v, np.zeros((rows - real,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield dict(batch), real


def language_of(task_name: str) -> str:
  """The language code ending a task name ('' when the name ends otherwise)."""
  last = task_name.rsplit(".", 1)[-1]
  return last if _LANGUAGE.match(last) else ""
