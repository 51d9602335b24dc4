"""The paper's character-level tasks (from the char-iit benchmark), read from local files.

Tasks and splits (lengths in bytes, EOS included, as the published code):
  mrt5.character.spelling_correction_contextual   inputs 64, targets 64
      train, validation, test_context_dependent, test_context_independent
  mrt5.character.word_search                      inputs 128, targets 16
      train, validation, test_oov, test_paraphrase, test_overlap,
      test_paraphrase_overlap

Files, bound with gin (a split's own binding wins over the directory):
  mrt5_jax.tasks.character_data_dir.path = '/data/char_iit_json'
      the published layout: ``<dir>/<task>/<task>_<split>.json``
  mrt5_jax.tasks.spelling_correction_files.<split> = ['/data/sc_train.jsonl']
  mrt5_jax.tasks.word_search_files.<split> = '/data/ws_*.tsv'

Formats, one example per line (each file's lines are read in order):
  ``.tsv``: ``input<TAB>output`` (char-iit's raw files; csv quoting rules).
  anything else, JSON lines, either ``{"input": str, "output": str}`` or the
  published preprocessed form ``{"input_ids": [[ids]], "labels": [[ids]],
  "attention_mask": ...}`` with ByT5 ids (byte + 3, EOS 1, pad 0; one level
  of nesting optional; ``attention_mask`` ignored; -100 read as pad).
Inputs and targets are the byte strings themselves (no prompt). Longer ones
are cut to the feature lengths with EOS kept, as the published tokenizer
call did, and the metric compares against the cut target.

Metric: ``sequence_accuracy`` (percent of greedy outputs equal to the whole
target), which is the published teacher-forced "sequence accuracy" (every
target byte and EOS the argmax) for greedy decoding.
gin lengths: ``mrt5_jax.tasks.{spelling_correction,word_search}_feature_lengths``.
"""
from __future__ import annotations

import csv
import functools
import json
import os
from typing import Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

import gin
import numpy as np
import seqio
import tensorflow as tf

from . import metrics
from . import registration

TASK_PREFIX = "mrt5.character"
SPELLING = "spelling_correction_contextual"
WORD_SEARCH = "word_search"
SPLITS = {
    SPELLING: ("train", "validation", "test_context_dependent",
               "test_context_independent"),
    WORD_SEARCH: ("train", "validation", "test_oov", "test_paraphrase",
                  "test_overlap", "test_paraphrase_overlap"),
}
FILES_BINDING = {SPELLING: "mrt5_jax.tasks.spelling_correction_files",
                 WORD_SEARCH: "mrt5_jax.tasks.word_search_files"}
DIR_BINDING = "mrt5_jax.tasks.character_data_dir.path"
EOS_ID, PAD_ID, FIRST_BYTE_ID, LAST_BYTE_ID = 1, 0, 3, 258

Patterns = Union[str, Sequence[str]]


@gin.configurable(module="mrt5_jax.tasks")
def character_data_dir(path: Optional[str] = None) -> Optional[str]:
  """Directory in the published layout ``<dir>/<task>/<task>_<split>.json``."""
  return path


@gin.configurable(module="mrt5_jax.tasks")
def spelling_correction_files(train: Optional[Patterns] = None,
                              validation: Optional[Patterns] = None,
                              test_context_dependent: Optional[Patterns] = None,
                              test_context_independent: Optional[Patterns] = None
                             ) -> Dict[str, Optional[Patterns]]:
  """File globs per split of the spelling correction task (None: the data dir's)."""
  return dict(train=train, validation=validation,
              test_context_dependent=test_context_dependent,
              test_context_independent=test_context_independent)


@gin.configurable(module="mrt5_jax.tasks")
def word_search_files(train: Optional[Patterns] = None,
                      validation: Optional[Patterns] = None,
                      test_oov: Optional[Patterns] = None,
                      test_paraphrase: Optional[Patterns] = None,
                      test_overlap: Optional[Patterns] = None,
                      test_paraphrase_overlap: Optional[Patterns] = None
                     ) -> Dict[str, Optional[Patterns]]:
  """File globs per split of the word search task (None: the data dir's)."""
  return dict(train=train, validation=validation, test_oov=test_oov,
              test_paraphrase=test_paraphrase, test_overlap=test_overlap,
              test_paraphrase_overlap=test_paraphrase_overlap)


@gin.configurable(module="mrt5_jax.tasks")
def spelling_correction_feature_lengths(inputs: int = 64, targets: int = 64
                                       ) -> Mapping[str, int]:
  """``{"inputs", "targets"}`` lengths in bytes, EOS included (published: 64 / 64)."""
  return {"inputs": inputs, "targets": targets}


@gin.configurable(module="mrt5_jax.tasks")
def word_search_feature_lengths(inputs: int = 128, targets: int = 16
                               ) -> Mapping[str, int]:
  """``{"inputs", "targets"}`` lengths in bytes, EOS included (published: 128 / 16)."""
  return {"inputs": inputs, "targets": targets}


