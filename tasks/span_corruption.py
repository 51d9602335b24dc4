"""Byte-level span corruption as a seqio preprocessor (ByT5 / MrT5 recipe).

Gin knobs (defaults are the ByT5 and MrT5 settings):

  mrt5_jax.tasks.span_corruption_config.inputs_length = 1024
  mrt5_jax.tasks.span_corruption_config.noise_density = 0.15
  mrt5_jax.tasks.span_corruption_config.mean_noise_span_length = 20.0

``feature_lengths()`` gives the matching ``{"inputs": 1024, "targets": 189}``
for ``seqio.get_dataset`` / t5x's ``TASK_FEATURE_LENGTHS``. When seqio passes
a ``sequence_length``, its ``inputs`` entry sets the encoder length.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

from absl import logging
import gin
import seqio
import tensorflow as tf

from . import chunks
from . import lengths
from . import noise

# Ids above this one are bytes 0xF5..0xFF, which never occur in UTF-8, so
# sentinels from 258 down to here cannot be confused with text.
LOWEST_NON_UTF8_BYTE_ID = 0xF5 + 3


@dataclasses.dataclass(frozen=True)
class SpanCorruptionConfig:
  """Span corruption settings; lengths count tokens, EOS included."""

  inputs_length: int = 1024
  noise_density: float = 0.15
  mean_noise_span_length: float = 20.0

  def __post_init__(self):
    lengths.validate_noise_settings(self.noise_density,
                                    self.mean_noise_span_length)
    if int(self.inputs_length) != self.inputs_length or self.inputs_length < 2:
      raise ValueError("span_corruption_config.inputs_length must be an "
                       f"integer >= 2, got {self.inputs_length!r}")

  def lengths_for(self, inputs_length: Optional[int] = None):
    """(raw_tokens_length, targets_length) for an encoder length."""
    return lengths.span_corruption_lengths(
        inputs_length or self.inputs_length, self.noise_density,
        self.mean_noise_span_length)

  @property
  def feature_lengths(self) -> Mapping[str, int]:
    return {"inputs": self.inputs_length, "targets": self.lengths_for()[1]}


@gin.configurable(module="mrt5_jax.tasks")
def span_corruption_config(inputs_length: int = 1024,
                           noise_density: float = 0.15,
                           mean_noise_span_length: float = 20.0
                          ) -> SpanCorruptionConfig:
  """The span corruption settings in effect (bind them with gin)."""
  return SpanCorruptionConfig(inputs_length, noise_density,
                              mean_noise_span_length)


@gin.configurable(module="mrt5_jax.tasks")
def feature_lengths() -> Mapping[str, int]:
  """``{"inputs": L, "targets": T}`` of the configured span corruption."""
  return dict(span_corruption_config().feature_lengths)


@seqio.map_over_dataset(num_seeds=1)
def _corrupt(x, seed, noise_density, mean_noise_span_length, first_sentinel):
  tokens = x["targets"]
  mask = noise.random_spans_noise_mask(tf.size(tokens), noise_density,
                                       mean_noise_span_length, seed)
  return {
      "inputs": noise.spans_to_sentinels(tokens, mask, first_sentinel),
      "targets": noise.spans_to_sentinels(tokens, tf.logical_not(mask),
                                          first_sentinel),
  }


def corrupt_chunks(dataset: tf.data.Dataset, noise_density: float,
                   mean_noise_span_length: float,
                   first_sentinel: int) -> tf.data.Dataset:
  """Raw chunks {"targets": ids} -> {"inputs", "targets"} with sentinels.

  Inputs keep non-noise tokens and put a sentinel per noise span; targets
  hold, per span, its sentinel followed by the noise tokens. No EOS.
  """
  return _corrupt(dataset, noise_density=noise_density,
                  mean_noise_span_length=mean_noise_span_length,
                  first_sentinel=first_sentinel)


def span_corruption(dataset: tf.data.Dataset,
                    sequence_length: Optional[Mapping[str, int]] = None,
                    output_features: Optional[Mapping[str,
                                                      seqio.Feature]] = None,
                    merge_documents: bool = True) -> tf.data.Dataset:
  """seqio preprocessor: tokenized {"targets"} documents -> corrupted pairs.

  With a ByteVocabulary the examples also carry ``inputs_pretokenized``, the
  corrupted input as text (``render_with_sentinels``).

  Follow with ``seqio.preprocessors.append_eos_after_trim``; the inputs then
  fill the encoder length exactly (the last chunk of a stream may be shorter).

  Raises:
    ValueError: if ``sequence_length["targets"]`` is too short for the
      targets this setting produces (they would be silently cut).
  """
  config = span_corruption_config()
  inputs_length = (sequence_length or {}).get("inputs") or config.inputs_length
  raw_length, targets_length = config.lengths_for(inputs_length)
  requested_targets = (sequence_length or {}).get("targets")
  if requested_targets is not None and requested_targets < targets_length:
    raise ValueError(
        f"sequence_length['targets'] = {requested_targets} is shorter than the "
        f"{targets_length} targets tokens that span corruption produces for "
        f"inputs_length {inputs_length} (noise_density "
        f"{config.noise_density}, mean_noise_span_length "
        f"{config.mean_noise_span_length}); use mrt5_jax.tasks.feature_lengths()")
  vocabulary = (output_features or {}).get("inputs")
  vocabulary = (vocabulary.vocabulary if vocabulary is not None
                else seqio.ByteVocabulary())
  first_sentinel = vocabulary.vocab_size - 1
  num_spans = lengths.noise_counts(raw_length, config.noise_density,
                                   config.mean_noise_span_length)[1]
  if first_sentinel + 1 - num_spans < LOWEST_NON_UTF8_BYTE_ID:
    logging.warning(
        "span corruption uses %d sentinels per chunk; ids below %d are also "
        "bytes of UTF-8 text, so some sentinels look like text bytes.",
        num_spans, LOWEST_NON_UTF8_BYTE_ID)

  dataset = chunks.select_random_chunk(dataset, feature_key="targets")
  if merge_documents:
    dataset = chunks.concat_documents(dataset, feature_key="targets")
  dataset = chunks.split_into_chunks(dataset, raw_length, feature_key="targets")
  dataset = corrupt_chunks(dataset, config.noise_density,
                           config.mean_noise_span_length, first_sentinel)
  if not isinstance(vocabulary, seqio.ByteVocabulary):
    return dataset
  return dataset.map(
      lambda x: {**x, "inputs_pretokenized": render_with_sentinels(
          x["inputs"], first_sentinel, num_spans)},
      num_parallel_calls=tf.data.AUTOTUNE)


def render_with_sentinels(ids: tf.Tensor, first_sentinel: int,
                          num_sentinels: int) -> tf.Tensor:
  """Readable text of span-corrupted byte ids (what t5x.infer writes as the inputs).

  Byte ids (byte + 3) become their bytes, with UTF-8 sequences that a chunk
  boundary cut replaced by U+FFFD; sentinel ``first_sentinel - k`` becomes
  ``<extra_id_k>``; EOS and padding become nothing.
  """
  table = [b""] * 3 + [bytes([b]) for b in range(first_sentinel - 2)]
  for k in range(min(num_sentinels, first_sentinel - 2)):
    table[first_sentinel - k] = f"<extra_id_{k}>".encode()
  text = tf.strings.reduce_join(tf.gather(tf.constant(table), ids))
  return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")
