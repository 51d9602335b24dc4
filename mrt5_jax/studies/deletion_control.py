"""Does deletion hold its target and carry over to hard deletion? Recipes x tasks, measured.

Each run trains with ``jobs.train.train`` from gin (a run file plus bindings) and
reports what the README's deletion-control table shows: the evaluation's
deletion rate, soft and hard cross entropy, hard accuracy, the steps and wall
time, how much of the run the rate spent above 0.95 (collapse), and on the
diagnostic tasks whether the gate deletes what the task drops (the vowel share
of the deleted positions, the share of the droppable vowels deleted, and of the
deleted vowels the share the task drops) and how
many of the deleted bytes the target still needs the decoder recovers.

Tasks:
  vowel_removal, contextual_vowel_removal: the diagnostic tasks from scratch
    (``runs/local.gin``).
  span_corruption: the paper's path in small: a ByT5-tiny (no gate) is first
    trained on the shipped sample corpus, then continued as MrT5 (fresh gate)
    and, for the CE penalty, continued as ByT5 for the same steps.
Recipes are gin files parsed after the run file (``shipped`` adds none: the run
file's recipe, ``runs/deletion_control.gin`` with the settings ``runs/local.gin``
adds for training from scratch; ``runs/deletion_published.gin`` the published
code's settings) or extra bindings; the ablations re-parse
``runs/deletion_control.gin``, so they run with its gains.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Optional, Sequence

import gin
import numpy as np

from mrt5_jax.checkpointing import loading
from mrt5_jax.data import eval_pipeline
from mrt5_jax.data import pipeline as data_lib
from mrt5_jax.inference.runner import InferenceRunner
from mrt5_jax.jobs import gin_files as gin_files_lib
from mrt5_jax.jobs import train as train_job
from mrt5_jax.model.shortening.base import deleted_positions
from mrt5_jax.tasks import diagnostic

logger = logging.getLogger("mrt5_jax")

TASKS = ("vowel_removal", "contextual_vowel_removal", "span_corruption")
SPAN_TASK = "mrt5.span_corruption.sample"
COLLAPSE_RATE = 0.95


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A named deletion recipe: gin files included after the run file, then bindings."""
  name: str
  gin_files: tuple[str, ...] = ()
  bindings: tuple[str, ...] = ()


_PREVIOUS_DEMO = ("ControllerConfig.kind = 'p'", "ControllerConfig.k_p = 0.01")
# runs/deletion_control.gin as it shipped until issue 21: a fresh gate with the published
# bias, hard-deletion batches from the first step, the integral gain five times today's,
# the gate trained from the first step
_PREVIOUS_SHIPPED = ("DeleteGateConfig.gate_bias_init = 1.0", "ControllerConfig.k_i = 0.005",
                     "ObjectiveConfig.hard_delete_train_start = None",
                     "ObjectiveConfig.hard_delete_train_ramp = 0",
                     "ObjectiveConfig.freeze_gate_before_delay = False")
_LATE_HARD = ("ObjectiveConfig.hard_delete_train_start = 200",
              "ObjectiveConfig.hard_delete_train_ramp = 300")
