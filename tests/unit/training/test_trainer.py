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
  assert set(trainer._step_fns) == {None, True, False}
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
