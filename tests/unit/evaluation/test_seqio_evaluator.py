"""DeletionMetricsEvaluator: deletion figures beside the task metrics, one decode per task."""
import json
import os

import jax
import numpy as np
import pytest
import seqio

from mrt5_jax.data import pipeline as data_lib
from mrt5_jax.jobs import evaluate as evaluate_job
from mrt5_jax.inference.encode_path import EncodePath
from mrt5_jax.evaluation.seqio_evaluator import DeletionMetricsEvaluator, deletion_metrics
from tests.fixtures import diagnostic_dataset

TASK = "mrt5.diagnostic.copy"
LENGTH = 24
NUM = 10


def test_deletion_metrics_by_hand():
  aux = {"kept_length": [3, 5], "input_length": [10, 10], "num_dropped": [0, 2],
         "scores": [0.0, 0.0]}
  assert deletion_metrics(aux) == {
      "deletion/rate": pytest.approx(1 - 8 / 20), "deletion/kept_length": 4.0,
      "deletion/input_length": 10.0, "deletion/dropped_positions": 2.0}
  assert deletion_metrics({"scores": [1.0]}) == {}
  assert deletion_metrics(None) == {}


def _evaluator(tmp_path=None):
  diagnostic_dataset("copy", length=LENGTH, split="validation")  # registers, binds the length
  kwargs = {"logger_cls": ()} if tmp_path is None else {
      "logger_cls": [seqio.JSONLogger], "log_dir": str(tmp_path)}
  return DeletionMetricsEvaluator(
      TASK, feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split="validation", sequence_length={"inputs": LENGTH, "targets": LENGTH},
      num_examples=NUM, use_memory_cache=True, async_compute_metrics=False, **kwargs)


def _copying(aux_fn, calls):
  """A predict_with_aux_fn that returns the targets (a perfect model) and aux_fn's values."""
  def predict_with_aux_fn(ds, *unused):
    calls.append(1)
    out, aux = [], {}
    for index, features in ds.as_numpy_iterator():
      out.append((int(index), features["decoder_target_tokens"]))
      for key, value in aux_fn(int(index), features).items():
        aux.setdefault(key, []).append(value)
    return out, aux
  return predict_with_aux_fn


def test_task_metrics_and_deletion_metrics_from_one_decode(tmp_path):
  evaluator = _evaluator(tmp_path)
  calls = []
  real = {}

  def aux_fn(index, features):
    real[index] = int((features["encoder_input_tokens"] > 0).sum())
    return {"kept_length": index, "input_length": real[index], "num_dropped": 1,
            "deletion_rate": 0.0}

  futures, _ = evaluator.evaluate(compute_metrics=True, step=7,
                                  predict_with_aux_fn=_copying(aux_fn, calls))
  metrics = futures.result()[TASK]
  assert len(calls) == 1
  assert metrics["sequence_accuracy"] == 100.0
  assert metrics["deletion/rate"] == pytest.approx(1 - sum(range(NUM)) / sum(real.values()))
  assert metrics["deletion/kept_length"] == pytest.approx(np.mean(range(NUM)))
  assert metrics["deletion/dropped_positions"] == NUM
  with open(os.path.join(tmp_path, f"{TASK}-metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  assert len(lines) == 1 and lines[0]["step"] == 7
  assert lines[0]["sequence_accuracy"] == 100.0
  assert lines[0]["deletion/rate"] == pytest.approx(metrics["deletion/rate"])


def test_without_deletion_aux_only_the_task_metrics():
  evaluator = _evaluator()
  futures, _ = evaluator.evaluate(
      compute_metrics=True,
      predict_with_aux_fn=_copying(lambda index, features: {"scores": 0.0}, []))
  assert set(futures.result()[TASK]) == {"sequence_accuracy"}

  def predict_fn(ds, *unused):
    return [(int(i), f["decoder_target_tokens"]) for i, f in ds.as_numpy_iterator()]
  futures, _ = _evaluator().evaluate(compute_metrics=True, predict_fn=predict_fn)
  assert futures.result()[TASK] == {"sequence_accuracy": 100.0}


def test_seqio_evaluate_reports_the_deletion_of_its_predictions(tiny_model):
  module, variables = tiny_model
  params = jax.tree_util.tree_map(lambda x: x, variables["params"])
  params["encoder"]["delete_gate"]["dense"]["bias"] = (
      params["encoder"]["delete_gate"]["dense"]["bias"] - 0.5)
  dataset = diagnostic_dataset("copy", batch_size=4, length=LENGTH, split="validation")
  results = evaluate_job.seqio_evaluate(module.config, params, dataset, num_examples=NUM,
                                      max_decode_length=4)[TASK]
  ds = seqio.get_dataset(TASK, task_feature_lengths=data_lib.resolve_feature_lengths(dataset),
                         dataset_split="validation", shuffle=False, num_epochs=1,
                         feature_converter=seqio.EncDecFeatureConverter(pack=False))
  tokens = next(ds.batch(NUM).as_numpy_iterator())["encoder_input_tokens"]
  reading, _ = EncodePath(module).read_gate(params, tokens)
  real = tokens > 0
  deleted = (np.asarray(reading.gate) < module.config.deletion_threshold) & real
  assert 0 < deleted.sum() < real.sum()
  assert results["deletion/rate"] == pytest.approx(deleted.sum() / real.sum(), abs=1e-6)
  assert results["deletion/kept_length"] == pytest.approx((real.sum() - deleted.sum()) / NUM)
  assert results["deletion/dropped_positions"] == 0
  assert "sequence_accuracy" in results
