"""Shared fixtures: a tiny MrT5 and a small deterministic batch."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import numpy as np
import pytest

from mrt5_jax import config as config_lib


def make_batch(seed=0, batch=2, enc_len=16, dec_len=8, pad_from=(None, 10), dec_pad_from=(6, None)):
  """Random byte ids with some padding: encoder/decoder inputs and targets (numpy int32)."""
  rng = np.random.RandomState(seed)
  enc = rng.randint(3, 259, (batch, enc_len)).astype(np.int32)
  tgt = rng.randint(3, 259, (batch, dec_len)).astype(np.int32)
  for row, start in enumerate(pad_from[:batch]):
    if start is not None:
      enc[row, start:] = 0
  for row, start in enumerate(dec_pad_from[:batch]):
    if start is not None:
      tgt[row, start:] = 0
  dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt}


@pytest.fixture(scope="session")
def tiny_config():
  return config_lib.preset("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
  """(module, variables) of the tiny preset, initialised with seed 0."""
  from mrt5_jax import network
  module = network.Transformer(tiny_config)
  batch = make_batch()
  variables = module.init(jax.random.PRNGKey(0), batch["encoder_input_tokens"],
                          batch["decoder_input_tokens"], batch["decoder_target_tokens"],
                          enable_dropout=False)
  return module, variables


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: minutes-long training runs (CI runs them)")
