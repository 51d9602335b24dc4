"""The paper's comparison in small: six encoders continued from one ByT5 at matched reduction.

From one gate-less ByT5 (trained here by the run file, or ``byt5_checkpoint``),
each architecture is continued the same number of steps, with the same data
order per seed, the run file's model size, optimizer and deletion control:

  byt5    ByT5 continued without shortening (the reference every CE is paired with)
  mrt5    MrT5: a fresh delete gate, the run file's deletion control at the target
  random  random deletion of each position with probability = target
  fixed   fixed deletion of the trailing target share of every word
  bp      boundary-predictor pooling (BP) with prior 1 - target
  cp      convolutional pooling (CP) at its fixed rate, reduction 1 - 1/cp_rate

Every shortening acts at the same layer (the run file's ``delete_gate_layer``)
and uses the same attention. The targets are ``targets`` plus CP's reduction,
where mrt5, random, fixed and bp are run too, so CP has matched partners.
Each (architecture, target, seed) is evaluated per language on the eval
mixture (soft and hard CE, the reduction achieved, the hard-deletion encoder
speedup over the same encoder at full length measured side by side, and its
FLOP ideal). The encoder speedup is over the seed's continued ByT5: each
model's hard-deletion encoder and ByT5's full-length encoder are timed
alternately on the same batches in one process (ByT5 against itself shows
the timing noise). The stages are recorded like the main job's: a rerun skips what
finished and an interrupted training stage resumes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from typing import Any, Callable, Optional, Sequence

from mrt5_jax.jobs import stages as stages_lib
from mrt5_jax.jobs.stages import NO_SHORTENING, Stage

ARCHITECTURES = ("byt5", "mrt5", "random", "fixed", "bp", "cp")
TITLES = {"byt5": "ByT5", "mrt5": "MrT5", "random": "random deletion",
          "fixed": "fixed deletion", "bp": "BP (boundary pooling)", "cp": "CP (conv pooling)"}
DEFAULT_RUN_FILE = "runs/byt5_to_mrt5.gin"
# The run file also configures the main job and the HTML report; a study only trains and evaluates.
OTHER_JOBS = ("continue_from_byt5", "inspect_deletion")
JOB_NAME = "shortening_comparison"


def cp_reduction(cp_rate: int) -> float:
  """The sequence-length reduction of CP pooling every ``cp_rate`` positions into one."""
  return 1.0 - 1.0 / cp_rate


def architecture_bindings(architecture: str, target: float, cp_rate: int) -> tuple[str, ...]:
  """The gin bindings that turn the run file's MrT5 into ``architecture`` at ``target``."""
  if architecture == "byt5":
    return (NO_SHORTENING, "train.reinit_gate = False")
  if architecture == "mrt5":
    return (f"TARGET_DELETION_RATE = {target}",)
  if architecture == "random":
    return ("MrT5Config.deletion_type = 'random'",
            f"DeleteGateConfig.random_deletion_probability = {target}")
  if architecture == "fixed":
    return ("MrT5Config.deletion_type = 'fixed'",
            f"DeleteGateConfig.fixed_deletion_amount = {target}")
  if architecture == "bp":
    # Every segment gets a slot (no segment dropped for want of static capacity).
    return ("MrT5Config.deletion_type = 'boundary'",
            f"BoundaryPoolingConfig.prior = {1.0 - target:.6g}",
            "BoundaryPoolingConfig.capacity_fraction = 1.0")
  if architecture == "cp":
    return ("MrT5Config.deletion_type = 'conv'", f"ConvPoolingConfig.rate = {cp_rate}")
  raise ValueError(f"unknown architecture {architecture!r}; choose from {ARCHITECTURES}")


@dataclasses.dataclass(frozen=True)
class Run:
  """One continued model: an architecture at a target (None for ByT5) with a seed."""
  architecture: str
  target: Optional[float]
  seed: int

  @property
  def name(self) -> str:
    at = "" if self.target is None else f"@{self.target:g}"
    return f"s{self.seed}.{self.architecture}{at}"


