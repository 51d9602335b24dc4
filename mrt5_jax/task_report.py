"""Per-task evaluation reports: one row per task (for mixtures: per language).

``evaluate_tasks`` evaluates every sub-task of a seqio mixture (or the one
task) on its own batches:

* soft and hard cross-entropy per target byte and accuracy, deletion rate,
  mean kept and real input length (``evaluation.Evaluator``);
* the speed of hard deletion on that task's batches: the encoder, and the
  teacher-forced forward pass (encoder + decoder, the published code's
  "runtime per example"), each at full length (soft deletion, every layer on
  every position) against hard deletion (bucketed compaction), on the same
  batch, timed alternately (``benchmarking.paired_seconds``): milliseconds
  per example (median run of each batch, summed, over the real examples) and
  the speedup (median over the back-to-back pairs of full / hard time),
  beside the FLOP-count ideal of the lengths that ran (matmul FLOPs of the
  full-length over the compacted encoder, ``benchmarking.encoder_flops``).

A task's language is the last part of its name when that is a 2-3 letter
code (``mrt5.xnli.th`` -> ``th``). Batches keep the eval batch size; the last
one of a task is padded with empty rows (which no metric counts), so small
per-language splits are evaluated whole. Reports are JSON-serialisable dicts;
``format_table`` renders one as text.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any, Iterator, Mapping, Optional, Sequence

import jax
import numpy as np
import seqio

from mrt5_jax import benchmarking
from mrt5_jax import data as data_lib
from mrt5_jax import evaluation
from mrt5_jax import objective as objective_lib
from mrt5_jax.config import POOLING_TYPES
from mrt5_jax.hard_deletion import InferenceConfig
from mrt5_jax.inference import InferenceRunner

_LANGUAGE = re.compile(r"^[a-z]{2,3}$")


def leaf_tasks(dataset: data_lib.DatasetConfig) -> list[str]:
  """Names of the tasks of ``dataset``'s mixture (or its one task), in mixture order."""
  task_or_mixture = data_lib.get_task(dataset)
  return [task.name for task in seqio.get_subtasks(task_or_mixture)]


def language_of(task_name: str) -> str:
  """The language code ending a task name ('' when the name ends otherwise)."""
  last = task_name.rsplit(".", 1)[-1]
  return last if _LANGUAGE.match(last) else ""


