"""Rendering of what the delete gate removes: a terminal view and a self-contained HTML report.

``render_ansi``: a sample for a terminal (deleted: red, struck through; partly
deleted: yellow, underlined). ``render_html``: one HTML page (styles inline,
matplotlib PNGs as base64 data URIs, so it opens without network access) with
per-language deletion-rate bars (with an "all" bar and the target rate), a
histogram of the gate values, a per-byte deletion table and the marked samples.

The pooling baselines (BP, CP) remove nothing: a position that does not start a
slot is pooled into an earlier one. Their reports say "pooled" (``verb``).
Right-to-left samples (``RTL_LANGUAGES`` labels) are laid out right to left
with EOS, sentinels and ``\\xNN`` bytes isolated left to right, and lines wrap
between words.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Any, Optional, Sequence

import numpy as np

from mrt5_jax.evaluation.deletion_analysis import Piece, Sample, pieces, summarize


ANSI = {"deleted": "\x1b[9;91m", "partial": "\x1b[4;93m", "kept": ""}
ANSI_RESET = "\x1b[0m"


def render_ansi(sample: Sample) -> str:
  """The sample's text with ANSI colours: deleted red and struck through, partly deleted yellow."""
  out = []
  for piece in pieces(sample):
    style = ANSI[piece.status]
    out.append(f"{style}{piece.text}{ANSI_RESET}" if style else piece.text)
  return "".join(out)


def ansi_legend(verb: str = "deleted") -> str:
  return (f"{ANSI['deleted']}{verb}{ANSI_RESET}  {ANSI['partial']}partly {verb}"
          f"{ANSI_RESET}  kept")


def plain_legend(verb: str = "deleted") -> str:
  return f"[{verb}]  {{partly {verb}}}  kept"


ANSI_LEGEND = ansi_legend()
# Labels (language codes) whose samples are laid out right to left.
RTL_LANGUAGES = frozenset({"ar", "ur", "fa", "he", "iw", "yi", "ps", "sd", "ug", "dv", "ckb"})


def _png(figure) -> str:
  """A matplotlib figure as a base64 PNG data URI (the figure is closed)."""
  import matplotlib.pyplot as plt
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
  plt.close(figure)
  return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _pyplot():
  try:
    import matplotlib
  except ImportError as e:
    raise ImportError("the deletion report draws its plots with matplotlib: "
                      "pip install matplotlib") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def label_rate_bars(summary: dict[str, Any]) -> tuple[list[str], list[float], list[float]]:
  """(labels, byte rates, character rates) of the per-language chart: each label, then "all"."""
  labels = list(summary["per_label"])
  byte_rates = [summary["per_label"][k]["byte_deletion_rate"] for k in labels]
  char_rates = [summary["per_label"][k]["character_deletion_rate"] for k in labels]
  return (labels + ["all"], byte_rates + [summary["byte_deletion_rate"]],
          char_rates + [summary["character_deletion_rate"]])


def plot_label_rates(summary: dict[str, Any], target: Optional[float] = None,
                     verb: str = "deleted") -> str:
  """Per-label byte and character rates, an "all" bar, and the target rate as a line."""
  plt = _pyplot()
  labels, byte_rates, char_rates = label_rate_bars(summary)
  x = np.arange(len(labels))
  figure, axis = plt.subplots(figsize=(max(4.0, 0.55 * len(labels) + 1.5), 3.2))
  bytes_bars = axis.bar(x - 0.2, byte_rates, 0.4, label="bytes", color="#c0392b")
  char_bars = axis.bar(x + 0.2, char_rates, 0.4, label=f"characters (all bytes {verb})",
                       color="#e59866")
  for bars in (bytes_bars, char_bars):  # the "all" pair stands out
    bars[-1].set_edgecolor("#222")
    bars[-1].set_linewidth(1.2)
  if target is not None:
    axis.axhline(target, color="#2471a3", linestyle="--", linewidth=1.2,
                 label=f"target {target:g}")
  axis.set_xticks(x, labels, rotation=45 if len(labels) > 8 else 0, ha="right"
                  if len(labels) > 8 else "center")
  axis.set_ylim(0, 1)
  axis.set_ylabel(f"{verb} rate")
  axis.legend(loc="upper right", fontsize=8)
  axis.grid(axis="y", alpha=0.3)
  return _png(figure)