def plan_runs(targets: Sequence[float], seeds: Sequence[int], cp_rate: int,
              architectures: Sequence[str] = ARCHITECTURES) -> list[Run]:
  """ByT5 once per seed (always: every other run is paired with it); of
  ``architectures``, mrt5, random, fixed and bp at every target and at CP's
  reduction when cp is among them; cp at its reduction."""
  unknown = sorted(set(architectures) - set(ARCHITECTURES))
  if unknown:
    raise ValueError(f"unknown architectures {unknown}; choose from {list(ARCHITECTURES)}")
  cp_target = round(cp_reduction(cp_rate), 6)
  all_targets = list(dict.fromkeys([*targets, *([cp_target] if "cp" in architectures else [])]))
  runs = []
  for seed in seeds:
    runs.append(Run("byt5", None, seed))
    for target in all_targets:
      for architecture in ("mrt5", "random", "fixed", "bp"):
        if architecture in architectures:
          runs.append(Run(architecture, target, seed))
      if target == cp_target and "cp" in architectures:
        runs.append(Run("cp", target, seed))
  return runs


def plan_stages(work_dir: str, runs: Sequence[Run], *, byt5_checkpoint: Optional[str],
                pretrain_steps: int, continue_steps: int, cp_rate: int,
                speed_repeats: int) -> list[Stage]:
  """The pretraining stage (unless ``byt5_checkpoint``), then a train and an evaluate
  stage per run."""
  stages = []
  init = byt5_checkpoint
  if init is None:
    init = os.path.join(work_dir, "byt5_pretrained")
    stages.append(Stage("byt5_pretrained", f"ByT5 (no shortening) from scratch, "
                        f"{pretrain_steps} steps",
                        (f"MODEL_DIR = '{init}'", NO_SHORTENING, f"TRAIN_STEPS = {pretrain_steps}",
                         "INIT_CHECKPOINT = None", "train.seed = 0",
                         "train/DatasetConfig.seed = 0"), "train"))
  for run in runs:
    model_dir = os.path.join(work_dir, run.name)
    target = 0.0 if run.target is None else run.target
    at = "" if run.target is None else f" at {run.target:g}"
    stages.append(Stage(
        run.name, f"{TITLES[run.architecture]}{at}, seed {run.seed}, continued "
        f"{continue_steps} steps",
        (f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {continue_steps}",
         f"INIT_CHECKPOINT = '{init}'", f"train.seed = {run.seed}",
         f"train/DatasetConfig.seed = {run.seed}",
         *architecture_bindings(run.architecture, target, cp_rate)), "train"))
    byt5_dir = os.path.join(work_dir, Run("byt5", None, run.seed).name)
    stages.append(Stage(
        f"eval.{run.name}", f"evaluate {run.name} per language",
        (f"MODEL_DIR = '{model_dir}'", "evaluate.speed_batches = 1",
         f"evaluate.speed_repeats = {speed_repeats}",
         f"evaluate.speed_reference_dir = '{byt5_dir}'",
         f"evaluate.report_path = '{os.path.join(work_dir, 'eval', run.name + '.json')}'"),
        "evaluate"))
  return stages


# ----------------------------------------------------------------------------- rows

