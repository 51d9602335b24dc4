"""What the delete gate removes, in a form people can look at.

``read_samples`` runs the encoder up to the gate (``EncodePath.read_gate``)
and marks as deleted exactly the positions hard deletion removes: the
complement of ``compaction.keep_mask`` (``G > threshold`` on real positions,
plus the one position kept in a sequence where nothing passes). From those
marks come

* ``pieces``: the bytes of a sample grouped into what a reader sees: whole
  UTF-8 characters (a multi-byte character is one piece), EOS, span-corruption
  sentinels, and single bytes that are not valid UTF-8 (shown as ``\\xNN``).
  A piece counts as *deleted* when all its bytes are deleted and as
  *partly deleted* when only some are; the byte-level marks stay available
  (``Piece.deleted``), so no deletion is hidden;
* ``render_ansi``: a sample for a terminal (deleted: red, struck through;
  partly deleted: yellow, underlined);
* ``summarize`` and ``render_html``: a self-contained HTML report (styles
  inline, matplotlib PNGs as base64 data URIs, so it opens without network
  access) with per-language deletion-rate bars, a histogram of the gate
  values, a per-byte deletion table and the marked samples.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import io
from typing import Any, Optional, Sequence

import gin
import numpy as np

from mrt5_jax import compaction
from mrt5_jax import evaluation

EOS_ID = 1
BYTE_OFFSET = 3
# Bytes 0xF5..0xFF never occur in UTF-8; span corruption uses ids 258, 257, ...
# (bytes 0xFF, 0xFE, ...) as sentinels, shown as <S0>, <S1>, ...
FIRST_SENTINEL_ID = 258
LOWEST_SENTINEL_ID = 0xF5 + BYTE_OFFSET
VISIBLE = {"\n": "\u21b5", "\t": "\u2192", "\r": "\u240d"}


@dataclasses.dataclass
class Sample:
  """One encoder input with the gate's reading.

  label: its group (language or task). tokens: (L,) int ids of the real
  positions (no padding). gate: (L,) G values. deleted: (L,) bool, True where
  hard deletion removes the position.
  """
  label: str
  tokens: np.ndarray
  gate: np.ndarray
  deleted: np.ndarray


@dataclasses.dataclass(frozen=True)
class Piece:
  """What one or more consecutive bytes show as.

  kind: 'char' (a valid UTF-8 character), 'special' (EOS, sentinel, other
  non-byte ids) or 'invalid' (a byte that starts no valid character).
  start: position of its first byte. deleted: per byte.
  """
  text: str
  kind: str
  start: int
  deleted: tuple[bool, ...]

  @property
  def status(self) -> str:
    """'deleted' when every byte is deleted, 'partial' when some are, else 'kept'."""
    if all(self.deleted):
      return "deleted"
    return "partial" if any(self.deleted) else "kept"


# ----------------------------------------------------------------------------- marks

def encode_texts(texts: Sequence[str], max_length: int) -> list[np.ndarray]:
  """Byte ids (byte + 3) of each text, cut to ``max_length - 1`` bytes, plus EOS."""
  if max_length < 2:
    raise ValueError(f"max_length must be >= 2, got {max_length}")
  rows = []
  for text in texts:
    data = np.frombuffer(text.encode("utf-8"), np.uint8)[:max_length - 1]
    rows.append(np.concatenate([data.astype(np.int32) + BYTE_OFFSET, [EOS_ID]]).astype(np.int32))
  return rows


def _pad(rows: Sequence[np.ndarray], multiple: int) -> np.ndarray:
  length = max(len(row) for row in rows)
  length = -(-length // multiple) * multiple
  out = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out


def read_samples(path, params, rows: Sequence[np.ndarray], labels: Sequence[str], *,
                 batch_size: int = 16, pad_multiple: int = 64) -> list[Sample]:
  """The gate's reading of each token row (real positions only) with hard-deletion marks.

  path: an ``hard_deletion.EncodePath`` of a model with a gate. Rows are
  encoded ``batch_size`` at a time, padded to a multiple of ``pad_multiple``.
  """
  config = path.config
  if not config.has_gate:
    raise ValueError("this model has no delete gate (deletion_type 'none'): nothing to inspect")
  if len(rows) != len(labels):
    raise ValueError(f"{len(rows)} rows but {len(labels)} labels")
  samples = []
  for start in range(0, len(rows), batch_size):
    chunk = [np.asarray(r, np.int32) for r in rows[start:start + batch_size]]
    for i, row in enumerate(chunk):
      if row.ndim != 1 or not len(row) or np.any(row <= 0):
        raise ValueError(f"row {start + i} must be a non-empty 1-D array of ids > 0 (no padding)")
    tokens = _pad(chunk, pad_multiple)
    reading, _ = path.read_gate(params, tokens)
    gate = np.asarray(reading.gate, np.float32)
    keep = np.asarray(compaction.keep_mask(reading.gate, tokens > 0, config.deletion_threshold))
    for i, row in enumerate(chunk):
      n = len(row)
      samples.append(Sample(label=labels[start + i], tokens=row, gate=gate[i, :n],
                            deleted=~keep[i, :n]))
  return samples


# ----------------------------------------------------------------------------- pieces

def _utf8_length(lead: int) -> int:
  if lead < 0x80:
    return 1
  if 0xC2 <= lead <= 0xDF:
    return 2
  if 0xE0 <= lead <= 0xEF:
    return 3
  if 0xF0 <= lead <= 0xF4:
    return 4
  return 0


def _special(token: int) -> str:
  if token == EOS_ID:
    return "</s>"
  if LOWEST_SENTINEL_ID <= token <= FIRST_SENTINEL_ID:
    return f"<S{FIRST_SENTINEL_ID - token}>"
  return f"<{token}>"


def _shown(char: str) -> str:
  if char in VISIBLE:
    return VISIBLE[char]
  if not char.isprintable():
    return f"\\u{ord(char):04x}"
  return char


def pieces(sample: Sample) -> list[Piece]:
  """The sample's bytes grouped into characters, specials and invalid bytes, in order."""
  tokens = [int(t) for t in sample.tokens]
  deleted = [bool(d) for d in sample.deleted]
  out: list[Piece] = []
  i = 0
  while i < len(tokens):
    token = tokens[i]
    if token < BYTE_OFFSET or token >= LOWEST_SENTINEL_ID:
      out.append(Piece(_special(token), "special", i, (deleted[i],)))
      i += 1
      continue
    size = _utf8_length(token - BYTE_OFFSET)
    chunk = tokens[i:i + size] if size else []
    text = None
    if size and len(chunk) == size and all(BYTE_OFFSET <= t < LOWEST_SENTINEL_ID for t in chunk):
      try:
        text = bytes(t - BYTE_OFFSET for t in chunk).decode("utf-8")
      except UnicodeDecodeError:
        text = None
    if text is None:
      out.append(Piece(f"\\x{token - BYTE_OFFSET:02x}", "invalid", i, (deleted[i],)))
      i += 1
      continue
    out.append(Piece(_shown(text), "char", i, tuple(deleted[i:i + size])))
    i += size
  return out


