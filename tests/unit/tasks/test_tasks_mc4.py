"""mC4 tasks and mixtures over a tiny prepared TFDS dir written by the test."""
import os

import gin
import numpy as np
import pytest
import seqio

import mrt5_jax.tasks as tasks
from mrt5_jax.tasks import testing

INPUTS_LENGTH = 128
LENGTHS = {"inputs": INPUTS_LENGTH,
           "targets": tasks.span_corruption_lengths(INPUTS_LENGTH)[1]}
LANGUAGES = ("en", "fr", "es", "de", "el", "bg", "ru", "tr", "ar", "vi", "th",
             "zh", "hi", "sw", "ur")


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  testing.write_mc4_fixture(str(data_dir))
  return str(data_dir)


@pytest.fixture(autouse=True)
def _reset():
  tasks.set_tfds_data_dir(None)
  yield
  tasks.set_tfds_data_dir(None)


def _batch(name, split="train"):
  ds = seqio.get_dataset(
      name, task_feature_lengths=LENGTHS, dataset_split=split, shuffle=True,
      seed=0, num_epochs=1,
      feature_converter=seqio.EncDecFeatureConverter(pack=False))
  return next(ds.batch(2).as_numpy_iterator())


def test_registered_names():
  assert tasks.MC4_TASKS == tuple(f"mrt5.span_corruption.mc4.{lang}"
                                  for lang in LANGUAGES)
  mixture = seqio.get_mixture_or_task("mrt5.span_corruption.mc4.multilingual15")
  assert sorted(t.name for t in mixture.tasks) == sorted(tasks.MC4_TASKS)
  assert len({mixture.get_rate(t) for t in mixture.tasks}) == 1  # uniform
  english = seqio.get_mixture_or_task("mrt5.span_corruption.mc4.english")
  assert [t.name for t in english.tasks] == ["mrt5.span_corruption.mc4.en"]


def test_every_language_gives_a_batch(tfds_dir):
  tasks.set_tfds_data_dir(tfds_dir)
  for language in LANGUAGES:
    batch = _batch(f"mrt5.span_corruption.mc4.{language}")
    assert batch["encoder_input_tokens"].shape == (2, INPUTS_LENGTH)
    assert batch["decoder_target_tokens"].shape == (2, LENGTHS["targets"])
    # Full chunks: inputs fill the encoder exactly, EOS last.
    assert (batch["encoder_input_tokens"][0] > 0).all(), language
    assert batch["encoder_input_tokens"][0, -1] == 1
    assert batch["decoder_target_tokens"][0, 0] == 258  # first sentinel


def test_validation_split_and_gin_data_dir(tfds_dir):
  gin.bind_parameter("mrt5_jax.tasks.tfds_data_dir.path", tfds_dir)
  batch = _batch("mrt5.span_corruption.mc4.th", split="validation")
  thai = np.frombuffer("ไทย".encode("utf-8")[:1], np.uint8)[0] + 3
  assert (batch["encoder_input_tokens"] == thai).any()


@pytest.mark.parametrize("mixture", ["mrt5.span_corruption.mc4.multilingual15",
                                     "mrt5.span_corruption.mc4.english"])
def test_mixtures_give_a_batch(tfds_dir, mixture):
  tasks.set_tfds_data_dir(tfds_dir)
  batch = _batch(mixture)
  assert batch["encoder_input_tokens"].shape == (2, INPUTS_LENGTH)
  assert (batch["decoder_loss_weights"].sum(axis=1) > 0).all()


def test_missing_data_dir_names_dataset_split_and_command(tmp_path):
  missing = str(tmp_path / "no_tfds_here")
  tasks.set_tfds_data_dir(missing)
  task = seqio.get_mixture_or_task("mrt5.span_corruption.mc4.de")
  with pytest.raises(FileNotFoundError) as error:
    task.get_dataset(LENGTHS, split="validation")
  message = str(error.value)
  assert "c4/multilingual:3.1.0" in message
  assert "'de-validation'" in message
  assert f"tfds build c4/multilingual --data_dir={missing}" in message
  assert "mrt5-inspect --gin.mrt5_jax.tasks.tfds_data_dir.path=DIR" in message
  assert "t5x.train/t5x.eval --tfds_data_dir=DIR" in message
  assert not os.path.exists(missing)  # nothing was downloaded or built


def test_the_suggested_data_dir_settings_are_accepted(tmp_path, monkeypatch):
  """What the missing-data message suggests for the mrt5-* commands really sets the dir."""
  from mrt5_jax.cli import gin_flags
  from mrt5_jax.tasks.tfds_source import DATA_DIR_HINT
  tasks.set_tfds_data_dir(None)
  data_dir = str(tmp_path / "tfds")
  flag = "--gin.mrt5_jax.tasks.tfds_data_dir.path=DIR"
  assert flag in DATA_DIR_HINT
  assert gin_flags.parse_argv([flag.replace("DIR", data_dir)]) == []  # no "unknown arguments"
  assert tasks.tfds_data_dir() == data_dir
  gin.clear_config()
  assert "TFDS_DATA_DIR=DIR" in DATA_DIR_HINT
  monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
  assert tasks.tfds_data_dir() == data_dir


def test_missing_split_and_other_version_are_reported(tmp_path):
  data_dir = str(tmp_path)
  testing.write_mc4_fixture(data_dir, languages=["en"])
  tasks.set_tfds_data_dir(data_dir)
  with pytest.raises(ValueError, match="'sw'.*prepared splits: en, "
                     "en-validation"):
    seqio.get_mixture_or_task("mrt5.span_corruption.mc4.sw").get_dataset(
        LENGTHS, split="train")
  gin.bind_parameter("mrt5_jax.tasks.mc4_version.version", "3.0.1")
  with pytest.raises(FileNotFoundError, match="Versions prepared there: 3.1.0"):
    seqio.get_mixture_or_task("mrt5.span_corruption.mc4.en").get_dataset(
        LENGTHS, split="train")