def run_row(run: Run, train_record: dict, eval_record: dict) -> dict[str, Any]:
  """What one continued model measured (overall and per language)."""
  result = eval_record["result"]
  hard = result.get("hard") or result["soft"]
  speed = result.get("speed") or {}
  languages = {}
  for task in result["tasks"]:
    task_hard = task.get("hard") or task["soft"]
    languages[task.get("language") or task["task"]] = {
        "soft_cross_entropy": task["soft"]["cross_entropy_per_token"],
        "hard_cross_entropy": task_hard["cross_entropy_per_token"],
        "reduction": task_hard["deletion_rate"]}
  return {
      "architecture": run.architecture, "target": run.target, "seed": run.seed,
      "reduction": hard["deletion_rate"],
      "soft_cross_entropy": result["soft"]["cross_entropy_per_token"],
      "hard_cross_entropy": hard["cross_entropy_per_token"],
      "encoder_speedup": speed.get("encoder_speedup"),
      "encoder_ideal_speedup": speed.get("encoder_ideal_speedup"),
      "exact_ideal_speedup": speed.get("exact_ideal_speedup"),
      "speed_reference": result.get("speed_reference"),
      "train_cross_entropy": train_record["result"].get("train_cross_entropy"),
      "train_reduction": train_record["result"].get("train_deletion_rate"),
      "examples": result["examples"], "languages": languages,
      "train_wall_seconds": train_record["wall_seconds"],
      "eval_wall_seconds": eval_record["wall_seconds"]}


def _mean_sd(values: Sequence[Optional[float]]) -> tuple[Optional[float], Optional[float]]:
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  sd = statistics.stdev(values) if len(values) > 1 else 0.0
  return statistics.fmean(values), sd


SUMMARY_FIGURES = ("reduction", "soft_cross_entropy", "hard_cross_entropy", "encoder_speedup",
                   "encoder_ideal_speedup", "exact_ideal_speedup")


def summarise(rows: Sequence[dict]) -> list[dict[str, Any]]:
  """Mean and sample sd over seeds per (architecture, target), with the hard CE paired
  against ByT5 continued with the same seed (``vs_byt5``)."""
  byt5 = {r["seed"]: r["hard_cross_entropy"] for r in rows if r["architecture"] == "byt5"}
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault((row["architecture"], row["target"]), []).append(row)
  out = []
  for (architecture, target), group in groups.items():
    entry: dict[str, Any] = {"architecture": architecture, "target": target,
                             "seeds": [r["seed"] for r in group]}
    for figure in SUMMARY_FIGURES:
      entry[figure], entry[figure + "_sd"] = _mean_sd([r[figure] for r in group])
    entry["vs_byt5"], entry["vs_byt5_sd"] = _mean_sd(
        [r["hard_cross_entropy"] - byt5[r["seed"]] for r in group if r["seed"] in byt5])
    languages = sorted({lang for r in group for lang in r["languages"]})
    entry["languages"] = {
        lang: dict(zip(("hard_cross_entropy", "hard_cross_entropy_sd"), _mean_sd(
            [r["languages"][lang]["hard_cross_entropy"] for r in group
             if lang in r["languages"]])))
        for lang in languages}
    out.append(entry)
  return out


def paired_differences(rows: Sequence[dict]) -> list[dict[str, Any]]:
  """At every target, MrT5's hard CE minus each other architecture's (and ByT5's), paired
  by seed: mean, sample sd, and in how many seeds MrT5 was lower."""
  by_key = {(r["architecture"], r["target"], r["seed"]): r for r in rows}
  out = []
  targets = sorted({r["target"] for r in rows if r["architecture"] == "mrt5"})
  for target in targets:
    mrt5 = {r["seed"]: r for r in rows if r["architecture"] == "mrt5" and r["target"] == target}
    for other in ARCHITECTURES:
      if other == "mrt5":
        continue
      other_target = None if other == "byt5" else target
      diffs = [mrt5[s]["hard_cross_entropy"] - by_key[(other, other_target, s)][
          "hard_cross_entropy"] for s in sorted(mrt5) if (other, other_target, s) in by_key]
      if not diffs:
        continue
      mean, sd = _mean_sd(diffs)
      out.append({"target": target, "against": other, "mrt5_minus_other": mean, "sd": sd,
                  "seeds": len(diffs), "mrt5_lower_in": sum(d < 0 for d in diffs)})
  return out


# ----------------------------------------------------------------------------- rendering

