"""Short fine-tuning runs of a micro MrT5 on each downstream task family.

Classification (MultiNLI -> XNLI), extractive QA (TyDi QA GoldP) and a
character task (spelling correction), on the tiny fixture data the task tests
use: 12 steps of ``jobs.train.train`` with periodic evaluation and a checkpoint,
then the task's seqio metrics from the checkpoint with hard deletion.
"""
import json
import math

import gin
import pytest

import mrt5_jax.tasks as tasks
from mrt5_jax.checkpointing import config_files
from mrt5_jax.checkpointing import readers
from mrt5_jax.data import pipeline
from mrt5_jax.jobs import evaluate as evaluate_job
from mrt5_jax.tasks import testing
from tests.fixtures import model_config, train_run as run

pytestmark = pytest.mark.slow
STEPS = 12


@pytest.fixture(autouse=True)
def _reset():
  tasks.set_tfds_data_dir(None)
  yield
  tasks.set_tfds_data_dir(None)


def _dataset(name, split, lengths, batch_size=4):
  return pipeline.DatasetConfig(mixture_or_task_name=name, task_feature_lengths=lengths,
                            split=split, batch_size=batch_size, seed=0,
                            shuffle=split == "train",
                            num_epochs=None if split == "train" else 1)


def _finetune_and_evaluate(tmp_path, train_task, eval_task, eval_split, lengths):
  config = model_config("trainer")
  result = run(tmp_path / "run", STEPS, dataset=_dataset(train_task, "train", lengths),
               config=config, lr=3e-3, eval_dataset=_dataset(train_task, "validation", lengths,
                                                             batch_size=1),
               eval_every=STEPS, eval_steps=1, checkpoint_every=STEPS)
  assert result.step == STEPS and result.checkpoint_dir
  losses = [h["loss"] for h in result.history]
  ce = [h["cross_entropy_per_token"] for h in result.history]
  assert all(math.isfinite(x) for x in losses + ce)
  assert ce[-1] < ce[0], ce  # it learns the (repeated) fixture examples
  assert math.isfinite(result.eval_metrics["soft"]["cross_entropy_per_token"])
  params = readers.restore_params(result.model_dir)
  return evaluate_job.seqio_evaluate(
      config_files.read_config(result.model_dir), params,
      _dataset(eval_task, eval_split, lengths, batch_size=2), num_examples=None)


def test_classification_finetune_then_xnli_zero_shot(tmp_path):
  tasks.set_tfds_data_dir(str(tmp_path / "tfds"))
  testing.write_xnli_fixtures(str(tmp_path / "tfds"))
  metrics = _finetune_and_evaluate(tmp_path, "mrt5.xnli.train", "mrt5.xnli.th", "test",
                                   {"inputs": 128, "targets": 8})
  assert set(metrics) == {"mrt5.xnli.th"}
  # Two Thai test examples: accuracy is 0, 50 or 100 percent.
  assert metrics["mrt5.xnli.th"]["accuracy"] in (0.0, 50.0, 100.0)


def test_qa_finetune_then_tydiqa_language(tmp_path):
  tasks.set_tfds_data_dir(str(tmp_path / "tfds"))
  testing.write_qa_fixtures(str(tmp_path / "tfds"))
  metrics = _finetune_and_evaluate(tmp_path, "mrt5.tydiqa.train", "mrt5.tydiqa.ru",
                                   "validation", {"inputs": 160, "targets": 32})
  qa = {k: v for k, v in metrics["mrt5.tydiqa.ru"].items() if not k.startswith("deletion/")}
  assert set(qa) == {"exact_match", "f1", "exact_match_multilingual", "f1_multilingual"}
  assert all(0.0 <= v <= 100.0 for v in qa.values())
  assert 0.0 <= metrics["mrt5.tydiqa.ru"]["deletion/rate"] <= 1.0


def test_character_task_finetune_then_test_split(tmp_path):
  pairs = [("He red the book.", "He read the book."), ("Thier cat sleeps.", "Their cat sleeps."),
           ("I seen it.", "I saw it."), ("We was late.", "We were late.")]
  for split in ("train", "validation", "test_context_dependent"):
    path = tmp_path / f"{split}.jsonl"
    path.write_text("".join(json.dumps({"input": i, "output": o}) + "\n" for i, o in pairs))
    gin.bind_parameter(f"mrt5_jax.tasks.spelling_correction_files.{split}", str(path))
  metrics = _finetune_and_evaluate(
      tmp_path, "mrt5.character.spelling_correction_contextual",
      "mrt5.character.spelling_correction_contextual", "test_context_dependent",
      {"inputs": 32, "targets": 32})
  accuracy = metrics["mrt5.character.spelling_correction_contextual"]["sequence_accuracy"]
  assert accuracy in (0.0, 25.0, 50.0, 75.0, 100.0)