def padded_batches(dataset: data_lib.DatasetConfig, num_batches: Optional[int], *,
                   shard_id: int = 0, num_shards: int = 1
                   ) -> Iterator[tuple[dict[str, np.ndarray], int]]:
  """(batch, real rows) over one epoch of ``dataset``'s split, at most ``num_batches``.

  Every batch has ``batch_size // num_shards`` rows; the last one is filled
  up with all-pad rows.
  """
  task = data_lib.get_task(dataset)
  if dataset.split not in task.splits:
    raise ValueError(f"{dataset.mixture_or_task_name!r} has no split {dataset.split!r}; "
                     f"it has {tuple(task.splits)}")
  rows = dataset.batch_size // num_shards
  ds = seqio.get_dataset(
      dataset.mixture_or_task_name,
      task_feature_lengths=data_lib.resolve_feature_lengths(dataset),
      dataset_split=dataset.split, shuffle=dataset.shuffle, num_epochs=1,
      feature_converter=seqio.EncDecFeatureConverter(pack=dataset.pack),
      shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards) if num_shards > 1 else None,
      verbose=False, use_cached=dataset.use_cached, seed=dataset.seed)
  batches = ds.batch(rows).as_numpy_iterator()
  if num_batches is not None:
    batches = itertools.islice(batches, num_batches)
  for batch in batches:
    real = len(next(iter(batch.values())))
    if real < rows:
      batch = {k: np.concatenate([v, np.zeros((rows - real,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield dict(batch), real


@dataclasses.dataclass
class Speed:
  """Timings of the batches one task timed.

  *_full / *_hard: summed median seconds per batch; *_ratios: full / hard of
  every back-to-back pair; *_flops_*: summed matmul FLOPs of what ran.
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
  forward_flops_full: float = 0.0
  forward_flops_hard: float = 0.0
  compacted_lengths: list = dataclasses.field(default_factory=list)

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
        "encoder_full_ms_per_example": self.encoder_full * per,
        "encoder_hard_ms_per_example": self.encoder_hard * per,
        "encoder_speedup": float(np.median(self.encoder_ratios)),
        "encoder_ideal_speedup": self.encoder_flops_full / self.encoder_flops_hard,
        "forward_full_ms_per_example": self.forward_full * per,
        "forward_hard_ms_per_example": self.forward_hard * per,
        "forward_speedup": float(np.median(self.forward_ratios)),
        "forward_ideal_speedup": self.forward_flops_full / self.forward_flops_hard,
    }


class SpeedMeter:
  """Full-length (soft) against hard-deletion encoding and scoring of one batch."""

  def __init__(self, config, params, inference: InferenceConfig = InferenceConfig()):
    self.config = config
    self.full = InferenceRunner(config, params, mode="soft")
    self.hard = InferenceRunner(config, params, mode="bucketed",
                                inference=inference.replace(mode="bucketed"))

  def measure(self, batch: Mapping[str, np.ndarray], examples: int, repeats: int) -> Speed:
    """Time ``batch`` (``examples`` real rows) ``repeats`` times each way, alternately."""
    tokens = batch["encoder_input_tokens"]
    dec_in, targets = batch["decoder_input_tokens"], batch["decoder_target_tokens"]
    length, target_length = tokens.shape[1], targets.shape[1]
    compacted = self.hard.encode(tokens).compacted_length
    encoder = benchmarking.paired_seconds(
        lambda: self.full.encode(tokens).encoded, lambda: self.hard.encode(tokens).encoded,
        repeats)
    forward = benchmarking.paired_seconds(
        lambda: self.full.score(tokens, dec_in, targets),
        lambda: self.hard.score(tokens, dec_in, targets), repeats)
    rows = tokens.shape[0]
    kept = compacted if self.config.has_gate else None
    # the pooling baselines' "full" program is their soft one: BP at its
    # training capacity, CP at its one length (never the input length)
    full_length = self.full.encode(tokens).compacted_length if self.config.is_pooling else length
    enc_full = benchmarking.encoder_flops(
        self.config, length, full_length if self.config.is_pooling else None)
    enc_hard = benchmarking.encoder_flops(self.config, length, kept)
    return Speed(
        examples=examples, batches=1,
        encoder_full=float(np.median(encoder[0])), encoder_hard=float(np.median(encoder[1])),
        forward_full=float(np.median(forward[0])), forward_hard=float(np.median(forward[1])),
        encoder_ratios=[f / h for f, h in zip(*encoder)],
        forward_ratios=[f / h for f, h in zip(*forward)],
        encoder_flops_full=rows * enc_full, encoder_flops_hard=rows * enc_hard,
        forward_flops_full=rows * (enc_full + benchmarking.decoder_flops(
            self.config, target_length, full_length)),
        forward_flops_hard=rows * (enc_hard + benchmarking.decoder_flops(
            self.config, target_length, compacted)),
        compacted_lengths=[int(compacted)])


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


def evaluate_tasks(evaluator: evaluation.Evaluator, params, controller_state,
                   dataset: data_lib.DatasetConfig, *, num_batches: Optional[int],
                   speed_batches: int = 1, speed_repeats: int = 3,
                   inference: InferenceConfig = InferenceConfig(),
                   profile: Optional[evaluation.DeletionProfile] = None,
                   log=lambda message: None) -> dict[str, Any]:
  """Evaluate each task of ``dataset``'s mixture on its first ``num_batches`` batches.

  The first ``speed_batches`` batches of each task are also timed
  (``speed_repeats`` alternating runs each; 0 batches: no timing).
  Returns {'tasks': [row per task], 'all': {'soft', 'hard', 'examples',
  'speed'} over every task's batches}.
  """
  if speed_batches < 0 or speed_repeats < 1:
    raise ValueError("speed_batches must be >= 0 and speed_repeats >= 1")
  host, hosts = jax.process_index(), jax.process_count()
  meter = SpeedMeter(evaluator.config, params, inference) if speed_batches else None
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
    ("enc full ms/ex", ("speed", "encoder_full_ms_per_example"), "{:.3f}"),
    ("enc hard ms/ex", ("speed", "encoder_hard_ms_per_example"), "{:.3f}"),
    ("enc speedup", ("speed", "encoder_speedup"), "{:.2f}x"),
    ("FLOP ideal", ("speed", "encoder_ideal_speedup"), "{:.2f}x"),
    ("fwd hard ms/ex", ("speed", "forward_hard_ms_per_example"), "{:.3f}"),
    ("fwd speedup", ("speed", "forward_speedup"), "{:.2f}x"),
)


# The pooling baselines (BP, CP) shorten by pooling: their "deletion rate" is
# the sequence-length reduction 1 - slots / real length.
POOLING_TITLES = {"deleted": "len reduction", "kept/len": "slots/len"}


def _cell(row: Mapping[str, Any], key, fmt: Optional[str]) -> str:
  if key is None:
    return f"{row['kept_length']:.1f}/{row['real_length']:.1f}"
  value: Any = row
  for part in (key,) if isinstance(key, str) else key:
    if not isinstance(value, Mapping) or part not in value:
      return "-"
    value = value[part]
  return fmt.format(value)


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
  titles = POOLING_TITLES if report.get("deletion_type") in POOLING_TYPES else {}
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
