"""mrt5-inspect: show what the delete gate removes (terminal and an HTML report).

  mrt5-inspect --gin_file=runs/local.gin [--gin.MODEL_DIR=/tmp/mrt5_local]
  mrt5-inspect --gin_file=runs/local.gin --gin.inspect_deletion.sample_corpus="'validation'"
  mrt5-inspect --gin_file=runs/local.gin --gin.inspect_deletion.files="['/data/*.txt']"
  mrt5-inspect --gin_file=runs/local.gin --gin.inspect_deletion.texts="['Hello world']"
               [--gin.inspect_deletion.html_path="'/tmp/deletion.html'"]
               [--gin.inspect_deletion.num_examples=8] [--gin.inspect_deletion.step=N]

Reads the newest checkpoint of MODEL_DIR (or ``step``), runs the encoder up to
the gate on the inputs (default: the run's eval dataset, ``eval/DatasetConfig``)
and marks exactly the positions hard deletion removes. Prints a few samples
per language with deleted characters in red and struck through (partly
deleted multi-byte characters in yellow; plain [ ] and { } brackets when the
output is not a terminal or NO_COLOR is set) and the deletion rate per
language, and writes a self-contained HTML report (per-language bars, gate
histogram, per-byte table, marked samples; opens without network access).
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from mrt5_jax.cli import common  # noqa: E402
# Every gin entry point is imported, so a run file's bindings of any of them parse.
from mrt5_jax.jobs import continue_from_byt5, evaluate, inspect, train  # noqa: E402,F401
from mrt5_jax.reporting import deletion_html  # noqa: E402


def _colour() -> bool:
  return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def main(argv: Optional[Sequence[str]] = None) -> int:
  def job():
    return inspect.inspect_deletion()

  code, result = common.run_gin_job("mrt5-inspect", __doc__, argv, job)
  if code is not None:
    return code
  per_label = result["samples_per_label"]
  verb = result.get("verb", "deleted")  # "pooled" for the BP/CP baselines
  render = deletion_html.render_ansi if _colour() else deletion_html.render_plain
  print(f"checkpoint: {result['checkpoint']}")
  print("legend: " + (deletion_html.ansi_legend(verb) if _colour()
                      else deletion_html.plain_legend(verb)))
  shown: dict[str, int] = {}
  for sample in result["samples"]:
    if shown.get(sample.label, 0) < per_label:
      shown[sample.label] = shown.get(sample.label, 0) + 1
      print(f"\n{sample.label} ({len(sample.tokens)} bytes, {sample.deleted.mean():.1%} {verb}):")
      print(render(sample))
  summary = result["summary"]
  short = verb[:3]
  print(f"\n{'language':<12} {'samples':>7} {'bytes':>7} {'bytes ' + short:>9} "
        f"{'chars ' + short:>9}")
  for label, entry in summary["per_label"].items():
    print(f"{label:<12} {entry['samples']:>7} {entry['bytes']:>7} "
          f"{entry['byte_deletion_rate']:>9.3f} {entry['character_deletion_rate']:>9.3f}")
  print(f"{'all':<12} {summary['samples']:>7} {'':>7} {summary['byte_deletion_rate']:>9.3f} "
        f"{summary['character_deletion_rate']:>9.3f}")
  print(f"\nreport: {result['html_path']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
