"""XNLI, TyDi QA GoldP and XQuAD tasks over tiny prepared TFDS dirs written by the test.

Expected strings are written out by hand from the published input formats
("Premise: … Hypothesis: …" -> "0"/"1"/"2"; "Question: … Context: …" -> first
answer); metrics are checked through seqio's own evaluator.
"""
import os

import gin
import numpy as np
import pytest
import seqio

import mrt5_jax.tasks as tasks
from tests.fixtures import seqio_metrics
from mrt5_jax.tasks import testing

XNLI_LANGUAGES = ("en", "fr", "es", "de", "el", "bg", "ru", "tr", "ar", "vi",
                  "th", "zh", "hi", "sw", "ur")
TYDIQA_LANGUAGES = ("ar", "bn", "en", "fi", "id", "ko", "ru", "sw", "te")
XQUAD_LANGUAGES = ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi",
                   "zh")
XNLI_LENGTHS = {"inputs": 160, "targets": 8}
QA_LENGTHS = {"inputs": 192, "targets": 64}  # the Thai answer is 39 bytes


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  testing.write_xnli_fixtures(data_dir)
  testing.write_qa_fixtures(data_dir)
  return data_dir


@pytest.fixture(autouse=True)
def _reset():
  tasks.set_tfds_data_dir(None)
  yield
  tasks.set_tfds_data_dir(None)


def _ids(text):
  """ByteVocabulary ids of ``text`` plus EOS (bytes + 3, EOS 1)."""
  return [b + 3 for b in text.encode("utf-8")] + [1]


def _examples(name, split, lengths):
  ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split=split,
                                                   shuffle=False)
  return list(ds.as_numpy_iterator())


def _decoded(example, feature):
  ids = [int(i) for i in example[feature]]
  assert ids[-1] == 1, "EOS last"
  return bytes(i - 3 for i in ids[:-1]).decode("utf-8")


def _padded(text, length):
  ids = _ids(text)
  return ids + [0] * (length - len(ids))


def test_registered_names_features_and_metrics():
  assert tasks.XNLI_TASKS == ("mrt5.xnli.train",) + tuple(
      f"mrt5.xnli.{lang}" for lang in XNLI_LANGUAGES)
  assert tasks.TYDIQA_TASKS == ("mrt5.tydiqa.train",) + tuple(
      f"mrt5.tydiqa.{lang}" for lang in TYDIQA_LANGUAGES)
  assert tasks.XQUAD_TASKS == ("mrt5.xquad.train",) + tuple(
      f"mrt5.xquad.{lang}" for lang in XQUAD_LANGUAGES)
  for mixture, members in (("mrt5.xnli.zeroshot15", tasks.XNLI_TASKS[1:]),
                           ("mrt5.tydiqa.goldp9", tasks.TYDIQA_TASKS[1:]),
                           ("mrt5.xquad.zeroshot11", tasks.XQUAD_TASKS[1:])):
    tasks_in = seqio.get_mixture_or_task(mixture).tasks
    assert sorted(t.name for t in tasks_in) == sorted(members)
  for name in tasks.XNLI_TASKS + tasks.TYDIQA_TASKS + tasks.XQUAD_TASKS:
    task = seqio.get_mixture_or_task(name)
    assert set(task.output_features) == {"inputs", "targets"}
    for feature in task.output_features.values():
      assert isinstance(feature.vocabulary, seqio.ByteVocabulary)
      assert feature.add_eos
    assert task.predict_metric_fns, name
  splits = {"mrt5.xnli.train": ["train", "validation"],
            "mrt5.xnli.th": ["validation", "test"],
            "mrt5.tydiqa.train": ["train", "validation"],
            "mrt5.tydiqa.te": ["validation"],
            "mrt5.xquad.train": ["train", "validation"],
            "mrt5.xquad.th": ["test"]}
  for name, expected in splits.items():
    assert list(seqio.get_mixture_or_task(name).splits) == expected


def test_feature_lengths_defaults_and_gin():
  assert tasks.xnli_feature_lengths() == {"inputs": 1024, "targets": 8}
  assert tasks.qa_feature_lengths() == {"inputs": 2048, "targets": 256}
  gin.bind_parameter("mrt5_jax.tasks.qa_feature_lengths.inputs", 4096)
  gin.bind_parameter("mrt5_jax.tasks.xnli_feature_lengths.targets", 4)
  assert tasks.qa_feature_lengths() == {"inputs": 4096, "targets": 256}
  assert tasks.xnli_feature_lengths() == {"inputs": 1024, "targets": 4}


