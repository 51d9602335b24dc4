"""What an optimizer step does with the objective's sums, for both trainers.

The project's trainer (``mrt5_jax.trainer``) and the t5x model class
(``mrt5_jax.t5x_model.MrT5Model``) both call these pure functions, so their
micro-batch accounting, controller stepping and metric definitions cannot
drift apart:

* ``loss_normalizers``: the denominators a micro-batch's loss uses.
* ``advance_controller``: deletion counts accumulate over the micro-batches
  of a step; the last one steps the controller with the whole batch's rate.
* ``step_metrics`` / ``finalize``: every logged metric defined once, as a
  (kind, total, count) triple; the project trainer turns it into numbers,
  the t5x class into clu metrics.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from mrt5_jax import controller as controller_lib
from mrt5_jax import gate as gate_lib
from mrt5_jax import objective as objective_lib

# Deletion counts of the micro-batches of the current step (a flax collection
# under t5x, which calls the loss once per micro-batch).
MICROBATCH_COLLECTION = "controller_microbatches"
METRIC_KINDS = ("per_step", "ratio", "min", "max", "sum", "last")


def loss_normalizers(batch: Mapping[str, jax.Array], objective: objective_lib.ObjectiveConfig,
                     *, num_microbatches: int = 1,
                     whole_batch: Optional[Mapping[str, jax.Array]] = None
                     ) -> dict[str, jax.Array]:
  """The CE and gate-loss denominators of one micro-batch of ``batch``.

  With ``whole_batch`` (the project trainer, which sees the whole batch) the
  denominators are the whole batch's, so the micro-batch losses add up
  exactly to the full-batch loss. Without it (t5x, which hands the loss one
  micro-batch at a time) they are the micro-batch's own, times
  ``num_microbatches``: the step's loss is the mean of the micro-batch means,
  which equals the full-batch loss when micro-batches hold equal token counts.
  """
  if whole_batch is not None:
    return objective_lib.batch_normalizers(whole_batch, objective)
  own = objective_lib.batch_normalizers(batch, objective)
  return {key: value * num_microbatches for key, value in own.items()}


def initial_counts() -> dict[str, jax.Array]:
  """Empty deletion counts of a step's micro-batches."""
  return {"num_deleted": jnp.zeros((), jnp.float32), "num_real": jnp.zeros((), jnp.float32),
          "count": jnp.zeros((), jnp.int32)}


def advance_controller(controller_state: Mapping[str, jax.Array],
                       counts: Mapping[str, jax.Array], sums: Mapping[str, jax.Array],
                       controller: controller_lib.ControllerConfig, num_microbatches: int
                       ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """Add one micro-batch's deletion counts; on the last micro-batch of the
  step, update the controller with the whole batch's rate and clear them.

  Returns (controller state, counts). Gradients never flow into either.
  """
  counts = {
      "num_deleted": counts["num_deleted"] + jax.lax.stop_gradient(sums["num_deleted"]),
      "num_real": counts["num_real"] + jax.lax.stop_gradient(sums["num_real"]),
      "count": counts["count"] + 1,
  }
  complete = counts["count"] >= num_microbatches
  rate = gate_lib.deletion_rate(counts["num_deleted"], counts["num_real"])
  stepped = controller_lib.update(controller_state, rate, controller)
  new_state = jax.tree_util.tree_map(lambda a, b: jnp.where(complete, a, b), stepped,
                                     dict(controller_state))
  new_counts = jax.tree_util.tree_map(lambda v: jnp.where(complete, jnp.zeros_like(v), v),
                                      counts)
  return new_state, new_counts


@dataclasses.dataclass(frozen=True)
class Metric:
  """One logged value: ``kind`` says how micro-batches and steps combine.

  per_step: the micro-batch totals add up to the step's value (loss terms).
  ratio: total / count, both summed first (per-token CE, deletion rate).
  min / max / sum / last: of the totals.
  """
  kind: str
  total: Any
  count: Any = 1.0

  def value(self) -> jax.Array:
    if self.kind == "ratio":
      return jnp.asarray(self.total, jnp.float32) / jnp.maximum(
          jnp.asarray(self.count, jnp.float32), 1.0)
    return jnp.asarray(self.total, jnp.float32)


def step_metrics(sums: Mapping[str, jax.Array], alpha: jax.Array) -> dict[str, Metric]:
  """The logged metrics of one step from the objective's (merged) sums.

  ``alpha`` is the weight the loss used (0 during the regularizer delay).
  """
  kept = sums["num_real"] - sums["num_deleted"]
  return {
      "loss": Metric("per_step", sums["loss"]),
      "ce_loss": Metric("per_step", sums["ce_loss"]),
      "z_loss": Metric("per_step", sums["z_loss"]),
      "gate_loss": Metric("per_step", sums["gate_loss"]),
      "score_penalty": Metric("per_step", sums["score_penalty"]),
      "entropy_penalty": Metric("per_step", sums["entropy_penalty"]),
      "boundary_loss": Metric("per_step", sums["boundary_loss"]),
      "hard_deletion_batches": Metric("sum", sums["hard_deletion_steps"]),
      "cross_entropy_per_token": Metric("ratio", sums["cross_entropy_sum"],
                                        sums["num_target_tokens"]),
      "accuracy": Metric("ratio", sums["num_correct"], sums["num_target_tokens"]),
      "deletion_rate": Metric("ratio", sums["num_deleted"], sums["num_real"]),
      "gate_mean": Metric("ratio", sums["gate_sum"], sums["num_real"]),
      "gate_min": Metric("min", sums["gate_min"]),
      "gate_max": Metric("max", sums["gate_max"]),
      "real_length": Metric("ratio", sums["num_real"], sums["num_sequences"]),
      "kept_length": Metric("ratio", kept, sums["num_sequences"]),
      "kept_length_max": Metric("max", sums["kept_max"]),
      "compacted_length": Metric("max", sums["compacted_length"]),
      "num_dropped": Metric("sum", sums["num_dropped"]),
      "alpha": Metric("last", alpha),
  }


def finalize(metrics: Mapping[str, Metric]) -> dict[str, jax.Array]:
  """Numbers of one step's (or one evaluation's) metrics."""
  return {name: metric.value() for name, metric in metrics.items()}
