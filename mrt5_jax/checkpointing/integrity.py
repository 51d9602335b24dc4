"""Integrity records of checkpoint steps (size and CRC-32 of every file, checked before
use) and the two errors a checkpoint reports: damaged, or not saved.

``<step_dir>/_INTEGRITY.json`` lists every file of a step (path relative to
the step dir, size in bytes, CRC-32 of the contents). The trainer writes it
after orbax has written and finalized every item of the step and before orbax
commits the step (renames ``<step>.orbax-checkpoint-tmp`` to ``<step>``), so a
committed step always carries its record. Two top-level orbax files are
rewritten by that commit and are therefore not in the record:
``_CHECKPOINT_METADATA`` (step bookkeeping; orbax restores without it) and
``commit_success.txt``.

``verify`` recomputes sizes and checksums and raises ``DamagedCheckpointError``
naming the step and the first damaged file; a step without a record (written
before records existed, by t5x, or copied without it) is not an error:
``verify`` returns False and the caller checks it by reading it.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import zlib
from typing import Optional, Sequence

RECORD = "_INTEGRITY.json"
FORMAT = "mrt5-checkpoint-integrity/1"
UNRECORDED = ("_CHECKPOINT_METADATA", "commit_success.txt")
CHUNK_BYTES = 16 << 20
MAX_THREADS = 8


@dataclasses.dataclass(frozen=True)
class Damage:
  """One damaged checkpoint step: its number, directory, the file (relative) and why."""
  step: int
  step_dir: str
  file: str
  reason: str

  @property
  def path(self) -> str:
    return os.path.join(self.step_dir, self.file) if self.file else self.step_dir

  def describe(self) -> str:
    return f"{self.path}: {self.reason}"


class DamagedCheckpointError(ValueError):
  """A checkpoint step failed verification or could not be read.

  ``damages`` (newest first) say which steps and files; ``newest_intact`` is the
  newest other step that passed (None: none did, or it was not looked for).
  """

  def __init__(self, damages: Sequence[Damage], newest_intact: Optional[int] = None,
               advice: str = ""):
    self.damages = list(damages)
    self.newest_intact = newest_intact
    self.advice = advice
    first = self.damages[0]
    text = f"checkpoint step {first.step} is damaged: {first.describe()}"
    for other in self.damages[1:]:
      text += f"; step {other.step} too: {other.describe()}"
    super().__init__(text + (f". {advice}" if advice else ""))

  @property
  def step(self) -> int:
    return self.damages[0].step

  @property
  def file(self) -> str:
    return self.damages[0].path

  def suggesting(self, step_flag: str) -> "DamagedCheckpointError":
    """The same error, advising ``step_flag`` (``--step {step}``) with the newest intact step."""
    if self.newest_intact is None:
      advice = "No other step of this run passed verification"
    else:
      advice = (f"The newest intact step is {self.newest_intact}: rerun with "
                + step_flag.format(step=self.newest_intact))
    return DamagedCheckpointError(self.damages, self.newest_intact, advice)


class CheckpointSaveError(RuntimeError):
  """Saving a step failed; the message names the step, the cause and what is left."""

  def __init__(self, step: Optional[int], directory: str, cause: str):
    self.step, self.directory, self.cause = step, directory, cause
    steps = (sorted(int(name) for name in os.listdir(directory) if name.isdigit())
             if os.path.isdir(directory) else [])
    kept = f"the newest is step {steps[-1]}" if steps else "there are none"
    super().__init__(
        f"could not save checkpoint step {step} in {directory}: {cause}. The checkpoints "
        f"saved before are untouched ({kept}); fix the cause and rerun the same command to "
        "resume from the newest one")


def crc32_file(path: str) -> tuple[int, int]:
  """(size in bytes, CRC-32) of one file, read in 16 MiB chunks."""
  crc, size = 0, 0
  buffer = bytearray(CHUNK_BYTES)
  view = memoryview(buffer)
  with open(path, "rb", buffering=0) as f:
    while True:
      n = f.readinto(buffer)
      if not n:
        break
      crc = zlib.crc32(view[:n], crc)
      size += n
  return size, crc


def _files(step_dir: str) -> list[str]:
  """Relative paths of the files a record covers, sorted."""
  found = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      relative = os.path.relpath(os.path.join(root, name), step_dir)
      if relative == RECORD or relative in UNRECORDED:
        continue
      found.append(relative)
  return sorted(found)


def _checksums(step_dir: str, relatives: Sequence[str]) -> dict[str, object]:
  """{relative: (size, crc) or the OSError reading it}, files read in parallel."""
  def one(relative):
    try:
      return crc32_file(os.path.join(step_dir, relative))
    except OSError as error:
      return error
  threads = max(1, min(MAX_THREADS, os.cpu_count() or 1, len(relatives)))
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    return dict(zip(relatives, pool.map(one, relatives)))


def write_record(step_dir: str, step: int) -> str:
  """Checksum every file of ``step_dir`` and write its record (atomically). Returns its path."""
  entries = {}
  for relative, result in _checksums(step_dir, _files(step_dir)).items():
    if isinstance(result, OSError):
      raise result
    size, crc = result
    entries[relative] = {"size": size, "crc32": f"{crc:08x}"}
  record = {"format": FORMAT, "step": int(step), "files": entries}
  path = os.path.join(step_dir, RECORD)
  partial = path + ".partial"
  with open(partial, "w") as f:
    json.dump(record, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(partial, path)
  return path


def read_record(step_dir: str, step: int) -> Optional[dict]:
  """The record of ``step_dir``, None when it has none; a damaged record is an error."""
  path = os.path.join(step_dir, RECORD)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      record = json.load(f)
    if record.get("format") != FORMAT or not isinstance(record.get("files"), dict):
      raise ValueError(f"not a {FORMAT} record")
  except (OSError, ValueError) as error:
    raise DamagedCheckpointError(
        [Damage(step, step_dir, RECORD, f"integrity record unreadable ({error})")]) from None
  return record


def verify(step_dir: str, step: int) -> bool:
  """Check ``step_dir`` against its record: True when it matched, False when it has none.

  Raises DamagedCheckpointError naming every file that is missing, has another
  size, or another checksum.
  """
  record = read_record(step_dir, step)
  if record is None:
    return False
  expected = record["files"]
  damages = []
  for relative, result in sorted(_checksums(step_dir, sorted(expected)).items()):
    want = expected[relative]
    if isinstance(result, FileNotFoundError):
      reason = "missing"
    elif isinstance(result, OSError):
      reason = f"unreadable ({result.strerror or result})"
    elif result[0] != want["size"]:
      reason = f"{result[0]} bytes, the integrity record says {want['size']}"
    elif f"{result[1]:08x}" != want["crc32"]:
      reason = "contents changed (CRC-32 differs from the integrity record)"
    else:
      continue
    damages.append(Damage(step, step_dir, relative, reason))
  if damages:
    first = damages[0]
    if len(damages) > 1:
      first = dataclasses.replace(first, reason=f"{first.reason}; {len(damages) - 1} more "
                                  "damaged file(s) in this step")
    raise DamagedCheckpointError([first])
  return True


def main(argv: Optional[Sequence[str]] = None) -> int:
  """``python -m mrt5_jax.checkpointing.integrity STEP_DIR...``: check steps against their records.

  Prints one line per step (``ok``, ``no record`` or what is damaged); exit 1 if any is damaged.
  """
  import sys
  step_dirs = list(sys.argv[1:] if argv is None else argv)
  if not step_dirs or any(a in ("-h", "--help") for a in step_dirs):
    print(main.__doc__)
    return 0 if step_dirs else 2
  damaged = False
  for step_dir in step_dirs:
    step_dir = os.path.abspath(step_dir.rstrip("/"))
    name = os.path.basename(step_dir)
    step = int(name.split("_")[-1]) if name.split("_")[-1].isdigit() else -1
    try:
      verified = verify(step_dir, step)
      files = len(read_record(step_dir, step)["files"]) if verified else 0
      print(f"{step_dir}: " + (f"ok ({files} files match the record)" if verified else
                               "no integrity record (cannot be checked without reading it)"))
    except DamagedCheckpointError as error:
      damaged = True
      print(f"{step_dir}: DAMAGED: {'; '.join(d.describe() for d in error.damages)}")
  return 1 if damaged else 0


if __name__ == "__main__":
  raise SystemExit(main())