def test_multi_nli_train_examples_in_the_published_format(tfds_dir):
  tasks.set_tfds_data_dir(tfds_dir)
  examples = _examples("mrt5.xnli.train", "train", XNLI_LENGTHS)
  assert len(examples) == 6
  assert list(examples[0]["inputs"]) == _ids(
      "Premise: The cat sleeps on the mat. Hypothesis: An animal is sleeping.")
  assert [_decoded(ex, "targets") for ex in examples] == [
      "0", "1", "2", "0", "2", "1"]
  assert _decoded(examples[1], "inputs") == (
      "Premise: A man is playing a guitar on stage. "
      "Hypothesis: The man is a famous musician.")
  validation = _examples("mrt5.xnli.train", "validation", XNLI_LENGTHS)
  assert [_decoded(ex, "targets") for ex in validation] == ["0", "2"]


@pytest.mark.parametrize("language, inputs", [
    ("en", "Premise: The cat sleeps on the mat. Hypothesis: An animal is sleeping."),
    ("th", "Premise: แมวนอนบนพรม Hypothesis: สัตว์ตัวหนึ่งกำลังนอน"),
    ("ar", "Premise: القطة تنام على السجادة. Hypothesis: حيوان نائم."),
    ("zh", "Premise: 猫睡在垫子上。 Hypothesis: 一只动物在睡觉。"),
    ("ru", "Premise: Кошка спит на коврике. Hypothesis: Животное спит."),
])
def test_xnli_language_takes_its_own_premise_and_hypothesis(tfds_dir, language,
                                                            inputs):
  tasks.set_tfds_data_dir(tfds_dir)
  first = _examples(f"mrt5.xnli.{language}", "test", XNLI_LENGTHS)[0]
  assert _decoded(first, "inputs") == inputs
  assert _decoded(first, "targets") == "0"


def test_every_xnli_language_gives_a_batch_and_drops_missing_hypotheses(tfds_dir):
  tasks.set_tfds_data_dir(tfds_dir)
  for language in XNLI_LANGUAGES:
    examples = _examples(f"mrt5.xnli.{language}", "test", XNLI_LENGTHS)
    # The third test example has an English hypothesis only.
    assert len(examples) == (3 if language == "en" else 2), language
    assert [_decoded(ex, "targets") for ex in examples[:2]] == ["0", "2"]
    assert len(_examples(f"mrt5.xnli.{language}", "validation",
                         XNLI_LENGTHS)) == 1
  batch = next(seqio.get_dataset(
      "mrt5.xnli.zeroshot15", task_feature_lengths=XNLI_LENGTHS,
      dataset_split="test", shuffle=False, num_epochs=1,
      feature_converter=seqio.EncDecFeatureConverter(pack=False)
  ).batch(4).as_numpy_iterator())
  assert batch["encoder_input_tokens"].shape == (4, XNLI_LENGTHS["inputs"])
  assert batch["decoder_target_tokens"].shape == (4, XNLI_LENGTHS["targets"])


def test_long_xnli_inputs_are_cut_with_eos_last(tfds_dir):
  tasks.set_tfds_data_dir(tfds_dir)
  first = _examples("mrt5.xnli.en", "test", {"inputs": 20, "targets": 8})[0]
  assert list(first["inputs"]) == _ids("Premise: The cat sl")


def test_xnli_accuracy_through_seqio_evaluation(tfds_dir):
  tasks.set_tfds_data_dir(tfds_dir)
  exact = seqio_metrics("mrt5.xnli.en", "test", XNLI_LENGTHS,
                    lambda f: f["decoder_target_tokens"])
  assert exact == {"mrt5.xnli.en": {"accuracy": 100.0}}
  # Always "0": right on 2 of the 3 English test labels (0, 2, 0).
  always_entailment = seqio_metrics("mrt5.xnli.zeroshot15", "test", XNLI_LENGTHS,
                                lambda f: _padded("0", 8))
  assert always_entailment["mrt5.xnli.en"]["accuracy"] == pytest.approx(200 / 3)
  assert always_entailment["mrt5.xnli.th"]["accuracy"] == 50.0
  assert len(always_entailment) == 15


