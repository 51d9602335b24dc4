"""XNLI: fine-tune on English MultiNLI, evaluate zero-shot in the paper's 15 languages.

Tasks:
  mrt5.xnli.train        TFDS ``multi_nli``: train / validation (= ``validation_matched``)
  mrt5.xnli.<lang>       TFDS ``xnli`` in one language: validation (2,490) / test (5,010)
  mrt5.xnli.zeroshot15   mixture of the 15 ``mrt5.xnli.<lang>`` tasks (equal rates)

Text format, as the published code's ``XNLIDataCollator`` builds it:
  inputs   ``"Premise: {premise} Hypothesis: {hypothesis}"``
  targets  the label index as text: ``"0"`` entailment, ``"1"`` neutral,
           ``"2"`` contradiction (the TFDS and Hugging Face label order).
Metric: ``accuracy`` (percent of predictions equal to the label string), one
result per task, so per language. The paper reports the test split.

gin: ``mrt5_jax.tasks.xnli_feature_lengths.{inputs,targets}`` (default 1024 /
8 bytes, EOS included; the published code truncated inputs at 1024) and
``mrt5_jax.tasks.xnli_versions.{multi_nli,xnli}`` (prepared TFDS versions).
"""
from __future__ import annotations

import functools
from typing import Mapping

import gin
import seqio
import tensorflow as tf

from . import metrics
from . import registration
from . import tfds_source

LANGUAGES = ("en", "fr", "es", "de", "el", "bg", "ru", "tr", "ar", "vi", "th",
             "zh", "hi", "sw", "ur")
TASK_PREFIX = "mrt5.xnli"
TRAIN_TASK = f"{TASK_PREFIX}.train"
ZERO_SHOT_MIXTURE = f"{TASK_PREFIX}.zeroshot15"
LABELS = ("entailment", "neutral", "contradiction")  # target "0", "1", "2"

PREPARE_HINT = ("Prepare it with `tfds build {builder} --data_dir={{data_dir}}` "
                "(see https://www.tensorflow.org/datasets/catalog/{builder}).")


@gin.configurable(module="mrt5_jax.tasks")
def xnli_feature_lengths(inputs: int = 1024, targets: int = 8
                        ) -> Mapping[str, int]:
  """``{"inputs", "targets"}`` lengths of the XNLI tasks in bytes, EOS included."""
  return {"inputs": inputs, "targets": targets}


@gin.configurable(module="mrt5_jax.tasks")
def xnli_versions(multi_nli: str = "1.1.0", xnli: str = "1.1.0"
                 ) -> Mapping[str, str]:
  """Versions of the prepared TFDS ``multi_nli`` and ``xnli`` to read."""
  return {"multi_nli": multi_nli, "xnli": xnli}


def task_name(language: str) -> str:
  return f"{TASK_PREFIX}.{language}"


def _text_pair(premise: tf.Tensor, hypothesis: tf.Tensor,
               label: tf.Tensor) -> Mapping[str, tf.Tensor]:
  return {
      "inputs": tf.strings.join(["Premise: ", premise, " Hypothesis: ",
                                 hypothesis]),
      "targets": tf.strings.as_string(label),
  }


def multi_nli_to_text(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """TFDS ``multi_nli`` examples -> {"inputs", "targets"} strings (unlabelled dropped)."""
  dataset = dataset.filter(lambda ex: ex["label"] >= 0)
  return dataset.map(
      lambda ex: _text_pair(ex["premise"], ex["hypothesis"], ex["label"]),
      num_parallel_calls=tf.data.AUTOTUNE)


def xnli_to_text(dataset: tf.data.Dataset, language: str) -> tf.data.Dataset:
  """TFDS ``xnli`` examples -> the ``language`` pair as {"inputs", "targets"}.

  An example whose hypothesis lacks ``language`` is dropped.
  """

  def hypothesis_in_language(ex):
    hypothesis = ex["hypothesis"]
    return tf.boolean_mask(hypothesis["translation"],
                           tf.equal(hypothesis["language"], language))

  dataset = dataset.filter(
      lambda ex: tf.logical_and(ex["label"] >= 0,
                                tf.size(hypothesis_in_language(ex)) > 0))
  return dataset.map(
      lambda ex: _text_pair(ex["premise"][language],
                            hypothesis_in_language(ex)[0], ex["label"]),
      num_parallel_calls=tf.data.AUTOTUNE)


def _preprocessors(to_text) -> list:
  return [to_text, seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos_after_trim]


def _register():
  registration.add_task(
      TRAIN_TASK,
      source=tfds_source.PreparedTfdsDataSource(
          tfds_name_fn=lambda: f"multi_nli:{xnli_versions()['multi_nli']}",
          splits={"train": "train", "validation": "validation_matched"},
          prepare_hint=PREPARE_HINT.format(builder="multi_nli")),
      preprocessors=_preprocessors(multi_nli_to_text),
      output_features=registration.OUTPUT_FEATURES,
      metric_fns=[metrics.accuracy])
  for language in LANGUAGES:
    registration.add_task(
        task_name(language),
        source=tfds_source.PreparedTfdsDataSource(
            tfds_name_fn=lambda: f"xnli:{xnli_versions()['xnli']}",
            splits={"validation": "validation", "test": "test"},
            prepare_hint=PREPARE_HINT.format(builder="xnli")),
        preprocessors=_preprocessors(
            functools.partial(xnli_to_text, language=language)),
        output_features=registration.OUTPUT_FEATURES,
        metric_fns=[metrics.accuracy])
  registration.add_mixture(ZERO_SHOT_MIXTURE,
                           [(task_name(lang), 1.0) for lang in LANGUAGES])


_register()