def _pm(mean, sd, spec=".4f") -> str:
  if mean is None:
    return "-"
  return format(mean, spec) + ("" if not sd else " ± " + format(sd, spec.lstrip("+")))


def markdown_table(summary: Sequence[dict]) -> str:
  """One line per (architecture, target): mean ± sd over seeds."""
  lines = ["| architecture | target | reduction | soft CE | hard CE | hard CE - ByT5 (paired) | "
           "encoder speedup over ByT5 | FLOP ideal | seeds |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for s in sorted(summary, key=lambda s: (s["target"] or 0.0, ARCHITECTURES.index(
      s["architecture"]))):
    target = "-" if s["target"] is None else f"{s['target']:.2f}"
    speed = _pm(s["encoder_speedup"], s["encoder_speedup_sd"], ".2f")
    ideal = _pm(s["encoder_ideal_speedup"], s["encoder_ideal_speedup_sd"], ".2f")
    lines.append(
        f"| {TITLES[s['architecture']]} | {target} | "
        f"{_pm(s['reduction'], s['reduction_sd'], '.3f')} | "
        f"{_pm(s['soft_cross_entropy'], s['soft_cross_entropy_sd'])} | "
        f"{_pm(s['hard_cross_entropy'], s['hard_cross_entropy_sd'])} | "
        f"{_pm(s['vs_byt5'], s['vs_byt5_sd'], '+.4f')} | "
        f"{speed}{'x' if speed != '-' else ''} | {ideal}{'x' if ideal != '-' else ''} | "
        f"{len(s['seeds'])} |")
  return "\n".join(lines)


def language_table(summary: Sequence[dict]) -> str:
  """Hard CE per language (mean over seeds), one line per (architecture, target)."""
  languages = sorted({lang for s in summary for lang in s["languages"]})
  lines = ["| architecture | target | " + " | ".join(languages) + " |",
           "| --- | --- |" + " --- |" * len(languages)]
  for s in sorted(summary, key=lambda s: (s["target"] or 0.0, ARCHITECTURES.index(
      s["architecture"]))):
    target = "-" if s["target"] is None else f"{s['target']:.2f}"
    cells = [_pm(s["languages"].get(lang, {}).get("hard_cross_entropy"), 0, ".3f")
             for lang in languages]
    lines.append(f"| {s['architecture']} | {target} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def difference_lines(differences: Sequence[dict]) -> list[str]:
  lines = []
  for d in differences:
    lines.append(
        f"target {d['target']:.2f}: MrT5 - {TITLES[d['against']]}: hard CE "
        f"{d['mrt5_minus_other']:+.4f} (sd {d['sd']:.4f} over {d['seeds']} seeds; "
        f"MrT5 lower in {d['mrt5_lower_in']} of {d['seeds']})")
  return lines


MARKERS = {"byt5": "*", "mrt5": "o", "random": "x", "fixed": "s", "bp": "^", "cp": "D"}


def write_plot(summary: Sequence[dict], path: str) -> str:
  """Hard CE against the reduction achieved, one marker per architecture, error bars
  = sd over seeds; ByT5 as a dashed line. Written as PNG to ``path``."""
  import matplotlib  # the plotting backend is chosen before pyplot loads
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  figure, axes = plt.subplots(figsize=(6.4, 4.4))
  for architecture in ARCHITECTURES:
    points = [s for s in summary if s["architecture"] == architecture]
    if not points:
      continue
    if architecture == "byt5":
      ce = points[0]["hard_cross_entropy"]
      axes.axhline(ce, linestyle="--", color="grey", linewidth=1)
    axes.errorbar([p["reduction"] for p in points], [p["hard_cross_entropy"] for p in points],
                  xerr=[p["reduction_sd"] or 0.0 for p in points],
                  yerr=[p["hard_cross_entropy_sd"] or 0.0 for p in points],
                  marker=MARKERS[architecture], linestyle="none", capsize=3,
                  label=TITLES[architecture])
  axes.set_xlabel("sequence-length reduction achieved (eval)")
  axes.set_ylabel("eval cross entropy per byte (hard deletion)")
  axes.set_title("Continued from one ByT5: CE against reduction (mean ± sd over seeds)",
                 fontsize=9)
  axes.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)
  return path


