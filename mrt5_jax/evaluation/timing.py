"""Timing two computations side by side, and the per-task sums of what was timed."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import numpy as np


def paired_seconds(first: Callable[[], object], second: Callable[[], object],
                   repeats: int) -> tuple[list[float], list[float]]:
  """Wall times of two computations timed alternately (after one untimed run of
  each), so background load affects both alike; pair ``i`` ran back to back."""
  jax.block_until_ready(first())
  jax.block_until_ready(second())
  times: tuple[list[float], list[float]] = ([], [])
  for _ in range(repeats):
    for fn, bucket in ((first, times[0]), (second, times[1])):
      start = time.perf_counter()
      jax.block_until_ready(fn())
      bucket.append(time.perf_counter() - start)
  return times


def paired_median_seconds(first: Callable[[], object], second: Callable[[], object],
                          repeats: int) -> tuple[float, float]:
  """Median wall times of two computations timed alternately (``paired_seconds``)."""
  times = paired_seconds(first, second, repeats)
  return float(np.median(times[0])), float(np.median(times[1]))


@dataclasses.dataclass
class Speed:
  """Timings of the batches one task timed.

  *_full / *_hard: summed median seconds per batch; *_ratios: full / hard of
  every back-to-back pair; *_flops_*: summed matmul FLOPs of what ran;
  compacted_lengths: each batch's per-row length after the gate (its bucket;
  packed: the unpacked length the decoder reads); longest_kept: each batch's
  most kept positions in one row; stage_two_rows / batch_rows: the rows the
  layers after the gate ran on (packed: fewer than the batch's) and the
  batch's rows; encoder_flops_exact: every row at its own kept length.
  """
  examples: int = 0
  batches: int = 0
  encoder_full: float = 0.0
  encoder_hard: float = 0.0
  forward_full: float = 0.0
  forward_hard: float = 0.0
  encoder_ratios: list = dataclasses.field(default_factory=list)
  forward_ratios: list = dataclasses.field(default_factory=list)
  encoder_flops_full: float = 0.0
  encoder_flops_hard: float = 0.0
  encoder_flops_exact: float = 0.0
  forward_flops_full: float = 0.0
  forward_flops_hard: float = 0.0
  compacted_lengths: list = dataclasses.field(default_factory=list)
  longest_kept: list = dataclasses.field(default_factory=list)
  stage_two_rows: list = dataclasses.field(default_factory=list)
  batch_rows: list = dataclasses.field(default_factory=list)

  def add(self, other: "Speed") -> None:
    for field in dataclasses.fields(self):
      setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

  def report(self) -> dict[str, Any]:
    """Per-example milliseconds, measured speedups (median over the timed pairs of
    full / hard) and their FLOP ideals; {} when nothing was timed."""
    if not self.batches:
      return {}
    per = 1e3 / max(self.examples, 1)
    return {
        "examples": self.examples,
        "batches": self.batches,
        "pairs": len(self.encoder_ratios),
        "compacted_lengths": sorted(set(self.compacted_lengths)),
        "longest_kept": max(self.longest_kept) if self.longest_kept else None,
        "encoder_full_ms_per_example": self.encoder_full * per,
        "encoder_hard_ms_per_example": self.encoder_hard * per,
        "encoder_speedup": float(np.median(self.encoder_ratios)),
        "encoder_ideal_speedup": self.encoder_flops_full / self.encoder_flops_hard,
        "exact_ideal_speedup": (self.encoder_flops_full / self.encoder_flops_exact
                                if self.encoder_flops_exact else None),
        "stage_two_rows": sum(self.stage_two_rows),
        "batch_rows": sum(self.batch_rows),
        "forward_full_ms_per_example": self.forward_full * per,
        "forward_hard_ms_per_example": self.forward_hard * per,
        "forward_speedup": float(np.median(self.forward_ratios)),
        "forward_ideal_speedup": self.forward_flops_full / self.forward_flops_hard,
    }