def deleted_positions(parts: Sequence[Piece]) -> set[int]:
  """Byte positions the pieces mark as deleted."""
  return {piece.start + k for piece in parts for k, d in enumerate(piece.deleted) if d}


# ----------------------------------------------------------------------------- terminal

ANSI = {"deleted": "\x1b[9;91m", "partial": "\x1b[4;93m", "kept": ""}
ANSI_RESET = "\x1b[0m"


def render_ansi(sample: Sample) -> str:
  """The sample's text with ANSI colours: deleted red and struck through, partly deleted yellow."""
  out = []
  for piece in pieces(sample):
    style = ANSI[piece.status]
    out.append(f"{style}{piece.text}{ANSI_RESET}" if style else piece.text)
  return "".join(out)


ANSI_LEGEND = (f"{ANSI['deleted']}deleted{ANSI_RESET}  {ANSI['partial']}partly deleted"
               f"{ANSI_RESET}  kept")


# ----------------------------------------------------------------------------- summary

def summarize(samples: Sequence[Sample]) -> dict[str, Any]:
  """Deletion figures per label and per token id (JSON-serialisable).

  Byte rates count positions; character rates count pieces, a piece deleted
  when all its bytes are (partly deleted pieces are counted apart). Each
  per-byte entry lists the multi-byte characters it occurs in most often.
  """
  labels: dict[str, dict[str, float]] = {}
  seen = np.zeros(FIRST_SENTINEL_ID + 1, np.int64)
  removed = np.zeros(FIRST_SENTINEL_ID + 1, np.int64)
  within: dict[int, dict[str, int]] = {}
  for sample in samples:
    entry = labels.setdefault(sample.label, {"samples": 0, "bytes": 0, "deleted_bytes": 0,
                                             "pieces": 0, "deleted_pieces": 0,
                                             "partial_pieces": 0, "gate_sum": 0.0})
    parts = pieces(sample)
    entry["samples"] += 1
    entry["bytes"] += len(sample.tokens)
    entry["deleted_bytes"] += int(sample.deleted.sum())
    entry["pieces"] += len(parts)
    entry["deleted_pieces"] += sum(p.status == "deleted" for p in parts)
    entry["partial_pieces"] += sum(p.status == "partial" for p in parts)
    entry["gate_sum"] += float(sample.gate.sum())
    tokens = np.clip(sample.tokens, 0, FIRST_SENTINEL_ID)
    np.add.at(seen, tokens, 1)
    np.add.at(removed, tokens[sample.deleted], 1)
    for part in parts:
      if part.kind == "char" and len(part.deleted) > 1:
        for token in set(int(t) for t in tokens[part.start:part.start + len(part.deleted)]):
          counts = within.setdefault(token, {})
          counts[part.text] = counts.get(part.text, 0) + 1
  per_label = {}
  for label, entry in labels.items():
    per_label[label] = {
        "samples": entry["samples"], "bytes": entry["bytes"],
        "deleted_bytes": entry["deleted_bytes"],
        "byte_deletion_rate": entry["deleted_bytes"] / max(entry["bytes"], 1),
        "characters": entry["pieces"], "deleted_characters": entry["deleted_pieces"],
        "partly_deleted_characters": entry["partial_pieces"],
        "character_deletion_rate": entry["deleted_pieces"] / max(entry["pieces"], 1),
        "gate_mean": entry["gate_sum"] / max(entry["bytes"], 1),
    }
  per_byte = [{"id": int(i), "byte": evaluation.byte_label(int(i)), "seen": int(seen[i]),
               "deleted": int(removed[i]), "rate": float(removed[i] / seen[i]),
               "in_characters": [c for c, _ in sorted(within.get(int(i), {}).items(),
                                                      key=lambda kv: -kv[1])[:5]]}
              for i in np.nonzero(seen)[0]]
  per_byte.sort(key=lambda e: (-e["deleted"], -e["rate"], e["id"]))
  total_bytes = sum(e["bytes"] for e in per_label.values())
  total_deleted = sum(e["deleted_bytes"] for e in per_label.values())
  total_pieces = sum(e["characters"] for e in per_label.values())
  return {
      "samples": len(samples),
      "byte_deletion_rate": total_deleted / max(total_bytes, 1),
      "character_deletion_rate": sum(e["deleted_characters"] for e in per_label.values())
                                 / max(total_pieces, 1),
      "per_label": per_label,
      "per_byte": per_byte,
  }


