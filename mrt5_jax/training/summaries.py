"""TensorBoard scalars (tensorboardX) and the one-line progress log."""
from __future__ import annotations

import logging
import os
from typing import Mapping, Optional

import numpy as np

logger = logging.getLogger("mrt5_jax")


class SummaryWriter:
  """Scalars under ``<model_dir>/<name>`` (``train``, ``eval_soft``, ``eval_hard``)."""

  def __init__(self, model_dir: str, enabled: bool = True):
    self._root = model_dir
    self._enabled = enabled
    self._writers = {}

  def _writer(self, name: str):
    if name not in self._writers:
      from tensorboardX import SummaryWriter as TBWriter
      self._writers[name] = TBWriter(os.path.join(self._root, name))
    return self._writers[name]

  def scalars(self, name: str, step: int, values: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    writer = self._writer(name)
    for key, value in values.items():
      value = float(value)
      if np.isfinite(value):
        writer.add_scalar(key, value, step)
    writer.flush()

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
    self._writers = {}


def progress_line(step: int, total_steps: int, metrics: Mapping[str, float],
                  examples_per_second: float, target: Optional[float] = None) -> str:
  """``step 120/400 | loss 2.31 | ce 2.25 | del 0.38 (target 0.40) | alpha 0.012 | len 41.2/64.0 | 310 ex/s``."""
  parts = [f"step {step}/{total_steps}",
           f"loss {metrics['loss']:.4f}",
           f"ce {metrics['cross_entropy_per_token']:.4f}"]
  if "deletion_rate" in metrics:
    rate = f"del {metrics['deletion_rate']:.3f}"
    if target is not None:
      rate += f" (target {target:.2f})"
    parts.append(rate)
  if "alpha" in metrics:
    parts.append(f"alpha {metrics['alpha']:.4g}")
  if "kept_length" in metrics:
    parts.append(f"len {metrics['kept_length']:.1f}/{metrics['real_length']:.1f}")
  if "learning_rate" in metrics:
    parts.append(f"lr {metrics['learning_rate']:.3g}")
  parts.append(f"{examples_per_second:.1f} ex/s")
  return " | ".join(parts)


def eval_line(metrics: Mapping[str, float]) -> str:
  """``ce 2.31 | acc 0.41 | del 0.50 | len 32.0/64.0 (compacted 32)``."""
  parts = [f"ce {metrics['cross_entropy_per_token']:.4f}", f"acc {metrics['accuracy']:.3f}",
           f"del {metrics['deletion_rate']:.3f}",
           f"len {metrics['kept_length']:.1f}/{metrics['real_length']:.1f}"]
  if metrics.get("compacted_length"):
    parts.append(f"compacted {metrics['compacted_length']:.0f}")
  return " | ".join(parts)
