"""The MrT5 paper's diagnostic tasks, generated on the fly (seqio tasks).

Every input is ``"#"`` + a random string of ASCII letters (a-z, A-Z), as in
the paper; with the default 64-token length the string has 62 letters
(``#`` + 62 letters + EOS = 64). Tasks:

- ``mrt5.diagnostic.copy``: target = input.
- ``mrt5.diagnostic.vowel_removal``: every vowel (``VOWELS``) removed.
- ``mrt5.diagnostic.contextual_vowel_removal``: a vowel is removed when the
  input character just before it is a lowercase consonant (the paper's rule:
  ``bE`` -> ``b``, ``BE`` and ``aE`` stay). Inputs get about 25 inserted
  consonant-vowel pairs.
- ``mrt5.diagnostic.merge_abc``: every ``ABC`` becomes ``D``. Inputs get
  about 5 inserted ``ABC``.

Example ``i`` of a split is drawn from
``numpy.random.default_rng([seed, task_id, i])`` with the split's seed and
the task's CRC-32 id, so a split is the same on every run and machine, and
splits and tasks differ. Gin knobs: ``mrt5_jax.tasks.diagnostic_config.*``.
"""
from __future__ import annotations

import dataclasses
import re
import string
import zlib
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import gin
import numpy as np
import seqio
import tensorflow as tf

from . import metrics
from . import registration

VOWELS = frozenset("aeiouAEIOU")
LETTERS = string.ascii_lowercase + string.ascii_uppercase
CONSONANTS = "".join(c for c in LETTERS if c not in VOWELS)
LOWERCASE_CONSONANTS = "".join(c for c in string.ascii_lowercase
                               if c not in VOWELS)
VOWEL_LETTERS = "".join(c for c in LETTERS if c in VOWELS)
PREFIX = "#"
_BYTE_OFFSET = 3  # seqio.ByteVocabulary: pad, EOS and UNK come first
SPLITS = ("train", "validation", "test")
TASK_PREFIX = "mrt5.diagnostic"

_VOWEL_RE = re.compile(f"[{VOWEL_LETTERS}]")
_CONTEXTUAL_VOWEL_RE = re.compile(f"(?<=[{LOWERCASE_CONSONANTS}])"
                                  f"[{VOWEL_LETTERS}]")


def remove_vowels(text: str) -> str:
  """Drops every character of ``VOWELS``."""
  return _VOWEL_RE.sub("", text)


def remove_vowels_after_lowercase_consonant(text: str) -> str:
  """Drops each vowel whose preceding input character is a lowercase consonant."""
  return _CONTEXTUAL_VOWEL_RE.sub("", text)


def _byte_ids(letters: str) -> list[int]:
  return [ord(c) + _BYTE_OFFSET for c in letters]


def vowel_positions(tokens: np.ndarray) -> np.ndarray:
  """(B, L) bool: the input bytes that are vowels (``VOWELS``; ByteVocabulary ids)."""
  return np.isin(np.asarray(tokens), _byte_ids(VOWEL_LETTERS))


def droppable_positions(task: str, tokens: np.ndarray) -> Optional[np.ndarray]:
  """(B, L) bool: the input bytes the task's rule drops (ByteVocabulary ids, byte + 3):
  every vowel for ``vowel_removal``, each vowel after a lowercase consonant for
  ``contextual_vowel_removal``; None for a task that drops no single byte."""
  tokens = np.asarray(tokens)
  vowels = vowel_positions(tokens)
  if task == "vowel_removal":
    return vowels
  if task == "contextual_vowel_removal":
    after_consonant = np.zeros_like(vowels)
    after_consonant[:, 1:] = np.isin(tokens[:, :-1], _byte_ids(LOWERCASE_CONSONANTS))
    return vowels & after_consonant
  return None


def target_positions(task: str, tokens: np.ndarray) -> Optional[np.ndarray]:
  """(B, L) int32: for each input byte the target keeps, the index of the target token
  that copies it; -1 for the bytes the task drops and for padding. The targets of
  ``copy``, ``vowel_removal`` and ``contextual_vowel_removal`` are their inputs with the
  dropped bytes taken out (EOS included); None for ``merge_abc``, whose ``D`` copies no
  single byte."""
  tokens = np.asarray(tokens)
  if task == "copy":
    dropped = np.zeros(tokens.shape, bool)
  else:
    dropped = droppable_positions(task, tokens)
    if dropped is None:
      return None
  copied = (tokens > 0) & ~dropped
  index = np.cumsum(copied, axis=-1, dtype=np.int32) - 1
  return np.where(copied, index, -1).astype(np.int32)


def merge_abc(text: str) -> str:
  """Replaces every ``ABC`` (left to right, non-overlapping) by ``D``."""
  return text.replace("ABC", "D")


@dataclasses.dataclass(frozen=True)
class DiagnosticConfig:
  """Generation settings; lengths count bytes, EOS included."""

  sequence_length: int = 64
  train_examples: int = 1_280_000
  eval_examples: int = 16_000
  train_seed: int = 42
  validation_seed: int = 43
  test_seed: int = 44
  mean_abc_insertions: float = 5.0
  mean_cv_insertions: float = 25.0

  def __post_init__(self):
    if self.sequence_length < 8:
      raise ValueError("diagnostic_config.sequence_length must be >= 8, got "
                       f"{self.sequence_length}")
    seeds = (self.train_seed, self.validation_seed, self.test_seed)
    if len(set(seeds)) != 3 or min(seeds) < 0:
      raise ValueError("diagnostic split seeds must be distinct and >= 0, "
                       f"got {seeds}")

  @property
  def string_length(self) -> int:
    """Random letters per input: the length minus the prefix and EOS."""
    return self.sequence_length - len(PREFIX) - 1

  def seed(self, split: str) -> int:
    return {"train": self.train_seed, "validation": self.validation_seed,
            "test": self.test_seed}[split]

  def num_examples(self, split: str) -> int:
    return self.train_examples if split == "train" else self.eval_examples

  @property
  def feature_lengths(self) -> Mapping[str, int]:
    return {"inputs": self.sequence_length, "targets": self.sequence_length}


