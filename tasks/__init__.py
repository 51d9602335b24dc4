"""seqio tasks and mixtures of mrt5-jax (importing this module registers them).

Span corruption (ByteVocabulary, sentinels 258, 257, ...):
  mrt5.span_corruption.mc4.<lang>   lang in en fr es de el bg ru tr ar vi th zh hi sw ur
  mrt5.span_corruption.mc4.multilingual15   mixture, uniform over the 15
  mrt5.span_corruption.mc4.english          mixture, English only
  mrt5.span_corruption.text         files bound with gin (default: sample corpus)
  mrt5.span_corruption.sample       the shipped sample corpus
Diagnostics (generated, splits train/validation/test):
  mrt5.diagnostic.{copy,vowel_removal,contextual_vowel_removal,merge_abc}
"""
from .lengths import span_corruption_lengths
from .span_corruption import feature_lengths
from .span_corruption import span_corruption_config
from .span_corruption import SpanCorruptionConfig
from .tfds_source import set_tfds_data_dir
from .tfds_source import tfds_data_dir
from . import mc4
from . import text_files
from . import diagnostic
from .mc4 import mc4_version
from .text_files import SAMPLE_TASK
from .text_files import TEXT_TASK
from .diagnostic import diagnostic_config
from .diagnostic import diagnostic_feature_lengths
from .diagnostic import VOWELS

MC4_TASKS = tuple(mc4.task_name(lang) for lang in mc4.LANGUAGES)
MC4_MIXTURES = (mc4.MULTILINGUAL_MIXTURE, mc4.ENGLISH_MIXTURE)
DIAGNOSTIC_TASKS = tuple(diagnostic.task_name(t) for t in diagnostic.TASKS)
