"""train_step: micro-batch accounting, controller stepping and metric definitions,
checked against hand-computed values (both trainers call these functions)."""
import jax.numpy as jnp
import numpy as np
import pytest

from mrt5_jax.maths import controller as ctl
from mrt5_jax.training import objective as obj
from mrt5_jax.training import train_step
from tests.fixtures import small_batch


def _sums(num_deleted, num_real):
  return {"num_deleted": jnp.float32(num_deleted), "num_real": jnp.float32(num_real)}


def test_controller_steps_once_per_step_on_the_whole_batch_rate():
  config = ctl.ControllerConfig(kind="p", target_deletion_rate=0.5, k_p=0.5)
  state = ctl.init_state(config)
  counts = train_step.initial_counts()
  micro = [(1, 10), (9, 10), (0, 20)]  # whole batch: 10 of 40 deleted
  for index, (deleted, real) in enumerate(micro):
    new_state, counts = train_step.advance_controller(state, counts, _sums(deleted, real),
                                                      config, num_microbatches=3)
    if index < 2:
      assert int(new_state["step"]) == 0 and float(new_state["alpha"]) == 0.0
      assert int(counts["count"]) == index + 1
    state = new_state
  assert int(state["step"]) == 1
  assert float(state["alpha"]) == pytest.approx(0.5 * (0.5 - 10 / 40))
  assert int(counts["count"]) == 0 and float(counts["num_real"]) == 0.0


def test_one_microbatch_equals_a_plain_controller_update():
  config = ctl.ControllerConfig(kind="pi", target_deletion_rate=0.4, k_p=2.0, k_i=0.1)
  state = ctl.init_state(config)
  stepped, counts = train_step.advance_controller(state, train_step.initial_counts(),
                                                  _sums(3, 4), config, num_microbatches=1)
  reference = ctl.update(state, jnp.float32(0.75), config)
  for key in reference:
    assert float(stepped[key]) == float(reference[key])
  assert int(counts["count"]) == 0


def test_without_a_learned_gate_alpha_stays_at_its_initial_value_while_steps_count():
  config = ctl.ControllerConfig(kind="bounded_pi", target_deletion_rate=0.5, k_p=0.2, k_i=0.005,
                                alpha_min=-0.1, alpha_max=0.2, initial_alpha=0.03)
  state = ctl.init_state(config)
  for rate_deleted in (0, 40, 40):  # 0 / 40 and 40 / 40 deleted: far from the target
    state, _ = train_step.advance_controller(state, train_step.initial_counts(),
                                             _sums(rate_deleted, 40), config,
                                             num_microbatches=1, steers=False)
  assert float(state["alpha"]) == pytest.approx(0.03)
  assert float(state["p"]) == 0.0 and float(state["i"]) == 0.0
  assert int(state["step"]) == 3


def test_loss_normalizers_whole_batch_and_per_microbatch():
  objective = obj.ObjectiveConfig()
  full = small_batch(batch=4, pad_from=(None, 10, 3, None), target_pad_from=(6, None, 2, 7))
  half = {k: v[:2] for k, v in full.items()}
  whole = train_step.loss_normalizers(half, objective, whole_batch=full)
  assert float(whole["ce"]) == 6 + 8 + 2 + 7
  assert float(whole["num_real"]) == 16 + 10 + 3 + 16
  own = train_step.loss_normalizers(half, objective, num_microbatches=2)
  assert float(own["ce"]) == 2 * (6 + 8)
  assert float(own["num_real"]) == 2 * (16 + 10)


def test_metrics_are_defined_from_sums():
  sums = {"loss": 2.0, "ce_loss": 1.5, "z_loss": 0.1, "gate_loss": -4.0, "score_penalty": 0.0,
          "cross_entropy_sum": 30.0, "num_target_tokens": 20.0, "num_correct": 5.0,
          "num_deleted": 12.0, "num_real": 40.0, "gate_sum": -200.0, "gate_min": -29.0,
          "gate_max": -0.5, "num_sequences": 4.0, "kept_max": 9.0, "compacted_length": 16.0,
          "num_dropped": 3.0, "entropy_penalty": 0.0, "hard_deletion_batches": 1.0,
          "packed_hard_batches": 1.0, "boundary_loss": 0.0}
  metrics = train_step.step_metrics({k: jnp.float32(v) for k, v in sums.items()},
                                    jnp.float32(0.25))
  values = {k: float(v) for k, v in train_step.finalize(metrics).items()}
  assert values["cross_entropy_per_token"] == 1.5
  assert values["accuracy"] == 0.25
  assert values["deletion_rate"] == pytest.approx(0.3)
  assert values["gate_mean"] == -5.0
  assert values["real_length"] == 10.0 and values["kept_length"] == 7.0
  assert values["kept_length_max"] == 9.0 and values["num_dropped"] == 3.0
  assert values["alpha"] == 0.25 and values["loss"] == 2.0
  assert values["hard_deletion_batches"] == 1.0 and values["packed_hard_batches"] == 1.0
  assert {m.kind for m in metrics.values()} <= set(train_step.METRIC_KINDS)
  empty = train_step.finalize(train_step.step_metrics(
      {k: jnp.float32(0.0) for k in sums}, jnp.float32(0.0)))
  assert all(np.isfinite(float(v)) for v in empty.values())


def test_the_metrics_table_covers_the_objectives_sums():
  """Every sum compute_loss returns has a row in training.metrics (its merge and
  per-batch-mean rule), every metric reads only those sums, and the per-batch
  means are exactly the totals of the per-step metrics (the loss terms)."""
  from mrt5_jax.training import metrics as metrics_lib
  assert len(set(metrics_lib.SUM_KEYS)) == len(metrics_lib.SUM_KEYS)
  assert len(set(metrics_lib.METRIC_NAMES)) == len(metrics_lib.METRIC_NAMES)
  per_step = {m.total for m in metrics_lib.METRICS if m.kind == "per_step"}
  assert per_step == set(metrics_lib.PER_BATCH_MEANS)
  for m in metrics_lib.METRICS:
    assert m.kind in metrics_lib.KINDS
    for key in (m.total, m.count):
      assert key is None or callable(key) or key in metrics_lib.SUM_KEYS
  a = {k: jnp.float32(i) for i, k in enumerate(metrics_lib.SUM_KEYS)}
  b = {k: jnp.float32(3.0) for k in metrics_lib.SUM_KEYS}
  merged = metrics_lib.merge_sums(a, b)
  assert float(merged["gate_min"]) == min(float(a["gate_min"]), 3.0)
  assert float(merged["kept_max"]) == max(float(a["kept_max"]), 3.0)
  assert float(merged["num_real"]) == float(a["num_real"]) + 3.0
  means = metrics_lib.batch_means(merged, 2)
  assert float(means["entropy_penalty"]) == float(merged["entropy_penalty"]) / 2
  assert float(means["num_real"]) == float(merged["num_real"])
