"""Random span noise mask and sentinel replacement (TF ops, stateless seeds).

The mask alternates non-noise and noise spans and starts with non-noise;
the number of noise tokens and spans is fixed by the chunk length (see
``lengths.py``), only the span boundaries are random. Sentinels count down
from the top of the vocabulary: the first span gets ``first_sentinel`` (258
for seqio's ByteVocabulary, byte 0xFF, which never occurs in UTF-8), the next
257, and so on.
"""
from __future__ import annotations

import tensorflow as tf


def _stateless_shuffle(values: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Uniform random permutation of a 1-D tensor."""
  keys = tf.random.stateless_uniform(tf.shape(values), seed=seed)
  return tf.gather(values, tf.argsort(keys))


def random_partition(num_items: tf.Tensor, num_parts: tf.Tensor,
                     seed: tf.Tensor) -> tf.Tensor:
  """Splits ``num_items`` into ``num_parts`` positive parts, uniformly.

  Each of the C(num_items - 1, num_parts - 1) compositions is equally likely.

  Returns:
    int32 [num_parts], summing to ``num_items``.
  """
  is_cut = tf.cast(tf.range(num_items - 1) < num_parts - 1, tf.int32)
  is_cut = _stateless_shuffle(is_cut, seed)
  part_id = tf.cumsum(tf.concat([[0], is_cut], axis=0))
  return tf.math.bincount(part_id, minlength=num_parts, maxlength=num_parts,
                          dtype=tf.int32)


def random_spans_noise_mask(length: tf.Tensor, noise_density: float,
                            mean_noise_span_length: float,
                            seed: tf.Tensor) -> tf.Tensor:
  """Boolean [length] mask, True on noise tokens.

  Args:
    length: int32 scalar, tokens in the raw chunk (>= 1).
    noise_density: share of tokens that are noise.
    mean_noise_span_length: mean noise span length in tokens.
    seed: int32 [2] stateless seed.
  """
  length = tf.cast(length, tf.int32)
  # A single token cannot hold a non-noise and a noise span: mask a length-2
  # chunk and keep its first (non-noise) position.
  padded_length = tf.maximum(length, 2)
  num_noise = tf.cast(
      tf.round(tf.cast(padded_length, tf.float64) * noise_density), tf.int32)
  num_noise = tf.clip_by_value(num_noise, 1, padded_length - 1)
  num_nonnoise = padded_length - num_noise
  num_spans = tf.cast(
      tf.round(tf.cast(num_noise, tf.float64) / mean_noise_span_length),
      tf.int32)
  num_spans = tf.clip_by_value(num_spans, 1,
                               tf.minimum(num_noise, num_nonnoise))
  noise_seed, nonnoise_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  noise_lengths = random_partition(num_noise, num_spans, noise_seed)
  nonnoise_lengths = random_partition(num_nonnoise, num_spans, nonnoise_seed)
  span_lengths = tf.reshape(
      tf.stack([nonnoise_lengths, noise_lengths], axis=1), [-1])
  span_index = tf.repeat(tf.range(2 * num_spans), span_lengths)
  return tf.equal(span_index % 2, 1)[:length]


def spans_to_sentinels(tokens: tf.Tensor, mask: tf.Tensor,
                       first_sentinel: int) -> tf.Tensor:
  """Replaces each masked span by one sentinel (first_sentinel, then -1 ...).

  Args:
    tokens: int [n] token ids.
    mask: bool [n], the spans to replace.
    first_sentinel: id given to the first span.

  Returns:
    int [m], m = unmasked tokens + number of masked spans.
  """
  previous = tf.concat([[False], mask[:-1]], axis=0)
  span_start = tf.logical_and(mask, tf.logical_not(previous))
  span_rest = tf.logical_and(mask, previous)
  sentinel = first_sentinel + 1 - tf.cumsum(tf.cast(span_start, tokens.dtype))
  tokens = tf.where(span_start, sentinel, tokens)
  return tf.boolean_mask(tokens, tf.logical_not(span_rest))
