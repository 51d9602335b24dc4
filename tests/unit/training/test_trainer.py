"""The project trainer's host-drawn hard-deletion batches (``Trainer.hard_delete_draw``)."""
import jax
import numpy as np
import pytest

from mrt5_jax.maths import controller as controller_lib
from mrt5_jax.training import objective as objective_lib
from mrt5_jax.training import optimizers
from mrt5_jax.training import trainer as trainer_lib
from tests.fixtures import byte_batch, model_config


def _trainer(**objective):
  return trainer_lib.Trainer(
      model_config("trainer"), optimizer=optimizers.OptimizerConfig(learning_rate=1e-3),
      objective=objective_lib.ObjectiveConfig(hard_delete_train_prob=0.5, **objective),
      controller=controller_lib.ControllerConfig(initial_alpha=0.01), seed=3)


def test_host_draws_reproduce_the_in_graph_trajectory():
  """Six steps with the coin drawn on the host (two single-branch programs)
  against the same six with the step that draws inside (``lax.cond``, as t5x
  does): the same batches run hard, the same losses and parameters."""
  trainer = _trainer()
  batch = byte_batch(batch=4, length=16, target_length=6, seed=1, pad_from=(None, 11))
  host_state = trainer.init_state(16, 6)
  graph_state = trainer.init_state(16, 6)
  in_graph = trainer.compiled_step(16, 6, hard=None)
  host_hard, graph_hard = [], []
  for _ in range(6):
    draw = trainer.hard_delete_draw(host_state)
    host_state, host_metrics = trainer.train_step(host_state, batch)
    with trainer.partitioner.context():
      graph_state, graph_metrics = in_graph(graph_state, trainer.partitioner.shard_batch(batch))
    host_hard.append(float(host_metrics["hard_deletion_batches"]))
    graph_hard.append(float(graph_metrics["hard_deletion_batches"]))
    assert host_hard[-1] == float(draw)
    assert float(host_metrics["loss"]) == pytest.approx(float(graph_metrics["loss"]), abs=1e-5)
  assert host_hard == graph_hard
  assert set(host_hard) == {0.0, 1.0}  # both programs ran
  assert set(trainer._step_fns) == {(None, None), (True, None), (False, None)}
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(host_state["params"])),
                  jax.tree_util.tree_leaves(jax.device_get(graph_state["params"]))):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_no_draw_without_hard_batches_and_the_schedule_is_honoured():
  assert trainer_lib.Trainer(
      model_config("trainer"), optimizer=optimizers.OptimizerConfig()
  ).hard_delete_draw({"step": 0}) is None
  trainer = _trainer(hard_delete_train_start=5, hard_delete_train_ramp=0)
  state = trainer.init_state(16, 6)
  # regularizer delay 0 (default) + start 5: no hard batch before controller step 5
  assert trainer.controller.regularizer_delay == 0
  draws = []
  for step in range(12):
    state["step"] = np.int32(step)
    state["flax_mutables"][controller_lib.COLLECTION]["step"] = np.int32(step)
    draws.append(trainer.hard_delete_draw(state))
  assert not any(draws[:5]) and any(draws[5:])


@pytest.mark.parametrize("gate_bias, packs", [(2.0, True), (8.0, False)])
def test_hard_batches_pack_into_the_rows_the_host_planned_or_run_per_row(gate_bias, packs):
  """With ``hard_delete_train_packed_rows`` 0.75 the trainer plans the batch's
  rows from a stage-one pass: a gate that deletes about half packs (fewer rows,
  nothing dropped) and gives the per-row hard step's loss and parameters; a
  gate that deletes almost nothing needs every row and runs per row, uncut."""
  packed, per_row = (_trainer(hard_delete_train_packed_rows=share) for share in (0.75, 0.0))
  batch = byte_batch(batch=8, length=16, target_length=6, seed=2, pad_from=(None, 11, 7))
  states = []
  for trainer in (packed, per_row):
    params = jax.device_get(trainer.init_state(16, 6)["params"])
    params["encoder"]["delete_gate"]["dense"]["bias"] = np.full((1,), gate_bias, np.float32)
    states.append(trainer.init_state(16, 6, init_params=params, reinit_gate=False))
  step = next(s for s in range(20) if packed.hard_delete_draw({**states[0], "step": s,
          "flax_mutables": {controller_lib.COLLECTION: {**states[0]["flax_mutables"][
              controller_lib.COLLECTION], "step": np.int32(s)}}}))
  for state in states:
    state["step"] = np.int32(step)
    state["flax_mutables"][controller_lib.COLLECTION]["step"] = np.int32(step)
  rows = packed.packed_rows_for(states[0], batch)
  assert (0 < rows < 8) == packs
  (packed_state, packed_metrics), (row_state, row_metrics) = (
      trainer.train_step(state, batch) for trainer, state in zip((packed, per_row), states))
  assert float(packed_metrics["packed_hard_batches"]) == float(packs)
  assert float(row_metrics["packed_hard_batches"]) == 0.0
  for metrics in (packed_metrics, row_metrics):
    assert float(metrics["hard_deletion_batches"]) == 1.0
    assert float(metrics["num_dropped"]) == 0.0
  assert float(packed_metrics["loss"]) == pytest.approx(float(row_metrics["loss"]), abs=1e-5)
  assert float(packed_metrics["grad_norm"]) == pytest.approx(float(row_metrics["grad_norm"]),
                                                             rel=1e-5)
  # Adam's first step moves each parameter by about lr (1e-3) whatever its gradient's
  # size, so float noise in near-zero gradients shows here at ~1e-5 of it
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(packed_state["params"])),
                  jax.tree_util.tree_leaves(jax.device_get(row_state["params"]))):
    np.testing.assert_allclose(a, b, atol=1e-4)
