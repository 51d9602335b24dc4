"""Small random models and batches shared by the network tests."""
from __future__ import annotations

import jax
import numpy as np

from mrt5_jax.config import preset
from mrt5_jax.network import Transformer


def tiny_config(**overrides):
  values = dict(d_model=32, d_ff=64, num_heads=4, head_dim=8, num_encoder_layers=4,
                num_decoder_layers=2, delete_gate_layer=2)
  values.update(overrides)
  return preset("tiny", **values)


def random_batch(batch=3, length=24, target_length=10, seed=0, pad_from=(None, 17, 5)):
  """Byte ids with EOS and padding; row i is padded from ``pad_from[i]`` on."""
  rng = np.random.RandomState(seed)
  enc = rng.randint(3, 259, size=(batch, length)).astype(np.int32)
  tgt = rng.randint(3, 259, size=(batch, target_length)).astype(np.int32)
  for row in range(batch):
    stop = pad_from[row % len(pad_from)]
    if stop is not None:
      enc[row, stop - 1] = 1
      enc[row, stop:] = 0
    else:
      enc[row, -1] = 1
  tgt[:, -1] = 1
  tgt[-1, target_length // 2:] = 0
  tgt[-1, target_length // 2 - 1] = 1
  dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
  return enc, dec_in, tgt


def init_params(config, batch, seed=0):
  enc, dec_in, tgt = batch
  module = Transformer(config)
  variables = module.init({"params": jax.random.PRNGKey(seed), "deletion": jax.random.PRNGKey(1)},
                          enc, dec_in, tgt, enable_dropout=False)
  return module, variables["params"]