FILES_FN: Dict[str, Callable[[], Mapping[str, Optional[Patterns]]]] = {
    SPELLING: spelling_correction_files, WORD_SEARCH: word_search_files}


def task_name(task: str) -> str:
  return f"{TASK_PREFIX}.{task}"


def published_path(data_dir: str, task: str, split: str) -> str:
  """``<dir>/<task>/<task>_<split>.json``, what ``preprocess_char_dataset.py`` writes."""
  return os.path.join(data_dir, task, f"{task}_{split}.json")


def split_files(task: str, split: str) -> Sequence[str]:
  """The files of one split, checked to exist.

  Raises:
    FileNotFoundError: nothing bound for the split, or no file matches; the
      message names the file and the gin binding.
  """
  if split not in SPLITS[task]:
    raise ValueError(f"Unknown split '{split}' of {task_name(task)}; splits: "
                     f"{', '.join(SPLITS[task])}")
  binding = f"{FILES_BINDING[task]}.{split}"
  patterns = FILES_FN[task]()[split]
  source = f"gin {binding}"
  if patterns is None:
    data_dir = character_data_dir()
    if data_dir is None:
      raise FileNotFoundError(
          f"No file for split '{split}' of {task_name(task)}: bind {binding} = "
          f"'/path/file.jsonl' or {DIR_BINDING} = '/path/dir' (published "
          f"layout {published_path('<dir>', task, split)}).")
    patterns = published_path(data_dir, task, split)
    source = f"gin {DIR_BINDING} = {data_dir!r}; or bind {binding}"
  patterns = (patterns,) if isinstance(patterns, (str, os.PathLike)) else tuple(
      patterns)
  files = []
  for pattern in map(os.fspath, patterns):
    matches = [f for f in seqio.utils.list_files(pattern)
               if tf.io.gfile.exists(f)]
    if not matches:
      raise FileNotFoundError(
          f"File {pattern} not found (split '{split}' of {task_name(task)}; "
          f"{source}).")
    files.extend(matches)
  return files


def ids_to_bytes(ids: Sequence, where: str) -> bytes:
  """ByT5 ids (one level of nesting allowed) up to the first EOS -> raw bytes."""
  if len(ids) == 1 and isinstance(ids[0], list):
    ids = ids[0]
  out = bytearray()
  for i in ids:
    if i == EOS_ID:
      break
    if i == PAD_ID or i == -100:
      continue
    if not FIRST_BYTE_ID <= i <= LAST_BYTE_ID:
      raise ValueError(f"{where}: id {i} is not a byte (ByT5 byte ids are "
                       f"{FIRST_BYTE_ID}..{LAST_BYTE_ID})")
    out.append(i - FIRST_BYTE_ID)
  return bytes(out)


def _json_example(line: str, where: str) -> Tuple[bytes, bytes]:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where}: not a JSON line ({e})") from None
  if "input_ids" in record and "labels" in record:
    return (ids_to_bytes(record["input_ids"], where),
            ids_to_bytes(record["labels"], where))
  if "input" in record and "output" in record:
    return record["input"].encode("utf-8"), record["output"].encode("utf-8")
  raise ValueError(f"{where}: expected keys input_ids/labels or input/output, "
                   f"got {sorted(record)}")


def read_examples(path: str) -> Iterator[Tuple[bytes, bytes]]:
  """(input, output) byte strings of one file, in order."""
  with tf.io.gfile.GFile(path, "r") as f:
    if path.endswith(".tsv"):
      for number, row in enumerate(csv.reader(f, delimiter="\t"), start=1):
        if not row:
          continue
        if len(row) < 2:
          raise ValueError(f"{path}:{number}: expected input<TAB>output")
        yield row[0].encode("utf-8"), row[1].encode("utf-8")
      return
    for number, line in enumerate(f, start=1):
      if line.strip():
        yield _json_example(line, f"{path}:{number}")


def _dataset_fn(task: str):
  def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None):
    files = list(split_files(task, split))
    if shuffle_files:
      np.random.default_rng(seed).shuffle(files)

    def examples():
      for path in files:
        for inputs, targets in read_examples(path):
          yield {"inputs": inputs, "targets": targets}

    return tf.data.Dataset.from_generator(
        examples, output_signature={
            "inputs": tf.TensorSpec([], tf.string),
            "targets": tf.TensorSpec([], tf.string)})
  return dataset_fn


def _register():
  for task in SPLITS:
    registration.add_task(
        task_name(task),
        source=seqio.FunctionDataSource(_dataset_fn(task), splits=SPLITS[task]),
        # No *_pretokenized copies: the metric sees the cut target, as the
        # model does.
        preprocessors=[functools.partial(seqio.preprocessors.tokenize,
                                         copy_pretokenized=False),
                       seqio.CacheDatasetPlaceholder(),
                       seqio.preprocessors.append_eos_after_trim],
        output_features=registration.OUTPUT_FEATURES,
        metric_fns=[metrics.sequence_accuracy])


_register()
