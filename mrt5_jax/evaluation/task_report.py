"""Per-task evaluation reports: one row per task (for mixtures: per language).

``evaluate_tasks`` evaluates every sub-task of a seqio mixture (or the one
task) on its own batches:

* soft and hard cross-entropy per target byte and accuracy, deletion rate,
  mean kept and real input length (``evaluation.evaluator.Evaluator``);
* the speed of hard deletion on that task's batches: the encoder, and the
  teacher-forced forward pass (encoder + decoder, the published code's
  "runtime per example"), each at full length (soft deletion, every layer on
  every position) against hard deletion (bucketed compaction), on the same
  batch, timed alternately (``evaluation.timing.paired_seconds``): milliseconds
  per example (median run of each batch, summed, over the real examples) and
  the speedup (median over the back-to-back pairs of full / hard time),
  beside the FLOP-count ideal of the lengths that ran (matmul FLOPs of the
  full-length over the compacted encoder, ``model.flops.encoder_flops``).

A task's language is the last part of its name when that is a 2-3 letter
code (``mrt5.xnli.th`` -> ``th``). Batches keep the eval batch size; the last
one of a task is padded with empty rows (which no metric counts), so small
per-language splits are evaluated whole. Reports are JSON-serialisable dicts;
``format_table`` renders one as text.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import jax

from mrt5_jax.data import pipeline as data_lib
from mrt5_jax.data.eval_pipeline import language_of, leaf_tasks, padded_batches
from mrt5_jax.training import objective as objective_lib
from mrt5_jax.model.shortening import base as shortening_base
from mrt5_jax.model.shortening.registry import SHORTENINGS
from mrt5_jax.evaluation.timing import Speed



def _row(task: str, metrics: Mapping[str, Mapping[str, float]], examples: int,
         speed: Speed) -> dict[str, Any]:
  hard = metrics.get("hard", metrics["soft"])
  return {
      "task": task,
      "language": language_of(task),
      "examples": examples,
      "batches": int(metrics["soft"]["num_batches"]),
      "soft": dict(metrics["soft"]),
      "hard": dict(hard),
      "deletion_rate": hard["deletion_rate"],
      "kept_length": hard["kept_length"],
      "real_length": hard["real_length"],
      "speed": speed.report(),
  }


def evaluate_tasks(evaluator, params, controller_state,
                   dataset: data_lib.DatasetConfig, *, num_batches: Optional[int],
                   speed_meter=None, speed_batches: int = 1, speed_repeats: int = 3,
                   profile=None, log=lambda message: None) -> dict[str, Any]:
  """Evaluate each task of ``dataset``'s mixture on its first ``num_batches`` batches.

  ``evaluator`` is an ``evaluation.evaluator.Evaluator``; ``profile`` an
  optional ``DeletionProfile`` that collects what was deleted. With a
  ``speed_meter`` (``evaluation.speed.SpeedMeter``), the first
  ``speed_batches`` batches of each task are also timed (``speed_repeats``
  alternating runs each; 0 batches: no timing).
  Returns {'tasks': [row per task], 'all': {'soft', 'hard', 'examples',
  'speed'} over every task's batches}.
  """
  if speed_batches < 0 or speed_repeats < 1:
    raise ValueError("speed_batches must be >= 0 and speed_repeats >= 1")
  host, hosts = jax.process_index(), jax.process_count()
  meter = speed_meter if speed_batches else None
  rows, totals, batch_count, all_examples, all_speed = [], {}, 0, 0, Speed()
  for task in leaf_tasks(dataset):
    task_dataset = dataclasses.replace(dataset, mixture_or_task_name=task)
    examples, speed, task_totals, count = 0, Speed(), {}, 0
    for batch, real in padded_batches(task_dataset, num_batches, shard_id=host,
                                      num_shards=hosts):
      sums, _ = evaluator.sum_batches(params, controller_state, [batch], profile)
      task_totals = sums if not task_totals else {
          mode: objective_lib.merge_metric_sums(task_totals[mode], sums[mode])
          for mode in sums}
      if meter is not None and count < speed_batches:
        speed.add(meter.measure(batch, real, speed_repeats))
      examples += real
      count += 1
    if not count:
      raise ValueError(f"task {task!r} has no examples in split {dataset.split!r}")
    row = _row(task, evaluator.metrics(task_totals, count, controller_state), examples, speed)
    log(format_row(row))
    rows.append(row)
    totals = task_totals if not totals else {
        mode: objective_lib.merge_metric_sums(totals[mode], task_totals[mode])
        for mode in task_totals}
    batch_count += count
    all_examples += examples
    all_speed.add(speed)
  overall = evaluator.metrics(totals, batch_count, controller_state)
  return {"tasks": rows,
          "all": {**overall, "examples": all_examples, "speed": all_speed.report()}}


# ----------------------------------------------------------------------------- text

_COLUMNS = (
    ("task", "task", "{}"),
    ("lang", "language", "{}"),
    ("examples", "examples", "{}"),
    ("CE soft", ("soft", "cross_entropy_per_token"), "{:.4f}"),
    ("CE hard", ("hard", "cross_entropy_per_token"), "{:.4f}"),
    ("deleted", "deletion_rate", "{:.3f}"),
    ("kept/len", None, None),
    ("longest kept", ("speed", "longest_kept"), "{}"),
    ("bucket", ("speed", "compacted_lengths"), lambda lengths, row: ",".join(map(str, lengths))),
    ("stage-2 rows", ("speed", "stage_two_rows"),
     lambda rows, row: f"{rows}/{row['speed']['batch_rows']}"),
    ("enc full ms/ex", ("speed", "encoder_full_ms_per_example"), "{:.3f}"),
    ("enc hard ms/ex", ("speed", "encoder_hard_ms_per_example"), "{:.3f}"),
    ("enc speedup", ("speed", "encoder_speedup"), "{:.2f}x"),
    ("FLOP ideal", ("speed", "encoder_ideal_speedup"), "{:.2f}x"),
    ("exact ideal", ("speed", "exact_ideal_speedup"), "{:.2f}x"),
    ("fwd hard ms/ex", ("speed", "forward_hard_ms_per_example"), "{:.3f}"),
    ("fwd speedup", ("speed", "forward_speedup"), "{:.2f}x"),
)




def _cell(row: Mapping[str, Any], key, fmt) -> str:
  """``fmt``: a format string, or a function of (value, row)."""
  if key is None:
    return f"{row['kept_length']:.1f}/{row['real_length']:.1f}"
  value: Any = row
  for part in (key,) if isinstance(key, str) else key:
    if not isinstance(value, Mapping) or part not in value or value[part] is None:
      return "-"
    value = value[part]
  return fmt(value, row) if callable(fmt) else fmt.format(value)


def _seqio_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  names = []
  for row in rows:
    for name in row.get("seqio") or {}:
      if not name.startswith("deletion/") and name not in names:
        names.append(name)
  return names


def format_row(row: Mapping[str, Any]) -> str:
  """One line per task for progress logs."""
  parts = [f"{title} {_cell(row, key, fmt)}" for title, key, fmt in _COLUMNS[1:]]
  return f"{row['task']}: " + ", ".join(parts)


def format_table(report: Mapping[str, Any]) -> str:
  """Rows of ``report['tasks']`` (and an 'all' row for several tasks) as aligned text.

  ``report``: what ``evaluate_tasks`` returns, or ``evaluation.evaluate``'s
  results (the 'all' entries at the top level).
  """
  rows = list(report["tasks"])
  if len(rows) > 1:
    overall = report.get("all", report)
    hard = overall.get("hard", overall["soft"])
    rows.append({"task": "all", "language": "", "examples": overall["examples"],
                 "soft": overall["soft"], "hard": hard, "deletion_rate": hard["deletion_rate"],
                 "kept_length": hard["kept_length"], "real_length": hard["real_length"],
                 "speed": overall["speed"], "seqio": {}})
  seqio_names = _seqio_names(rows)
  # the shortening names its columns (BP, CP: a length reduction, not deletions)
  titles = SHORTENINGS.get(report.get("deletion_type"), shortening_base.Shortening).metric_titles
  header = [titles.get(title, title) for title, _, _ in _COLUMNS] + seqio_names
  table = [header]
  for row in rows:
    cells = [_cell(row, key, fmt) for _, key, fmt in _COLUMNS]
    cells += [_cell(row, ("seqio", name), "{:.2f}") for name in seqio_names]
    table.append(cells)
  widths = [max(len(line[i]) for line in table) for i in range(len(header))]
  lines = []
  for index, line in enumerate(table):
    lines.append("  ".join(cell.ljust(width) if i < 2 else cell.rjust(width)
                           for i, (cell, width) in enumerate(zip(line, widths))).rstrip())
    if index == 0:
      lines.append("  ".join("-" * width for width in widths))
  return "\n".join(lines)
