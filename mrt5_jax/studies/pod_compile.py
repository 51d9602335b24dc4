"""Pod sizing by compilation: ``mrt5-bench compile``.

The project trainer's real train step (what ``mrt5-train`` runs: its
shardings from the logical-axis rules, the donated state, micro-batches,
remat, and the shipped deletion control with its hard-deletion batches) is
compiled, never run, for every device of a TPU slice (``jax.experimental.
topologies`` with libtpu, no TPU needed) or for this host's devices, over a
grid of partitionings, micro-batch counts, remat policies and attention
implementations. Per setting it reports, per chip: XLA's peak memory against
the chip's HBM; the matmul FLOPs and collective bytes read from the compiled
HLO (``hlo_cost``: loops counted at their trip counts); a roofline step time
from the chip's peak FLOP/s, HBM and collective bandwidths (HBM traffic also read
from the HLO: XLA's "bytes accessed" counts a loop body once and a gather far
beyond the data it moves); the MFU that
implies; the compile time. The hand count beside it is 3 x the forward
matmul FLOPs of ``model.flops`` (forward + backward) at the batch's lengths.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from importlib import metadata
from typing import Any, Callable, Optional, Sequence

import gin
import jax

from mrt5_jax.jobs import gin_files
from mrt5_jax.maths import controller as controller_lib
from mrt5_jax.model import flops as flops_lib
from mrt5_jax.model.config import MrT5Config, preset
from mrt5_jax.parallel import partitioning
from mrt5_jax.studies import hlo_cost
from mrt5_jax.studies import compiled as compiled_lib
from mrt5_jax.training import objective as objective_lib
from mrt5_jax.training import optimizers
from mrt5_jax.training.trainer import Trainer

GIB = 1024.0 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures (Cloud TPU system architecture pages)."""
  name: str
  peak_flops: float  # bf16 FLOP/s
  hbm_bytes: float
  hbm_bandwidth: float  # bytes/s
  collective_bandwidth: float  # bytes/s per chip: the pod's all-reduce bandwidth / its chips


CHIPS = {
    "TPU v4": Chip("TPU v4", 275e12, 32 * GIB, 1200e9, 1.1e15 / 4096),
    "TPU v5 lite": Chip("TPU v5e", 197e12, 16 * GIB, 819e9, 51.2e12 / 256),
}


def chip_for(device) -> Optional[Chip]:
  """The published figures of ``device``'s chip, or None (no roofline for it)."""
  return CHIPS.get(getattr(device, "device_kind", ""))


def slice_devices(target: str, topology: str) -> list:
  """Every device of the slice: ``tpu`` (compile-only devices of ``topology``, via libtpu)
  or ``host`` (this process's devices)."""
  if target == "host":
    return list(jax.devices())
  if target != "tpu":
    raise ValueError(f"target must be 'tpu' or 'host', got {target!r}")
  if not compiled_lib.libtpu_available():
    raise ValueError("compiling for a TPU slice needs libtpu (pip install libtpu==0.0.42.1, the "
                     "version jax[tpu] 0.10.2 pins); --target host compiles for this host")
  from jax.experimental import topologies  # needs libtpu; imported only for a TPU target
  # v4 and v5p chips have two TensorCores that act as one device (megacore)
  chip_config = "megacore" if topology.startswith(("v4", "v5p")) else "default"
  return list(topologies.get_topology_desc(topology, "tpu", chip_config_name=chip_config).devices)


@dataclasses.dataclass(frozen=True)
class Setting:
  size: str
  input_length: int
  target_length: int
  global_batch: int
  num_partitions: int = 1
  num_microbatches: int = 1
  remat_policy: str = "none"
  attention_impl: str = "dense"
  scan_layers: bool = False
  optimizer: str = "adafactor"


def shipped_deletion_control(target_deletion_rate: float = 0.5) -> tuple[
    objective_lib.ObjectiveConfig, controller_lib.ControllerConfig]:
  """The objective and controller of ``runs/deletion_control.gin`` (hard-deletion batches on)."""
  gin.clear_config()
  try:
    gin_files.parse(["runs/deletion_control.gin"],
                    [f"ControllerConfig.target_deletion_rate = {target_deletion_rate}"],
                    finalize=False)
    return objective_lib.ObjectiveConfig(), controller_lib.ControllerConfig()
  finally:
    gin.clear_config()


def model_config(setting: Setting) -> MrT5Config:
  return preset(setting.size, dtype="bfloat16", remat_policy=setting.remat_policy,
                attention_impl=setting.attention_impl, scan_layers=setting.scan_layers,
                use_softmax1=True)


def hand_flops(config: MrT5Config, setting: Setting, kept: Optional[int] = None) -> float:
  """Forward + backward matmul FLOPs of a step (3 x forward), at full length or with the
  layers from the gate on at ``kept`` positions (a hard-deletion batch)."""
  forward = (flops_lib.encoder_flops(config, setting.input_length, kept)
             + flops_lib.decoder_flops(config, setting.target_length,
                                       setting.input_length if kept is None else kept))
  return 3.0 * setting.global_batch * forward


