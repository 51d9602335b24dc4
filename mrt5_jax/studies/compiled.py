"""Compile-only measurement: where programs compile (this host or a TPU chip via libtpu) and
what XLA's memory analysis says of a compiled program.

``peak`` is XLA's live-buffer estimate: arguments + outputs - outputs aliased
to (donated) arguments + temporaries. A program that does not fit the device
is refused by XLA; its message is read for what was needed and available.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MIB = 1024.0 ** 2
TARGETS = ("auto", "host", "tpu")
DEFAULT_TPU_TOPOLOGY = "v4:2x2x1"
# How XLA:TPU words "does not fit": (needed, unit, capacity, unit).
_OUT_OF_MEMORY = (
    re.compile(r"HLO temporaries \(([0-9.]+)([KMGT]?)\) exceeds available HBM \(([0-9.]+)([KMGT]?)\)"),
    re.compile(r"Used ([0-9.]+)([KMGT]?)(?:i?B)? of ([0-9.]+)([KMGT]?)(?:i?B)? hbm"),
)
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


@dataclasses.dataclass(frozen=True)
class CompileTarget:
  """Where programs compile: one device (real, or a compile-only TPU chip)."""
  name: str
  device: Any

  @property
  def description(self) -> str:
    kind = getattr(self.device, "device_kind", str(self.device))
    return f"{kind} (compile-only, libtpu)" if self.name == "tpu" else f"{kind} (this host)"

  def sharding(self) -> NamedSharding:
    return NamedSharding(Mesh(np.array([self.device]), ("x",)), PartitionSpec())

  def abstract(self, tree):
    """ShapeDtypeStructs of ``tree`` placed on this target's device."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=self.sharding()), tree)


def libtpu_available() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def compile_target(name: str = "auto", topology: str = DEFAULT_TPU_TOPOLOGY) -> CompileTarget:
  """``host``, ``tpu`` (one chip of ``topology``), or ``auto``: the host when it
  is an accelerator, else a TPU chip when libtpu is installed, else the host."""
  if name not in TARGETS:
    raise ValueError(f"compile target must be one of {TARGETS}, got {name!r}")
  host = jax.devices()[0]
  if name == "auto":
    name = "tpu" if host.platform == "cpu" and libtpu_available() else "host"
  if name == "host":
    return CompileTarget("host", host)
  if not libtpu_available():
    raise ValueError("compiling for a TPU without one needs libtpu: pip install libtpu==0.0.42.1 "
                     "(the version jax[tpu] 0.10.2 pins)")
  from jax.experimental import topologies
  return CompileTarget("tpu", topologies.get_topology_desc(topology, "tpu").devices[0])

@dataclasses.dataclass
class MemoryStats:
  """Bytes of one compiled program (XLA's memory analysis).

  When the program does not fit the device, XLA refuses to compile it: then
  ``fits`` is False, ``peak_bytes`` is what XLA said it needed (its
  temporaries, or 0 if it did not say) and ``capacity_bytes`` the memory it
  said was available.
  """
  argument_bytes: int = 0
  output_bytes: int = 0
  alias_bytes: int = 0
  temp_bytes: int = 0
  fits: bool = True
  needed_bytes: int = 0
  capacity_bytes: int = 0

  @property
  def peak_bytes(self) -> int:
    if not self.fits:
      return self.needed_bytes
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

  def as_dict(self) -> dict:
    return {**dataclasses.asdict(self), "peak_bytes": self.peak_bytes}

  def describe(self) -> str:
    if self.fits:
      return f"{self.peak_bytes / MIB:9.0f} MiB"
    if not self.needed_bytes:
      return "does not fit"
    return (f"does not fit: {self.needed_bytes / MIB:.0f} MiB of temporaries, "
            f"{self.capacity_bytes / MIB:.0f} MiB available")


def _bytes(number: str, unit: str) -> int:
  return int(float(number) * _UNITS[unit])


def compile_with_memory(lowered) -> tuple[Any, MemoryStats]:
  """(the compiled program, or None when it does not fit the device; its memory analysis)."""
  try:
    compiled = lowered.compile()
  except Exception as error:  # XLA's out-of-memory is a JaxRuntimeError / XlaRuntimeError
    message = str(error)
    if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
      raise
    for pattern in _OUT_OF_MEMORY:
      used = pattern.search(message)
      if used is not None:
        return None, MemoryStats(fits=False, needed_bytes=_bytes(*used.group(1, 2)),
                                 capacity_bytes=_bytes(*used.group(3, 4)))
    return None, MemoryStats(fits=False)
  analysis = compiled.memory_analysis()
  if analysis is None:
    raise RuntimeError("XLA gives no memory analysis for this platform")
  return compiled, MemoryStats(int(analysis.argument_size_in_bytes),
                               int(analysis.output_size_in_bytes),
                               int(analysis.alias_size_in_bytes), int(analysis.temp_size_in_bytes))


def memory_stats(lowered) -> MemoryStats:
  """Compile a lowered jax program and read its memory analysis."""
  return compile_with_memory(lowered)[1]


def batch_shapes(batch: int, input_length: int, target_length: int) -> dict:
  enc = jax.ShapeDtypeStruct((batch, input_length), jnp.int32)
  dec = jax.ShapeDtypeStruct((batch, target_length), jnp.int32)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
          "decoder_target_tokens": dec}
