"""Text-file span corruption: the shipped sample corpus and user files."""
import glob
import os
import unicodedata

import gin
import numpy as np
import pytest
import seqio

import mrt5_jax.tasks as tasks
from mrt5_jax.tasks import text_files

INPUTS_LENGTH = 256
LENGTHS = {"inputs": INPUTS_LENGTH,
           "targets": tasks.span_corruption_lengths(INPUTS_LENGTH)[1]}
LANGUAGES = ("en", "fr", "es", "de", "el", "bg", "ru", "tr", "ar", "vi", "th",
             "zh", "hi", "sw", "ur")
# Unicode name prefix of the letters each language's sample must use.
SCRIPTS = {"en": "LATIN", "fr": "LATIN", "es": "LATIN", "de": "LATIN",
           "tr": "LATIN", "vi": "LATIN", "sw": "LATIN", "ru": "CYRILLIC",
           "bg": "CYRILLIC", "el": "GREEK", "ar": "ARABIC", "ur": "ARABIC",
           "hi": "DEVANAGARI", "zh": "CJK UNIFIED IDEOGRAPH", "th": "THAI"}


def _script_share(text, script):
  letters = [c for c in text if c.isalpha()]
  return sum(unicodedata.name(c, "").startswith(script)
             for c in letters) / len(letters)


@pytest.mark.parametrize("split", ["train", "validation"])
def test_sample_corpus_covers_the_scripts(split):
  total = 0
  for language in LANGUAGES:
    path = os.path.join(text_files.DATA_DIR, f"sample-{language}-{split}.txt")
    with open(path, encoding="utf-8") as f:
      text = f.read()
    total += len(text.encode("utf-8"))
    assert text.endswith("\n") and "\ufffd" not in text
    assert len(text.splitlines()) >= 3
    assert _script_share(text, SCRIPTS[language]) > 0.95, language
  assert 5_000 < total < 300_000
  files = glob.glob(os.path.join(text_files.DATA_DIR, f"sample-*-{split}.txt"))
  assert len(files) == len(LANGUAGES)


def test_vietnamese_and_turkish_samples_use_their_letters():
  def read(language):
    with open(os.path.join(text_files.DATA_DIR, f"sample-{language}-train.txt"),
              encoding="utf-8") as f:
      return f.read()
  assert set("ươđạ") <= set(read("vi"))
  assert set("ğışç") <= set(read("tr"))


def _batch(name, split):
  ds = seqio.get_dataset(
      name, task_feature_lengths=LENGTHS, dataset_split=split, shuffle=True,
      seed=0, num_epochs=1,
      feature_converter=seqio.EncDecFeatureConverter(pack=False))
  return next(ds.batch(4).as_numpy_iterator())


@pytest.mark.parametrize("name,split", [
    ("mrt5.span_corruption.sample", "train"),
    ("mrt5.span_corruption.sample", "validation"),
    ("mrt5.span_corruption.text", "train"),
])
def test_embedded_corpus_gives_batches_without_any_data_dir(name, split):
  batch = _batch(name, split)
  assert batch["encoder_input_tokens"].shape == (4, INPUTS_LENGTH)
  assert batch["decoder_target_tokens"].shape == (4, LENGTHS["targets"])
  assert (batch["encoder_input_tokens"] > 0).all()  # full chunks
  assert (batch["decoder_target_tokens"][:, 0] == 258).all()


def test_user_file_through_gin(tmp_path):
  for split in ("train", "validation"):
    (tmp_path / f"{split}.txt").write_text(f"{split} only text\n" * 100,
                                           encoding="utf-8")
  gin.parse_config(f"""
      mrt5_jax.tasks.text_files.train = ['{tmp_path}/train*.txt']
      mrt5_jax.tasks.text_files.validation = '{tmp_path}/validation.txt'
  """)
  for split in ("train", "validation"):
    batch = _batch("mrt5.span_corruption.text", split)
    tokens = batch["encoder_input_tokens"]
    allowed = np.frombuffer(f"{split} only text\n".encode(), np.uint8) + 3
    data = tokens[(tokens > 1) & (tokens < 250)]
    assert np.isin(data, allowed).all()
  # The sample task keeps reading the shipped corpus.
  sample = _batch("mrt5.span_corruption.sample", "train")["encoder_input_tokens"]
  assert ((sample >= 0x80 + 3) & (sample <= 0xF4 + 3)).any()  # non-ASCII


def test_missing_files_and_unset_split_raise(tmp_path):
  gin.bind_parameter("mrt5_jax.tasks.text_files.train",
                     str(tmp_path / "nothing*.txt"))
  task = seqio.get_mixture_or_task("mrt5.span_corruption.text")
  with pytest.raises(FileNotFoundError, match="nothing"):
    task.get_dataset(LENGTHS, split="train")
  with pytest.raises(ValueError, match="text_files.validation"):
    task.get_dataset(LENGTHS, split="validation")


@pytest.mark.parametrize("split", ["train", "validation"])
def test_per_language_sample_tasks_split_the_sample_corpus(split):
  mixture = seqio.get_mixture_or_task(text_files.SAMPLE_MIXTURE)
  names = sorted(task.name for task in seqio.get_subtasks(mixture))
  assert names == sorted(f"mrt5.span_corruption.sample.{lang}" for lang in LANGUAGES)

  def lines(task_name):
    source = seqio.get_mixture_or_task(task_name).source
    ds = source.get_dataset(split=split, shuffle=False)
    return [x["text"].decode("utf-8") for x in ds.as_numpy_iterator()]

  every = []
  for language in LANGUAGES:
    path = os.path.join(text_files.DATA_DIR, f"sample-{language}-{split}.txt")
    with open(path, encoding="utf-8") as f:
      expected = f.read().splitlines(keepends=True)
    got = lines(f"mrt5.span_corruption.sample.{language}")
    assert got == expected, language
    every += got
  assert sorted(every) == sorted(lines(text_files.SAMPLE_TASK))
