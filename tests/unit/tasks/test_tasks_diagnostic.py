"""Diagnostic tasks: rules checked by an independent implementation."""
import string

import gin
import numpy as np
import pytest
import seqio

import mrt5_jax.tasks as tasks
from mrt5_jax.tasks import diagnostic

LENGTHS = {"inputs": 64, "targets": 64}
VOWELS = "aeiouAEIOU"


def reference_rule(task, text):
  """Character-by-character statement of each task (written independently)."""
  if task == "copy":
    return text
  if task == "vowel_removal":
    return "".join(c for c in text if c not in VOWELS)
  if task == "contextual_vowel_removal":
    out = []
    for i, c in enumerate(text):
      after_lowercase_consonant = (
          i > 0 and text[i - 1] in string.ascii_lowercase
          and text[i - 1] not in VOWELS)
      if c in VOWELS and after_lowercase_consonant:
        continue
      out.append(c)
    return "".join(out)
  if task == "merge_abc":
    out, i = [], 0
    while i < len(text):
      if text[i:i + 3] == "ABC":
        out.append("D")
        i += 3
      else:
        out.append(text[i])
        i += 1
    return "".join(out)
  raise AssertionError(task)


def _examples(task, split, n=200, **kwargs):
  return list(diagnostic.generate_dataset(
      task, split, diagnostic.DiagnosticConfig(**kwargs)).take(n)
              .as_numpy_iterator())


def test_vowel_constant():
  assert tasks.VOWELS == frozenset(VOWELS)
  assert diagnostic.VOWELS is tasks.VOWELS


@pytest.mark.parametrize("task", sorted(diagnostic.TASKS))
def test_targets_follow_the_rule(task):
  examples = _examples(task, "train")
  changed = 0
  for ex in examples:
    inputs, targets = ex["inputs"].decode(), ex["targets"].decode()
    assert len(inputs) == 63 and inputs[0] == "#"
    assert set(inputs[1:]) <= set(string.ascii_letters)
    assert targets == reference_rule(task, inputs)
    changed += targets != inputs
  if task == "copy":
    assert changed == 0
  else:
    assert changed == len(examples)
  if task == "merge_abc":
    counts = [ex["inputs"].decode().count("ABC") for ex in examples]
    assert 3.5 < np.mean(counts) < 6.5  # about 5 inserted per input
  if task == "contextual_vowel_removal":
    removed = [len(ex["inputs"]) - len(ex["targets"]) for ex in examples]
    # ~25 inserted consonant-vowel pairs, lower case half the time, plus
    # the pairs the random letters form by chance.
    assert 8 < np.mean(removed) < 20


def _tokenized_inputs(task, eos=False):
  """20 validation inputs and a hand-picked one (bE and xA go, BE, Ea and aE stay) as
  (texts, (B, L) byte ids padded with two or more zeros), EOS after each if ``eos``."""
  vocab = seqio.ByteVocabulary()
  texts = [ex["inputs"].decode() for ex in _examples(task, "validation")[:20]]
  texts.append("#bEaxABEaE")
  tokens = np.zeros((len(texts), max(len(t) for t in texts) + 3), np.int32)
  for row, text in enumerate(texts):
    ids = vocab.encode(text) + ([1] if eos else [])
    tokens[row, :len(ids)] = ids
  return texts, tokens


@pytest.mark.parametrize("task", ["vowel_removal", "contextual_vowel_removal"])
def test_droppable_positions_are_the_bytes_the_rule_removes(task):
  """Removing the marked bytes of a tokenized input gives the reference rule's target."""
  texts, tokens = _tokenized_inputs(task)
  droppable = diagnostic.droppable_positions(task, tokens)
  for row, text in enumerate(texts):
    kept = [c for c, drop in zip(text, droppable[row]) if not drop]
    assert "".join(kept) == reference_rule(task, text), text
    assert not droppable[row, len(text):].any()
  assert reference_rule(task, "#bEaxABEaE") == (
      "#bxB" if task == "vowel_removal" else "#baxBEaE")
  assert diagnostic.droppable_positions("merge_abc", tokens) is None


@pytest.mark.parametrize("task", ["copy", "vowel_removal", "contextual_vowel_removal"])
def test_target_positions_point_at_the_target_byte_each_input_byte_becomes(task):
  """Every target token (EOS included) is copied from exactly one input byte, the one
  whose target position names it; dropped bytes and padding point nowhere."""
  vocab = seqio.ByteVocabulary()
  texts, tokens = _tokenized_inputs(task, eos=True)
  positions = diagnostic.target_positions(task, tokens)
  for row, text in enumerate(texts):
    target = vocab.encode(reference_rule(task, text)) + [1]
    pointing = positions[row][positions[row] >= 0]
    assert sorted(pointing.tolist()) == list(range(len(target))), text
    for i, t in enumerate(positions[row]):
      if t >= 0:
        assert tokens[row, i] == target[t], (text, i)
    assert (positions[row, len(text) + 1:] == -1).all()
  assert diagnostic.target_positions("merge_abc", tokens) is None


def test_splits_are_deterministic_and_seeds_differ():
  first = _examples("vowel_removal", "validation", n=20)
  again = _examples("vowel_removal", "validation", n=20)
  assert first == again
  test_split = _examples("vowel_removal", "test", n=20)
  train = _examples("vowel_removal", "train", n=20)
  reseeded = _examples("vowel_removal", "validation", n=20, validation_seed=7)
  for other in (test_split, train, reseeded):
    assert all(a["inputs"] != b["inputs"] for a, b in zip(first, other))
  copy = _examples("copy", "validation", n=20)
  assert all(a["inputs"] != b["inputs"] for a, b in zip(first, copy))


def test_gin_length_and_tokenized_batch():
  gin.bind_parameter("mrt5_jax.tasks.diagnostic_config.sequence_length", 32)
  gin.bind_parameter("mrt5_jax.tasks.diagnostic_config.eval_examples", 10)
  assert tasks.diagnostic_feature_lengths() == {"inputs": 32, "targets": 32}
  ds = seqio.get_dataset(
      "mrt5.diagnostic.merge_abc", task_feature_lengths=tasks.diagnostic_feature_lengths(),
      dataset_split="test", shuffle=False, num_epochs=1,
      feature_converter=seqio.EncDecFeatureConverter(pack=False))
  batches = list(ds.batch(4).as_numpy_iterator())
  assert sum(len(b["encoder_input_tokens"]) for b in batches) == 10
  tokens = batches[0]["encoder_input_tokens"]
  assert tokens.shape == (4, 32)
  assert (tokens[:, -1] == 1).all() and (tokens[:, 0] == ord("#") + 3).all()
  # "D" (id 71) appears only in targets, where "ABC" was.
  assert (batches[0]["decoder_target_tokens"] == ord("D") + 3).any()


def test_sequence_accuracy_metric():
  task = seqio.get_mixture_or_task("mrt5.diagnostic.copy")
  (metric,) = task.metric_fns
  assert metric(["ab", "cd"], ["ab", "ce"]) == {"sequence_accuracy": 50.0}
  with pytest.raises(ValueError):
    metric(["ab"], [])


def test_bad_config_raises():
  with pytest.raises(ValueError, match="seeds"):
    diagnostic.DiagnosticConfig(train_seed=1, validation_seed=1)
  with pytest.raises(ValueError, match="sequence_length"):
    diagnostic.DiagnosticConfig(sequence_length=4)
  with pytest.raises(ValueError, match="Unknown split"):
    diagnostic.generate_dataset("copy", "dev", diagnostic.DiagnosticConfig())