@pytest.mark.parametrize("language, inputs, answer", [
    ("ar", "Question: ما هي عاصمة مصر؟ Context: القاهرة هي عاصمة مصر.", "القاهرة"),
    ("ru", "Question: Какой город является столицей России? "
           "Context: Москва — столица России.", "Москва"),
    ("en", "Question: What is the capital of France? "
           "Context: Paris is the capital of France.", "Paris"),
    ("te", "Question: తెలంగాణ రాజధాని ఏది? Context: హైదరాబాద్ తెలంగాణ రాజధాని.",
     "హైదరాబాద్"),
])
def test_tydiqa_language_examples(tfds_dir, language, inputs, answer):
  tasks.set_tfds_data_dir(tfds_dir)
  examples = _examples(f"mrt5.tydiqa.{language}", "validation", QA_LENGTHS)
  assert len(examples) == 1
  assert _decoded(examples[0], "inputs") == inputs
  assert _decoded(examples[0], "targets") == answer
  assert [a.decode() for a in examples[0]["answers"]] == [answer]


def test_every_qa_language_gives_a_batch(tfds_dir):
  tasks.set_tfds_data_dir(tfds_dir)
  for name, split in ([(f"mrt5.tydiqa.{lang}", "validation")
                       for lang in TYDIQA_LANGUAGES] +
                      [(f"mrt5.xquad.{lang}", "test")
                       for lang in XQUAD_LANGUAGES]):
    batch = next(seqio.get_dataset(
        name, task_feature_lengths=QA_LENGTHS, dataset_split=split,
        shuffle=False, num_epochs=1,
        feature_converter=seqio.EncDecFeatureConverter(pack=False)
    ).batch(1).as_numpy_iterator())
    assert batch["encoder_input_tokens"].shape == (1, QA_LENGTHS["inputs"]), name
    assert list(batch["encoder_input_tokens"][0, :10]) == _ids("Question: ")[:10]


def test_tydiqa_train_holds_out_the_last_fifth_and_drops_unanswerable(tfds_dir):
  tasks.set_tfds_data_dir(tfds_dir)
  # Fixture train: ar bn en fi id ko ru sw te + one unanswerable = 10 examples.
  train = _examples("mrt5.tydiqa.train", "train", QA_LENGTHS)
  validation = _examples("mrt5.tydiqa.train", "validation", QA_LENGTHS)
  assert [_decoded(ex, "targets") for ex in train] == [
      "القاهرة", "ঢাকা", "Paris", "Helsinki", "Jakarta", "서울", "Москва",
      "Nairobi"]
  assert [_decoded(ex, "targets") for ex in validation] == ["హైదరాబాద్"]


def test_squad_train_and_multi_answer_validation(tfds_dir):
  tasks.set_tfds_data_dir(tfds_dir)
  train = _examples("mrt5.xquad.train", "train", QA_LENGTHS)
  assert _decoded(train[2], "inputs") == (
      "Question: Into which sea does the Nile flow? "
      "Context: The Nile flows north into the Mediterranean Sea.")
  assert _decoded(train[2], "targets") == "the Mediterranean Sea"
  validation = _examples("mrt5.xquad.train", "validation", QA_LENGTHS)
  assert _decoded(validation[0], "targets") == "Denver Broncos"  # the first answer
  assert [a.decode() for a in validation[0]["answers"]] == [
      "Denver Broncos", "The Denver Broncos", "Denver Broncos"]


def test_qa_targets_round_trip_to_100_through_seqio_evaluation(tfds_dir):
  tasks.set_tfds_data_dir(tfds_dir)
  for name, split in (("mrt5.tydiqa.goldp9", "validation"),
                      ("mrt5.xquad.zeroshot11", "test"),
                      ("mrt5.xquad.train", "validation")):
    results = seqio_metrics(name, split, QA_LENGTHS,
                        lambda f: f["decoder_target_tokens"])
    assert results, name
    for task, metrics in results.items():
      assert metrics == {"exact_match": 100.0, "f1": 100.0,
                         "exact_match_multilingual": 100.0,
                         "f1_multilingual": 100.0}, task


