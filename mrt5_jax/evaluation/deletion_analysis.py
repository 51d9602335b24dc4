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
* ``summarize``: per-label deletion rates and a per-byte deletion table.

Rendering (terminal and HTML) is ``mrt5_jax.reporting.deletion_html``; the
gin entry point that reads a checkpoint is ``mrt5_jax.jobs.inspect``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from mrt5_jax.maths import compaction

EOS_ID = 1
BYTE_OFFSET = 3
# Bytes 0xF5..0xFF never occur in UTF-8; span corruption uses ids 258, 257, ...
# (bytes 0xFF, 0xFE, ...) as sentinels, shown as <S0>, <S1>, ...
FIRST_SENTINEL_ID = 258
LOWEST_SENTINEL_ID = 0xF5 + BYTE_OFFSET
VISIBLE = {"\n": "\u21b5", "\t": "\u2192", "\r": "\u240d"}


def byte_label(token_id: int) -> str:
  """Printable label of a ByteVocabulary id (3 + byte value; 1 = EOS)."""
  if token_id == 1:
    return "EOS"
  if token_id < 3 or token_id > 258:
    return f"<{token_id}>"
  value = token_id - 3
  char = chr(value) if value < 128 else None
  return repr(char) if char and char.isprintable() else f"0x{value:02x}"


def most_deleted(profile: dict[int, tuple[int, int]], top: int = 12) -> list[dict[str, Any]]:
  """The ``top`` bytes deleted most often (by count), as data for a JSON report.

  profile: {id: (deleted, seen)} (``DeletionProfile.as_dict``). Each entry is
  {'byte': label, 'id', 'deleted', 'seen', 'rate': deleted / seen}; bytes never
  deleted are left out.
  """
  ranked = sorted(profile.items(), key=lambda kv: -kv[1][0])[:top]
  return [{"byte": byte_label(int(i)), "id": int(i), "deleted": int(d), "seen": int(s),
           "rate": d / max(s, 1)} for i, (d, s) in ranked if d]


def describe_most_deleted(entries: Sequence[dict[str, Any]]) -> str:
  """``'e' 100% of 41, 'a' 98% of 50, ...`` of ``most_deleted`` entries (the printed line)."""
  if not entries:
    return "nothing deleted"
  return ", ".join(f"{e['byte']} {e['rate']:.0%} of {e['seen']}" for e in entries)


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
  if not path.shortening.shortens:
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
  per_byte = [{"id": int(i), "byte": byte_label(int(i)), "seen": int(seen[i]),
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