_PACKED = ("ObjectiveConfig.hard_delete_train_packed_rows = 0.75",)
RECIPES = {
    # runs/local.gin as it shipped before: the published options with a P controller
    "previous_demo": Recipe("previous_demo", ("runs/deletion_published.gin",), _PREVIOUS_DEMO),
    # the published training script's defaults (PI, k_p 0.5, k_i 1e-5)
    "published": Recipe("published", ("runs/deletion_published.gin",)),
    # ablations of the shipped recipe: each half alone
    "hard_delete_only": Recipe("hard_delete_only", ("runs/deletion_published.gin",),
                               _PREVIOUS_DEMO + ("ObjectiveConfig.hard_delete_train_prob = 0.5",)),
    "controller_only": Recipe("controller_only", ("runs/deletion_control.gin",),
                              ("ObjectiveConfig.hard_delete_train_prob = 0.0",)),
    # the run file as it ships: runs/deletion_control.gin and the run file's own settings
    # for training from scratch (beta, the proportional gain)
    "shipped": Recipe("shipped"),
    # the shipped recipe until issue 21, and that recipe with hard-deletion batches from
    # 200 steps after the regularizer delay, ramped in over 300 (the rows measured then)
    "previous_shipped": Recipe("previous_shipped", ("runs/deletion_control.gin",),
                               _PREVIOUS_SHIPPED),
    "late_hard": Recipe("late_hard", ("runs/deletion_control.gin",),
                        _PREVIOUS_SHIPPED + _LATE_HARD),
    # hard-deletion batches packed into 3/4 of the rows (issue 17: fewer rows after the
    # gate; docs/benchmarks.md has its cost): the shipped recipe and the previous two
    "shipped_packed": Recipe("shipped_packed", ("runs/deletion_control.gin",), _PACKED),
    "previous_shipped_packed": Recipe("previous_shipped_packed", ("runs/deletion_control.gin",),
                                      _PREVIOUS_SHIPPED + _PACKED),
    "late_hard_packed": Recipe("late_hard_packed", ("runs/deletion_control.gin",),
                               _PREVIOUS_SHIPPED + _LATE_HARD + _PACKED),
}


@dataclasses.dataclass
class StudyRow:
  task: str
  recipe: str
  target: float
  steps: int
  eval_deletion_rate: float
  soft_cross_entropy: float
  hard_cross_entropy: float
  hard_accuracy: float
  wall_seconds: float
  collapse_share: float
  final_alpha: float
  rate_trace: list
  gateless_cross_entropy: Optional[float] = None
  droppable_share: Optional[float] = None
  droppable_deleted: Optional[float] = None
  deleted_vowels_dropped: Optional[float] = None
  deleted_recovered: Optional[float] = None

  @property
  def hard_within_bound(self) -> bool:
    """hard CE <= 1.25 x soft CE + 0.02 (the diagnostic tasks' bound)."""
    return self.hard_cross_entropy <= 1.25 * self.soft_cross_entropy + 0.02


# Every study run trains from this run file; it also binds the other jobs' entry points,
# and a study only trains.
RUN_FILE = "runs/local.gin"
OTHER_JOBS = ("evaluate", "inspect_deletion")


def parse_recipe(recipe: Recipe, bindings: Sequence[str] = ()) -> None:
  """Parse what a study run trains with: the run file, then the recipe's files, the
  recipe's bindings and ``bindings`` (gin's state is cleared first)."""
  gin.clear_config()
  gin_files_lib.parse([RUN_FILE, *recipe.gin_files], [*recipe.bindings, *bindings],
                      skip_unknown=OTHER_JOBS)


def _train(recipe: Recipe, bindings: Sequence[str],
           measure: Optional[Callable[[Any, data_lib.DatasetConfig], dict]] = None):
  """Train with the parsed recipe; ``measure(result, eval dataset)`` runs after, on the
  same configuration. Returns (the train result, what ``measure`` returned)."""
  parse_recipe(recipe, bindings)
  try:
    result = train_job.train()
    if measure is None:
      return result, {}
    with gin.config_scope("eval"):
      dataset = data_lib.DatasetConfig()
    return result, measure(result, dataset)
  finally:
    gin.clear_config()


def position_shares(deleted: np.ndarray, droppable: np.ndarray,
                    vowels: np.ndarray) -> dict[str, Optional[float]]:
  """What the gate deletes against what the task drops, from (B, L) bool masks:
  ``droppable_share`` (of the deleted positions, the share the task drops: the vowel
  share on vowel removal), ``droppable_deleted`` (of the positions the task drops, the
  share deleted) and ``deleted_vowels_dropped`` (of the deleted vowels, the share the task
  drops; None when no vowel is deleted)."""
  deleted_vowels = (deleted & vowels).sum()
  return {"droppable_share": float((deleted & droppable).sum() / max(deleted.sum(), 1)),
          "droppable_deleted": float((deleted & droppable).sum() / max(droppable.sum(), 1)),
          "deleted_vowels_dropped": (float((deleted & vowels & droppable).sum() / deleted_vowels)
                                     if deleted_vowels else None)}


