"""The paper's path as one job: ByT5 -> MrT5 by continued training, compared per language.

Stages, each in its own directory under ``work_dir``:

1. ``byt5``: a gate-less ByT5 trained from scratch (skipped when
   ``byt5_checkpoint`` names a pretrained one, e.g. a converted t5x ByT5);
2. ``mrt5``: that model continued with a fresh delete gate at the run file's
   target deletion rate and deletion control;
3. ``byt5_continued``: the same model continued as many steps without a gate
   (same data order), the baseline MrT5's cross entropy is compared with;
4. ``eval_mrt5``, ``eval_byt5_continued``: ``evaluate`` of both on the eval
   mixture, one row per task (per language on the 15-language corpus);
5. ``inspect``: ``inspect_deletion``'s HTML report of what MrT5 deletes.

Every stage runs the configured run file with its own few bindings (its
model dir, steps, init checkpoint, gate or none), so the stages share the
model size, data, optimizer and deletion control of that one file. A
finished stage leaves ``<work_dir>/stages/<stage>.json`` with the settings it
ran with and its results; a rerun skips it (and refuses, naming the changed
settings, when the file's settings have changed since), so a second run only
prints the summary again.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import gin

from mrt5_jax.jobs import stages as stages_lib
from mrt5_jax.jobs.stages import NO_SHORTENING as NO_GATE
from mrt5_jax.jobs.stages import Jobs, Stage


def stages(work_dir: str, byt5_checkpoint: Optional[str], pretrain_steps: int,
           continue_steps: int) -> list[Stage]:
  """The stages in order; each binds its model dir and what sets it apart."""
  def model_dir(name):
    return os.path.join(work_dir, name)

  def where(name):
    return f"MODEL_DIR = '{model_dir(name)}'"

  out = []
  init = byt5_checkpoint
  if init is None:
    out.append(Stage("byt5", f"ByT5 (no gate) from scratch, {pretrain_steps} steps",
                     (where("byt5"), NO_GATE, f"TRAIN_STEPS = {pretrain_steps}",
                      "INIT_CHECKPOINT = None"), "train"))
    init = model_dir("byt5")
  out += [
      Stage("mrt5", f"MrT5: ByT5 continued {continue_steps} steps with a fresh delete gate",
            (where("mrt5"), f"TRAIN_STEPS = {continue_steps}", f"INIT_CHECKPOINT = '{init}'"),
            "train"),
      Stage("byt5_continued", f"ByT5 continued {continue_steps} steps without a gate",
            (where("byt5_continued"), NO_GATE, f"TRAIN_STEPS = {continue_steps}",
             f"INIT_CHECKPOINT = '{init}'", "train.reinit_gate = False"), "train"),
      Stage("eval_mrt5", "evaluate MrT5 per task (soft and hard deletion, speed)",
            (where("mrt5"), "evaluate.report_path = "
             f"'{os.path.join(work_dir, 'eval', 'mrt5.json')}'"), "evaluate"),
      Stage("eval_byt5_continued", "evaluate the continued ByT5 per task",
            (where("byt5_continued"), "evaluate.speed_batches = 0", "evaluate.report_path = "
             f"'{os.path.join(work_dir, 'eval', 'byt5_continued.json')}'"), "evaluate"),
      Stage("inspect", "what MrT5 deletes: the HTML report",
            (where("mrt5"), "inspect_deletion.html_path = "
             f"'{os.path.join(work_dir, 'deletion.html')}'"), "inspect"),
  ]
  return out


# ----------------------------------------------------------------------------- summary

def summary_rows(mrt5_eval: dict, byt5_eval: dict) -> list[dict[str, Any]]:
  """One row per task of the eval mixture plus 'all': MrT5 against the continued ByT5."""
  byt5_by_task = {row["task"]: row for row in byt5_eval["tasks"]}
  overall_mrt5 = {"task": "all", "language": "all", "examples": mrt5_eval["examples"],
                  "soft": mrt5_eval["soft"], "hard": mrt5_eval.get("hard", mrt5_eval["soft"]),
                  "speed": mrt5_eval.get("speed", {})}
  overall_byt5 = {"soft": byt5_eval["soft"]}
  rows = []
  tasks = list(mrt5_eval["tasks"])
  for row, byt5 in [(r, byt5_by_task.get(r["task"])) for r in tasks] + [
      (overall_mrt5, overall_byt5)]:
    hard = row.get("hard", row["soft"])
    speed = row.get("speed") or {}
    rows.append({
        "task": row["task"], "language": row.get("language") or row["task"],
        "examples": row["examples"],
        "byt5_cross_entropy": byt5["soft"]["cross_entropy_per_token"] if byt5 else None,
        "mrt5_soft_cross_entropy": row["soft"]["cross_entropy_per_token"],
        "mrt5_hard_cross_entropy": hard["cross_entropy_per_token"],
        "deletion_rate": hard["deletion_rate"],
        "kept_length": hard["kept_length"], "real_length": hard["real_length"],
        "longest_kept": speed.get("longest_kept"),
        "buckets": speed.get("compacted_lengths"),
        "stage_two_rows": speed.get("stage_two_rows"),
        "batch_rows": speed.get("batch_rows"),
        "encoder_speedup": speed.get("encoder_speedup"),
        "encoder_ideal_speedup": speed.get("encoder_ideal_speedup"),
        "exact_ideal_speedup": speed.get("exact_ideal_speedup"),
    })
  return rows


def _fmt(value, spec: str) -> str:
  return "-" if value is None else format(value, spec)


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
  """The rows as a markdown table (also readable in a terminal)."""
  header = ["lang", "examples", "ByT5 CE", "MrT5 CE soft", "MrT5 CE hard", "hard - ByT5",
            "deleted", "kept/len", "longest kept / bucket", "stage-2 rows", "enc speedup",
            "FLOP ideal", "exact ideal"]
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  for r in rows:
    gap = (None if r["byt5_cross_entropy"] is None
           else r["mrt5_hard_cross_entropy"] - r["byt5_cross_entropy"])
    buckets = "/".join(str(b) for b in r["buckets"]) if r["buckets"] else "-"
    longest = f"{_fmt(r['longest_kept'], '.0f')} / {buckets}"
    rows_run = (f"{r['stage_two_rows']}/{r['batch_rows']}" if r.get("stage_two_rows")
                else "-")
    cells = [r["language"], str(r["examples"]), _fmt(r["byt5_cross_entropy"], ".4f"),
             _fmt(r["mrt5_soft_cross_entropy"], ".4f"), _fmt(r["mrt5_hard_cross_entropy"], ".4f"),
             _fmt(gap, "+.4f"), _fmt(r["deletion_rate"], ".3f"),
             f"{r['kept_length']:.1f}/{r['real_length']:.1f}", longest, rows_run,
             _fmt(r["encoder_speedup"], ".2f") + "x", _fmt(r["encoder_ideal_speedup"], ".2f") + "x",
             _fmt(r.get("exact_ideal_speedup"), ".2f") + "x"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def summary_text(work_dir: str, records: dict[str, dict], target: Optional[float]) -> str:
  rows = summary_rows(records["eval_mrt5"]["result"], records["eval_byt5_continued"]["result"])
  walls = ", ".join(f"{name} {record['wall_seconds']:.0f} s" for name, record in records.items())
  mrt5 = records["mrt5"]["result"]
  lines = [
      "MrT5 continued from ByT5, against ByT5 continued as long without a gate "
      f"(eval mixture {records['eval_mrt5']['result']['mixture_or_task_name']}, "
      f"hard deletion at evaluation; target deletion rate "
      f"{'-' if target is None else format(target, '.2f')}):",
      "",
      summary_table(rows),
      "",
      f"stage wall times: {walls}",
      f"MrT5 checkpoint:  {mrt5['checkpoint_dir']}",
      f"ByT5 continued:   {records['byt5_continued']['result']['checkpoint_dir']}",
      f"eval reports:     {records['eval_mrt5']['result']['report_path']}, "
      f"{records['eval_byt5_continued']['result']['report_path']}",
      f"deletion report:  {records['inspect']['result']['html_path']}",
      f"summary:          {os.path.join(work_dir, 'summary.md')}",
      "",
      "next: a larger size (runs/mrt5_small_continued_pretraining.gin from a converted "
      "ByT5-small, docs/commands.md), t5x on TPU (docs/t5x_on_tpu.md), downstream "
      "fine-tuning (runs/finetune_*.gin, docs/evaluation.md).",
  ]
  return "\n".join(lines)


# ----------------------------------------------------------------------------- job

@gin.configurable(denylist=["jobs", "gin_file_names", "gin_bindings", "extra_paths"])
def continue_from_byt5(jobs: Jobs, *, work_dir: str = gin.REQUIRED,
                       byt5_checkpoint: Optional[str] = None,
                       pretrain_steps: int = 600, continue_steps: int = 300,
                       gin_file_names: Sequence[str] = (), gin_bindings: Sequence[str] = (),
                       extra_paths: Sequence[str] = ()) -> dict[str, Any]:
  """Run the stages the module docstring lists into ``work_dir``; returns
  {'records': {stage: record}, 'rows': summary rows, 'summary': text, 'interrupted':
  None}, or {'records', 'interrupted': the stage} when a training stage was
  stopped (SIGINT/SIGTERM; it checkpointed, and a rerun resumes it).

  ``jobs``: the train, evaluate and inspect jobs the stages call.
  ``gin_file_names`` / ``gin_bindings``: the run's gin files and bindings,
  parsed again for every stage with the stage's own bindings after them.
  ``byt5_checkpoint``: a pretrained gate-less model (a model dir or step
  dir) to continue instead of training one (``pretrain_steps`` then unused).
  """
  if continue_steps < 1 or (byt5_checkpoint is None and pretrain_steps < 1):
    raise ValueError("continue_steps (and pretrain_steps without a byt5_checkpoint) must be >= 1")
  if not gin_file_names:
    raise ValueError("continue_from_byt5 needs the run's gin files (gin_file_names)")
  try:
    target = gin.query_parameter("%TARGET_DELETION_RATE")
  except ValueError:
    target = None
  work_dir = os.path.abspath(work_dir)
  plan = stages(work_dir, byt5_checkpoint, pretrain_steps, continue_steps)

  def hint():
    reuse = os.path.join(work_dir, "byt5")
    return (f" (to continue the ByT5 trained there: --gin.continue_from_byt5.byt5_checkpoint="
            f"{reuse})" if os.path.exists(stages_lib.record_path(work_dir, "byt5")) else "")

  ran = stages_lib.run_stages(jobs, plan, work_dir=work_dir, job_name="continue_from_byt5",
                              gin_file_names=gin_file_names, gin_bindings=gin_bindings,
                              extra_paths=extra_paths, hint=hint)
  records = ran.records
  if ran.interrupted:
    return {"records": records, "interrupted": ran.interrupted}
  text = summary_text(work_dir, records, target)
  rows = summary_rows(records["eval_mrt5"]["result"], records["eval_byt5_continued"]["result"])
  with open(os.path.join(work_dir, "summary.md"), "w", encoding="utf-8") as f:
    f.write(text + "\n")
  with open(os.path.join(work_dir, "summary.json"), "w") as f:
    json.dump({"rows": rows, "target_deletion_rate": target,
               "stage_wall_seconds": {k: r["wall_seconds"] for k, r in records.items()}},
              f, indent=2)
  return {"records": records, "rows": rows, "summary": text, "interrupted": None}