# ----------------------------------------------------------------------------- study

def run_comparison(jobs: stages_lib.Jobs, *, work_dir: str, targets: Sequence[float] = (0.5,),
                   seeds: Sequence[int] = (0, 1), pretrain_steps: int = 800,
                   continue_steps: int = 400, byt5_checkpoint: Optional[str] = None,
                   architectures: Sequence[str] = ARCHITECTURES,
                   run_file: str = DEFAULT_RUN_FILE, cp_rate: int = 4, speed_repeats: int = 3,
                   extra_bindings: Sequence[str] = (), output: Optional[str] = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
  """Train and evaluate every run of ``plan_runs`` in ``work_dir``.

  ``jobs``: the train and evaluate jobs (``mrt5_jax.jobs.train.train``,
  ``mrt5_jax.jobs.evaluate.evaluate``; the command line passes them).

  Returns {'settings', 'rows' (one per run), 'summary' (mean/sd per architecture and
  target), 'differences' (MrT5 minus each other architecture, paired by seed),
  'table', 'language_table', 'wall_seconds', 'interrupted'}; with ``output`` the
  result is written there as JSON and the plot as PNG beside it.
  """
  if not targets or any(not 0.0 < t < 1.0 for t in targets):
    raise ValueError(f"targets must lie in (0, 1), got {list(targets)}")
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct, got {list(seeds)}")
  if continue_steps < 1 or (byt5_checkpoint is None and pretrain_steps < 1):
    raise ValueError("continue_steps (and pretrain_steps without a byt5_checkpoint) must be >= 1")
  if not isinstance(cp_rate, int) or cp_rate < 2:
    raise ValueError(f"cp_rate must be an int >= 2, got {cp_rate!r}")
  work_dir = os.path.abspath(work_dir)
  runs = plan_runs(targets, seeds, cp_rate, architectures)
  plan = plan_stages(work_dir, runs, byt5_checkpoint=byt5_checkpoint,
                     pretrain_steps=pretrain_steps, continue_steps=continue_steps,
                     cp_rate=cp_rate, speed_repeats=speed_repeats)
  log(f"{len(runs)} continued models ({len(seeds)} seeds), {len(plan)} stages in {work_dir}")
  start = time.time()
  ran = stages_lib.run_stages(jobs, plan, work_dir=work_dir, job_name=JOB_NAME,
                              gin_file_names=[run_file], gin_bindings=list(extra_bindings),
                              skip_unknown=OTHER_JOBS)
  settings = {"run_file": run_file, "targets": list(targets), "seeds": list(seeds),
              "pretrain_steps": None if byt5_checkpoint else pretrain_steps,
              "byt5_checkpoint": byt5_checkpoint, "continue_steps": continue_steps,
              "cp_rate": cp_rate, "architectures": sorted({r.architecture for r in runs}),
              "extra_bindings": list(extra_bindings)}
  if ran.interrupted:
    return {"settings": settings, "interrupted": ran.interrupted}
  rows = [run_row(run, ran.records[run.name], ran.records[f"eval.{run.name}"]) for run in runs]
  summary = summarise(rows)
  differences = paired_differences(rows)
  result = {"settings": settings, "rows": rows, "summary": summary,
            "differences": differences, "table": markdown_table(summary),
            "language_table": language_table(summary),
            "stage_wall_seconds": {name: r["wall_seconds"] for name, r in ran.records.items()},
            "wall_seconds": time.time() - start, "interrupted": None}
  if output:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    result["plot_path"] = write_plot(summary, os.path.splitext(output)[0] + ".png")
    with open(output, "w") as f:
      json.dump(result, f, indent=2)
  return result