def droppable_figures(task: str, model_dir: str, dataset: data_lib.DatasetConfig,
                      num_batches: Optional[int] = 8) -> dict[str, Optional[float]]:
  """``position_shares`` of the trained gate on ``dataset``'s first ``num_batches``
  batches, and ``deleted_recovered`` (of the deleted bytes the target still copies, the
  share the decoder gets back with hard deletion: its teacher-forced probability of the
  byte above 1/2, so the byte's content reached the kept positions before the gate).
  All None for tasks without droppable bytes."""
  loaded = loading.load_model(model_dir)
  runner = InferenceRunner(loaded.config, loaded.params, mode="bucketed")
  threshold = loaded.config.deletion_threshold
  masks = {"deleted": [], "droppable": [], "vowels": []}
  copied, recovered = 0, 0
  for batch, real_rows in eval_pipeline.padded_batches(dataset, num_batches):
    tokens = batch["encoder_input_tokens"][:real_rows]
    droppable = diagnostic.droppable_positions(task, tokens)
    if droppable is None:
      return dict.fromkeys(("droppable_share", "droppable_deleted", "deleted_vowels_dropped",
                            "deleted_recovered"))
    encoded = runner.encode(tokens)
    deleted = np.asarray(deleted_positions(encoded.gate, tokens > 0, threshold))
    log_likelihood = np.asarray(runner.score_from(
        encoded, batch["decoder_input_tokens"][:real_rows],
        batch["decoder_target_tokens"][:real_rows]))
    copied_to = diagnostic.target_positions(task, tokens)
    rows, columns = np.nonzero(deleted & (copied_to >= 0) & (copied_to < log_likelihood.shape[1]))
    copied += len(rows)
    recovered += int((log_likelihood[rows, copied_to[rows, columns]] > np.log(0.5)).sum())
    for name, mask in (("deleted", deleted), ("droppable", droppable),
                       ("vowels", diagnostic.vowel_positions(tokens))):
      masks[name].append(mask.reshape(-1))
  figures = position_shares(**{name: np.concatenate(parts) for name, parts in masks.items()})
  figures["deleted_recovered"] = recovered / copied if copied else None
  return figures


def _row(task: str, recipe: str, target: float, result, wall: float) -> StudyRow:
  history = result.history
  rates = [h["deletion_rate"] for h in history]
  evaluation = result.eval_metrics
  hard = evaluation.get("hard", evaluation["soft"])
  return StudyRow(
      task=task, recipe=recipe, target=target, steps=result.step,
      eval_deletion_rate=evaluation["soft"]["deletion_rate"],
      soft_cross_entropy=evaluation["soft"]["cross_entropy_per_token"],
      hard_cross_entropy=hard["cross_entropy_per_token"], hard_accuracy=hard["accuracy"],
      wall_seconds=wall,
      collapse_share=sum(r > COLLAPSE_RATE for r in rates) / max(len(rates), 1),
      final_alpha=history[-1].get("alpha", 0.0) if history else 0.0,
      rate_trace=[round(r, 3) for r in rates])


def span_corruption_bindings(work_dir: str, steps: int) -> list[str]:
  return [f"MIXTURE_OR_TASK_NAME = '{SPAN_TASK}'",
          "TASK_FEATURE_LENGTHS = @mrt5_jax.tasks.feature_lengths()",
          f"TRAIN_STEPS = {steps}", "train.eval_every = %TRAIN_STEPS",
          f"train.checkpoint_every = {steps}"]


