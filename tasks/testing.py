"""Writes a tiny prepared TFDS ``c4/multilingual`` for tests and smoke runs.

The layout is what ``tfds build`` writes (``<data_dir>/c4/multilingual/<version>/``
with ``dataset_info.json``, ``features.json`` and TFRecord shards), so the
mC4 tasks read it exactly as they read the real dataset. Documents are the
lines of the shipped sample corpus, in the language of each split.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence

import tensorflow as tf
import tensorflow_datasets as tfds

from . import mc4
from . import text_files


def sample_documents(language: str, split: str) -> Sequence[str]:
  """Lines of ``sample-<language>-<split>.txt`` (split: train/validation)."""
  path = os.path.join(text_files.DATA_DIR, f"sample-{language}-{split}.txt")
  with open(path, encoding="utf-8") as f:
    return [line.rstrip("\n") for line in f if line.strip()]


def write_mc4_fixture(data_dir: str,
                      languages: Iterable[str] = mc4.LANGUAGES,
                      version: Optional[str] = None) -> str:
  """Writes splits ``<lang>`` and ``<lang>-validation``; returns the dataset dir."""
  version = version or mc4.DEFAULT_VERSION
  builder = tfds.builder(f"c4/multilingual:{version}", data_dir=data_dir)
  os.makedirs(builder.data_dir, exist_ok=True)
  template = tfds.core.ShardedFileTemplate(
      data_dir=builder.data_dir, dataset_name="c4", filetype_suffix="tfrecord",
      template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}")
  features = builder.info.features
  split_infos = []
  for language in languages:
    for tfds_split, corpus_split in ((language, "train"),
                                     (f"{language}-validation", "validation")):
      documents = sample_documents(language, corpus_split)
      path = template.replace(split=tfds_split).sharded_filepath(
          shard_index=0, num_shards=1)
      num_bytes = 0
      with tf.io.TFRecordWriter(os.fspath(path)) as writer:
        for i, text in enumerate(documents):
          record = features.serialize_example({
              "text": text, "url": f"https://example.invalid/{language}/{i}",
              "content-type": "text/plain",
              "content-length": str(len(text.encode("utf-8"))),
              "timestamp": "2024-01-01T00:00:00Z"})
          num_bytes += len(record)
          writer.write(record)
      split_infos.append(tfds.core.SplitInfo(
          name=tfds_split, shard_lengths=[len(documents)], num_bytes=num_bytes,
          filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(split_infos))
  builder.info.write_to_directory(builder.data_dir)
  return os.fspath(builder.data_dir)
