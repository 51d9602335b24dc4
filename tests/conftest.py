"""pytest fixtures built from tests/fixtures.py (the one place for shared test pieces)."""
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# glibc serves each train step's ~100 MB XLA temp buffer from a fresh mapping and faults it in
# 4 KiB at a time; huge pages for malloc cut a tiny training's CPU time by about a fifth
# (docs/benchmarks.md#cpu-training-and-glibc-malloc). Inherited by the workers and the CLIs.
os.environ.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")


def _share_compilations_within_the_run():
  """One XLA compilation cache per test run, shared by the xdist workers and the subprocesses
  they start (the variables are inherited): the many tiny trainers compile the same programs."""
  run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
  cache_dir = os.path.join(tempfile.gettempdir(), f"mrt5_jax_test_xla_cache_{run_id}")
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache_dir)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
  return cache_dir


_XLA_CACHE_DIR = _share_compilations_within_the_run()

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


def pytest_sessionfinish(session):
  if not hasattr(session.config, "workerinput"):  # the controller, after every worker is done
    shutil.rmtree(_XLA_CACHE_DIR, ignore_errors=True)
