"""The evaluation job: ``evaluate`` (gin-configurable) evaluates a model directory task by task.

Soft and hard cross entropy, deletion and speed per task (``task_report``),
optionally the tasks' own seqio metrics under hard deletion
(``seqio_evaluate``), written as a JSON report.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Optional

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf

from mrt5_jax.checkpointing import loading
from mrt5_jax.data import pipeline as data_lib
from mrt5_jax.evaluation import task_report
from mrt5_jax.evaluation import deletion_analysis
from mrt5_jax.evaluation.evaluator import DeletionProfile, Evaluator
from mrt5_jax.evaluation.seqio_evaluator import DeletionMetricsEvaluator
from mrt5_jax.evaluation.speed import SpeedMeter
from mrt5_jax.inference import encode_path
from mrt5_jax.inference.encode_path import InferenceConfig
from mrt5_jax.inference.runner import InferenceRunner
from mrt5_jax.maths import controller as controller_lib
from mrt5_jax.model.network import Transformer
from mrt5_jax.parallel import partitioning
from mrt5_jax.training import objective as objective_lib


def seqio_evaluate(config, params, dataset: data_lib.DatasetConfig, *,
                   num_examples: Optional[int] = None, mode: Optional[str] = None,
                   max_decode_length: Optional[int] = None,
                   inference: InferenceConfig = InferenceConfig()) -> dict[str, dict[str, float]]:
  """The tasks' own seqio metrics: greedy predictions and target scores under hard deletion.

  ``mode`` is the InferenceRunner mode ('bucketed', 'capacity' or 'soft';
  default: ``inference.mode``). A mixture is evaluated task by task (the
  first ``num_examples`` of each). Returns {task name: metrics}; tasks with
  prediction metrics also get the ``deletion/*`` figures of those predictions
  (``seqio_evaluator.deletion_metrics``).
  """

  data_lib.import_task_module(dataset)
  lengths = data_lib.resolve_feature_lengths(dataset)
  evaluator = DeletionMetricsEvaluator(
      dataset.mixture_or_task_name, feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split=dataset.split, seed=dataset.seed, sequence_length=lengths,
      num_examples=num_examples, logger_cls=(), use_memory_cache=True,
      async_compute_metrics=False)
  runner = InferenceRunner(config, params, mode=mode, inference=inference)
  decode_length = max_decode_length or lengths["targets"]
  threshold = config.deletion_threshold

  def batches(ds):
    for indices, features in ds.batch(dataset.batch_size).as_numpy_iterator():
      yield indices, features

  def predict_with_aux_fn(ds, *unused):
    out, aux = [], {}
    for indices, features in batches(ds):
      tokens = features["encoder_input_tokens"]
      encoded = runner.encode(tokens)
      decoded = np.asarray(runner.generate_from(encoded, decode_length))
      out.extend((int(index), row) for index, row in zip(indices, decoded))
      figures = jax.device_get(encode_path.deletion_figures(encoded, tokens, threshold))
      for key, values in figures.items():
        aux.setdefault(key, []).extend(np.asarray(values).tolist())
    return out, aux

  def score_fn(ds, *unused):
    out = []
    for indices, features in batches(ds):
      ll = np.asarray(runner.score(features["encoder_input_tokens"],
                                   features["decoder_input_tokens"],
                                   features["decoder_target_tokens"]))
      out.extend((int(i), float(s)) for i, s in zip(indices, ll.sum(axis=-1)))
    return out

  futures, _ = evaluator.evaluate(compute_metrics=True, predict_with_aux_fn=predict_with_aux_fn,
                                  score_fn=score_fn)
  results = futures.result()
  return {task: {k: float(getattr(v, "value", v)) for k, v in metrics.items()}
          for task, metrics in results.items()}


@gin.configurable(denylist=["params"])
def evaluate(*, model_dir: str = gin.REQUIRED,
             eval_dataset: data_lib.DatasetConfig = gin.REQUIRED,
             num_batches: Optional[int] = 8,
             step: Optional[int] = None,
             objective: objective_lib.ObjectiveConfig = objective_lib.ObjectiveConfig(),
             controller: controller_lib.ControllerConfig = controller_lib.ControllerConfig(),
             mesh: partitioning.MeshConfig = partitioning.MeshConfig(),
             inference: InferenceConfig = InferenceConfig(),
             seqio_metrics: bool = False,
             seqio_num_examples: Optional[int] = 64,
             speed_batches: int = 1,
             speed_repeats: int = 3,
             speed_reference_dir: Optional[str] = None,
             report_path: Optional[str] = None,
             params=None) -> dict:
  """Evaluate ``model_dir`` (its newest checkpoint, or ``step``) on ``eval_dataset``.

  Each task of the dataset's mixture (or its one task) is evaluated on its
  first ``num_batches`` batches (None: the whole split) and its first
  ``speed_batches`` batches are timed (``task_report.evaluate_tasks``):
  hard deletion against the same model at full length, or against the model
  of ``speed_reference_dir`` (its newest step; e.g. the ByT5 an MrT5 was
  continued from) on the same batches;
  with ``seqio_metrics`` the tasks' seqio metrics on their first
  ``seqio_num_examples`` examples join the rows. Returns {'checkpoint',
  'step', 'mixture_or_task_name', 'split', 'soft', 'hard' (every task's
  batches together), 'examples', 'speed', 'tasks' (one row per task),
  'most_deleted' (the bytes deleted most often: a list of {'byte', 'id', 'deleted',
  'seen', 'rate'}), ['seqio'], 'report_path'}; the report is also written as
  JSON to ``report_path`` (default ``<model_dir>/eval/<name>.<split>.<step>.json``;
  '' writes nothing). The loss uses the checkpoint's alpha (from its
  controller state) when it has one. A damaged step is an error naming it
  and the newest intact step.
  """

  loaded = loading.load_model(model_dir, step, params=params,
                              step_flag="--gin.evaluate.step={step}")
  config, params = loaded.config, loaded.params
  controller_state = loaded.controller_state or controller_lib.init_state(controller)
  module = Transformer(config)
  part = partitioning.Partitioner(mesh)
  evaluator = Evaluator(module, part, objective, controller, inference)
  params = jax.device_put(params, part.replicated)
  profile = DeletionProfile(config.vocab_size)
  reference = None
  if speed_batches and speed_reference_dir:
    ref = loading.load_model(speed_reference_dir,
                             step_flag="a speed_reference_dir whose newest step is intact")
    reference = (ref.config, jax.device_put(ref.params, part.replicated))
  meter = SpeedMeter(config, params, inference, reference) if speed_batches else None
  report = task_report.evaluate_tasks(
      evaluator, params, controller_state, eval_dataset, num_batches=num_batches,
      speed_meter=meter, speed_batches=speed_batches, speed_repeats=speed_repeats,
      profile=profile, log=lambda line: logging.getLogger("mrt5_jax").info("%s", line))
  results: dict = {"checkpoint": loaded.step_dir, "step": loaded.step,
                   "mixture_or_task_name": eval_dataset.mixture_or_task_name,
                   "split": eval_dataset.split, "deletion_type": config.deletion_type,
                   "speed_reference": ref.step_dir if reference else None}
  results.update(report.pop("all"))
  results.update(report)
  results["most_deleted"] = deletion_analysis.most_deleted(profile.as_dict())
  if seqio_metrics:
    results["seqio"] = seqio_evaluate(config, jax.device_get(params), eval_dataset,
                                      num_examples=seqio_num_examples, inference=inference)
    for row in results["tasks"]:
      row["seqio"] = results["seqio"].get(row["task"], {})
  if report_path is None:
    report_path = os.path.join(model_dir, "eval", f"{eval_dataset.mixture_or_task_name}."
                               f"{eval_dataset.split}.{loaded.step}.json")
  if report_path and jax.process_index() == 0:
    tf.io.gfile.makedirs(os.path.dirname(report_path) or ".")
    with tf.io.gfile.GFile(report_path, "w") as f:
      f.write(json.dumps(results, indent=2, sort_keys=True))
  results["report_path"] = report_path or None
  return results
