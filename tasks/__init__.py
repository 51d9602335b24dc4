"""seqio tasks and mixtures of mrt5-jax (importing this module registers them).

Span corruption (ByteVocabulary, sentinels 258, 257, ...):
  mrt5.span_corruption.mc4.<lang>   lang in en fr es de el bg ru tr ar vi th zh hi sw ur
  mrt5.span_corruption.mc4.multilingual15   mixture, uniform over the 15
  mrt5.span_corruption.mc4.english          mixture, English only
  mrt5.span_corruption.text         files bound with gin (default: sample corpus)
  mrt5.span_corruption.sample       the shipped sample corpus (15 languages, one stream)
  mrt5.span_corruption.sample.<lang>  one language of it; mixture ...sample.multilingual15
Diagnostics (generated, splits train/validation/test):
  mrt5.diagnostic.{copy,vowel_removal,contextual_vowel_removal,merge_abc}
Downstream tasks of the paper (TFDS data prepared with `tfds build`):
  mrt5.xnli.train                   MultiNLI (English), metric accuracy
  mrt5.xnli.<lang>                  XNLI validation/test, the 15 languages above
  mrt5.xnli.zeroshot15              mixture of the 15 XNLI languages
  mrt5.tydiqa.train                 TyDi QA GoldP train (80% / 20% validation)
  mrt5.tydiqa.<lang>                GoldP dev set, lang in ar bn en fi id ko ru sw te
  mrt5.tydiqa.goldp9                mixture of the 9
  mrt5.xquad.train                  SQuAD v1.1 train/validation
  mrt5.xquad.<lang>                 XQuAD test, lang in ar de el en es hi ru th tr vi zh
  mrt5.xquad.zeroshot11             mixture of the 11
  QA metrics: exact_match, f1 (SQuAD v1.1) and *_multilingual (see qa_metrics)
Character-level tasks of the paper (local char-iit files bound with gin):
  mrt5.character.spelling_correction_contextual, mrt5.character.word_search

Feature lengths for TASK_FEATURE_LENGTHS (all gin-configurable):
  feature_lengths() span corruption, diagnostic_feature_lengths(),
  xnli_feature_lengths() 1024/8, qa_feature_lengths() 2048/256,
  spelling_correction_feature_lengths() 64/64, word_search_feature_lengths() 128/16
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
from . import xnli
from . import qa
from . import qa_metrics
from . import character_tasks
from .mc4 import mc4_version
from .text_files import SAMPLE_TASK
from .text_files import SAMPLE_MIXTURE
from .text_files import TEXT_TASK
from .diagnostic import diagnostic_config
from .diagnostic import diagnostic_feature_lengths
from .diagnostic import VOWELS
from .xnli import xnli_feature_lengths
from .xnli import xnli_versions
from .qa import qa_feature_lengths
from .qa import qa_versions
from .character_tasks import character_data_dir
from .character_tasks import spelling_correction_files
from .character_tasks import spelling_correction_feature_lengths
from .character_tasks import word_search_files
from .character_tasks import word_search_feature_lengths

MC4_TASKS = tuple(mc4.task_name(lang) for lang in mc4.LANGUAGES)
MC4_MIXTURES = (mc4.MULTILINGUAL_MIXTURE, mc4.ENGLISH_MIXTURE)
DIAGNOSTIC_TASKS = tuple(diagnostic.task_name(t) for t in diagnostic.TASKS)
XNLI_TASKS = (xnli.TRAIN_TASK,) + tuple(
    xnli.task_name(lang) for lang in xnli.LANGUAGES)
TYDIQA_TASKS = (qa.TYDIQA_TRAIN_TASK,) + tuple(
    qa.tydiqa_task_name(lang) for lang in qa.TYDIQA_LANGUAGES)
XQUAD_TASKS = (qa.XQUAD_TRAIN_TASK,) + tuple(
    qa.xquad_task_name(lang) for lang in qa.XQUAD_LANGUAGES)
CHARACTER_TASKS = tuple(character_tasks.task_name(t)
                        for t in character_tasks.SPLITS)
DOWNSTREAM_MIXTURES = (xnli.ZERO_SHOT_MIXTURE, qa.TYDIQA_MIXTURE,
                       qa.XQUAD_MIXTURE)
