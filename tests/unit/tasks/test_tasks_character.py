"""Character-level tasks (char-iit spelling correction, word search) over files the tests write."""
import json
import os

import gin
import numpy as np
import pytest
import seqio

import mrt5_jax.tasks as tasks
from tests.fixtures import seqio_metrics

SPELLING = "mrt5.character.spelling_correction_contextual"
WORD_SEARCH = "mrt5.character.word_search"
SPELLING_LENGTHS = {"inputs": 64, "targets": 64}
WORD_SEARCH_LENGTHS = {"inputs": 128, "targets": 16}


def _published_row(text, length):
  """What the published preprocess_char_dataset.py writes for one side: [[ids]]."""
  ids = [b + 3 for b in text.encode("utf-8")][:length - 1] + [1]
  return [ids + [0] * (length - len(ids))]


def _published_line(source, target, input_length, output_length):
  inputs = _published_row(source, input_length)
  return json.dumps({"input_ids": inputs,
                     "attention_mask": [[int(i > 0) for i in inputs[0]]],
                     "labels": _published_row(target, output_length)})


def _write(path, lines):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return str(path)


def _examples(name, split, lengths):
  ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split=split,
                                                   shuffle=False)
  return list(ds.as_numpy_iterator())


def _text(ids):
  ids = [int(i) for i in ids]
  return bytes(i - 3 for i in ids[:ids.index(1)]).decode("utf-8")


def _evaluate(name, split, lengths, predict):
  return seqio_metrics(name, split, lengths, predict)[name]


def test_names_splits_lengths_and_metric():
  assert tasks.CHARACTER_TASKS == (SPELLING, WORD_SEARCH)
  assert list(seqio.get_mixture_or_task(SPELLING).splits) == [
      "train", "validation", "test_context_dependent", "test_context_independent"]
  assert list(seqio.get_mixture_or_task(WORD_SEARCH).splits) == [
      "train", "validation", "test_oov", "test_paraphrase", "test_overlap",
      "test_paraphrase_overlap"]
  assert tasks.spelling_correction_feature_lengths() == SPELLING_LENGTHS
  assert tasks.word_search_feature_lengths() == WORD_SEARCH_LENGTHS
  for name in tasks.CHARACTER_TASKS:
    task = seqio.get_mixture_or_task(name)
    assert task.predict_metric_fns == [tasks.metrics.sequence_accuracy]
    assert isinstance(task.output_features["inputs"].vocabulary,
                      seqio.ByteVocabulary)


def test_published_json_in_the_published_layout_gives_the_same_ids(tmp_path):
  lines = [_published_line("He red the book yesterday.", "He read the book yesterday.",
                           64, 64),
           _published_line("Thier house is big.", "Their house is big.", 64, 64)]
  _write(tmp_path / "spelling_correction_contextual" /
         "spelling_correction_contextual_test_context_dependent.json", lines)
  gin.bind_parameter("mrt5_jax.tasks.character_data_dir.path", str(tmp_path))
  examples = _examples(SPELLING, "test_context_dependent", SPELLING_LENGTHS)
  assert len(examples) == 2
  published = json.loads(lines[0])
  padded = list(examples[0]["inputs"]) + [0] * (64 - len(examples[0]["inputs"]))
  assert padded == published["input_ids"][0]
  assert _text(examples[1]["targets"]) == "Their house is big."


def test_text_jsonl_and_tsv_files_bound_per_split(tmp_path):
  jsonl = _write(tmp_path / "train.jsonl", [
      json.dumps({"input": "Find: cat | dogcatbird", "output": "cat"}),
      "",  # blank lines are skipped
      json.dumps({"input": "Naïve café", "output": "naïve"})])
  tsv = _write(tmp_path / "oov.tsv", ["Find: owl\towl", '"a\tb"\tquoted'])
  gin.bind_parameter("mrt5_jax.tasks.word_search_files.train", jsonl)
  gin.bind_parameter("mrt5_jax.tasks.word_search_files.test_oov", [tsv])
  train = _examples(WORD_SEARCH, "train", WORD_SEARCH_LENGTHS)
  assert [(_text(ex["inputs"]), _text(ex["targets"])) for ex in train] == [
      ("Find: cat | dogcatbird", "cat"), ("Naïve café", "naïve")]
  oov = _examples(WORD_SEARCH, "test_oov", WORD_SEARCH_LENGTHS)
  assert [(_text(ex["inputs"]), _text(ex["targets"])) for ex in oov] == [
      ("Find: owl", "owl"), ("a\tb", "quoted")]


