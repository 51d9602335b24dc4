"""Shared pieces of the task registrations: vocabulary, features, helpers."""
from __future__ import annotations

import functools
from typing import Sequence

import seqio

from . import span_corruption as span_corruption_lib

VOCABULARY = seqio.ByteVocabulary()
OUTPUT_FEATURES = {
    "inputs": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
    "targets": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
}


def span_corruption_preprocessors(text_key: str = "text") -> Sequence:
  """Preprocessors from a raw text feature to span-corrupted byte pairs."""
  return [
      functools.partial(seqio.preprocessors.rekey,
                        key_map={"targets": text_key}),
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      span_corruption_lib.span_corruption,
      seqio.preprocessors.append_eos_after_trim,
  ]


def add_task(name: str, **kwargs) -> seqio.Task:
  """Registers (or re-registers) a seqio task."""
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, **kwargs)


def add_mixture(name: str, tasks, **kwargs) -> seqio.Mixture:
  """Registers (or re-registers) a seqio mixture."""
  seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, tasks, **kwargs)
