"""mC4 span corruption tasks and the paper's mixtures.

Tasks ``mrt5.span_corruption.mc4.<lang>`` read TFDS ``c4/multilingual``
(splits ``<lang>`` and ``<lang>-validation``) for the 15 languages of the
MrT5 paper. Mixtures: ``mrt5.span_corruption.mc4.multilingual15`` (uniform
over the 15) and ``mrt5.span_corruption.mc4.english``.

Gin: ``mrt5_jax.tasks.mc4_version.version`` selects the prepared TFDS version
(default 3.1.0, what ``tfds build`` of tensorflow-datasets 4.9 writes).
"""
from __future__ import annotations

import gin

from . import metrics
from . import registration
from . import tfds_source

LANGUAGES = ("en", "fr", "es", "de", "el", "bg", "ru", "tr", "ar", "vi", "th",
             "zh", "hi", "sw", "ur")
TASK_PREFIX = "mrt5.span_corruption.mc4"
MULTILINGUAL_MIXTURE = f"{TASK_PREFIX}.multilingual15"
ENGLISH_MIXTURE = f"{TASK_PREFIX}.english"
DEFAULT_VERSION = "3.1.0"

PREPARE_HINT = (
    "Prepare mC4 with `tfds build c4/multilingual --data_dir={data_dir}` "
    "(an Apache Beam job over Common Crawl; see "
    "https://www.tensorflow.org/datasets/catalog/c4 and "
    "https://www.tensorflow.org/datasets/beam_datasets) or copy an already "
    "prepared c4/multilingual into that directory.")


@gin.configurable(module="mrt5_jax.tasks")
def mc4_version(version: str = DEFAULT_VERSION) -> str:
  """Version of the prepared TFDS ``c4/multilingual`` to read."""
  return version


def tfds_name() -> str:
  return f"c4/multilingual:{mc4_version()}"


def task_name(language: str) -> str:
  return f"{TASK_PREFIX}.{language}"


def _register():
  for language in LANGUAGES:
    registration.add_task(
        task_name(language),
        source=tfds_source.PreparedTfdsDataSource(
            tfds_name_fn=tfds_name,
            splits={"train": language,
                    "validation": f"{language}-validation"},
            prepare_hint=PREPARE_HINT),
        preprocessors=registration.span_corruption_preprocessors("text"),
        output_features=registration.OUTPUT_FEATURES,
        metric_fns=list(metrics.SPAN_CORRUPTION_METRICS))
  registration.add_mixture(MULTILINGUAL_MIXTURE,
                           [(task_name(lang), 1.0) for lang in LANGUAGES])
  registration.add_mixture(ENGLISH_MIXTURE, [(task_name("en"), 1.0)])


_register()