def test_qa_metrics_take_the_best_gold_answer(tfds_dir):
  tasks.set_tfds_data_dir(tfds_dir)
  # Golds: "Denver Broncos", "The Denver Broncos", "Denver Broncos".
  # "Broncos": precision 1, recall 1/2 -> F1 2/3 against every gold.
  partial = seqio_metrics("mrt5.xquad.train", "validation", QA_LENGTHS,
                      lambda f: _padded("Broncos", 64))["mrt5.xquad.train"]
  assert partial["exact_match"] == 0.0
  assert partial["f1"] == pytest.approx(200 / 3)
  # "the Denver Broncos!" matches the second gold exactly after normalisation.
  exact = seqio_metrics("mrt5.xquad.train", "validation", QA_LENGTHS,
                    lambda f: _padded("the Denver Broncos!", 64))
  assert exact["mrt5.xquad.train"]["exact_match"] == 100.0
  # Chinese: "北京市" for "北京": SQuAD F1 0 (one token each), per-character 0.8.
  chinese = seqio_metrics("mrt5.xquad.zh", "test", QA_LENGTHS,
                      lambda f: _padded("北京市", 64))["mrt5.xquad.zh"]
  assert chinese["f1"] == 0.0
  assert chinese["f1_multilingual"] == pytest.approx(80.0)


@pytest.mark.parametrize("name, split, tfds_name, tfds_split, builder", [
    ("mrt5.xnli.train", "train", "multi_nli:1.1.0", "'train'", "multi_nli"),
    ("mrt5.xnli.train", "validation", "multi_nli:1.1.0", "'validation_matched'",
     "multi_nli"),
    ("mrt5.xnli.sw", "test", "xnli:1.1.0", "'test'", "xnli"),
    ("mrt5.tydiqa.train", "train", "tydi_qa/goldp:3.0.0", "'train[:80%]'",
     "tydi_qa/goldp"),
    ("mrt5.tydiqa.ko", "validation", "tydi_qa/goldp:3.0.0", "'validation-ko'",
     "tydi_qa/goldp"),
    ("mrt5.xquad.train", "validation", "squad/v1.1:3.0.0", "'validation'",
     "squad/v1.1"),
    ("mrt5.xquad.th", "test", "xquad/th:3.0.0", "'test'", "xquad/th"),
])
def test_missing_dataset_names_dataset_split_and_command(
    tmp_path, name, split, tfds_name, tfds_split, builder):
  missing = str(tmp_path / "no_tfds_here")
  tasks.set_tfds_data_dir(missing)
  task = seqio.get_mixture_or_task(name)
  with pytest.raises(FileNotFoundError) as error:
    task.get_dataset({"inputs": 64, "targets": 8}, split=split)
  message = str(error.value)
  assert f"TFDS dataset '{tfds_name}'" in message
  assert f"split {tfds_split}" in message
  assert f"tfds build {builder} --data_dir={missing}" in message
  assert not os.path.exists(missing)  # nothing was downloaded or built


def test_sliced_split_needs_its_whole_split(tmp_path):
  data_dir = str(tmp_path)
  testing.write_tfds_fixture(data_dir, "tydi_qa/goldp:3.0.0", {
      "validation-en": [testing.qa_example("en-0", "Paris is here.", "Where?",
                                           ["here"])]})
  tasks.set_tfds_data_dir(data_dir)
  with pytest.raises(ValueError, match=r"no split 'train\[:80%\]'.*prepared "
                     "splits: validation-en"):
    seqio.get_mixture_or_task("mrt5.tydiqa.train").get_dataset(
        QA_LENGTHS, split="train")


def test_versions_are_gin_configurable(tmp_path):
  tasks.set_tfds_data_dir(str(tmp_path))
  gin.bind_parameter("mrt5_jax.tasks.xnli_versions.xnli", "1.0.0")
  gin.bind_parameter("mrt5_jax.tasks.qa_versions.tydi_qa", "2.0.0")
  with pytest.raises(FileNotFoundError, match=r"'xnli:1\.0\.0'"):
    seqio.get_mixture_or_task("mrt5.xnli.fr").get_dataset(XNLI_LENGTHS,
                                                         split="test")
  with pytest.raises(FileNotFoundError, match=r"'tydi_qa/goldp:2\.0\.0'"):
    seqio.get_mixture_or_task("mrt5.tydiqa.fi").get_dataset(QA_LENGTHS,
                                                           split="validation")


def test_qa_train_packs_for_t5x(tfds_dir):
  """t5x trains with packing; the extra ``answers`` feature must not get in the way."""
  tasks.set_tfds_data_dir(tfds_dir)
  batch = next(seqio.get_dataset(
      "mrt5.tydiqa.train", task_feature_lengths={"inputs": 256, "targets": 64},
      dataset_split="train", shuffle=False, num_epochs=1,
      feature_converter=seqio.EncDecFeatureConverter(pack=True)
  ).batch(1).as_numpy_iterator())
  assert "answers" not in batch
  # The first two examples (Arabic, Bengali) fit in one 256-byte row.
  assert batch["encoder_segment_ids"].max() >= 2
