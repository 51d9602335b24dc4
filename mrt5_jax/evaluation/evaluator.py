"""Evaluation with soft and hard deletion (loss, CE, accuracy, deletion metrics).

Every batch runs the encoder prefix once (``encode_path.EncodePath.read_gate``):
the gate values it returns give the hard-deletion bucket (the batch's largest
kept count rounded up, so nothing overflows and a stream costs one program per
bucket) and the deletion profile, and both the soft and the hard loss continue
from it.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional


import jax
import numpy as np

from mrt5_jax.evaluation.deletion_analysis import byte_label
from mrt5_jax.maths import controller as controller_lib
from mrt5_jax.data import eval_pipeline
from mrt5_jax.data import pipeline as data_lib
from mrt5_jax.training import objective as objective_lib
from mrt5_jax.parallel import partitioning
from mrt5_jax.training import metrics as metrics_lib
from mrt5_jax.inference.encode_path import EncodePath, InferenceConfig

MODES = ("soft", "hard")


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
    return MODES if self.module.shortening.hard_differs else ("soft",)

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
      deleted = self.module.shortening.deleted(stage_one.gate, real)
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
      # The per-batch means (loss terms) are averaged over batches, the rest merged.
      sums = metrics_lib.batch_means(sums, count)
      metrics = metrics_lib.finalize(metrics_lib.step_metrics(sums, alpha))
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
    """Evaluate the first ``num_batches`` batches (None: the whole split, one epoch).

    A dataset with a finite ``num_epochs`` is read for one epoch with its last
    batch padded with all-pad rows (``eval_pipeline.padded_batches``, as
    ``mrt5-eval`` reads it), so a split smaller than a batch is evaluated whole.
    """
    import itertools
    host, hosts = jax.process_index(), jax.process_count()
    if dataset.num_epochs is not None:
      batches = (batch for batch, _ in eval_pipeline.padded_batches(
          dataset, num_batches, shard_id=host, num_shards=hosts))
      return self.evaluate_batches(params, controller_state, batches, profile)
    ds = data_lib.get_dataset(dataset, shard_id=host, num_shards=hosts)
    batches = ds.as_numpy_iterator()
    if num_batches is not None:
      batches = itertools.islice(batches, num_batches)
    return self.evaluate_batches(params, controller_state, batches, profile)


def deletion_profile(path: EncodePath, params, batches: Iterable[Mapping[str, np.ndarray]]
                     ) -> dict[int, tuple[int, int]]:
  """Per input byte id: (times deleted, times seen) over real encoder positions."""
  config = path.config
  if not path.shortening.shortens:
    return {}
  profile = DeletionProfile(config.vocab_size)
  for batch in batches:
    tokens = np.asarray(batch["encoder_input_tokens"])
    segment_ids = batch.get("encoder_segment_ids")
    stage_one, _ = path.read_gate(params, tokens, segment_ids)
    real = np.asarray(objective_lib.real_encoder_mask(tokens, segment_ids))
    profile.add(tokens, np.asarray(path.shortening.deleted(stage_one.gate, real)), real)
  return profile.as_dict()


def describe_profile(profile: Mapping[int, tuple[int, int]], top: int = 12) -> str:
  """``'e' 100% (41/41), 'a' 98% ...``: the bytes deleted most often, by share of deletions."""
  total_deleted = sum(d for d, _ in profile.values())
  if not total_deleted:
    return "nothing deleted"
  ranked = sorted(profile.items(), key=lambda kv: -kv[1][0])[:top]
  return ", ".join(f"{byte_label(i)} {d / max(s, 1):.0%} of {s}" for i, (d, s) in ranked if d)