def build_trainer(setting: Setting, devices: Sequence, objective, controller) -> Trainer:
  mesh = partitioning.MeshConfig(num_partitions=setting.num_partitions)
  return Trainer(model_config(setting), optimizer=optimizers.OptimizerConfig(
      name=setting.optimizer), objective=objective, controller=controller, mesh=mesh,
      num_microbatches=setting.num_microbatches, enable_dropout=True, devices=devices)


def lower_train_step(trainer: Trainer, setting: Setting):
  """The trainer's jitted step lowered for abstract state and a global batch."""
  data_size = trainer.partitioner.data_size
  if setting.global_batch % (data_size * setting.num_microbatches):
    raise ValueError(f"batch {setting.global_batch} is not divisible by data-parallel size "
                     f"{data_size} x {setting.num_microbatches} micro-batches")
  step = trainer.compiled_step(setting.input_length, setting.target_length)
  with trainer.partitioner.context():
    return step.lower(trainer.abstract_state(setting.input_length, setting.target_length),
                      compiled_lib.batch_shapes(setting.global_batch, setting.input_length,
                                              setting.target_length))


def measure_program(lowered, devices: Sequence, useful_flops: float) -> tuple[dict[str, Any], Any]:
  """Compile ``lowered`` for ``devices``: (its row, the compiled program or None when it does
  not fit). Per chip: XLA's peak memory against the chip's HBM; for the whole slice: the
  matmul FLOPs and collective bytes counted in the HLO, XLA's own FLOP count; the roofline
  step time and the MFU of ``useful_flops`` (on chips with published figures)."""
  chip = chip_for(devices[0])
  chips = len(devices)
  start = time.perf_counter()
  compiled, memory = compiled_lib.compile_with_memory(lowered)
  hbm = chip.hbm_bytes if chip else (memory.capacity_bytes or None)
  row: dict[str, Any] = {
      "peak_bytes_per_chip": memory.peak_bytes, "hbm_bytes_per_chip": hbm,
      "fits": bool(memory.fits and (hbm is None or memory.peak_bytes <= hbm)),
      "compile_seconds": time.perf_counter() - start,
      "flops_per_step": None, "xla_cost_flops_per_step": None, "hbm_bytes_per_step": None,
      "xla_bytes_accessed_per_step": None,
      "collective_bytes_per_step": None, "collective_bytes_by_kind": None,
      "loops_counted_once": None,
      "estimated_step_seconds": None, "estimated_mfu": None, "bound_by": None}
  if compiled is None:
    return row, None
  cost = hlo_cost.program_cost(compiled.as_text())
  xla = compiled.cost_analysis()
  xla = (xla[0] if isinstance(xla, (list, tuple)) else xla) or {}
  row.update(
      flops_per_step=cost.matmul_flops * chips,
      xla_cost_flops_per_step=float(xla.get("flops", 0.0)) * chips,
      hbm_bytes_per_step=cost.hbm_bytes * chips,
      xla_bytes_accessed_per_step=float(xla.get("bytes accessed", 0.0)) * chips,
      collective_bytes_per_step=cost.total_collective_bytes * chips,
      collective_bytes_by_kind={k: v * chips for k, v in cost.collective_bytes.items()},
      loops_counted_once=len(cost.unknown_trip_counts))
  if chip is not None:
    row.update(roofline(chip, cost, useful_flops, chips))
  return row, compiled


def compile_setting(setting: Setting, devices: Sequence, *, topology: str,
                    objective=None, controller=None,
                    target_deletion_rate: float = 0.5) -> dict[str, Any]:
  """Compile one setting's train step; the row ``mrt5-bench compile`` reports."""
  if objective is None or controller is None:
    objective, controller = shipped_deletion_control(target_deletion_rate)
  trainer = build_trainer(setting, devices, objective, controller)
  config = trainer.config
  hand = hand_flops(config, setting)
  measured, _ = measure_program(lower_train_step(trainer, setting), devices, hand)
  return {
      **dataclasses.asdict(setting), "topology": topology, "chips": len(devices),
      "device_kind": getattr(devices[0], "device_kind", str(devices[0])),
      "num_data_partitions": trainer.partitioner.data_size,
      "parameters": _parameter_count(trainer, setting),
      "hand_flops_per_step": hand,
      "hand_flops_hard_step": hand_flops(
          config, setting, kept=round(setting.input_length * (1 - controller.target_deletion_rate))),
      "hard_delete_train_prob": objective.hard_delete_train_prob, **measured}


