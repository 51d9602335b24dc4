"""Span corruption over plain UTF-8 text files.

``mrt5.span_corruption.text`` reads the files bound with gin::

  mrt5_jax.tasks.text_files.train = ['/data/corpus/*.txt']
  mrt5_jax.tasks.text_files.validation = ['/data/heldout.txt']

With neither bound it reads the sample corpus shipped in ``tasks/data``
(short original paragraphs in the 15 languages of the paper), which
``mrt5.span_corruption.sample`` always reads (all languages in one stream).
``mrt5.span_corruption.sample.<lang>`` reads one language, and the mixture
``mrt5.span_corruption.sample.multilingual15`` groups the 15, so that
evaluation reports the sample corpus per language. Each line is a document; its
newline is kept, so the byte stream is the file's.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Mapping, Optional, Sequence, Union

import gin
import numpy as np
import seqio
import tensorflow as tf

from . import mc4
from . import metrics
from . import registration

TEXT_TASK = "mrt5.span_corruption.text"
SAMPLE_TASK = "mrt5.span_corruption.sample"
SAMPLE_LANGUAGES = mc4.LANGUAGES
SAMPLE_MIXTURE = f"{SAMPLE_TASK}.multilingual15"
SPLITS = ("train", "validation")
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

Patterns = Union[str, Sequence[str]]


def sample_corpus_files(split: str, language: str = "*") -> Sequence[str]:
  """Glob of the shipped sample corpus for ``split`` ('train'/'validation'),
  all languages or one."""
  if split not in SPLITS:
    raise ValueError(f"sample corpus split must be one of {SPLITS}, got "
                     f"{split!r}")
  return (os.path.join(DATA_DIR, f"sample-{language}-{split}.txt"),)


def sample_task_name(language: str) -> str:
  return f"{SAMPLE_TASK}.{language}"


def _as_tuple(patterns: Patterns) -> Sequence[str]:
  return (patterns,) if isinstance(patterns, (str, os.PathLike)) else tuple(
      patterns)


@gin.configurable(module="mrt5_jax.tasks")
def text_files(train: Optional[Patterns] = None,
               validation: Optional[Patterns] = None
              ) -> Dict[str, Optional[Sequence[str]]]:
  """File globs per split of ``mrt5.span_corruption.text``.

  Neither bound: the sample corpus. One bound: the other split is None
  (asking for it raises).
  """
  if train is None and validation is None:
    return {split: sample_corpus_files(split) for split in SPLITS}
  return {"train": None if train is None else _as_tuple(train),
          "validation": None if validation is None else _as_tuple(validation)}


def _read_lines(path: tf.Tensor) -> tf.data.Dataset:
  return tf.data.TextLineDataset(path).map(
      lambda line: {"text": tf.strings.join([line, "\n"])})


class TextFilesDataSource(seqio.DataSource):
  """Lines of text files as {"text": line + newline}; globs resolve late."""

  def __init__(self, patterns_fn: Callable[[], Mapping[str,
                                                      Optional[Sequence[str]]]],
               splits: Sequence[str] = SPLITS):
    self._patterns_fn = patterns_fn
    super().__init__(splits=splits, caching_permitted=True)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def __repr__(self):
    return f"{self.__class__.__name__}(patterns_fn={self._patterns_fn})"

  def list_shards(self, split: str) -> Sequence[str]:
    if split not in self.splits:
      raise ValueError(f"Unknown split '{split}' of {TEXT_TASK}; splits: "
                       f"{', '.join(self.splits)}")
    patterns = self._patterns_fn().get(split)
    if not patterns:
      raise ValueError(
          f"No text files configured for split '{split}': bind "
          f"mrt5_jax.tasks.text_files.{split} = ['/path/*.txt'] in gin.")
    files = seqio.utils.list_files(patterns)
    if not files:
      raise FileNotFoundError(
          f"No file matches {list(patterns)} (split '{split}'; gin "
          f"mrt5_jax.tasks.text_files.{split}).")
    return files

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None, shard_info=None, *,
                  sequence_length=None, use_cached=False,
                  num_epochs=1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    files = self.list_shards(split)
    if shard_info and shard_info.num_shards > 1:
      if len(files) < shard_info.num_shards:
        raise ValueError(f"{len(files)} text files cannot be split into "
                         f"{shard_info.num_shards} input shards.")
      files = files[shard_info.index::shard_info.num_shards]
    files_ds = tf.data.Dataset.from_tensor_slices(np.array(files, dtype=str))
    if shuffle:
      files_ds = files_ds.shuffle(len(files), seed=seed)
    return files_ds.interleave(_read_lines, cycle_length=16, block_length=16,
                               num_parallel_calls=tf.data.AUTOTUNE,
                               deterministic=True)


def _register():
  registration.add_task(
      TEXT_TASK,
      source=TextFilesDataSource(text_files),
      preprocessors=registration.span_corruption_preprocessors("text"),
      output_features=registration.OUTPUT_FEATURES,
      metric_fns=list(metrics.SPAN_CORRUPTION_METRICS))
  registration.add_task(
      SAMPLE_TASK,
      source=TextFilesDataSource(
          lambda: {split: sample_corpus_files(split) for split in SPLITS}),
      preprocessors=registration.span_corruption_preprocessors("text"),
      output_features=registration.OUTPUT_FEATURES,
      metric_fns=list(metrics.SPAN_CORRUPTION_METRICS))
  for language in SAMPLE_LANGUAGES:
    registration.add_task(
        sample_task_name(language),
        source=TextFilesDataSource(
            lambda language=language: {split: sample_corpus_files(split, language)
                                       for split in SPLITS}),
        preprocessors=registration.span_corruption_preprocessors("text"),
        output_features=registration.OUTPUT_FEATURES,
        metric_fns=list(metrics.SPAN_CORRUPTION_METRICS))
  registration.add_mixture(SAMPLE_MIXTURE,
                           [(sample_task_name(lang), 1.0) for lang in SAMPLE_LANGUAGES])


_register()
