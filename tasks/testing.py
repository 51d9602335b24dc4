"""Writes tiny prepared TFDS datasets for tests and smoke runs.

The layout is what ``tfds build`` writes (``<data_dir>/<name>/<config>/<version>/``
with ``dataset_info.json``, ``features.json`` and TFRecord shards), so the
tasks read them exactly as they read the real datasets. ``write_mc4_fixture``
fills ``c4/multilingual`` with the shipped sample corpus;
``write_tfds_fixture`` writes any builder from given examples.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import tensorflow as tf
import tensorflow_datasets as tfds

from . import mc4
from . import text_files


def write_tfds_fixture(data_dir: str, tfds_name: str,
                       splits: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
  """Writes one shard per split of ``name[/config]:version``; returns its dir.

  Args:
    data_dir: the TFDS data dir to write into.
    tfds_name: e.g. ``"xnli:1.1.0"`` or ``"tydi_qa/goldp:3.0.0"``.
    splits: TFDS split name -> examples, each a dict in the builder's
      feature format (what ``features.serialize_example`` takes).
  """
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  os.makedirs(builder.data_dir, exist_ok=True)
  template = tfds.core.ShardedFileTemplate(
      data_dir=builder.data_dir, dataset_name=builder.name,
      filetype_suffix="tfrecord",
      template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}")
  features = builder.info.features
  split_infos = []
  for split, examples in splits.items():
    path = template.replace(split=split).sharded_filepath(shard_index=0,
                                                          num_shards=1)
    num_bytes = 0
    with tf.io.TFRecordWriter(os.fspath(path)) as writer:
      for example in examples:
        record = features.serialize_example(example)
        num_bytes += len(record)
        writer.write(record)
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[len(examples)], num_bytes=num_bytes,
        filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(split_infos))
  builder.info.write_to_directory(builder.data_dir)
  return os.fspath(builder.data_dir)


def sample_documents(language: str, split: str) -> Sequence[str]:
  """Lines of ``sample-<language>-<split>.txt`` (split: train/validation)."""
  path = os.path.join(text_files.DATA_DIR, f"sample-{language}-{split}.txt")
  with open(path, encoding="utf-8") as f:
    return [line.rstrip("\n") for line in f if line.strip()]


def _mc4_record(language: str, index: int, text: str) -> Mapping[str, str]:
  return {"text": text, "url": f"https://example.invalid/{language}/{index}",
          "content-type": "text/plain",
          "content-length": str(len(text.encode("utf-8"))),
          "timestamp": "2024-01-01T00:00:00Z"}


def write_mc4_fixture(data_dir: str,
                      languages: Iterable[str] = mc4.LANGUAGES,
                      version: Optional[str] = None) -> str:
  """Writes splits ``<lang>`` and ``<lang>-validation``; returns the dataset dir."""
  version = version or mc4.DEFAULT_VERSION
  splits = {}
  for language in languages:
    for tfds_split, corpus_split in ((language, "train"),
                                     (f"{language}-validation", "validation")):
      splits[tfds_split] = [
          _mc4_record(language, i, text)
          for i, text in enumerate(sample_documents(language, corpus_split))]
  return write_tfds_fixture(data_dir, f"c4/multilingual:{version}", splits)


# ---------------------------------------------------------------------------
# Downstream task fixtures: a few hand-written examples per dataset, in the
# TFDS feature format of each builder.

XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw",
                  "th", "tr", "ur", "vi", "zh")
# Premise; hypothesis entailed (label 0); hypothesis contradicted (label 2).
XNLI_PREMISE = {
    "ar": "القطة تنام على السجادة.", "bg": "Котката спи на постелката.",
    "de": "Die Katze schläft auf der Matte.", "el": "Η γάτα κοιμάται στο χαλί.",
    "en": "The cat sleeps on the mat.", "es": "El gato duerme en la alfombra.",
    "fr": "Le chat dort sur le tapis.", "hi": "बिल्ली चटाई पर सोती है।",
    "ru": "Кошка спит на коврике.", "sw": "Paka analala kwenye mkeka.",
    "th": "แมวนอนบนพรม", "tr": "Kedi paspasın üstünde uyuyor.",
    "ur": "بلی چٹائی پر سوتی ہے۔", "vi": "Con mèo ngủ trên tấm thảm.",
    "zh": "猫睡在垫子上。"}
XNLI_ENTAILED = {
    "ar": "حيوان نائم.", "bg": "Едно животно спи.", "de": "Ein Tier schläft.",
    "el": "Ένα ζώο κοιμάται.", "en": "An animal is sleeping.",
    "es": "Un animal duerme.", "fr": "Un animal dort.",
    "hi": "एक जानवर सो रहा है।", "ru": "Животное спит.", "sw": "Mnyama amelala.",
    "th": "สัตว์ตัวหนึ่งกำลังนอน", "tr": "Bir hayvan uyuyor.",
    "ur": "ایک جانور سو رہا ہے۔", "vi": "Một con vật đang ngủ.",
    "zh": "一只动物在睡觉。"}
XNLI_CONTRADICTED = {
    "ar": "القطة تجري.", "bg": "Котката тича.", "de": "Die Katze rennt.",
    "el": "Η γάτα τρέχει.", "en": "The cat is running.", "es": "El gato corre.",
    "fr": "Le chat court.", "hi": "बिल्ली दौड़ रही है।", "ru": "Кошка бежит.",
    "sw": "Paka anakimbia.", "th": "แมวกำลังวิ่ง", "tr": "Kedi koşuyor.",
    "ur": "بلی دوڑ رہی ہے۔", "vi": "Con mèo đang chạy.", "zh": "猫在跑。"}

MULTI_NLI_TRAIN = (
    ("The cat sleeps on the mat.", "An animal is sleeping.", 0),
    ("A man is playing a guitar on stage.", "The man is a famous musician.", 1),
    ("The cat sleeps on the mat.", "The cat is running.", 2),
    ("Two dogs play in the snow.", "Animals are outside.", 0),
    ("Two dogs play in the snow.", "The dogs are asleep indoors.", 2),
    ("A woman reads a book in the park.", "She is reading a novel.", 1),
)
MULTI_NLI_VALIDATION = (
    ("Children are singing in a choir.", "Kids are making music.", 0),
    ("Children are singing in a choir.", "The children are silent.", 2),
)


def _nli(premise: str, hypothesis: str, label: int) -> Mapping[str, Any]:
  return {"premise": premise, "hypothesis": hypothesis, "label": label}


def write_xnli_fixtures(data_dir: str) -> None:
  """``multi_nli:1.1.0`` (6 train, 2 + 2 validation) and ``xnli:1.1.0``.

  xnli test: [entailed (0), contradicted (2), English-only hypothesis (0)];
  validation: [contradicted (2)]. Every premise has all 15 languages.
  """
  write_tfds_fixture(data_dir, "multi_nli:1.1.0", {
      "train": [_nli(*row) for row in MULTI_NLI_TRAIN],
      "validation_matched": [_nli(*row) for row in MULTI_NLI_VALIDATION],
      "validation_mismatched": [_nli(*row) for row in MULTI_NLI_VALIDATION]})
  entailed = {"premise": XNLI_PREMISE, "hypothesis": XNLI_ENTAILED, "label": 0}
  contradicted = {"premise": XNLI_PREMISE, "hypothesis": XNLI_CONTRADICTED,
                  "label": 2}
  english_only = {"premise": XNLI_PREMISE,
                  "hypothesis": {"en": "A cat is resting."}, "label": 0}
  write_tfds_fixture(data_dir, "xnli:1.1.0", {
      "test": [entailed, contradicted, english_only],
      "validation": [contradicted]})


# (context, question, answer) per language: "X is the capital of Y".
QA_CAPITALS = {
    "ar": ("القاهرة هي عاصمة مصر.", "ما هي عاصمة مصر؟", "القاهرة"),
    "bn": ("ঢাকা বাংলাদেশের রাজধানী।", "বাংলাদেশের রাজধানী কী?", "ঢাকা"),
    "de": ("Berlin ist die Hauptstadt Deutschlands.",
           "Was ist die Hauptstadt Deutschlands?", "Berlin"),
    "el": ("Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
           "Ποια είναι η πρωτεύουσα της Ελλάδας;", "Αθήνα"),
    "en": ("Paris is the capital of France.", "What is the capital of France?",
           "Paris"),
    "es": ("Madrid es la capital de España.", "¿Cuál es la capital de España?",
           "Madrid"),
    "fi": ("Helsinki on Suomen pääkaupunki.", "Mikä on Suomen pääkaupunki?",
           "Helsinki"),
    "hi": ("नई दिल्ली भारत की राजधानी है।", "भारत की राजधानी क्या है?", "नई दिल्ली"),
    "id": ("Jakarta adalah ibu kota Indonesia.", "Apa ibu kota Indonesia?",
           "Jakarta"),
    "ko": ("서울은 한국의 수도이다.", "한국의 수도는 어디인가?", "서울"),
    "ru": ("Москва — столица России.", "Какой город является столицей России?",
           "Москва"),
    "sw": ("Nairobi ni mji mkuu wa Kenya.", "Mji mkuu wa Kenya ni upi?",
           "Nairobi"),
    "te": ("హైదరాబాద్ తెలంగాణ రాజధాని.", "తెలంగాణ రాజధాని ఏది?", "హైదరాబాద్"),
    "th": ("กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย",
           "เมืองหลวงของประเทศไทยคืออะไร", "กรุงเทพมหานคร"),
    "tr": ("Ankara Türkiye'nin başkentidir.", "Türkiye'nin başkenti neresidir?",
           "Ankara"),
    "vi": ("Hà Nội là thủ đô của Việt Nam.", "Thủ đô của Việt Nam là gì?",
           "Hà Nội"),
    "zh": ("北京是中国的首都。", "中国的首都是哪里？", "北京"),
}
TYDIQA_LANGUAGES = ("ar", "bn", "en", "fi", "id", "ko", "ru", "sw", "te")
XQUAD_LANGUAGES = ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi",
                   "zh")
# SQuAD-style English examples: (context, question, answers).
SQUAD_TRAIN = (
    ("The Eiffel Tower was completed in 1889 in Paris.",
     "When was the Eiffel Tower completed?", ("1889",)),
    ("Mount Everest is the highest mountain above sea level.",
     "What is the highest mountain above sea level?", ("Mount Everest",)),
    ("The Nile flows north into the Mediterranean Sea.",
     "Into which sea does the Nile flow?", ("the Mediterranean Sea",)),
)
SQUAD_VALIDATION = (
    ("The Denver Broncos defeated the Carolina Panthers to win Super Bowl 50.",
     "Which team won Super Bowl 50?",
     ("Denver Broncos", "The Denver Broncos", "Denver Broncos")),
)


def qa_example(example_id: str, context: str, question: str,
               answers: Sequence[str]) -> Mapping[str, Any]:
  """One example in the TFDS SQuAD-like feature format."""
  return {"id": example_id, "title": "", "context": context,
          "question": question,
          "answers": {"text": list(answers),
                      "answer_start": [max(context.find(a), 0)
                                       for a in answers]}}


def _capital(language: str, index: int = 0) -> Mapping[str, Any]:
  context, question, answer = QA_CAPITALS[language]
  return qa_example(f"{language}-{index}", context, question, [answer])


def write_qa_fixtures(data_dir: str) -> None:
  """``tydi_qa/goldp``, ``squad/v1.1`` and ``xquad/<lang>`` (all 3.0.0).

  tydi_qa train: the 9 languages' capital examples (in TYDIQA_LANGUAGES order)
  plus one without an answer; validation-<lang>: that language's example.
  squad: SQUAD_TRAIN / SQUAD_VALIDATION. xquad/<lang> test: the capital example.
  """
  answerless = qa_example("en-unanswerable", "Nothing here.", "Why?", [])
  tydi = {"train": [_capital(lang) for lang in TYDIQA_LANGUAGES] + [answerless],
          "validation": [_capital(lang, 1) for lang in TYDIQA_LANGUAGES]}
  for language in TYDIQA_LANGUAGES:
    tydi[f"validation-{language}"] = [_capital(language, 1)]
  write_tfds_fixture(data_dir, "tydi_qa/goldp:3.0.0", tydi)
  write_tfds_fixture(data_dir, "squad/v1.1:3.0.0", {
      "train": [qa_example(f"squad-train-{i}", *row)
                for i, row in enumerate(SQUAD_TRAIN)],
      "validation": [qa_example(f"squad-validation-{i}", *row)
                     for i, row in enumerate(SQUAD_VALIDATION)]})
  for language in XQUAD_LANGUAGES:
    write_tfds_fixture(data_dir, f"xquad/{language}:3.0.0",
                       {"test": [_capital(language)]})