def test_long_targets_are_cut_and_scored_as_cut(tmp_path):
  # 20-byte output, word search targets hold 15 bytes + EOS.
  path = _write(tmp_path / "val.jsonl", [
      json.dumps({"input": "x", "output": "abcdefghijklmnopqrst"}),
      json.dumps({"input": "y", "output": "short"})])
  gin.bind_parameter("mrt5_jax.tasks.word_search_files.validation", path)
  examples = _examples(WORD_SEARCH, "validation", WORD_SEARCH_LENGTHS)
  assert list(examples[0]["targets"]) == [b + 3 for b in b"abcdefghijklmno"] + [1]
  assert "targets_pretokenized" not in examples[0]
  exact = _evaluate(WORD_SEARCH, "validation", WORD_SEARCH_LENGTHS,
                    lambda f: f["decoder_target_tokens"])
  assert exact == {"sequence_accuracy": 100.0}
  # Predicting "short" everywhere: right on 1 of 2.
  short = [b + 3 for b in b"short"] + [1]
  half = _evaluate(WORD_SEARCH, "validation", WORD_SEARCH_LENGTHS,
                   lambda f: short + [0] * (16 - len(short)))
  assert half == {"sequence_accuracy": 50.0}


def test_missing_file_names_the_file_and_the_binding(tmp_path):
  missing = str(tmp_path / "nope.jsonl")
  gin.bind_parameter("mrt5_jax.tasks.spelling_correction_files.train", missing)
  with pytest.raises(FileNotFoundError) as error:
    _examples(SPELLING, "train", SPELLING_LENGTHS)
  assert missing in str(error.value)
  assert "mrt5_jax.tasks.spelling_correction_files.train" in str(error.value)


def test_missing_published_layout_file_names_path_and_both_bindings(tmp_path):
  gin.bind_parameter("mrt5_jax.tasks.character_data_dir.path", str(tmp_path))
  with pytest.raises(FileNotFoundError) as error:
    _examples(WORD_SEARCH, "test_paraphrase", WORD_SEARCH_LENGTHS)
  message = str(error.value)
  assert os.path.join(str(tmp_path), "word_search",
                      "word_search_test_paraphrase.json") in message
  assert "mrt5_jax.tasks.character_data_dir.path" in message
  assert "mrt5_jax.tasks.word_search_files.test_paraphrase" in message


def test_nothing_bound_names_the_bindings():
  with pytest.raises(FileNotFoundError,
                     match=r"mrt5_jax\.tasks\.word_search_files\.validation.*"
                     r"mrt5_jax\.tasks\.character_data_dir\.path"):
    _examples(WORD_SEARCH, "validation", WORD_SEARCH_LENGTHS)


def test_bad_lines_are_reported_with_file_and_line(tmp_path):
  bad_id = _write(tmp_path / "bad_id.json",
                  [json.dumps({"input_ids": [[300, 1]], "labels": [[72, 1]]})])
  assert tasks.character_tasks.ids_to_bytes([[75, 104, 1, 0]], "here") == b"He"
  with pytest.raises(ValueError, match=r"bad_id\.json:1: id 300 is not a byte"):
    list(tasks.character_tasks.read_examples(bad_id))
  wrong_keys = _write(tmp_path / "keys.jsonl", [json.dumps({"text": "a"})])
  with pytest.raises(ValueError, match=r"keys\.jsonl:1: expected keys"):
    list(tasks.character_tasks.read_examples(wrong_keys))