@gin.configurable(module="mrt5_jax.tasks")
def diagnostic_config(sequence_length: int = 64,
                      train_examples: int = 1_280_000,
                      eval_examples: int = 16_000,
                      train_seed: int = 42,
                      validation_seed: int = 43,
                      test_seed: int = 44,
                      mean_abc_insertions: float = 5.0,
                      mean_cv_insertions: float = 25.0) -> DiagnosticConfig:
  """The diagnostic generation settings in effect (bind them with gin)."""
  return DiagnosticConfig(sequence_length, train_examples, eval_examples,
                          train_seed, validation_seed, test_seed,
                          mean_abc_insertions, mean_cv_insertions)


@gin.configurable(module="mrt5_jax.tasks")
def diagnostic_feature_lengths() -> Mapping[str, int]:
  """``{"inputs": L, "targets": L}`` of the configured diagnostic tasks."""
  return dict(diagnostic_config().feature_lengths)


def _random_letters(rng: np.random.Generator, length: int,
                    alphabet: str = LETTERS) -> str:
  return "".join(np.asarray(list(alphabet))[rng.integers(0, len(alphabet),
                                                          size=length)])


def _insertion_points(rng: np.random.Generator, count: int, length: int,
                      width: int) -> Sequence[int]:
  """Up to ``count`` start positions, pairwise >= ``width`` apart (<= 500 draws)."""
  points = []
  for _ in range(500):
    if len(points) >= count:
      break
    candidate = int(rng.integers(0, length - width))
    if all(abs(candidate - p) >= width for p in points):
      points.append(candidate)
  return points


def _overwrite(text: str, position: int, piece: str) -> str:
  return text[:position] + piece + text[position + len(piece):]


def _insertion_count(rng: np.random.Generator, mean: float) -> int:
  return max(1, int(rng.normal(loc=mean, scale=mean / 2)))


def _letters_with_abc(rng, config: DiagnosticConfig) -> str:
  text = _random_letters(rng, config.string_length)
  count = _insertion_count(rng, config.mean_abc_insertions)
  for position in _insertion_points(rng, count, len(text), 3):
    text = _overwrite(text, position, "ABC")
  return text


def _letters_with_cv_pairs(rng, config: DiagnosticConfig) -> str:
  text = _random_letters(rng, config.string_length)
  count = _insertion_count(rng, config.mean_cv_insertions)
  for position in _insertion_points(rng, count, len(text), 2):
    pair = (_random_letters(rng, 1, CONSONANTS) +
            _random_letters(rng, 1, VOWEL_LETTERS))
    text = _overwrite(text, position, pair)
  return text


def _plain_letters(rng, config: DiagnosticConfig) -> str:
  return _random_letters(rng, config.string_length)


# name -> (input generator, rule)
TASKS: Dict[str, Tuple[Callable, Callable[[str], str]]] = {
    "copy": (_plain_letters, lambda text: text),
    "vowel_removal": (_plain_letters, remove_vowels),
    "contextual_vowel_removal": (_letters_with_cv_pairs,
                                 remove_vowels_after_lowercase_consonant),
    "merge_abc": (_letters_with_abc, merge_abc),
}


def generate_example(task: str, seed: int, index: int,
                     config: DiagnosticConfig) -> Tuple[str, str]:
  """(inputs, targets) strings of example ``index`` of a split's ``seed``."""
  if task not in TASKS:
    raise ValueError(f"Unknown diagnostic task {task!r}; tasks: "
                     f"{', '.join(TASKS)}")
  make_input, rule = TASKS[task]
  rng = np.random.default_rng([seed, zlib.crc32(task.encode()), index])
  text = PREFIX + make_input(rng, config)
  return text, rule(text)


def generate_dataset(task: str, split: str,
                     config: DiagnosticConfig) -> tf.data.Dataset:
  """{"inputs", "targets"} strings of one split, in index order."""
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r} of diagnostic task {task!r}; "
                     f"splits: {', '.join(SPLITS)}")
  seed = config.seed(split)

  def _example(index):
    inputs, targets = generate_example(task, seed, int(index), config)
    return inputs.encode(), targets.encode()

  def _map(index):
    inputs, targets = tf.numpy_function(_example, [index],
                                        [tf.string, tf.string], stateful=False)
    return {"inputs": tf.ensure_shape(inputs, []),
            "targets": tf.ensure_shape(targets, [])}

  return tf.data.Dataset.range(config.num_examples(split)).map(
      _map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def task_name(task: str) -> str:
  return f"{TASK_PREFIX}.{task}"


def _dataset_fn(task: str):
  def dataset_fn(split: str, shuffle_files: bool, seed=None):
    del shuffle_files, seed  # a split's content is fixed by its own seed
    return generate_dataset(task, split, diagnostic_config())
  return dataset_fn


def _register():
  for task in TASKS:
    registration.add_task(
        task_name(task),
        source=seqio.FunctionDataSource(_dataset_fn(task), splits=SPLITS),
        preprocessors=[seqio.preprocessors.tokenize,
                       seqio.preprocessors.append_eos_after_trim],
        output_features=registration.OUTPUT_FEATURES,
        metric_fns=[metrics.sequence_accuracy])


_register()
