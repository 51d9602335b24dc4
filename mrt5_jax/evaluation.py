"""Evaluation with soft and hard deletion (loss, CE, accuracy, deletion metrics).

Soft: the training computation without dropout. Hard: deleted positions are
removed; the compacted length is the batch's largest kept count rounded up to a
bucket (``config.bucket_for``), picked on the host between two compiled
programs, so nothing overflows and a stream costs one program per bucket.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

import gin

import jax
import jax.numpy as jnp
import numpy as np

from mrt5_jax import compaction
from mrt5_jax import controller as controller_lib
from mrt5_jax import data as data_lib
from mrt5_jax import objective as objective_lib
from mrt5_jax import partitioning
from mrt5_jax.config import bucket_for

MODES = ("soft", "hard")
# Metric sums that are per-batch means (averaged over batches, not summed).
_PER_BATCH_MEANS = ("loss", "ce_loss", "z_loss", "gate_loss", "score_penalty")


class Evaluator:
  """Jitted soft/hard evaluation of one module on a mesh."""

  def __init__(self, module, partitioner: partitioning.Partitioner,
               objective: objective_lib.ObjectiveConfig,
               controller: controller_lib.ControllerConfig):
    self.module = module
    self.config = module.config
    self.partitioner = partitioner
    self.objective = objective
    self.controller = controller
    config = self.config

    def metric_sums(params, controller_state, batch, deletion, compacted_length):
      _, sums = objective_lib.compute_loss(
          module, params, controller_state, batch, None, objective=objective,
          controller=controller, enable_dropout=False, deletion=deletion,
          compacted_length=compacted_length)
      return sums

    def max_kept(params, batch):
      tokens = batch["encoder_input_tokens"]
      segment_ids = batch.get("encoder_segment_ids")
      _, gate, _ = module.apply({"params": params}, tokens, segment_ids, False,
                                method=module.encode_stage_one)
      real = objective_lib.real_encoder_mask(tokens, segment_ids)
      return jnp.max(compaction.count_kept(gate, real, config.deletion_threshold, segment_ids))

    self._sums = jax.jit(metric_sums, static_argnums=(3, 4))
    self._max_kept = jax.jit(max_kept)

  @property
  def modes(self) -> tuple[str, ...]:
    return MODES if self.config.has_gate else ("soft",)

  def hard_length(self, params, batch) -> int:
    """The bucketed compacted length hard deletion uses for this batch."""
    length = batch["encoder_input_tokens"].shape[1]
    kept = int(self._max_kept(params, batch))
    return bucket_for(self.config, length, max(kept, 1))

  def batch_sums(self, params, controller_state, batch, mode: str) -> dict:
    if mode not in MODES:
      raise ValueError(f"evaluation mode must be one of {MODES}, got {mode!r}")
    with self.partitioner.context():
      batch = self.partitioner.shard_batch(batch)
      if mode == "soft":
        return self._sums(params, controller_state, batch, "soft", None)
      return self._sums(params, controller_state, batch, "hard", self.hard_length(params, batch))

  def evaluate_batches(self, params, controller_state, batches: Iterable[Mapping[str, np.ndarray]]
                       ) -> dict[str, dict[str, float]]:
    """{'soft': metrics, 'hard': metrics} over all ``batches`` (hard only with a gate)."""
    totals: dict[str, Any] = {}
    count = 0
    for batch in batches:
      count += 1
      for mode in self.modes:
        sums = self.batch_sums(params, controller_state, batch, mode)
        totals[mode] = sums if mode not in totals else objective_lib.merge_metric_sums(
            totals[mode], sums)
    if not count:
      raise ValueError("evaluation got no batches (is the eval split empty?)")
    results = {}
    for mode, sums in totals.items():
      sums = dict(sums)
      for key in _PER_BATCH_MEANS:
        sums[key] = sums[key] / count
      metrics = objective_lib.finalize_metrics(sums, controller_state, self.controller)
      results[mode] = {k: float(v) for k, v in jax.device_get(metrics).items()}
      results[mode]["num_batches"] = float(count)
    return results

  def evaluate_dataset(self, params, controller_state, dataset: data_lib.DatasetConfig,
                       num_batches: Optional[int]) -> dict[str, dict[str, float]]:
    """Evaluate the first ``num_batches`` batches (None: the whole split, one epoch)."""
    import itertools
    host, hosts = jax.process_index(), jax.process_count()
    ds = data_lib.get_dataset(dataset, shard_id=host, num_shards=hosts)
    batches = ds.as_numpy_iterator()
    if num_batches is not None:
      batches = itertools.islice(batches, num_batches)
    return self.evaluate_batches(params, controller_state, batches)


def deletion_profile(module, params, batches: Iterable[Mapping[str, np.ndarray]]
                     ) -> dict[int, tuple[int, int]]:
  """Per input byte id: (times deleted, times seen) over real encoder positions."""
  config = module.config
  if not config.has_gate:
    return {}

  @jax.jit
  def deleted(params, tokens, segment_ids):
    _, gate, _ = module.apply({"params": params}, tokens, segment_ids, False,
                              method=module.encode_stage_one)
    return gate < config.deletion_threshold

  deleted_counts = np.zeros(config.vocab_size, np.int64)
  seen_counts = np.zeros(config.vocab_size, np.int64)
  for batch in batches:
    tokens = np.asarray(batch["encoder_input_tokens"])
    segment_ids = batch.get("encoder_segment_ids")
    real = np.asarray(objective_lib.real_encoder_mask(tokens, segment_ids))
    mask = np.asarray(deleted(params, tokens, segment_ids)) & real
    np.add.at(deleted_counts, tokens[mask], 1)
    np.add.at(seen_counts, tokens[real], 1)
  return {int(i): (int(deleted_counts[i]), int(seen_counts[i]))
          for i in np.nonzero(seen_counts)[0]}


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
                   max_decode_length: Optional[int] = None) -> dict[str, dict[str, float]]:
  """The task's own seqio metrics: greedy predictions and target scores under hard deletion.

  ``mode`` is the InferenceRunner mode ('bucketed', 'capacity' or 'soft';
  default: the config's hard-deletion mode). Returns {task name: metrics}.
  """
  import seqio
  from mrt5_jax.inference import InferenceRunner

  data_lib.import_task_module(dataset)
  lengths = data_lib.resolve_feature_lengths(dataset)
  evaluator = seqio.Evaluator(
      dataset.mixture_or_task_name, feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split=dataset.split, seed=dataset.seed, sequence_length=lengths,
      num_examples=num_examples, logger_cls=(), use_memory_cache=True,
      async_compute_metrics=False)
  runner = InferenceRunner(config, params, mode=mode)
  decode_length = max_decode_length or lengths["targets"]

  def batches(ds):
    for indices, features in ds.batch(dataset.batch_size).as_numpy_iterator():
      yield indices, features

  def predict_fn(ds, *unused):
    out = []
    for indices, features in batches(ds):
      tokens = np.asarray(runner.generate(features["encoder_input_tokens"], decode_length))
      out.extend((int(index), row) for index, row in zip(indices, tokens))
    return out

  def score_fn(ds, *unused):
    out = []
    for indices, features in batches(ds):
      ll = np.asarray(runner.score(features["encoder_input_tokens"],
                                   features["decoder_input_tokens"],
                                   features["decoder_target_tokens"]))
      out.extend((int(i), float(s)) for i, s in zip(indices, ll.sum(axis=-1)))
    return out

  futures, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn, score_fn=score_fn)
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
             seqio_metrics: bool = False,
             seqio_num_examples: Optional[int] = 64,
             params=None) -> dict:
  """Evaluate ``model_dir`` (its newest checkpoint, or ``step``) on ``eval_dataset``.

  Returns {'checkpoint', 'soft', 'hard', 'most_deleted', ['seqio']}. The loss
  uses the checkpoint's alpha (from its controller state) when it has one.
  """
  import itertools
  import os

  from mrt5_jax import checkpoints
  from mrt5_jax.network import Transformer

  config = checkpoints.read_config(model_dir)
  root = checkpoints.checkpoint_dir(model_dir)
  if step is None:
    step = checkpoints.latest_step(model_dir)
    if step is None:
      raise ValueError(f"no checkpoint under {root!r}")
  path = os.path.join(root, str(step))
  if params is None:
    params = checkpoints.restore_params(path)
  controller_state = checkpoints.restore_controller(path) or controller_lib.init_state(controller)
  module = Transformer(config)
  part = partitioning.Partitioner(mesh)
  evaluator = Evaluator(module, part, objective, controller)
  params = jax.device_put(params, part.replicated)
  results: dict = {"checkpoint": path}
  results.update(evaluator.evaluate_dataset(params, controller_state, eval_dataset, num_batches))
  host, hosts = jax.process_index(), jax.process_count()
  batches = data_lib.get_dataset(eval_dataset, shard_id=host, num_shards=hosts).as_numpy_iterator()
  if num_batches is not None:
    batches = itertools.islice(batches, num_batches)
  results["most_deleted"] = describe_profile(deletion_profile(module, params, batches))
  if seqio_metrics:
    results["seqio"] = seqio_evaluate(config, jax.device_get(params), eval_dataset,
                                      num_examples=seqio_num_examples)
  return results