# ----------------------------------------------------------------------------- plots

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


def plot_label_rates(summary: dict[str, Any]) -> str:
  plt = _pyplot()
  labels = list(summary["per_label"])
  byte_rates = [summary["per_label"][k]["byte_deletion_rate"] for k in labels]
  char_rates = [summary["per_label"][k]["character_deletion_rate"] for k in labels]
  x = np.arange(len(labels))
  figure, axis = plt.subplots(figsize=(max(4.0, 0.55 * len(labels) + 1.5), 3.2))
  axis.bar(x - 0.2, byte_rates, 0.4, label="bytes", color="#c0392b")
  axis.bar(x + 0.2, char_rates, 0.4, label="characters (all bytes deleted)", color="#e59866")
  axis.set_xticks(x, labels, rotation=45 if len(labels) > 8 else 0, ha="right"
                  if len(labels) > 8 else "center")
  axis.set_ylim(0, 1)
  axis.set_ylabel("deletion rate")
  axis.legend(loc="upper right", fontsize=8)
  axis.grid(axis="y", alpha=0.3)
  return _png(figure)


def plot_gate_histogram(samples: Sequence[Sample], threshold: float, scale: float) -> str:
  plt = _pyplot()
  values = np.concatenate([s.gate for s in samples]) if samples else np.zeros(0)
  figure, axis = plt.subplots(figsize=(6.0, 3.2))
  axis.hist(values, bins=np.linspace(min(scale, float(values.min(initial=scale))), 0.0, 61),
            color="#34495e")
  axis.axvline(threshold, color="#c0392b", linestyle="--", label=f"threshold {threshold:g}")
  axis.set_yscale("log")
  axis.set_xlabel("gate value G (deleted left of the threshold)")
  axis.set_ylabel("positions")
  axis.legend(fontsize=8)
  return _png(figure)