def plot_gate_histogram(samples: Sequence[Sample], threshold: float, scale: float,
                        verb: str = "deleted") -> str:
  plt = _pyplot()
  values = np.concatenate([s.gate for s in samples]) if samples else np.zeros(0)
  figure, axis = plt.subplots(figsize=(6.0, 3.2))
  axis.hist(values, bins=np.linspace(min(scale, float(values.min(initial=scale))), 0.0, 61),
            color="#34495e")
  axis.axvline(threshold, color="#c0392b", linestyle="--", label=f"threshold {threshold:g}")
  axis.set_yscale("log")
  axis.set_xlabel(f"gate value G ({verb} left of the threshold)")
  axis.set_ylabel("positions")
  axis.legend(fontsize=8)
  return _png(figure)


def plot_top_bytes(summary: dict[str, Any], top: int = 30, verb: str = "deleted") -> str:
  plt = _pyplot()
  rows = [e for e in summary["per_byte"] if e["deleted"]][:top]
  figure, axis = plt.subplots(figsize=(max(4.0, 0.3 * len(rows) + 1.5), 3.2))
  x = np.arange(len(rows))
  axis.bar(x, [e["rate"] for e in rows], color="#c0392b")
  axis.set_xticks(x, [e["byte"] for e in rows], rotation=90, fontsize=8)
  axis.set_ylim(0, 1)
  axis.set_ylabel(f"share {verb}")
  axis.set_title(f"the {len(rows)} bytes {verb} most often", fontsize=9)
  return _png(figure)


# ----------------------------------------------------------------------------- HTML

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.sample { font-family: ui-monospace, monospace; white-space: pre-wrap; word-break: normal;
  overflow-wrap: anywhere; line-height: 1.7; border: 1px solid #eee; padding: 0.4em 0.6em;
  margin: 0.4em 0; }
