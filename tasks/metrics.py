"""seqio metric functions of the tasks (predict metrics take predictions, score metrics scores)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def sequence_accuracy(targets: Sequence[str],
                      predictions: Sequence[str]) -> Mapping[str, float]:
  """Percentage of predictions equal to their target."""
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
  matches = sum(t == p for t, p in zip(targets, predictions))
  return {"sequence_accuracy": 100.0 * matches / max(len(targets), 1)}


def log_likelihood(targets: Sequence[str], scores: Sequence[float]) -> Mapping[str, float]:
  """Mean summed log-likelihood of the targets per example (higher is better)."""
  if len(targets) != len(scores):
    raise ValueError(f"{len(targets)} targets but {len(scores)} scores")
  if not len(scores):
    raise ValueError("no scores to average")
  return {"log_likelihood": float(np.mean(np.asarray(scores, np.float64)))}


SPAN_CORRUPTION_METRICS = (sequence_accuracy, log_likelihood)


def accuracy(targets: Sequence[str],
             predictions: Sequence[str]) -> Mapping[str, float]:
  """Percentage of predicted labels equal to the target label (classification)."""
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
  if not len(targets):
    raise ValueError("no predictions to score")
  matches = sum(t == p for t, p in zip(targets, predictions))
  return {"accuracy": 100.0 * matches / len(targets)}
