"""pytest fixtures built from tests/fixtures.py (the one place for shared test pieces)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import pytest

from tests.fixtures import as_tuple, model_config, small_batch


@pytest.fixture(autouse=True)
def _no_gin_bindings_leak():
  """Every test starts without gin bindings and leaves none for the next test on its worker."""
  import gin
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(scope="session")
def tiny_config():
  return model_config("preset")


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
  """(module, variables) of the tiny size, initialised with seed 0."""
  from mrt5_jax.model import network
  module = network.Transformer(tiny_config)
  variables = module.init(jax.random.PRNGKey(0), *as_tuple(small_batch()), enable_dropout=False)
  return module, variables
