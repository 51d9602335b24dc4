"""Hard-deletion inference compiled for a slice: ``mrt5-bench compile --programs inference``.

The encoder programs hard deletion runs (``inference.encode_path.EncodePath``)
are compiled, never run, for every device of a TPU slice or this host's
devices, with the trainer's parameter shardings (logical-axis rules) and the
batch on the data axis:

  encode_full        the encoder at full length (soft: what ByT5 costs)
  stage_one          embedding, the layers before the gate and the gate
  stage_two@N        the layers after the gate, every row at bucket length N
                     (one program per bucket of the InferenceConfig)
  stage_two_packed   the layers after the gate on the kept positions of all
                     rows packed into fewer rows (the packing plan of a batch
                     whose rows delete N(rate, spread) of their positions)

Per program (``pod_compile.measure_program``; a "step" is one call): peak
memory per chip against the chip's HBM, matmul FLOPs and collective bytes
counted in the compiled HLO (``hlo_cost``) beside the hand count of
``model.flops``, a roofline time and the compile time. Per batch: which stage-two program each mode runs and the
encoder speedup over full length that the counted FLOPs and the roofline
estimates imply.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mrt5_jax.inference.encode_path import EncodePath, InferenceConfig, bucket_lengths
from mrt5_jax.model import flops as flops_lib
from mrt5_jax.model.network import Transformer
from mrt5_jax.studies import pod_compile
from mrt5_jax.studies.pod_compile import GIB, Setting


@dataclasses.dataclass(frozen=True)
class InferenceSetting:
  """One slice configuration for inference: the model and batch of ``setting`` (its
  micro-batches and remat do not apply), rows deleting N(deletion_rate, rate_spread)."""
  setting: Setting
  deletion_rate: float = 0.5
  rate_spread: float = 0.05
  inference: InferenceConfig = InferenceConfig()
  seed: int = 0


def kept_counts(setting: InferenceSetting) -> np.ndarray:
  """(B,) kept positions per row: each row's deletion rate drawn from N(rate, spread),
  clipped to [0, 1], of a full-length input."""
  length = setting.setting.input_length
  rates = np.random.default_rng(setting.seed).normal(
      setting.deletion_rate, setting.rate_spread, setting.setting.global_batch)
  return np.clip(np.round(length * (1.0 - np.clip(rates, 0.0, 1.0))), 1, length).astype(np.int64)


def _with_shardings(shapes, shardings):
  return jax.tree_util.tree_map(
      lambda shape, sharding: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding),
      shapes, shardings)


def _program_row(name: str, lowered, devices: Sequence, *, hand_flops: float, rows: int,
                 length: int) -> tuple[dict[str, Any], Any]:
  measured, compiled = pod_compile.measure_program(lowered, devices, hand_flops)
  return {"program": name, "rows": rows, "length": length,
          "hand_flops_per_step": hand_flops, **measured}, compiled


def compile_inference(setting: InferenceSetting, devices: Sequence, *,
                      topology: str) -> dict[str, Any]:
  """Compile every hard-deletion encoder program of ``setting`` for ``devices``."""
  base = dataclasses.replace(setting.setting, remat_policy="none", num_microbatches=1)
  objective, controller = pod_compile.shipped_deletion_control(setting.deletion_rate)
  trainer = pod_compile.build_trainer(base, devices, objective, controller)
  config, partitioner = trainer.config, trainer.partitioner
  batch, length = base.global_batch, base.input_length
  if batch % partitioner.data_size:
    raise ValueError(f"batch {batch} is not divisible by data-parallel size "
                     f"{partitioner.data_size}")
  if not Transformer(config).shortening.packs:
    raise ValueError("inference programs are compiled for a delete gate (a kind whose hard "
                     f"shortening keeps positions), not {config.deletion_type!r}")
  abstract = trainer.abstract_variables(length, base.target_length)["params"]
  params = _with_shardings(abstract, trainer.state_shardings(length, base.target_length)["params"])
  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=partitioner.data_sharding)
  path = EncodePath(Transformer(config), setting.inference, num_groups=partitioner.data_size)
  programs = path.programs
  gate, layers = config.gate_layer, config.num_encoder_layers

  def after_gate(rows: int, run_length: int) -> float:
    return rows * (layers - gate) * flops_lib.layer_flops(run_length, config)

  rows_out = []
  with partitioner.context():
    row, _ = _program_row(
        "encode_full", programs["encode_once"].lower(params, tokens, None, None, "soft", None),
        devices, hand_flops=batch * flops_lib.encoder_flops(config, length),
        rows=batch, length=length)
    rows_out.append(row)
    lowered_one = programs["stage_one"].lower(params, tokens, None, None)
    row, compiled_one = _program_row(
        "stage_one", lowered_one, devices,
        hand_flops=batch * gate * flops_lib.layer_flops(length, config), rows=batch,
        length=length)
    rows_out.append(row)
    if compiled_one is None:
      raise ValueError(f"stage one of {base.size} at batch {batch} x {length} does not fit")
    reading_shapes, _ = jax.eval_shape(programs["stage_one"], params, tokens, None, None)
    reading = _with_shardings(reading_shapes, compiled_one.output_shardings[0])
    stage_one_specs = sorted({str(tuple(sh.spec)) for sh in
                              jax.tree_util.tree_leaves(compiled_one.output_shardings)})
    for bucket in bucket_lengths(setting.inference, length):
      row, _ = _program_row(
          f"stage_two@{bucket}", programs["stage_two"].lower(params, reading, tokens, None,
                                                             "hard", bucket),
          devices, hand_flops=after_gate(batch, bucket), rows=batch,
          length=bucket)
      row["bucket"] = bucket
      rows_out.append(row)
    kept = kept_counts(setting)
    unpacked = path.compacted_length(kept, length)
    plan = path.packing_plan(kept, length)
    replicated = partitioner.replicated
    abstract_plan = plan.replace(
        starts=jax.ShapeDtypeStruct(plan.starts.shape, jnp.int32, sharding=replicated),
        kept=jax.ShapeDtypeStruct(plan.kept.shape, jnp.int32, sharding=replicated))
    row, _ = _program_row(
        "stage_two_packed", programs["stage_two_packed"].lower(params, reading, tokens, None,
                                                               abstract_plan, unpacked),
        devices, hand_flops=after_gate(plan.packed_rows, plan.row_length),
        rows=plan.packed_rows, length=plan.row_length)
    rows_out.append(row)
  by_name = {r["program"]: r for r in rows_out}
  packs = path.choose_packing(kept, length, unpacked) is not None
  runs = {"bucketed": f"stage_two@{unpacked}",
          "packed": "stage_two_packed" if packs else f"stage_two@{unpacked}"}
  batch_summary: dict[str, Any] = {
      "deletion_rate": setting.deletion_rate, "rate_spread": setting.rate_spread,
      "mean_kept": float(kept.mean()), "longest_kept": int(kept.max()), "bucket": unpacked,
      "packed_rows": plan.packed_rows, "packed_row_length": plan.row_length,
      "packed_runs": packs, "runs": runs,
      "exact_flop_speedup": (batch * flops_lib.encoder_flops(config, length)
                             / sum(flops_lib.encoder_flops(config, length, int(k))
                                   for k in kept))}
  full = by_name["encode_full"]
  for mode, program in runs.items():
    parts = (full, by_name["stage_one"], by_name[program])
    for figure, name in (("flops_per_step", "flop"), ("estimated_step_seconds", "estimated")):
      if None not in [part[figure] for part in parts]:
        batch_summary[f"{mode}_{name}_speedup"] = parts[0][figure] / (
            parts[1][figure] + parts[2][figure])
  return {"size": base.size, "topology": topology, "chips": len(devices),
          "device_kind": getattr(devices[0], "device_kind", str(devices[0])),
          "global_batch": batch, "input_length": length,
          "num_partitions": base.num_partitions, "num_data_partitions": partitioner.data_size,
          "attention_impl": base.attention_impl, "scan_layers": base.scan_layers,
          "inference": dataclasses.asdict(setting.inference), "programs": rows_out,
          "stage_one_output_specs": stage_one_specs,
          "batch": batch_summary}


def run_inference_compile(settings: Sequence[InferenceSetting], *, target: str, topology: str,
                          log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """``compile_inference`` for every setting on the slice's devices; a setting that cannot
  compile (batch not divisible, stage one does not fit) is logged and skipped."""
  devices = pod_compile.slice_devices(target, topology)
  out = []
  for setting in settings:
    try:
      result = compile_inference(setting, devices, topology=topology)
    except ValueError as error:
      log(f"skipped inference {setting.setting.size}: {error}")
      continue
    for line in describe(result):
      log(line)
    out.append(result)
  return out


def describe(result: dict) -> list[str]:
  lines = [f"inference {result['size']} B={result['global_batch']} L={result['input_length']} "
           f"data x model {result['num_data_partitions']}x{result['num_partitions']} on "
           f"{result['chips']} x {result['device_kind']}:"]
  for row in result["programs"]:
    text = (f"  {row['program']:<18} {row['rows']:>5} x {row['length']:<5} peak "
            f"{row['peak_bytes_per_chip'] / GIB:.2f} GiB/chip"
            f"{'' if row['fits'] else ' (does not fit)'}")
    if row["flops_per_step"] is not None:
      text += (f", {row['flops_per_step'] / 1e12:.2f} TFLOP "
               f"(hand {row['hand_flops_per_step'] / 1e12:.2f})")
    if row["estimated_step_seconds"] is not None:
      text += f", est. {row['estimated_step_seconds'] * 1e3:.1f} ms"
    lines.append(text + f", compiled in {row['compile_seconds']:.1f} s")
  b = result["batch"]
  speedups = ", ".join(f"{key.replace('_', ' ')} {value:.2f}x" for key, value in b.items()
                       if key.endswith("speedup"))
  lines.append(f"  a batch deleting N({b['deletion_rate']}, {b['rate_spread']}): longest row "
               f"keeps {b['longest_kept']} (bucket {b['bucket']}), packed into "
               f"{b['packed_rows']} x {b['packed_row_length']}; {speedups}")
  return lines
