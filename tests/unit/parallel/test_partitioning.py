"""Sharding: an 8-device CPU mesh (data 4 x model 2) reproduces the 1-device step.

The 8 host devices need XLA_FLAGS before jax starts, so the comparison runs in
a subprocess (tests/sharding_check.py); this process keeps one device.
"""
import jax
import numpy as np
import pytest

from mrt5_jax.parallel import partitioning
from tests.fixtures import run_check_script


@pytest.fixture(scope="module")
def report():
  return run_check_script("sharding_check.py")


def test_sharded_step_matches_single_device(report):
  assert report["mesh"] == {"data": 4, "model": 2}
  for key in ("loss", "grad_norm", "cross_entropy_per_token", "deletion_rate"):
    np.testing.assert_allclose(report["sharded"][key], report["single"][key], rtol=0, atol=1e-5,
                               err_msg=key)
  assert report["max_param_diff"] < 1e-5


def test_microbatched_sharded_step_matches(report):
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(report["accumulated"][key], report["single"][key], rtol=0,
                               atol=1e-5, err_msg=key)


def test_adafactor_state_shardings_come_from_the_params(report):
  """optax's tree_map_params: factored row/column statistics stay replicated."""
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(report["adafactor_sharded"][key],
                               report["adafactor_single"][key], rtol=0, atol=1e-5, err_msg=key)
  assert report["adafactor_factored_fully_replicated"]


def test_params_are_sharded_as_the_rules_say(report):
  # ('embed', 'mlp') -> (None, 'model'): columns split over the 2 model shards.
  assert report["wi_0_spec"] == ["None", "model"]
  assert report["wi_0_shard_shape"] == [report["wi_0_shape"][0], report["wi_0_shape"][1] // 2]
  assert report["num_devices_holding_wi_0"] == 8
  # ('vocab', 'embed') -> ('model', None)
  assert report["embedding_spec"] == ["model", "None"]
  assert report["embedding_shard_shape"] == [192, 32]
  assert report["scale_shard_shape"] == [32]  # ('embed',) -> replicated
  assert report["mu_shard_shape"] == report["wi_0_shard_shape"]  # Adam moments follow params


def test_mesh_config_errors():
  with pytest.raises(ValueError, match="num_partitions"):
    partitioning.make_mesh(partitioning.MeshConfig(num_partitions=3), jax.devices() * 1)
  mesh = partitioning.make_mesh(partitioning.MeshConfig(), jax.devices())
  assert mesh.shape == {"data": len(jax.devices()), "model": 1}


def test_batch_not_divisible_by_data_axis():
  part = partitioning.Partitioner(partitioning.MeshConfig(), jax.devices())
  part.mesh  # one device: anything divides; emulate 2 data shards via the check itself
  with pytest.raises(ValueError, match="data-parallel"):
    type(part).shard_batch(type("P", (), {"local_data_size": 2, "data_sharding": None})(),
                           {"encoder_input_tokens": np.zeros((3, 4), np.int32)})
