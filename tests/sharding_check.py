"""Run as a script: one train step on an 8-device CPU mesh (data 4 x model 2) vs 1 device.

XLA_FLAGS must be set before jax starts, so tests/test_partitioning.py runs this
in a subprocess and reads the JSON it prints.
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mrt5_jax import config as config_lib  # noqa: E402
from mrt5_jax import controller as ctl  # noqa: E402
from mrt5_jax import optimizers  # noqa: E402
from mrt5_jax import partitioning  # noqa: E402
from mrt5_jax import trainer as trainer_lib  # noqa: E402


def batch(rows=8, enc=16, dec=8, seed=0):
  rng = np.random.RandomState(seed)
  e = rng.randint(3, 259, (rows, enc)).astype(np.int32)
  e[::3, 11:] = 0
  t = rng.randint(3, 259, (rows, dec)).astype(np.int32)
  t[1::2, 6:] = 0
  d = np.concatenate([np.zeros((rows, 1), np.int32), t[:, :-1]], axis=1)
  return {"encoder_input_tokens": e, "decoder_input_tokens": d, "decoder_target_tokens": t}


def one_step(devices, num_partitions, config, num_microbatches=1):
  tr = trainer_lib.Trainer(
      config, optimizer=optimizers.OptimizerConfig(learning_rate=1e-3),
      controller=ctl.ControllerConfig(initial_alpha=0.5),
      mesh=partitioning.MeshConfig(num_partitions=num_partitions), devices=devices,
      num_microbatches=num_microbatches, enable_dropout=False)
  b = batch()
  state = tr.init_state(b["encoder_input_tokens"].shape[1], b["decoder_target_tokens"].shape[1])
  new_state, metrics = tr.train_step(state, b)
  return tr, new_state, {k: float(v) for k, v in jax.device_get(metrics).items()}


def main():
  assert len(jax.devices()) == 8, jax.devices()
  config = config_lib.MrT5Config(d_model=32, d_ff=64, num_heads=4, head_dim=8,
                                 num_encoder_layers=2, num_decoder_layers=1, delete_gate_layer=1,
                                 vocab_size=384)
  _, single_state, single = one_step(jax.devices()[:1], 1, config)
  tr, sharded_state, sharded = one_step(jax.devices(), 2, config)
  _, _, accumulated = one_step(jax.devices(), 2, config, num_microbatches=2)
  params = sharded_state["params"]
  wi = params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  emb = params["token_embedder"]["embedding"]
  scale = params["encoder"]["layers_0"]["pre_attention_layer_norm"]["scale"]
  mu = sharded_state["opt_state"][0].mu["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  max_param_diff = max(
      float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
      for a, b in zip(jax.tree_util.tree_leaves(single_state["params"]),
                      jax.tree_util.tree_leaves(params)))
  report = {
      "mesh": dict(tr.partitioner.mesh.shape),
      "single": single, "sharded": sharded, "accumulated": accumulated,
      "max_param_diff": max_param_diff,
      "wi_0_spec": [str(a) for a in wi.sharding.spec],
      "wi_0_shard_shape": list(wi.addressable_shards[0].data.shape), "wi_0_shape": list(wi.shape),
      "embedding_spec": [str(a) for a in emb.sharding.spec],
      "embedding_shard_shape": list(emb.addressable_shards[0].data.shape),
      "scale_shard_shape": list(scale.addressable_shards[0].data.shape),
      "mu_shard_shape": list(mu.addressable_shards[0].data.shape),
      "num_devices_holding_wi_0": len({s.device for s in wi.addressable_shards}),
  }
  json.dump(report, sys.stdout)


if __name__ == "__main__":
  main()
