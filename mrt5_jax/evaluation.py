"""Evaluation with soft and hard deletion (loss, CE, accuracy, deletion metrics).

Every batch runs the encoder prefix once (``hard_deletion.EncodePath.read_gate``):
the gate values it returns give the hard-deletion bucket (the batch's largest
kept count rounded up, so nothing overflows and a stream costs one program per
bucket) and the deletion profile, and both the soft and the hard loss continue
from it.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Optional

import gin

import jax
import numpy as np
import seqio

from mrt5_jax import controller as controller_lib
from mrt5_jax import data as data_lib
from mrt5_jax import gate as gate_lib
from mrt5_jax import hard_deletion
from mrt5_jax import objective as objective_lib
from mrt5_jax import partitioning
from mrt5_jax import train_step
from mrt5_jax.hard_deletion import EncodePath, InferenceConfig

MODES = ("soft", "hard")
# Metric sums that are per-batch means (averaged over batches, not summed).
_PER_BATCH_MEANS = ("loss", "ce_loss", "z_loss", "gate_loss", "score_penalty", "boundary_loss")


class DeletionProfile:
  """Per input byte id: how often the gate deleted it and how often it was seen."""

  def __init__(self, vocab_size: int):
    self.deleted = np.zeros(vocab_size, np.int64)
    self.seen = np.zeros(vocab_size, np.int64)

  def add(self, tokens: np.ndarray, deleted: np.ndarray, real: np.ndarray) -> None:
    """tokens, deleted, real: (B, L); ``deleted`` from ``gate.deleted_positions``."""
    tokens, real = np.asarray(tokens), np.asarray(real).astype(bool)
    np.add.at(self.deleted, tokens[np.asarray(deleted).astype(bool) & real], 1)
    np.add.at(self.seen, tokens[real], 1)

  def as_dict(self) -> dict[int, tuple[int, int]]:
    return {int(i): (int(self.deleted[i]), int(self.seen[i]))
            for i in np.nonzero(self.seen)[0]}


class Evaluator:
  """Jitted soft/hard evaluation of one module on a mesh."""

  def __init__(self, module, partitioner: partitioning.Partitioner,
               objective: objective_lib.ObjectiveConfig,
               controller: controller_lib.ControllerConfig,
               inference: InferenceConfig = InferenceConfig()):
    self.module = module
    self.config = module.config
    self.partitioner = partitioner
    self.objective = objective
    self.controller = controller
    self.path = EncodePath(module, inference.replace(mode="bucketed"))

    def metric_sums(params, controller_state, batch, stage_one, deletion, compacted_length):
      _, sums = objective_lib.compute_loss(
          module, params, controller_state, batch, None, objective=objective,
          controller=controller, enable_dropout=False, deletion=deletion,
          compacted_length=compacted_length, stage_one=stage_one)
      return sums

    self._sums = jax.jit(metric_sums, static_argnames=("deletion", "compacted_length"))

  @property
  def modes(self) -> tuple[str, ...]:
    return MODES if self.config.has_hard_mode else ("soft",)

  def batch_sums(self, params, controller_state, batch, modes: Optional[Iterable[str]] = None,
                 profile: Optional[DeletionProfile] = None) -> dict[str, dict]:
    """{mode: metric sums} of one batch; adds the batch to ``profile`` if given."""
    modes = tuple(self.modes if modes is None else modes)
    for mode in modes:
      if mode not in MODES:
        raise ValueError(f"evaluation mode must be one of {MODES}, got {mode!r}")
    results = {}
    with self.partitioner.context():
      batch = self.partitioner.shard_batch(batch)
      tokens = batch["encoder_input_tokens"]
      segment_ids = batch.get("encoder_segment_ids")
      stage_one, kept = self.path.read_gate(params, tokens, segment_ids)
      for mode in modes:
        length = None
        if mode == "hard":
          length = self.path.compacted_length(kept, tokens.shape[1])
        results[mode] = self._sums(params, controller_state, batch, stage_one, mode, length)
    if profile is not None and stage_one.gate is not None:
      real = objective_lib.real_encoder_mask(tokens, segment_ids)
      deleted = gate_lib.deleted_positions(stage_one.gate, real, self.config.deletion_threshold)
      host = partitioning.host_array
      profile.add(host(tokens), host(deleted), host(real))
    return results

  def sum_batches(self, params, controller_state, batches: Iterable[Mapping[str, np.ndarray]],
                  profile: Optional[DeletionProfile] = None) -> tuple[dict[str, Any], int]:
    """({mode: metric sums over ``batches``}, number of batches)."""
    totals: dict[str, Any] = {}
    count = 0
    for batch in batches:
      count += 1
      for mode, sums in self.batch_sums(params, controller_state, batch,
                                        profile=profile).items():
        totals[mode] = sums if mode not in totals else objective_lib.merge_metric_sums(
            totals[mode], sums)
    return totals, count

  def metrics(self, totals: Mapping[str, Any], count: int,
              controller_state) -> dict[str, dict[str, float]]:
    """{mode: metrics} from ``sum_batches`` totals (possibly merged over several streams)."""
    if not count:
      raise ValueError("evaluation got no batches (is the eval split empty?)")
    alpha = controller_lib.effective_alpha(controller_state, self.controller)
    results = {}
    for mode, sums in totals.items():
      sums = dict(sums)
      for key in _PER_BATCH_MEANS:
        sums[key] = sums[key] / count
      metrics = train_step.finalize(train_step.step_metrics(sums, alpha))
      results[mode] = {k: float(v) for k, v in jax.device_get(metrics).items()}
      results[mode]["num_batches"] = float(count)
    return results

  def evaluate_batches(self, params, controller_state, batches: Iterable[Mapping[str, np.ndarray]],
                       profile: Optional[DeletionProfile] = None) -> dict[str, dict[str, float]]:
    """{'soft': metrics, 'hard': metrics} over all ``batches`` (hard only with a gate)."""
    totals, count = self.sum_batches(params, controller_state, batches, profile)
    return self.metrics(totals, count, controller_state)

  def evaluate_dataset(self, params, controller_state, dataset: data_lib.DatasetConfig,
                       num_batches: Optional[int],
                       profile: Optional[DeletionProfile] = None) -> dict[str, dict[str, float]]:
    """Evaluate the first ``num_batches`` batches (None: the whole split, one epoch)."""
    import itertools
    host, hosts = jax.process_index(), jax.process_count()
    ds = data_lib.get_dataset(dataset, shard_id=host, num_shards=hosts)
    batches = ds.as_numpy_iterator()
    if num_batches is not None:
      batches = itertools.islice(batches, num_batches)
    return self.evaluate_batches(params, controller_state, batches, profile)


def deletion_profile(path: EncodePath, params, batches: Iterable[Mapping[str, np.ndarray]]
                     ) -> dict[int, tuple[int, int]]:
  """Per input byte id: (times deleted, times seen) over real encoder positions."""
  config = path.config
  if not config.has_gate:
    return {}
  profile = DeletionProfile(config.vocab_size)
  for batch in batches:
    tokens = np.asarray(batch["encoder_input_tokens"])
    segment_ids = batch.get("encoder_segment_ids")
    stage_one, _ = path.read_gate(params, tokens, segment_ids)
    real = np.asarray(objective_lib.real_encoder_mask(tokens, segment_ids))
    profile.add(tokens, np.asarray(gate_lib.deleted_positions(
        stage_one.gate, real, config.deletion_threshold)), real)
  return profile.as_dict()


def byte_label(token_id: int) -> str:
  """Printable label of a ByteVocabulary id (3 + byte value; 1 = EOS)."""
  if token_id == 1:
    return "EOS"
  if token_id < 3 or token_id > 258:
    return f"<{token_id}>"
  value = token_id - 3
  char = chr(value) if value < 128 else None
  return repr(char) if char and char.isprintable() else f"0x{value:02x}"


def describe_profile(profile: Mapping[int, tuple[int, int]], top: int = 12) -> str:
  """``'e' 100% (41/41), 'a' 98% ...``: the bytes deleted most often, by share of deletions."""
  total_deleted = sum(d for d, _ in profile.values())
  if not total_deleted:
    return "nothing deleted"
  ranked = sorted(profile.items(), key=lambda kv: -kv[1][0])[:top]
  return ", ".join(f"{byte_label(i)} {d / max(s, 1):.0%} of {s}" for i, (d, s) in ranked if d)


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
  from mrt5_jax.inference import InferenceRunner
  from mrt5_jax.seqio_evaluator import DeletionMetricsEvaluator

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
      figures = jax.device_get(hard_deletion.deletion_figures(encoded, tokens, threshold))
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
             report_path: Optional[str] = None,
             params=None) -> dict:
  """Evaluate ``model_dir`` (its newest checkpoint, or ``step``) on ``eval_dataset``.

  Each task of the dataset's mixture (or its one task) is evaluated on its
  first ``num_batches`` batches (None: the whole split) and its first
  ``speed_batches`` batches are timed (``task_report.evaluate_tasks``);
  with ``seqio_metrics`` the tasks' seqio metrics on their first
  ``seqio_num_examples`` examples join the rows. Returns {'checkpoint',
  'step', 'mixture_or_task_name', 'split', 'soft', 'hard' (every task's
  batches together), 'examples', 'speed', 'tasks' (one row per task),
  'most_deleted', ['seqio'], 'report_path'}; the report is also written as
  JSON to ``report_path`` (default ``<model_dir>/eval/<name>.<split>.<step>.json``;
  '' writes nothing). The loss uses the checkpoint's alpha (from its
  controller state) when it has one. A damaged step is an error naming it
  and the newest intact step.
  """
  import json
  import os
  from mrt5_jax import checkpoints, layer_stacking
  from mrt5_jax import task_report
  from mrt5_jax.network import Transformer

  config = checkpoints.read_config(model_dir)
  location = checkpoints.locate(model_dir, step)
  try:
    if params is None:
      params = checkpoints.restore_params(location.step_dir)
    controller_state = (checkpoints.restore_controller(location.step_dir)
                        or controller_lib.init_state(controller))
  except checkpoints.DamagedCheckpointError as error:
    raise error.suggesting("--gin.evaluate.step={step}") from None
  params = layer_stacking.to_layout(params, config)
  module = Transformer(config)
  part = partitioning.Partitioner(mesh)
  evaluator = Evaluator(module, part, objective, controller, inference)
  params = jax.device_put(params, part.replicated)
  profile = DeletionProfile(config.vocab_size)
  report = task_report.evaluate_tasks(
      evaluator, params, controller_state, eval_dataset, num_batches=num_batches,
      speed_batches=speed_batches, speed_repeats=speed_repeats, inference=inference,
      profile=profile, log=lambda line: logging.getLogger("mrt5_jax").info("%s", line))
  results: dict = {"checkpoint": location.step_dir, "step": location.step,
                   "mixture_or_task_name": eval_dataset.mixture_or_task_name,
                   "split": eval_dataset.split, "deletion_type": config.deletion_type}
  results.update(report.pop("all"))
  results.update(report)
  results["most_deleted"] = describe_profile(profile.as_dict())
  if seqio_metrics:
    results["seqio"] = seqio_evaluate(config, jax.device_get(params), eval_dataset,
                                      num_examples=seqio_num_examples, inference=inference)
    for row in results["tasks"]:
      row["seqio"] = results["seqio"].get(row["task"], {})
  if report_path is None:
    report_path = os.path.join(model_dir, "eval", f"{eval_dataset.mixture_or_task_name}."
                               f"{eval_dataset.split}.{location.step}.json")
  if report_path and jax.process_index() == 0:
    import tensorflow as tf
    tf.io.gfile.makedirs(os.path.dirname(report_path) or ".")
    with tf.io.gfile.GFile(report_path, "w") as f:
      f.write(json.dumps(results, indent=2, sort_keys=True))
  results["report_path"] = report_path or None
  return results