def roofline(chip: Chip, cost: hlo_cost.ProgramCost, useful_flops: float,
             chips: int) -> dict[str, Any]:
  """An estimated step time per chip: max(matmul time at peak, HBM traffic time) plus the
  collectives' time (no overlap assumed; all-reduce moves its data twice, as a ring does).
  HBM traffic is ``hlo_cost``'s count from the compiled program (each top-level op reads
  its operands and writes its result once, loops at their trip counts)."""
  compute = cost.matmul_flops / chip.peak_flops
  hbm = cost.hbm_bytes / chip.hbm_bandwidth
  moved = sum(v * (2.0 if k == "all-reduce" else 1.0) for k, v in cost.collective_bytes.items())
  communication = moved / chip.collective_bandwidth
  step = max(compute, hbm) + communication
  return {"estimated_step_seconds": step,
          "estimated_mfu": useful_flops / (step * chip.peak_flops * chips) if step else None,
          "compute_seconds": compute, "hbm_seconds": hbm, "collective_seconds": communication,
          "bound_by": "compute" if compute >= hbm else "memory bandwidth"}


def _parameter_count(trainer: Trainer, setting: Setting) -> int:
  abstract = trainer.abstract_variables(setting.input_length, setting.target_length)["params"]
  return int(sum(x.size for x in jax.tree_util.tree_leaves(abstract)))


def grid(size: str, input_length: int, target_length: int, global_batch: int, *,
         partitions: Sequence[int], microbatches: Sequence[int], remat_policies: Sequence[str],
         attention: Sequence[str], scan_layers: bool, optimizer: str) -> list[Setting]:
  return [Setting(size, input_length, target_length, global_batch, p, m, r, a, scan_layers,
                  optimizer)
          for p, r, a, m in itertools.product(partitions, remat_policies, attention,
                                              microbatches)]


def run_compile_benchmark(settings: Sequence[Setting], *, target: str, topology: str,
                          search: bool = False, target_deletion_rate: float = 0.5,
                          log: Callable[[str], None] = print) -> dict[str, Any]:
  """Compile every setting (``search``: per partitioning, remat and attention, micro-batch
  counts in increasing order until one fits and then while the estimated step time
  improves), and pick the fitting setting with the lowest estimated step time."""
  devices = slice_devices(target, topology)
  objective, controller = shipped_deletion_control(target_deletion_rate)
  chip = chip_for(devices[0])
  log(f"compiling for {len(devices)} x {getattr(devices[0], 'device_kind', devices[0])} "
      f"({topology if target == 'tpu' else 'this host'}), never run; roofline: "
      f"{chip or 'no published figures for this chip'}")
  rows, settled, last_fit = [], set(), {}
  for setting in settings:
    family = (setting.size, setting.num_partitions, setting.remat_policy, setting.attention_impl)
    if search and family in settled:
      continue
    try:
      row = compile_setting(setting, devices, topology=topology, objective=objective,
                            controller=controller)
    except ValueError as error:
      log(f"skipped {setting}: {error}")
      continue
    rows.append(row)
    log(describe(row))
    if search and row["fits"]:
      # more micro-batches cost less memory, but a program that only just fits may be
      # recomputed by XLA: go on while the estimated step time improves
      estimate = row["estimated_step_seconds"]
      if estimate is None or (family in last_fit and estimate >= last_fit[family]):
        settled.add(family)
      last_fit[family] = estimate
  fitting = [r for r in rows if r["fits"] and r["estimated_step_seconds"] is not None]
  best = min(fitting, key=lambda r: r["estimated_step_seconds"]) if fitting else None
  if best:
    log("best fitting setting: " + describe(best))
  elif rows:
    log("no setting fits" if not any(r["fits"] for r in rows) else
        "settings fit, but this chip has no published figures to estimate step times")
  return {"benchmark": "compile", "target": target, "topology": topology,
          "chips": len(devices), "libtpu": _libtpu_version(target),
          "jax": jax.__version__, "rows": rows, "best": best}


def _libtpu_version(target: str) -> Optional[str]:
  if target != "tpu":
    return None
  try:
    return metadata.version("libtpu")
  except metadata.PackageNotFoundError:
    return "unknown"


def describe(row: dict) -> str:
  peak = row["peak_bytes_per_chip"] / GIB
  hbm = f"{row['hbm_bytes_per_chip'] / GIB:.0f}" if row["hbm_bytes_per_chip"] else "?"
  head = (f"{row['size']} L={row['input_length']} B={row['global_batch']} "
          f"data x model {row['num_data_partitions']}x{row['num_partitions']} "
          f"micro {row['num_microbatches']} remat {row['remat_policy']} {row['attention_impl']}: "
          f"peak {peak:.1f}/{hbm} GiB per chip ({'fits' if row['fits'] else 'does not fit'}), "
          f"compiled in {row['compile_seconds']:.0f} s")
  if row["flops_per_step"] is None:
    return head
  hand = row["hand_flops_per_step"] / 1e12
  tail = (f"; {row['flops_per_step'] / 1e12:.1f} TFLOP/step (hand {hand:.1f}), collectives "
          f"{row['collective_bytes_per_step'] / GIB:.2f} GiB/step")
  if row["estimated_step_seconds"] is not None:
    tail += (f"; est. {row['estimated_step_seconds']:.3f} s/step, MFU "
             f"{row['estimated_mfu']:.0%} ({row['bound_by']}-bound)")
  return head + tail
