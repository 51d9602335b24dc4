"""Checkpoint layout, params-only checkpoints, and init from a checkpoint with a fresh gate."""
import os

import jax
import numpy as np
import pytest

from mrt5_jax.checkpointing import config_files
from mrt5_jax.checkpointing import readers
from mrt5_jax.checkpointing import writer
from mrt5_jax.training import optimizers
from mrt5_jax.training import trainer as trainer_lib
from tests.fixtures import model_config


def micro_config(**overrides):
  return model_config("trainer", **overrides)


def _trainer(config):
  return trainer_lib.Trainer(config, optimizer=optimizers.OptimizerConfig(learning_rate=1e-3))


def test_params_checkpoint_layout_and_roundtrip(tmp_path):
  config = micro_config(deletion_type="none")
  params = jax.device_get(_trainer(config).init_state(8, 4)["params"])
  step_dir = writer.save_params_checkpoint(str(tmp_path), params, config, step=0)
  assert os.path.isdir(os.path.join(step_dir, "state"))
  assert config_files.read_config(str(tmp_path)) == config
  for path in (str(tmp_path), step_dir, os.path.join(step_dir, "state")):
    restored = readers.restore_params(path)
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, params)


def test_init_from_byt5_checkpoint_keeps_gate_fresh(tmp_path):
  byt5 = micro_config(deletion_type="none")
  byt5_params = jax.device_get(_trainer(byt5).init_state(8, 4)["params"])
  writer.save_params_checkpoint(str(tmp_path), byt5_params, byt5)
  mrt5 = micro_config()
  tr = _trainer(mrt5)
  fresh = jax.device_get(tr.init_state(8, 4)["params"])
  state = tr.init_state(8, 4, init_params=readers.restore_params(str(tmp_path)))
  params = jax.device_get(state["params"])
  np.testing.assert_array_equal(params["token_embedder"]["embedding"],
                                byt5_params["token_embedder"]["embedding"])
  np.testing.assert_array_equal(params["encoder"]["layers_1"]["mlp"]["wo"]["kernel"],
                                byt5_params["encoder"]["layers_1"]["mlp"]["wo"]["kernel"])
  gate = params["encoder"]["delete_gate"]
  np.testing.assert_array_equal(gate["dense"]["bias"], fresh["encoder"]["delete_gate"]["dense"]["bias"])
  assert float(gate["dense"]["bias"][0]) == 1.0  # the published init: bias 1, nothing deleted


def test_init_checkpoint_of_another_size_is_rejected(tmp_path):
  other = micro_config(d_model=48, deletion_type="none")
  params = jax.device_get(_trainer(other).init_state(8, 4)["params"])
  writer.save_params_checkpoint(str(tmp_path), params, other)
  with pytest.raises(ValueError, match="does not fit the model config"):
    _trainer(micro_config()).init_state(8, 4, init_params=readers.restore_params(str(tmp_path)))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="no checkpoint found"):
    readers.restore_params(str(tmp_path))
  with pytest.raises(ValueError, match="model_config.json"):
    config_files.read_config(str(tmp_path))
  assert writer.latest_step(str(tmp_path)) is None
