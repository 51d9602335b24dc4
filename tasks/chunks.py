"""Turns tokenized documents into raw chunks of a fixed length (tf.data).

The three steps of T5's span-corruption input pipeline: pick one random
window of at most ``max_length`` tokens per document, concatenate documents
in groups (so few chunks are short), and cut the stream into chunks of the
raw length that span corruption needs.
"""
from __future__ import annotations

import seqio
import tensorflow as tf

DEFAULT_MAX_DOCUMENT_TOKENS = 65536
DEFAULT_DOCUMENTS_PER_GROUP = 128


def drop_empty(dataset: tf.data.Dataset, feature_key: str) -> tf.data.Dataset:
  """Removes examples whose ``feature_key`` has no tokens."""
  return dataset.filter(lambda x: tf.size(x[feature_key]) > 0)


@seqio.map_over_dataset(num_seeds=1)
def _random_window(x, seed, feature_key, max_length):
  tokens = x[feature_key]
  num_tokens = tf.size(tokens)
  num_windows = (num_tokens + max_length - 1) // max_length
  start = max_length * tf.random.stateless_uniform(
      [], seed=seed, minval=0, maxval=num_windows, dtype=tf.int32)
  return {feature_key: tokens[start:tf.minimum(start + max_length,
                                               num_tokens)]}


def select_random_chunk(dataset: tf.data.Dataset, feature_key: str = "targets",
                        max_length: int = DEFAULT_MAX_DOCUMENT_TOKENS
                       ) -> tf.data.Dataset:
  """Keeps one random aligned window of <= ``max_length`` tokens per document.

  Other features are dropped. Needs seqio's map seed (call inside a Task
  preprocessor) to be deterministic.
  """
  return _random_window(drop_empty(dataset, feature_key),
                        feature_key=feature_key, max_length=max_length)


def concat_documents(dataset: tf.data.Dataset, feature_key: str = "targets",
                     documents_per_group: int = DEFAULT_DOCUMENTS_PER_GROUP
                    ) -> tf.data.Dataset:
  """Concatenates the tokens of consecutive groups of documents.

  Token ids must be non-zero (0 is padding in every seqio vocabulary).
  """
  dataset = dataset.map(lambda x: {feature_key: x[feature_key]})
  dataset = dataset.padded_batch(documents_per_group,
                                 padded_shapes={feature_key: [-1]})

  def _flatten(x):
    tokens = tf.reshape(x[feature_key], [-1])
    return {feature_key: tf.boolean_mask(tokens, tf.not_equal(tokens, 0))}

  return dataset.map(_flatten, num_parallel_calls=tf.data.AUTOTUNE)


def split_into_chunks(dataset: tf.data.Dataset, chunk_length: int,
                      feature_key: str = "targets") -> tf.data.Dataset:
  """Cuts every example into chunks of ``chunk_length`` tokens (last: rest)."""
  if chunk_length < 1:
    raise ValueError(f"chunk_length must be >= 1, got {chunk_length}")

  def _chunks(x):
    tokens = x[feature_key]
    num_tokens = tf.size(tokens, out_type=tf.int64)
    starts = tf.range(0, num_tokens, chunk_length, dtype=tf.int64)
    chunked = tf.RaggedTensor.from_row_starts(tokens, starts)
    return tf.data.Dataset.from_tensor_slices({feature_key: chunked})

  return drop_empty(dataset, feature_key).flat_map(_chunks)
