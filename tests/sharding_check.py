"""Run as a script: one train step on an 8-device CPU mesh (data 4 x model 2) vs 1 device.

XLA_FLAGS must be set before jax starts, so tests/unit/parallel/test_partitioning.py runs this
in a subprocess and reads the JSON it prints.
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mrt5_jax.maths import controller as ctl  # noqa: E402
from mrt5_jax.training import optimizers  # noqa: E402
from mrt5_jax.parallel import partitioning  # noqa: E402
from mrt5_jax.training import trainer as trainer_lib  # noqa: E402
from tests.fixtures import byte_batch, model_config  # noqa: E402


def batch():
  return byte_batch(batch=8, length=16, target_length=8, pad_from=(11, None, None),
                    target_pad_from=(None, 6), eos=False)


def one_step(devices, num_partitions, config, num_microbatches=1, optimizer="adamw"):
  tr = trainer_lib.Trainer(
      config, optimizer=optimizers.OptimizerConfig(name=optimizer, learning_rate=1e-3),
      controller=ctl.ControllerConfig(initial_alpha=0.5),
      mesh=partitioning.MeshConfig(num_partitions=num_partitions), devices=devices,
      num_microbatches=num_microbatches, enable_dropout=False)
  b = batch()
  state = tr.init_state(b["encoder_input_tokens"].shape[1], b["decoder_target_tokens"].shape[1])
  new_state, metrics = tr.train_step(state, b)
  return tr, new_state, {k: float(v) for k, v in jax.device_get(metrics).items()}


def main():
  assert len(jax.devices()) == 8, jax.devices()
  config = model_config("trainer", num_heads=4, head_dim=8)
  _, single_state, single = one_step(jax.devices()[:1], 1, config)
  tr, sharded_state, sharded = one_step(jax.devices(), 2, config)
  _, _, accumulated = one_step(jax.devices(), 2, config, num_microbatches=2)
  _, _, adafactor_single = one_step(jax.devices()[:1], 1, config, optimizer="adafactor")
  adafactor_tr, adafactor_state, adafactor = one_step(jax.devices(), 2, config,
                                                      optimizer="adafactor")
  factored = [leaf for leaf in jax.tree_util.tree_leaves(adafactor_state["opt_state"])
              if leaf.ndim == 1 and leaf.size > 1]
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
      "adafactor_single": adafactor_single, "adafactor_sharded": adafactor,
      "adafactor_factored_fully_replicated": all(
          leaf.sharding.is_fully_replicated for leaf in factored) and bool(factored),
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
