"""The metrics table: what every logged metric means, in one place.

``objective.compute_loss`` returns a dict of *sums* for one (micro-)batch;
``SUMS`` says, for each, how two of them merge (micro-batches of a step,
batches of an evaluation, tasks of a report, hosts: the same rule
everywhere, because every sum is over the global batch) and whether it is a
*per-batch mean* (a loss term: its micro-batch parts add up to the batch's
value, and an evaluation over n batches divides the merged sum by n).

``METRICS`` says, for each logged value, the sums it reads, how values
combine (``kind``), its name in the project trainer, the evaluator and
TensorBoard (``name``), its name under t5x (``t5x_name``), and when the t5x
adapter logs it at all (``shown``). Everything else reads these tables:

* ``objective.merge_metric_sums`` merges with ``merge_sums``;
* ``train_step.step_metrics`` / ``finalize`` turn sums into values with
  ``step_metrics`` / ``finalize``;
* the evaluator averages ``PER_BATCH_MEANS`` over its batches;
* the t5x adapter (``t5x.model.MrT5Model``) logs ``t5x_name`` for every
  metric ``shown`` for its objective and model.

Kinds: ``per_step`` (the micro-batch totals add up to the step's value: loss
terms), ``ratio`` (total / count, both summed first: per-token CE, deletion
rate), ``min`` / ``max`` / ``sum`` of the totals, ``last`` (alpha, which is
not a sum but the controller's value when the step ran).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

MERGES = {"add": jnp.add, "min": jnp.minimum, "max": jnp.maximum}
KINDS = ("per_step", "ratio", "min", "max", "sum", "last")


@dataclasses.dataclass(frozen=True)
class Sum:
  """One entry of ``compute_loss``'s metric sums.

  merge: 'add', 'min' or 'max' (micro-batches, batches, tasks and hosts alike).
  per_batch_mean: a per-batch mean (a loss term); an evaluation over n
    batches divides the merged value by n.
  """
  key: str
  merge: str = "add"
  per_batch_mean: bool = False


SUMS = (
    Sum("loss", per_batch_mean=True),
    Sum("ce_loss", per_batch_mean=True),
    Sum("z_loss", per_batch_mean=True),
    Sum("gate_loss", per_batch_mean=True),
    Sum("score_penalty", per_batch_mean=True),
    Sum("entropy_penalty", per_batch_mean=True),
    Sum("boundary_loss", per_batch_mean=True),
    Sum("cross_entropy_sum"),        # CE (no z-loss) summed over weighted target tokens
    Sum("num_target_tokens"),
    Sum("num_correct"),
    Sum("num_sequences"),            # rows (segments' rows) with a real encoder position
    Sum("num_dropped"),              # capacity overflow of hard deletion
    Sum("gate_sum"),                 # G summed over real encoder positions
    Sum("num_real"),
    Sum("num_deleted"),
    Sum("hard_deletion_batches"),    # (micro-)batches that ran with hard deletion
    Sum("packed_hard_batches"),      # of those, the ones whose kept positions were packed
    Sum("gate_min", merge="min"),
    Sum("gate_max", merge="max"),
    Sum("kept_max", merge="max"),    # largest kept count of a row
    Sum("compacted_length", merge="max"),
)
SUM_KEYS = tuple(s.key for s in SUMS)
PER_BATCH_MEANS = tuple(s.key for s in SUMS if s.per_batch_mean)


def _objective_has(attribute: str) -> Callable[[Any, Any], bool]:
  return lambda objective, shortening: bool(getattr(objective, attribute))


@dataclasses.dataclass(frozen=True)
class MetricDef:
  """One logged value.

  name: its name in the project trainer's log, the evaluator and TensorBoard.
  kind: how it combines (``KINDS``).
  total, count: the sum keys it reads (``count`` only for ratios); ``total``
    may also be a function of the sums (``kept_length``) or None for alpha.
  t5x_name: its name under t5x (default ``deletion/<name>``).
  shown: (objective, the model's shortening) -> whether the t5x adapter logs it
    (None: always).
  """
  name: str
  kind: str
  total: Any = None
  count: Optional[str] = None
  t5x_name: Optional[str] = None
  shown: Optional[Callable[[Any, Any], bool]] = None

  @property
  def display_name_t5x(self) -> str:
    return self.t5x_name or f"deletion/{self.name}"


def _kept(sums):
  return sums["num_real"] - sums["num_deleted"]


METRICS = (
    MetricDef("loss", "per_step", "loss", t5x_name="loss"),
    MetricDef("ce_loss", "per_step", "ce_loss", t5x_name="cross_ent_loss"),
    MetricDef("z_loss", "per_step", "z_loss", t5x_name="z_loss"),
    MetricDef("gate_loss", "per_step", "gate_loss"),
    MetricDef("score_penalty", "per_step", "score_penalty",
              shown=_objective_has("score_loss_coeff")),
    MetricDef("entropy_penalty", "per_step", "entropy_penalty",
              shown=lambda objective, shortening: bool(objective.entropy_coeff_1
                                                   or objective.entropy_coeff_2)),
    MetricDef("boundary_loss", "per_step", "boundary_loss",
              shown=lambda objective, shortening: "boundary_loss" in shortening.optional_metrics),
    MetricDef("hard_deletion_batches", "sum", "hard_deletion_batches",
              shown=_objective_has("hard_delete_train_prob")),
    MetricDef("packed_hard_batches", "sum", "packed_hard_batches",
              shown=_objective_has("hard_delete_train_packed_rows")),
    MetricDef("cross_entropy_per_token", "ratio", "cross_entropy_sum", "num_target_tokens",
              t5x_name="cross_ent_loss_per_nonpadding_target_token"),
    MetricDef("accuracy", "ratio", "num_correct", "num_target_tokens", t5x_name="accuracy"),
    MetricDef("deletion_rate", "ratio", "num_deleted", "num_real", t5x_name="deletion/rate"),
    MetricDef("gate_mean", "ratio", "gate_sum", "num_real"),
    MetricDef("gate_min", "min", "gate_min"),
    MetricDef("gate_max", "max", "gate_max"),
    MetricDef("real_length", "ratio", "num_real", "num_sequences"),
    MetricDef("kept_length", "ratio", _kept, "num_sequences"),
    MetricDef("kept_length_max", "max", "kept_max"),
    MetricDef("compacted_length", "max", "compacted_length"),
    MetricDef("num_dropped", "sum", "num_dropped"),
    MetricDef("alpha", "last",
              shown=lambda objective, shortening: shortening.learned_gate),
)
METRIC_NAMES = tuple(m.name for m in METRICS)


def merge_sums(a: Mapping[str, jax.Array], b: Mapping[str, jax.Array]) -> dict:
  """Combine the metric sums of two (micro-)batches, each by its ``Sum.merge``."""
  return {s.key: MERGES[s.merge](a[s.key], b[s.key]) for s in SUMS}


def batch_means(sums: Mapping[str, jax.Array], num_batches: int) -> dict:
  """Sums merged over ``num_batches`` batches with the per-batch means divided by it."""
  sums = dict(sums)
  for key in PER_BATCH_MEANS:
    sums[key] = sums[key] / num_batches
  return sums


@dataclasses.dataclass(frozen=True)
class Metric:
  """One logged value of a step: ``kind`` (``KINDS``) says how micro-batches and
  steps combine it; a ratio's value is total / count, both summed first."""
  kind: str
  total: Any
  count: Any = 1.0

  def value(self) -> jax.Array:
    if self.kind == "ratio":
      return jnp.asarray(self.total, jnp.float32) / jnp.maximum(
          jnp.asarray(self.count, jnp.float32), 1.0)
    return jnp.asarray(self.total, jnp.float32)


def _total(definition: MetricDef, sums, alpha):
  if definition.kind == "last":
    return alpha
  if callable(definition.total):
    return definition.total(sums)
  return sums[definition.total]


def step_metrics(sums: Mapping[str, jax.Array], alpha: jax.Array) -> dict[str, Metric]:
  """Every metric of ``METRICS`` from (merged) sums; ``alpha`` is the weight the
  loss used (0 during the regularizer delay)."""
  metrics = {}
  for definition in METRICS:
    total = _total(definition, sums, alpha)
    if definition.kind == "ratio":
      metrics[definition.name] = Metric("ratio", total, sums[definition.count])
    else:
      metrics[definition.name] = Metric(definition.kind, total)
  return metrics


def finalize(metrics: Mapping[str, Metric]) -> dict[str, jax.Array]:
  """Numbers of one step's (or one evaluation's) metrics."""
  return {name: metric.value() for name, metric in metrics.items()}


def shown_under_t5x(objective: Any, shortening: Any) -> tuple[MetricDef, ...]:
  """The metrics the t5x adapter logs for this objective and the model's shortening."""
  return tuple(m for m in METRICS if m.shown is None or m.shown(objective, shortening))
