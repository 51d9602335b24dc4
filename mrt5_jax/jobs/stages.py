"""Multi-stage jobs: a list of train / evaluate / inspect stages, each recorded when it finishes.

Every stage re-parses the run's gin files and bindings with its own bindings
after them, so the stages share everything the run file sets and differ only
in what they bind. A finished stage leaves ``<work_dir>/stages/<stage>.json``
with the settings it ran with and what its job returned; a rerun skips it,
and refuses (naming the changed bindings) when the settings have changed
since. A training stage stopped by SIGINT/SIGTERM checkpoints; the run then
ends, and the same command resumes that stage.

Used by ``continue_from_byt5`` (the main job) and the shortening comparison.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import time
from typing import Any, Callable, Optional, Sequence

import gin

from mrt5_jax.jobs import gin_files

logger = logging.getLogger("mrt5_jax")

NO_SHORTENING = "MrT5Config.deletion_type = 'none'"


@dataclasses.dataclass(frozen=True)
class Jobs:
  """The jobs the stages run, each called with its gin bindings (``mrt5_jax.jobs.train.train``,
  ``.evaluate.evaluate``, ``.inspect.inspect_deletion``; the command line passes them)."""
  train: Callable[[], Any]
  evaluate: Callable[[], dict]
  inspect_deletion: Optional[Callable[[], dict]] = None


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  title: str
  bindings: tuple[str, ...]
  kind: str  # 'train', 'evaluate' or 'inspect'


def run_stage(jobs: Jobs, kind: str) -> dict:
  """Run the job of a stage; what of its result the stage's record keeps (JSON)."""
  if kind == "train":
    result = jobs.train()
    metrics = result.metrics or {}
    return {"model_dir": result.model_dir, "checkpoint_dir": result.checkpoint_dir,
            "step": result.step, "interrupted": result.interrupted,
            "train_cross_entropy": metrics.get("cross_entropy_per_token"),
            "train_deletion_rate": metrics.get("deletion_rate"), "alpha": metrics.get("alpha")}
  if kind == "evaluate":
    results = jobs.evaluate()
    keep = ("step", "checkpoint", "mixture_or_task_name", "split", "deletion_type", "soft",
            "hard", "examples", "speed", "speed_reference", "tasks", "report_path")
    return {key: results[key] for key in keep if key in results}
  if kind == "inspect":
    if jobs.inspect_deletion is None:
      raise ValueError("an inspect stage needs Jobs.inspect_deletion")
    result = jobs.inspect_deletion()
    return {"html_path": result["html_path"], "checkpoint": result["checkpoint"]}
  raise ValueError(f"unknown stage kind {kind!r}")


def current_settings(job_name: str) -> list[str]:
  """The parsed configuration without the multi-stage job's own bindings (one line each)."""
  lines = []
  for line in gin.config_str().splitlines():
    if line.startswith(job_name + ".") or not line.strip() or line.startswith("#"):
      continue
    lines.append(line.rstrip())
  return lines


def record_path(work_dir: str, stage: str, state: str = "finished") -> str:
  suffix = "" if state == "finished" else f".{state}"
  return os.path.join(work_dir, "stages", f"{stage}{suffix}.json")


def finished_record(work_dir: str, stage: Stage, settings: list[str], state: str = "finished",
                    hint: Callable[[], str] = lambda: "") -> Optional[dict]:
  """The stage's record when it finished (or ``state``: started) with these settings;
  an error naming the changed bindings when with others (``hint()`` appended)."""
  path = record_path(work_dir, stage.name, state)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  if record.get("settings") != settings:
    changes = [line for line in difflib.unified_diff(record.get("settings", []), settings,
                                                     lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    shown = "; ".join(changes[:6]) + (" ..." if len(changes) > 6 else "")
    raise ValueError(
        f"stage {stage.name!r} in {work_dir} {state} with other settings ({shown}); "
        f"use another WORK_DIR{hint()}")
  return record


def write_record(work_dir: str, stage: Stage, settings: list[str], result: dict,
                 wall: float, state: str = "finished") -> None:
  path = record_path(work_dir, stage.name, state)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump({"stage": stage.name, "title": stage.title, "settings": settings,
               "wall_seconds": wall, "result": result}, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)


@dataclasses.dataclass
class StagesResult:
  records: dict[str, dict]  # stage name -> its record, in the order run
  interrupted: Optional[str] = None  # the training stage stopped by a signal


def run_stages(jobs: Jobs, plan: Sequence[Stage], *, work_dir: str, job_name: str,
               gin_file_names: Sequence[str], gin_bindings: Sequence[str] = (),
               extra_paths: Sequence[str] = (), skip_unknown: Sequence[str] = (),
               hint: Callable[[], str] = lambda: "") -> StagesResult:
  """Run (or skip, when recorded) every stage of ``plan`` in order.

  ``job_name``: the multi-stage job's gin name, whose bindings are left out of
  the recorded settings. ``skip_unknown``: configurables of the run file left
  unbound when not registered (``gin_files.parse``). Leaves gin cleared.
  """
  records: dict[str, dict] = {}
  job_start = time.time()
  try:
    for index, stage in enumerate(plan, 1):
      gin.clear_config()
      gin_files.parse(gin_file_names, [*gin_bindings, *stage.bindings], extra_paths,
                      skip_unknown=skip_unknown)
      settings = current_settings(job_name)
      header = f"[stage {index}/{len(plan)}] {stage.name}: {stage.title}"
      record = finished_record(work_dir, stage, settings, hint=hint)
      if record is not None:
        logger.info("%s: finished before (%.0f s), skipped", header, record["wall_seconds"])
      else:
        logger.info("%s", header)
        if finished_record(work_dir, stage, settings, "started", hint=hint) is None:
          write_record(work_dir, stage, settings, {}, 0.0, "started")
        start = time.time()
        result = run_stage(jobs, stage.kind)
        if result.get("interrupted"):
          return StagesResult(records, interrupted=stage.name)
        write_record(work_dir, stage, settings, result, time.time() - start)
        record = finished_record(work_dir, stage, settings, hint=hint)
        logger.info("[stage %d/%d] %s done in %.0f s (job %.0f s so far)", index, len(plan),
                    stage.name, record["wall_seconds"], time.time() - job_start)
      records[stage.name] = record
  finally:
    gin.clear_config()
  return StagesResult(records)
