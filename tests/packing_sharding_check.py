"""Run as a script: packed hard deletion on an 8-device CPU mesh (data 8, and data 4 x
model 2) against per-row hard deletion on one device; prints a JSON report.

XLA_FLAGS must be set before jax starts, so tests/unit/inference/test_packed.py runs this
in a subprocess.
"""
import json
import os
import re
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mrt5_jax.inference.encode_path import EncodePath, InferenceConfig  # noqa: E402
from mrt5_jax.model.network import Transformer  # noqa: E402
from mrt5_jax.parallel import partitioning  # noqa: E402
from tests.fixtures import as_tuple, byte_batch, init_params, model_config  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
COLLECTIVES = ("all-gather", "all-to-all", "all-reduce", "collective-permute", "reduce-scatter")


def main():
  assert len(jax.devices()) == 8, jax.devices()
  config = model_config()
  pad_from = (None, 20, 9, 1, 30, 14, 25, None)
  enc, dec_in, tgt = as_tuple(byte_batch(batch=16, length=32, pad_from=pad_from))
  _, params = init_params(config, (enc, dec_in, tgt))
  params["encoder"]["delete_gate"]["dense"]["bias"] = jnp.array([0.0], jnp.float32)
  module = Transformer(config)
  buckets = InferenceConfig(mode="bucketed", min_bucket_length=4, bucket_step=4)
  with jax.default_device(jax.devices()[0]):
    reference = EncodePath(module, buckets).encode(params, jnp.asarray(enc))
  valid = np.asarray(reference.mask) > 0
  report = {}
  for partitions in (1, 2):
    partitioner = partitioning.Partitioner(partitioning.MeshConfig(num_partitions=partitions))
    groups = partitioner.data_size
    path = EncodePath(module, buckets.replace(mode="packed"), num_groups=groups)
    with partitioner.context():
      tokens = partitioner.shard_batch({"tokens": enc})["tokens"]
      reading, kept = path.read_gate(params, tokens)
      plan = path.packing_plan(kept, enc.shape[1])
      length = path.compacted_length(kept, enc.shape[1])
      out = path.finish_packed(params, reading, tokens, None, plan, length)
      hlo = path._stage_two_packed.lower(params, reading, tokens, None, plan,
                                         length).compile().as_text()
    report[f"data{groups}"] = {
        "mesh": dict(partitioner.mesh.shape),
        "packed_rows": plan.packed_rows, "rows_per_group": plan.rows_per_group,
        "max_abs_difference": float(np.max(np.abs(np.asarray(out.encoded)[valid]
                                                  - np.asarray(reference.encoded)[valid]))),
        "same_kept_positions": bool(np.array_equal(np.asarray(out.kept_positions),
                                                   np.asarray(reference.kept_positions))),
        "output_sharding": str(out.encoded.sharding.spec),
        "collectives": {name: len(re.findall(rf"\b{name}(?:-start)?\(", hlo))
                        for name in COLLECTIVES},
    }
  json.dump(report, sys.stdout)


if __name__ == "__main__":
  main()
