"""Cost of checkpoint integrity records: save and restore with and without them, side by side.

  python benchmarks/checkpoint_integrity.py [--size small] [--params_only] [--repeats 3]
                                            [--dir /tmp/ckpt_bench] [--output results.json]

The state is a ByT5-size train state (params + AdamW moments, float32, filled with
random normals so that compression does not shrink it) laid out as the trainer
saves it. Per repeat, alternately: orbax's CheckpointManager with the project's
options but no record (the baseline) and ``writer.Manager`` (record written
before the commit), each saving and waiting until committed; then restoring a
step without and with ``checkpoint_integrity.verify`` first, each from a cold
page cache (the step's files are evicted with posix_fadvise) and from a warm one.
The record's work alone (walk, CRC-32 of every file, write) is timed on the files
just saved. Reported: median seconds, the ratios with / without, and the record's
and the verification's share of a plain save / restore (robust on a busy machine,
where whole-save ratios carry the noise of two long measurements).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from mrt5_jax.checkpointing import integrity
from mrt5_jax.checkpointing import readers
from mrt5_jax.checkpointing import writer
from mrt5_jax.training import optimizers
from mrt5_jax.model.config import preset
from mrt5_jax.training.trainer import Trainer


def random_state(size: str, params_only: bool) -> dict:
  trainer = Trainer(preset(size), optimizer=optimizers.OptimizerConfig(name="adamw"))
  abstract = trainer.abstract_state(1024, 189)
  if params_only:
    abstract = {"params": abstract["params"], "step": abstract["step"]}
  rng = np.random.default_rng(0)

  def fill(leaf):
    if leaf.shape == ():
      return np.zeros((), leaf.dtype)
    return rng.standard_normal(leaf.shape, dtype=np.float32).astype(leaf.dtype)
  return jax.tree_util.tree_map(fill, abstract)


def release_memory() -> None:
  """Hand freed heap back to the OS (glibc keeps the buffers of each save / restore
  otherwise, and a few repeats of a 3 GiB state would exhaust a small machine)."""
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except OSError:  # not glibc
    pass


def evict(directory: str) -> None:
  """Drop the page cache of every file under ``directory`` (no other file is touched)."""
  for root, _, names in os.walk(directory):
    for name in names:
      fd = os.open(os.path.join(root, name), os.O_RDONLY)
      try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
      finally:
        os.close(fd)


def plain_manager(directory: str) -> ocp.CheckpointManager:
  """The baseline: the project's orbax options without the integrity hook."""
  options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=True, create=True, cleanup_tmp_directories=True,
      async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
  return ocp.CheckpointManager(directory, options=options,
                               item_names=(readers.STATE, writer.DATA_ITERATOR))


def timed_save(mngr, step, state) -> float:
  release_memory()
  start = time.perf_counter()
  writer.save(mngr, step, state, {"batches_consumed": step})
  mngr.wait_until_finished()
  return time.perf_counter() - start


def timed_restore(directory, step, target, verify: bool, cold: bool) -> tuple[float, float]:
  """(total seconds, of which verification) of restoring ``step``."""
  step_dir = os.path.join(directory, str(step))
  release_memory()
  if cold:
    evict(step_dir)
  start = time.perf_counter()
  if verify:
    assert integrity.verify(step_dir, step)
  verified = time.perf_counter()
  mngr = plain_manager(directory)
  state, _ = writer.restore(mngr, step, target)
  jax.block_until_ready(state)
  end = time.perf_counter()
  mngr.close()
  del state
  return end - start, verified - start


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="small", help="ByT5 size preset (default small)")
  parser.add_argument("--params_only", action="store_true", help="params without Adam moments")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dir", default="/tmp/mrt5_checkpoint_bench")
  parser.add_argument("--output", default=None)
  args = parser.parse_args(argv)

  state = random_state(args.size, args.params_only)
  leaves = jax.tree_util.tree_leaves(state)
  n_bytes = sum(x.nbytes for x in leaves)
  print(f"state: {sum(x.size for x in leaves):,} numbers, {n_bytes / 2**30:.2f} GiB "
        f"({'params only' if args.params_only else 'params + AdamW moments'})", flush=True)
  target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
  shutil.rmtree(args.dir, ignore_errors=True)
  plain_dir, recorded_dir = os.path.join(args.dir, "plain"), os.path.join(args.dir, "recorded")
  times = {k: [] for k in ("save_plain", "save_recorded", "record", "restore_cold",
                           "verify_restore_cold", "verify_cold", "restore_warm",
                           "verify_restore_warm", "verify_warm")}
  for repeat in range(1, args.repeats + 1):
    for directory in (plain_dir, recorded_dir):
      shutil.rmtree(directory, ignore_errors=True)
    with plain_manager(plain_dir) as mngr:
      times["save_plain"].append(timed_save(mngr, repeat, state))
    with writer.Manager(recorded_dir, async_save=False) as mngr:
      times["save_recorded"].append(timed_save(mngr, repeat, state))
    start = time.perf_counter()  # the hook's work alone, on the files just written
    integrity.write_record(os.path.join(recorded_dir, str(repeat)), repeat)
    times["record"].append(time.perf_counter() - start)
    for cache in ("cold", "warm"):
      total, _ = timed_restore(recorded_dir, repeat, target, verify=False, cold=cache == "cold")
      times[f"restore_{cache}"].append(total)
      total, verify = timed_restore(recorded_dir, repeat, target, verify=True,
                                    cold=cache == "cold")
      times[f"verify_restore_{cache}"].append(total)
      times[f"verify_{cache}"].append(verify)
    print(f"repeat {repeat}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
          flush=True)
  shutil.rmtree(args.dir, ignore_errors=True)

  median = {k: statistics.median(v) for k, v in times.items()}
  result = {
      "size": args.size, "params_only": args.params_only, "gib": n_bytes / 2**30,
      "repeats": args.repeats, "median_seconds": median,
      "save_ratio": median["save_recorded"] / median["save_plain"],
      "record_share_of_save": median["record"] / median["save_plain"],
      "verify_share_of_restore_cold": median["verify_cold"] / median["restore_cold"],
      "restore_ratio_cold": median["verify_restore_cold"] / median["restore_cold"],
      "restore_ratio_warm": median["verify_restore_warm"] / median["restore_warm"],
  }
  print(f"save: {median['save_plain']:.2f} s without the record, {median['save_recorded']:.2f} s "
        f"with it: x{result['save_ratio']:.3f}; writing the record alone "
        f"{median['record']:.2f} s = {result['record_share_of_save']:.1%} of the plain save")
  for cache in ("cold", "warm"):
    print(f"restore ({cache} page cache): {median[f'restore_{cache}']:.2f} s without verifying, "
          f"{median[f'verify_restore_{cache}']:.2f} s with it (verify "
          f"{median[f'verify_{cache}']:.2f} s): x{result[f'restore_ratio_{cache}']:.3f}")
  if args.output:
    with open(args.output, "w") as f:
      json.dump(result, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
