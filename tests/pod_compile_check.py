"""Run as a script: ``mrt5-bench compile``'s train step, hard-deletion inference programs and
(where t5x is installed) t5x's MrT5Model step on an 8-device CPU topology.

XLA_FLAGS must be set before jax starts, so tests/integration/test_pod_compile.py runs this in
a subprocess and reads the JSON it prints: whether the compiled step's input and output
shardings are the partitioning rules' own, and the rows of a small grid.
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from mrt5_jax.inference.encode_path import InferenceConfig  # noqa: E402
from mrt5_jax.studies import inference_compile  # noqa: E402
from mrt5_jax.studies import pod_compile  # noqa: E402
from mrt5_jax.studies import t5x_compile  # noqa: E402


def specs(tree):
  return [str(tuple(s.spec)) for s in jax.tree_util.tree_leaves(tree)]


def placements(tree) -> dict:
  """Each leaf's partition spec by its path, without trailing unsharded dimensions (XLA may
  drop them)."""
  out = {}
  for path, sharding in jax.tree_util.tree_leaves_with_path(tree):
    spec = list(sharding.spec)
    while spec and spec[-1] is None:
      spec.pop()
    out[jax.tree_util.keystr(path)] = tuple(spec)
  return out


def matches(compiled, rules) -> bool:
  """The compiled program's placement of every argument it kept is the rules' placement;
  every parameter is kept (jit drops unused arguments, such as Adafactor's placeholders)."""
  compiled, rules = placements(compiled), placements(rules)
  params = [path for path in rules if path.startswith("['params']")]
  return (all(rules.get(path) == spec for path, spec in compiled.items())
          and all(path in compiled for path in params))


def main():
  devices = pod_compile.slice_devices("host", "")
  objective, controller = pod_compile.shipped_deletion_control()
  setting = pod_compile.Setting("tiny", 64, 16, 16, num_partitions=2, num_microbatches=2,
                                remat_policy="none")
  trainer = pod_compile.build_trainer(setting, devices, objective, controller)
  compiled = pod_compile.lower_train_step(trainer, setting).compile()
  rules = trainer.state_shardings(setting.input_length, setting.target_length)
  state_in, batch_in = compiled.input_shardings[0]
  state_out, metrics_out = compiled.output_shardings
  report = {
      "devices": len(devices),
      "state_in_matches_rules": matches(state_in, rules),
      "state_out_matches_rules": matches(state_out, rules),
      "state_in_mesh": dict(jax.tree_util.tree_leaves(state_in)[0].mesh.shape),
      "param_specs": sorted(set(specs(rules["params"]))),
      "batch_specs": sorted(set(specs(batch_in))),
      "metric_specs": sorted(set(specs(metrics_out))),
      "hard_delete_train_prob": objective.hard_delete_train_prob,
  }
  grid = pod_compile.grid("tiny", 64, 16, 32, partitions=[1, 2], microbatches=[4],
                          remat_policies=["none", "full"], attention=["dense"],
                          scan_layers=False, optimizer="adafactor")
  report["benchmark"] = pod_compile.run_compile_benchmark(grid, target="host", topology="cpu:8",
                                                          log=lambda line: None)
  inference = inference_compile.InferenceSetting(
      pod_compile.Setting("tiny", 64, 16, 32, num_partitions=2), deletion_rate=0.75,
      inference=InferenceConfig(min_bucket_length=16))
  report["inference"] = inference_compile.run_inference_compile(
      [inference], target="host", topology="cpu:8", log=lambda line: None)
  if t5x_compile.t5x_available():  # the t5x environment: t5x's step on the same slice
    t5x_grid = [pod_compile.Setting("tiny", 64, 16, 32, num_partitions=2, num_microbatches=m)
                for m in (1, 4)]
    report["t5x"] = t5x_compile.run_t5x_compile(t5x_grid, target="host", topology="cpu:8",
                                                log=lambda line: None)
    report["t5x_project_rows"] = [
        pod_compile.compile_setting(setting, devices, topology="cpu:8")
        for setting in t5x_grid if setting.num_microbatches == 1]
  print(json.dumps(report))


if __name__ == "__main__":
  main()
