"""seqio's Evaluator, reporting what hard deletion did beside the task metrics.

t5x (``t5x.eval``, and ``t5x.train``'s inference evaluation) builds the
evaluator from the gin-bound ``inference_evaluator_cls`` and hands it a
``predict_with_aux_fn``; ``MrT5Model.predict_batch_with_aux`` puts the
per-example ``kept_length``, ``input_length`` and ``num_dropped`` of its
hard-deleted encoder into that aux. ``DeletionMetricsEvaluator`` decodes once,
through ``predict_with_aux_fn``, gives the tasks' own metric functions the
predictions as usual, and adds ``deletion/*`` values (``deletion_metrics``) to
each task's metrics, so that seqio's loggers (JSON lines, TensorBoard) write
them with the rest. The tasks stay plain seqio tasks: evaluators without aux
(or models whose aux holds no deletion figures, such as ByT5) report the task
metrics alone.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Optional

import numpy as np
import seqio

DELETION_AUX_KEYS = ("kept_length", "input_length", "num_dropped")


def deletion_metrics(aux: Optional[Mapping[str, Any]]) -> dict[str, float]:
  """Deletion figures of one task's predictions from per-example aux values.

  aux: {'kept_length', 'input_length', 'num_dropped'}, each (N,): encoder
    positions kept, real (non-pad) input positions, and kept positions that
    did not fit the compacted length (capacity mode) per example.
  Returns {'deletion/rate': 1 - sum(kept) / sum(input) (share of real
  positions deleted, as in training), 'deletion/kept_length' and
  'deletion/input_length' (means per example), 'deletion/dropped_positions'
  (total)}, or {} when ``aux`` lacks any of the keys.
  """
  if not aux or any(key not in aux for key in DELETION_AUX_KEYS):
    return {}
  kept, real, dropped = (np.asarray(aux[key], np.float64).reshape(-1)
                         for key in DELETION_AUX_KEYS)
  if not kept.size:
    return {}
  return {
      "deletion/rate": float(1.0 - kept.sum() / max(real.sum(), 1.0)),
      "deletion/kept_length": float(kept.mean()),
      "deletion/input_length": float(real.mean()),
      "deletion/dropped_positions": float(dropped.sum()),
  }


def _logging_also(logger, extra: Mapping[str, float], **kwargs):
  metrics = dict(kwargs.pop("metrics") or {})
  metrics.update({name: seqio.metrics.Scalar(value) for name, value in extra.items()})
  return logger(metrics=metrics, **kwargs)


class DeletionMetricsEvaluator(seqio.Evaluator):
  """``seqio.Evaluator`` whose task metrics include ``deletion_metrics``.

  Same constructor and ``evaluate`` arguments as seqio's. When
  ``predict_with_aux_fn`` is given, prediction metrics run on its tokens (one
  decode per task) and its aux values become the ``deletion/*`` metrics.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._deletion: dict[tuple[str, Optional[int]], dict[str, float]] = {}

  def evaluate(self, *, compute_metrics: bool, step: Optional[int] = None,
               predict_fn=None, score_fn=None, predict_with_aux_fn=None, model_fns=None):
    if predict_with_aux_fn is not None:
      predict_fn = self._recording_predict_fn(predict_with_aux_fn, step)
    return super().evaluate(compute_metrics=compute_metrics, step=step, predict_fn=predict_fn,
                            score_fn=score_fn, predict_with_aux_fn=predict_with_aux_fn,
                            model_fns=model_fns)

  def _recording_predict_fn(self, predict_with_aux_fn, step):
    """``predict_fn`` that decodes with aux and keeps each task's deletion figures."""
    names = {id(ds): name for name, ds in self.cached_model_datasets.items()}

    def predict_fn(ds, *args, **kwargs):
      indices_and_tokens, aux = predict_with_aux_fn(ds, *args, **kwargs)
      name = names.get(id(ds))
      if name is not None:
        self._deletion[(name, step)] = deletion_metrics(aux)
      return indices_and_tokens

    return predict_fn

  def _compute_clu_metrics(self, task, task_output, step=None):
    extra = self._deletion.pop((task.name, step), {})
    if not extra:
      return super()._compute_clu_metrics(task, task_output, step)
    loggers = self._loggers
    self._loggers = [functools.partial(_logging_also, logger, extra) for logger in loggers]
    try:
      metrics = super()._compute_clu_metrics(task, task_output, step)
    finally:
      self._loggers = loggers
    clashes = set(extra) & set(metrics)
    if clashes:
      raise ValueError(f"task {task.name!r} already reports {sorted(clashes)}")
    return {**metrics, **extra}
