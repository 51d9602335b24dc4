"""Several processes, one run: ``jax.distributed.initialize`` before JAX is used.

``mrt5-train`` calls ``initialize()`` first thing after parsing gin. Which
processes form the run (``DistributedConfig``, gin-configurable):

* explicit: ``coordinator_address``, ``num_processes`` and ``process_id`` all
  bound, e.g. on one machine with two CPU processes::

    mrt5-train --gin_file=runs/local.gin --gin.DistributedConfig.num_processes=2 \\
      --gin.DistributedConfig.process_id=0 \\
      --gin.DistributedConfig.coordinator_address=127.0.0.1:8476   # and process_id=1

  (CPU processes exchange collectives over gloo/TCP);
* ``cluster_detection_method`` (e.g. ``'slurm'``, ``'mpi4py'``): JAX reads the
  cluster's environment;
* a Cloud TPU VM (``auto_tpu``, on by default): ``jax.distributed.initialize()``
  with no arguments; JAX finds the slice's workers and this worker's index in
  the TPU VM metadata (a single-host VM becomes a one-process run);
* otherwise one process, and nothing is initialised.

Afterwards ``jax.process_index()`` / ``process_count()`` describe the run: the
trainer reads process ``i``'s data shards (``mrt5_jax.data.pipeline``), builds global
batches from every process's rows, and orbax writes each checkpoint once
(arrays by the processes that hold them, everything else by process 0).
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.util
import logging
from typing import Any, Optional, Sequence

import gin
import jax

logger = logging.getLogger("mrt5_jax")
_GOOGLE_PCI_VENDOR = "0x1ae0"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """How this process joins a multi-process run (see the module docstring).

  local_device_ids: the accelerators this process uses (None: all it sees).
  cpu_collectives: cross-process collectives of the CPU backend ('gloo').
  initialization_timeout: seconds to wait for every process to connect.
  """
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  local_device_ids: Optional[Sequence[int]] = None
  cluster_detection_method: Optional[str] = None
  auto_tpu: bool = True
  cpu_collectives: str = "gloo"
  initialization_timeout: int = 300

  def __post_init__(self):
    if self.num_processes is not None and self.num_processes < 1:
      raise ValueError(f"DistributedConfig.num_processes must be >= 1, got {self.num_processes}")
    if (self.process_id is not None and self.num_processes is not None
        and not 0 <= self.process_id < self.num_processes):
      raise ValueError(f"DistributedConfig.process_id={self.process_id} must lie in "
                       f"[0, num_processes={self.num_processes})")


def on_cloud_tpu_vm() -> bool:
  """True on a Cloud TPU VM: libtpu installed and TPU chips on the PCI bus."""
  if importlib.util.find_spec("libtpu") is None:
    return False
  try:
    from jax._src import hardware_utils
    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
  except (ImportError, AttributeError):
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
      with open(vendor) as f:
        if f.read().strip() == _GOOGLE_PCI_VENDOR:
          return True
    return False


def plan(config: DistributedConfig, tpu_vm: bool) -> Optional[dict[str, Any]]:
  """The keyword arguments of ``jax.distributed.initialize``, or None for one process."""
  explicit = {"coordinator_address": config.coordinator_address,
              "num_processes": config.num_processes, "process_id": config.process_id}
  given = {k: v for k, v in explicit.items() if v is not None}
  common = {"initialization_timeout": config.initialization_timeout}
  if config.local_device_ids is not None:
    common["local_device_ids"] = list(config.local_device_ids)
  if config.cluster_detection_method:
    return {**given, **common, "cluster_detection_method": config.cluster_detection_method}
  if given:
    missing = sorted(set(explicit) - set(given))
    if missing:
      raise ValueError("a multi-process run needs DistributedConfig.coordinator_address, "
                       "num_processes and process_id together (or cluster_detection_method); "
                       f"missing: {', '.join(missing)}")
    if config.num_processes == 1:
      return None
    return {**given, **common}
  if tpu_vm and config.auto_tpu:
    return common
  return None


def initialize(config: Optional[DistributedConfig] = None) -> str:
  """Join the run ``config`` (default: gin's ``DistributedConfig()``) describes.

  Returns what happened: ``"single"`` (one process), ``"explicit"``,
  ``"cluster"`` or ``"tpu"``. Must run before JAX computes anything.
  """
  config = DistributedConfig() if config is None else config
  tpu_vm = (config.auto_tpu and not config.cluster_detection_method
            and config.coordinator_address is None and on_cloud_tpu_vm())
  kwargs = plan(config, tpu_vm)
  if kwargs is None:
    return "single"
  if jax.distributed.is_initialized():
    raise RuntimeError("jax.distributed is already initialised in this process")
  jax.config.update("jax_cpu_collectives_implementation", config.cpu_collectives)
  jax.distributed.initialize(**kwargs)
  mode = ("cluster" if config.cluster_detection_method else
          "explicit" if config.coordinator_address is not None else "tpu")
  logger.info("process %d of %d (%s; %d local / %d global devices)", jax.process_index(),
              jax.process_count(), mode, jax.local_device_count(), jax.device_count())
  return mode
