"""Extractive question answering as text to text: TyDi QA GoldP and XQuAD.

Tasks:
  mrt5.tydiqa.train      TFDS ``tydi_qa/goldp`` train, 9 languages: train (first
                         80%) / validation (last 20%), as the published code
                         holds out 20% of train for validation
  mrt5.tydiqa.<lang>     its ``validation-<lang>`` split (the TyDi dev set, which the
                         paper reports) as split validation; lang in ar bn en fi id ko ru sw te
  mrt5.tydiqa.goldp9     mixture of the 9 ``mrt5.tydiqa.<lang>``
  mrt5.xquad.train       TFDS ``squad/v1.1``: train / validation
  mrt5.xquad.<lang>      TFDS ``xquad/<lang>`` test split (zero-shot after SQuAD);
                         lang in ar de el en es hi ru th tr vi zh (the TFDS builder's)
  mrt5.xquad.zeroshot11  mixture of the 11 ``mrt5.xquad.<lang>``

Text format, as the published code's ``QADataCollator`` builds it:
  inputs   ``"Question: {question} Context: {context}"``
  targets  the first gold answer.
Examples keep every gold answer in an ``answers`` feature; the targets'
postprocessor hands that list to the metrics, which take the best match:
``exact_match`` / ``f1`` (SQuAD v1.1 normalisation, as the paper) and
``exact_match_multilingual`` / ``f1_multilingual`` (see ``qa_metrics``).
Examples without an answer are dropped.

gin: ``mrt5_jax.tasks.qa_feature_lengths.{inputs,targets}`` (default 2048 /
256 bytes, EOS included: the published code truncated inputs at 2048 and
generated at most 256 bytes) and ``mrt5_jax.tasks.qa_versions.{squad,xquad,tydi_qa}``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import gin
import seqio
import tensorflow as tf

from . import qa_metrics
from . import registration
from . import tfds_source

TYDIQA_LANGUAGES = ("ar", "bn", "en", "fi", "id", "ko", "ru", "sw", "te")
XQUAD_LANGUAGES = ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi",
                   "zh")
TYDIQA_PREFIX = "mrt5.tydiqa"
XQUAD_PREFIX = "mrt5.xquad"
TYDIQA_TRAIN_TASK = f"{TYDIQA_PREFIX}.train"
XQUAD_TRAIN_TASK = f"{XQUAD_PREFIX}.train"
TYDIQA_MIXTURE = f"{TYDIQA_PREFIX}.goldp9"
XQUAD_MIXTURE = f"{XQUAD_PREFIX}.zeroshot11"

PREPARE_HINT = ("Prepare it with `tfds build {builder} --data_dir={{data_dir}}` "
                "(see https://www.tensorflow.org/datasets/catalog/{catalog}).")


@gin.configurable(module="mrt5_jax.tasks")
def qa_feature_lengths(inputs: int = 2048, targets: int = 256
                      ) -> Mapping[str, int]:
  """``{"inputs", "targets"}`` lengths of the QA tasks in bytes, EOS included."""
  return {"inputs": inputs, "targets": targets}


@gin.configurable(module="mrt5_jax.tasks")
def qa_versions(squad: str = "3.0.0", xquad: str = "3.0.0",
                tydi_qa: str = "3.0.0") -> Mapping[str, str]:
  """Versions of the prepared TFDS ``squad``, ``xquad`` and ``tydi_qa`` to read."""
  return {"squad": squad, "xquad": xquad, "tydi_qa": tydi_qa}


def tydiqa_task_name(language: str) -> str:
  return f"{TYDIQA_PREFIX}.{language}"


def xquad_task_name(language: str) -> str:
  return f"{XQUAD_PREFIX}.{language}"


def squadlike_to_text(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """SQuAD-format examples -> {"inputs", "targets", "answers"} (answerless dropped)."""
  dataset = dataset.filter(lambda ex: tf.size(ex["answers"]["text"]) > 0)
  return dataset.map(
      lambda ex: {
          "inputs": tf.strings.join(["Question: ", ex["question"],
                                     " Context: ", ex["context"]]),
          "targets": ex["answers"]["text"][0],
          "answers": ex["answers"]["text"],
      }, num_parallel_calls=tf.data.AUTOTUNE)


def gold_answers(output: Any, example: Optional[Mapping[str, Any]] = None,
                 is_target: bool = False) -> Any:
  """seqio postprocessor: a target becomes the example's list of gold answers."""
  if is_target and example is not None and "answers" in example:
    return [tf.compat.as_text(a) for a in example["answers"]]
  return output


PREPROCESSORS = [squadlike_to_text, seqio.preprocessors.tokenize,
                 seqio.CacheDatasetPlaceholder(),
                 seqio.preprocessors.append_eos_after_trim]


def _add_qa_task(name: str, tfds_name_fn, splits: Mapping[str, str],
                 prepare_hint: str, language: Optional[str]) -> None:
  registration.add_task(
      name,
      source=tfds_source.PreparedTfdsDataSource(
          tfds_name_fn=tfds_name_fn, splits=splits, prepare_hint=prepare_hint),
      preprocessors=PREPROCESSORS,
      output_features=registration.OUTPUT_FEATURES,
      postprocess_fn=gold_answers,
      metric_fns=[qa_metrics.squad_metrics,
                  qa_metrics.multilingual_metrics(language)])


def _tydiqa_name() -> str:
  return f"tydi_qa/goldp:{qa_versions()['tydi_qa']}"


def _register():
  tydiqa_hint = PREPARE_HINT.format(builder="tydi_qa/goldp", catalog="tydi_qa")
  _add_qa_task(TYDIQA_TRAIN_TASK, _tydiqa_name,
               {"train": "train[:80%]", "validation": "train[80%:]"},
               tydiqa_hint, language=None)
  for language in TYDIQA_LANGUAGES:
    _add_qa_task(tydiqa_task_name(language), _tydiqa_name,
                 {"validation": f"validation-{language}"}, tydiqa_hint,
                 language=language)
  registration.add_mixture(
      TYDIQA_MIXTURE, [(tydiqa_task_name(lang), 1.0) for lang in TYDIQA_LANGUAGES])

  _add_qa_task(XQUAD_TRAIN_TASK,
               lambda: f"squad/v1.1:{qa_versions()['squad']}",
               {"train": "train", "validation": "validation"},
               PREPARE_HINT.format(builder="squad/v1.1", catalog="squad"),
               language="en")
  for language in XQUAD_LANGUAGES:
    _add_qa_task(
        xquad_task_name(language),
        lambda language=language: f"xquad/{language}:{qa_versions()['xquad']}",
        {"test": "test"},
        PREPARE_HINT.format(builder=f"xquad/{language}", catalog="xquad"),
        language=language)
  registration.add_mixture(
      XQUAD_MIXTURE, [(xquad_task_name(lang), 1.0) for lang in XQUAD_LANGUAGES])


_register()