def run_study(tasks: Sequence[str], recipes: Sequence[Recipe], targets: Sequence[float], *,
              work_dir: str, steps: int = 1500, pretrain_steps: int = 3000,
              continue_steps: int = 1000, extra_bindings: Sequence[str] = (),
              droppable_batches: int = 8,
              log: Callable[[str], None] = print) -> list[StudyRow]:
  """Train every (task, recipe, target) in ``work_dir``; returns one row each
  (the diagnostic tasks' droppable-position figures read on ``droppable_batches``
  eval batches)."""
  rows = []
  for task in tasks:
    if task not in TASKS:
      raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    base = [f"TRAIN_STEPS = {steps}"]
    if task != "span_corruption":
      base.append(f"MIXTURE_OR_TASK_NAME = 'mrt5.diagnostic.{task}'")
    else:
      init_dir, gateless = _span_corruption_baselines(work_dir, pretrain_steps, continue_steps,
                                                      extra_bindings, log)
      base = span_corruption_bindings(work_dir, continue_steps) + [
          f"train.init_checkpoint = '{init_dir}'"]
    for recipe in recipes:
      for target in targets:
        name = f"{task}-{recipe.name}-{target:g}"
        model_dir = os.path.join(work_dir, name)
        bindings = [*base, f"MODEL_DIR = '{model_dir}'", f"TARGET_DELETION_RATE = {target}",
                    "train.tensorboard = False", *extra_bindings]
        start = time.time()
        measure = None
        if task != "span_corruption":
          measure = lambda result, dataset, task=task: droppable_figures(
              task, result.model_dir, dataset, droppable_batches)
        result, figures = _train(recipe, bindings, measure)
        row = _row(task, recipe.name, target, result, time.time() - start)
        row.droppable_share = figures.get("droppable_share")
        row.droppable_deleted = figures.get("droppable_deleted")
        row.deleted_vowels_dropped = figures.get("deleted_vowels_dropped")
        row.deleted_recovered = figures.get("deleted_recovered")
        if task == "span_corruption":
          row.gateless_cross_entropy = gateless
        rows.append(row)
        log(json.dumps(dataclasses.asdict(row)))
  return rows


def _span_corruption_baselines(work_dir: str, pretrain_steps: int, continue_steps: int,
                               extra_bindings: Sequence[str], log) -> tuple[str, float]:
  """Train ByT5-tiny on the sample corpus (once), continue it without a gate;
  returns (the pre-trained model dir, the continued ByT5's eval CE)."""
  no_gate = ["MrT5Config.deletion_type = 'none'", "train.tensorboard = False"]
  pretrained = os.path.join(work_dir, "span_corruption-byt5-pretrained")
  result, _ = _train(RECIPES["shipped"], [
      *span_corruption_bindings(work_dir, pretrain_steps), f"MODEL_DIR = '{pretrained}'",
      *no_gate, *extra_bindings])
  log(f"ByT5-tiny pre-trained {result.step} steps: eval CE "
      f"{result.eval_metrics['soft']['cross_entropy_per_token']:.4f}")
  continued = os.path.join(work_dir, "span_corruption-byt5-continued")
  result, _ = _train(RECIPES["shipped"], [
      *span_corruption_bindings(work_dir, continue_steps), f"MODEL_DIR = '{continued}'",
      f"train.init_checkpoint = '{pretrained}'", "train.reinit_gate = False", *no_gate,
      *extra_bindings])
  gateless = result.eval_metrics["soft"]["cross_entropy_per_token"]
  log(f"ByT5-tiny continued {continue_steps} steps without a gate: eval CE {gateless:.4f}")
  return pretrained, gateless


def markdown_table(rows: Sequence[StudyRow]) -> str:
  """The README table: one line per run."""
  lines = ["| task | recipe | target | eval deletion | soft CE | hard CE | hard accuracy | "
           "hard <= 1.25 soft + 0.02 | deleted the task drops | dropped deleted | "
           "deleted vowels the task drops | deleted the target copies: recovered | steps | "
           "wall | time above 0.95 |",
           "|" + " --- |" * 15]
  share = lambda value: "-" if value is None else f"{value:.0%}"
  for r in rows:
    lines.append(
        f"| {r.task} | {r.recipe} | {r.target:.2f} | {r.eval_deletion_rate:.3f} | "
        f"{r.soft_cross_entropy:.4f} | {r.hard_cross_entropy:.4f} | {r.hard_accuracy:.3f} | "
        f"{'yes' if r.hard_within_bound else 'no'} | {share(r.droppable_share)} | "
        f"{share(r.droppable_deleted)} | {share(r.deleted_vowels_dropped)} | "
        f"{share(r.deleted_recovered)} | {r.steps} | "
        f"{r.wall_seconds:.0f} s | {r.collapse_share:.0%} |")
  return "\n".join(lines)