def plot_top_bytes(summary: dict[str, Any], top: int = 30) -> str:
  plt = _pyplot()
  rows = [e for e in summary["per_byte"] if e["deleted"]][:top]
  figure, axis = plt.subplots(figsize=(max(4.0, 0.3 * len(rows) + 1.5), 3.2))
  x = np.arange(len(rows))
  axis.bar(x, [e["rate"] for e in rows], color="#c0392b")
  axis.set_xticks(x, [e["byte"] for e in rows], rotation=90, fontsize=8)
  axis.set_ylim(0, 1)
  axis.set_ylabel("share deleted")
  axis.set_title(f"the {len(rows)} bytes deleted most often", fontsize=9)
  return _png(figure)


# ----------------------------------------------------------------------------- HTML

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.sample { font-family: ui-monospace, monospace; white-space: pre-wrap; word-break: break-all;
  line-height: 1.7; border: 1px solid #eee; padding: 0.4em 0.6em; margin: 0.4em 0; }
.meta { color: #777; font-size: 0.8em; }
.del { background: #f5b7b1; color: #922b21; text-decoration: line-through; }
.part { background: #fdebd0; color: #9c640c; text-decoration: underline dotted; }
.special { color: #2471a3; font-size: 0.85em; }
.invalid { color: #7d3c98; font-size: 0.85em; }
img { max-width: 100%; }
"""


def _piece_html(piece: Piece, gate: np.ndarray) -> str:
  values = ", ".join(f"{gate[piece.start + k]:.2f}" for k in range(len(piece.deleted)))
  marks = "".join("x" if d else "." for d in piece.deleted)
  classes = {"deleted": "del", "partial": "part", "kept": ""}[piece.status]
  if piece.kind != "char":
    classes = f"{classes} {piece.kind}".strip()
  title = f"position {piece.start}; G {values}; bytes deleted {marks}"
  return (f'<span class="{classes}" data-pos="{piece.start}" data-deleted="{marks}" '
          f'title="{html.escape(title)}">{html.escape(piece.text)}</span>')


def sample_html(sample: Sample) -> str:
  body = "".join(_piece_html(p, sample.gate) for p in pieces(sample))
  rate = float(sample.deleted.mean()) if len(sample.deleted) else 0.0
  return (f'<div class="meta">{html.escape(sample.label)}: {len(sample.tokens)} bytes, '
          f'{rate:.1%} deleted</div><div class="sample" dir="auto">{body}</div>')


def render_html(samples: Sequence[Sample], *, title: str, details: dict[str, Any],
                threshold: float, scale: float, samples_per_label: int = 3,
                top_bytes: int = 40) -> str:
  """The whole report as one self-contained HTML page."""
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
  shown: dict[str, int] = {}
  texts = []
  for sample in samples:
    if shown.get(sample.label, 0) < samples_per_label:
      shown[sample.label] = shown.get(sample.label, 0) + 1
      texts.append(sample_html(sample))
  return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<table>{facts}
<tr><th class='l'>samples</th><td class='l'>{summary['samples']}</td></tr>
<tr><th class='l'>bytes deleted</th><td class='l'>{summary['byte_deletion_rate']:.3f}</td></tr>
<tr><th class='l'>characters deleted</th><td class='l'>{summary['character_deletion_rate']:.3f}</td></tr>
</table>
<p class="meta">Marked positions are exactly those hard deletion removes (G &le; threshold,
except the one position kept in a sequence where nothing passes). A character counts as deleted
when all its bytes are deleted; <span class="part">partly deleted</span> characters are marked
apart. <span class="del">deleted</span> &middot; <span class="part">partly deleted</span>
&middot; kept &middot; <span class="special">&lt;/s&gt;</span> EOS,
<span class="special">&lt;S0&gt;</span> sentinels, <span class="invalid">\\xNN</span> bytes that
are not valid UTF-8. Hover over a character for its position, G values and byte marks.</p>
<h2>Deletion rate per language</h2>
<img alt="deletion rate per language" src="{plot_label_rates(summary)}">
<table><tr><th class='l'>language</th><th>samples</th><th>bytes</th><th>byte rate</th>
<th>characters</th><th>character rate</th><th>partly deleted</th><th>mean G</th></tr>
{label_rows}</table>
<h2>Gate values</h2>
<img alt="histogram of gate values" src="{plot_gate_histogram(samples, threshold, scale)}">
<h2>Deletion per byte</h2>
<img alt="most deleted bytes" src="{plot_top_bytes(summary)}">
<table><tr><th class='l'>byte</th><th>id</th><th>seen</th><th>deleted</th><th>rate</th>
<th class='l'>in characters</th></tr>
{byte_rows}</table>
<h2>Samples</h2>
{''.join(texts)}
</body></html>
"""


# ----------------------------------------------------------------------------- front end

def render_plain(sample: Sample) -> str:
  """The sample's text without colours: deleted characters in [ ], partly deleted in { }."""
  out, current = [], "kept"
  brackets = {"deleted": ("[", "]"), "partial": ("{", "}"), "kept": ("", "")}
  for piece in pieces(sample):
    if piece.status != current:
      out.append(brackets[current][1] + brackets[piece.status][0])
      current = piece.status
    out.append(piece.text)
  out.append(brackets[current][1])
  return "".join(out)


def _label_texts(texts: Sequence[str], files: Sequence[str], sample_corpus: Optional[str],
                 num_examples: int) -> list[tuple[str, str]]:
  """(label, text) pairs from strings, text files (a line each) or the shipped sample corpus."""
  import glob
  import os
  if texts:
    return [("text", t) for t in texts]
  paths: list[tuple[str, str]] = []
  if files:
    for pattern in files:
      matches = sorted(glob.glob(pattern))
      if not matches:
        raise FileNotFoundError(f"no file matches {pattern!r} (inspect_deletion.files)")
      paths += [(os.path.splitext(os.path.basename(p))[0], p) for p in matches]
  else:
    from mrt5_jax.tasks import text_files
    for language in text_files.SAMPLE_LANGUAGES:
      (path,) = text_files.sample_corpus_files(sample_corpus, language)
      paths.append((language, path))
  pairs = []
  for label, path in paths:
    with open(path, encoding="utf-8") as f:
      lines = [line.rstrip("\n") for line in f if line.strip()]
    pairs += [(label, line) for line in lines[:num_examples]]
  return pairs


def _dataset_rows(dataset, num_examples: int) -> tuple[list[np.ndarray], list[str]]:
  """Encoder inputs (padding stripped) of the first ``num_examples`` examples per task."""
  from mrt5_jax import task_report
  import dataclasses as dc
  rows, labels = [], []
  for task in task_report.leaf_tasks(dataset):
    taken = 0
    for batch, real in task_report.padded_batches(dc.replace(dataset, mixture_or_task_name=task),
                                                  None):
      for tokens in batch["encoder_input_tokens"][:real]:
        if taken < num_examples:
          rows.append(tokens[tokens > 0])
          labels.append(task_report.language_of(task) or task)
          taken += 1
      if taken >= num_examples:
        break
  return rows, labels


@gin.configurable(denylist=["params"])
def inspect_deletion(*, model_dir: str = gin.REQUIRED, step: Optional[int] = None, dataset=None,
                     texts: Sequence[str] = (), files: Sequence[str] = (),
                     sample_corpus: Optional[str] = None, num_examples: int = 8,
                     max_length: int = 1024, samples_per_label: int = 3,
                     html_path: Optional[str] = None, inference=None,
                     params=None) -> dict[str, Any]:
  """Read the gate on some inputs and write the HTML report; returns its summary.

  Inputs, the first that is set: ``texts``, ``files`` (globs; a sample per
  line, labelled by file name), ``sample_corpus`` (a split of the shipped
  corpus, labelled by language), ``dataset`` (a ``data.DatasetConfig``; the
  encoder inputs of its tasks, labelled by language). ``num_examples`` per
  file, language or task; texts are cut to ``max_length`` bytes with EOS.
  ``html_path`` defaults to ``<model_dir>/inspect/deletion.<step>.html``.
  Returns {'checkpoint', 'html_path', 'summary', 'samples': [Sample], 'samples_per_label'}.
  """
  import os
  from mrt5_jax import checkpoints
  from mrt5_jax.hard_deletion import EncodePath, InferenceConfig
  from mrt5_jax.network import Transformer

  if num_examples < 1 or samples_per_label < 0:
    raise ValueError("num_examples must be >= 1 and samples_per_label >= 0")
  config = checkpoints.read_config(model_dir)
  location = checkpoints.locate(model_dir, step)
  if texts or files or sample_corpus:
    pairs = _label_texts(texts, files, sample_corpus, num_examples)
    labels = [label for label, _ in pairs]
    rows = encode_texts([text for _, text in pairs], max_length)
    source = ("texts" if texts else f"files {list(files)}" if files
              else f"sample corpus ({sample_corpus})")
  elif dataset is not None:
    rows, labels = _dataset_rows(dataset, num_examples)
    source = f"{dataset.mixture_or_task_name} ({dataset.split})"
  else:
    raise ValueError("nothing to inspect: set inspect_deletion.texts, .files, .sample_corpus "
                     "or .dataset")
  if not rows:
    raise ValueError(f"no inputs found in {source}")
  if params is None:
    params = checkpoints.restore_params(location.step_dir)
  inference = (inference or InferenceConfig()).replace(mode="bucketed")
  path = EncodePath(Transformer(config), inference)
  samples = read_samples(path, params, rows, labels)
  details = {"checkpoint": location.step_dir, "inputs": source,
             "gate": f"before encoder layer {config.delete_gate_layer} of "
                     f"{config.num_encoder_layers}, threshold {config.deletion_threshold:g}"}
  page = render_html(samples, title="MrT5 deletion report", details=details,
                     threshold=config.deletion_threshold, scale=config.sigmoid_mask_scale,
                     samples_per_label=samples_per_label)
  html_path = html_path or os.path.join(model_dir, "inspect", f"deletion.{location.step}.html")
  os.makedirs(os.path.dirname(os.path.abspath(html_path)), exist_ok=True)
  with open(html_path, "w", encoding="utf-8") as f:
    f.write(page)
  return {"checkpoint": location.step_dir, "html_path": html_path,
          "summary": summarize(samples), "samples": samples,
          "samples_per_label": samples_per_label}