.sample[dir="rtl"] { text-align: right; }
.meta { color: #777; font-size: 0.8em; }
.del { background: #f5b7b1; color: #922b21; text-decoration: line-through; }
.part { background: #fdebd0; color: #9c640c; text-decoration: underline dotted; }
.special { color: #2471a3; font-size: 0.85em; unicode-bidi: isolate; }
.invalid { color: #7d3c98; font-size: 0.85em; unicode-bidi: isolate; }
img { max-width: 100%; }
"""


def _piece_html(piece: Piece, gate: np.ndarray, verb: str = "deleted") -> str:
  values = ", ".join(f"{gate[piece.start + k]:.2f}" for k in range(len(piece.deleted)))
  marks = "".join("x" if d else "." for d in piece.deleted)
  classes = {"deleted": "del", "partial": "part", "kept": ""}[piece.status]
  direction = ""
  if piece.kind != "char":
    classes = f"{classes} {piece.kind}".strip()
    # EOS, sentinels and \xNN read left to right (not mirrored) inside a right-to-left row.
    direction = ' dir="ltr"'
  title = f"position {piece.start}; G {values}; bytes {verb} {marks}"
  return (f'<span class="{classes}"{direction} data-pos="{piece.start}" data-deleted="{marks}" '
          f'title="{html.escape(title)}">{html.escape(piece.text)}</span>')


def text_direction(label: str) -> str:
  """The sample's dir attribute: "rtl" for a right-to-left language label, else "auto"."""
  return "rtl" if label.lower() in RTL_LANGUAGES else "auto"


def sample_html(sample: Sample, verb: str = "deleted") -> str:
  body = "".join(_piece_html(p, sample.gate, verb) for p in pieces(sample))
  rate = float(sample.deleted.mean()) if len(sample.deleted) else 0.0
  return (f'<div class="meta">{html.escape(sample.label)}: {len(sample.tokens)} bytes, '
          f'{rate:.1%} {verb}</div><div class="sample" dir="{text_direction(sample.label)}">'
          f'{body}</div>')


def render_html(samples: Sequence[Sample], *, title: str, details: dict[str, Any],
                threshold: float, scale: float, samples_per_label: int = 3,
                top_bytes: int = 40, target: Optional[float] = None,
                verb: str = "deleted") -> str:
  """The whole report as one self-contained HTML page.

  ``target``: the rate the run aimed at (a line on the per-language chart);
  ``verb``: "deleted", or "pooled" for the pooling baselines (``Shortening.verb``).
  """
  summary = summarize(samples)
  facts = "".join(f"<tr><th class='l'>{html.escape(str(k))}</th><td class='l'>"
                  f"{html.escape(str(v))}</td></tr>" for k, v in details.items())
  label_rows = "".join(
      f"<tr><td class='l'>{html.escape(label)}</td><td>{e['samples']}</td><td>{e['bytes']}</td>"
      f"<td>{e['byte_deletion_rate']:.3f}</td><td>{e['characters']}</td>"
      f"<td>{e['character_deletion_rate']:.3f}</td><td>{e['partly_deleted_characters']}</td>"
      f"<td>{e['gate_mean']:.2f}</td></tr>" for label, e in summary["per_label"].items())
  byte_rows = "".join(
      f"<tr><td class='l'>{html.escape(e['byte'])}</td><td>{e['id']}</td><td>{e['seen']}</td>"
      f"<td>{e['deleted']}</td><td>{e['rate']:.3f}</td>"
      f"<td class='l'>{html.escape(' '.join(e['in_characters']))}</td></tr>"
      for e in summary["per_byte"][:top_bytes])
  all_row = (f"<tr><th class='l'>all</th><td>{summary['samples']}</td>"
             f"<td>{sum(e['bytes'] for e in summary['per_label'].values())}</td>"
             f"<td>{summary['byte_deletion_rate']:.3f}</td>"
             f"<td>{sum(e['characters'] for e in summary['per_label'].values())}</td>"
             f"<td>{summary['character_deletion_rate']:.3f}</td>"
             f"<td>{sum(e['partly_deleted_characters'] for e in summary['per_label'].values())}"
             "</td><td></td></tr>")
  target_row = ("" if target is None else
                f"<tr><th class='l'>target rate</th><td class='l'>{target:g}</td></tr>\n")
  noun = "Pooling" if verb == "pooled" else "Deletion"
  if verb == "pooled":
    marked_text = ("Marked positions are those pooled into a slot that an earlier position "
                   "starts (BP: a segment, CP: a window); the rate is the sequence-length "
                   "reduction.")
  else:
    marked_text = ("Marked positions are exactly those hard deletion removes (G &le; threshold, "
                   "except the one position kept in a sequence where nothing passes).")
  shown: dict[str, int] = {}
  texts = []
  for sample in samples:
    if shown.get(sample.label, 0) < samples_per_label:
      shown[sample.label] = shown.get(sample.label, 0) + 1
      texts.append(sample_html(sample, verb))
  return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<table>{facts}
<tr><th class='l'>samples</th><td class='l'>{summary['samples']}</td></tr>
<tr><th class='l'>bytes {verb}</th><td class='l'>{summary['byte_deletion_rate']:.3f}</td></tr>
<tr><th class='l'>characters {verb}</th><td class='l'>{summary['character_deletion_rate']:.3f}</td></tr>
{target_row}</table>
<p class="meta">{marked_text} A character counts as {verb}
when all its bytes are {verb}; <span class="part">partly {verb}</span> characters are marked
apart. <span class="del">{verb}</span> &middot; <span class="part">partly {verb}</span>
&middot; kept &middot; <span class="special">&lt;/s&gt;</span> EOS,
<span class="special">&lt;S0&gt;</span> sentinels, <span class="invalid">\\xNN</span> bytes that
are not valid UTF-8. Hover over a character for its position, G values and byte marks.</p>
<h2>{noun} rate per language</h2>
<img alt="{verb} rate per language" src="{plot_label_rates(summary, target, verb)}">
<table><tr><th class='l'>language</th><th>samples</th><th>bytes</th><th>byte rate</th>
<th>characters</th><th>character rate</th><th>partly {verb}</th><th>mean G</th></tr>
{label_rows}{all_row}</table>
<h2>Gate values</h2>
<img alt="histogram of gate values" src="{plot_gate_histogram(samples, threshold, scale, verb)}">
<h2>{noun} per byte</h2>
<img alt="most {verb} bytes" src="{plot_top_bytes(summary, verb=verb)}">
<table><tr><th class='l'>byte</th><th>id</th><th>seen</th><th>{verb}</th><th>rate</th>
<th class='l'>in characters</th></tr>
{byte_rows}</table>
<h2>Samples</h2>
{''.join(texts)}
</body></html>
"""


# ----------------------------------------------------------------------------- front end

def render_plain(sample: Sample) -> str:
  """The sample's text without colours: deleted (or pooled) characters in [ ], partly in { }."""
  out, current = [], "kept"
  brackets = {"deleted": ("[", "]"), "partial": ("{", "}"), "kept": ("", "")}
  for piece in pieces(sample):
    if piece.status != current:
      out.append(brackets[current][1] + brackets[piece.status][0])
      current = piece.status
    out.append(piece.text)
  out.append(brackets[current][1])
  return "".join(out)
