"""What an optimizer step does with the objective's sums, for both trainers.

The project's trainer (``mrt5_jax.training.trainer``) and the t5x model class
(``mrt5_jax.t5x.model.MrT5Model``) both call these pure functions, so their
micro-batch accounting, controller stepping and metric definitions cannot
drift apart:

* ``loss_normalizers``: the denominators a micro-batch's loss uses.
* ``advance_controller``: deletion counts accumulate over the micro-batches
  of a step; the last one steps the controller with the whole batch's rate.
* ``step_metrics`` / ``finalize``: the logged metrics of a step, from the
  metrics table ``training.metrics`` (each a (kind, total, count) triple);
  the project trainer turns them into numbers, the t5x class into clu metrics.
"""
from __future__ import annotations

from typing import Mapping, Optional

import jax
import jax.numpy as jnp

from mrt5_jax.maths import controller as controller_lib
from mrt5_jax.training import metrics as metrics_lib
from mrt5_jax.model.shortening.base import deletion_rate
from mrt5_jax.training import objective as objective_lib

# Deletion counts of the micro-batches of the current step (a flax collection
# under t5x, which calls the loss once per micro-batch).
MICROBATCH_COLLECTION = "controller_microbatches"
METRIC_KINDS = metrics_lib.KINDS


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
                       controller: controller_lib.ControllerConfig, num_microbatches: int,
                       steers: bool = True
                       ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """Add one micro-batch's deletion counts; on the last micro-batch of the
  step, update the controller with the whole batch's rate and clear them.

  ``steers``: whether the model has a learned gate for alpha to act on (the
  shortening's ``learned_gate``); without one (ByT5, random or fixed
  deletion, BP, CP) only the controller's step count moves and alpha stays at
  its initial value. Returns (controller state, counts). Gradients never flow
  into either.
  """
  counts = {
      "num_deleted": counts["num_deleted"] + jax.lax.stop_gradient(sums["num_deleted"]),
      "num_real": counts["num_real"] + jax.lax.stop_gradient(sums["num_real"]),
      "count": counts["count"] + 1,
  }
  complete = counts["count"] >= num_microbatches
  rate = deletion_rate(counts["num_deleted"], counts["num_real"])
  stepped = controller_lib.update(controller_state, rate, controller)
  if not steers:
    stepped = {**controller_state, "step": stepped["step"]}
  new_state = jax.tree_util.tree_map(lambda a, b: jnp.where(complete, a, b), stepped,
                                     dict(controller_state))
  new_counts = jax.tree_util.tree_map(lambda v: jnp.where(complete, jnp.zeros_like(v), v),
                                      counts)
  return new_state, new_counts


# The logged metrics are defined in the metrics table (``training.metrics``);
# these names stay here for the callers of both trainers.
Metric = metrics_lib.Metric
step_metrics = metrics_lib.step_metrics
finalize = metrics_lib.finalize
