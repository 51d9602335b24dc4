"""Hard deletion at inference: the compacted-length settings and the one encode path.

``InferenceConfig`` says how the encoder runs after the gate; it is not part of
the network (a checkpoint's ``model_config.json`` never carries it):

* ``bucketed``: stage one (embedding, the layers before the gate, the gate)
  is one compiled program; the host reads the batch's largest kept count,
  picks the smallest bucket that holds it, and runs stage two compiled for
  that bucket, so a stream of batches costs at most one program per bucket.
  At the input length nothing is gathered (deleted positions are masked in
  place), so a full bucket costs what soft deletion costs.
* ``packed``: stage one as in ``bucketed``; the host plans where every
  row's kept positions go (``mrt5_jax.maths.packing``), and stage two runs on
  the kept positions of all rows packed densely into rows of j/n of the input
  length (``packed_row_lengths`` = n, j up to n x ``packed_row_limit``, so a
  packed row may hold two rows that keep more than half each; whichever holds
  the longest row and costs fewest FLOPs), so its cost
  follows the batch's total kept count instead of its longest row; a batch
  that packs no better than its per-row bucket runs per row (``bucketed``).
  The packed row count is bucketed (``packed_row_buckets`` shapes per batch
  size); the output is unpacked to per-row slots (bucketed like ``bucketed``)
  for the decoder. Kinds that do not keep a subset of positions (BP, CP) run
  ``bucketed``.
* ``capacity``: one program whose compacted length is a fixed fraction of
  the input length; if more positions pass the threshold than fit, the
  highest-G ones are kept and the overflow is reported (``num_dropped``).
* ``soft``: no compaction (the training-time computation).

``EncodePath`` is the stage one -> bucket -> stage two function that the
inference runner, the evaluator, the deletion profile and the benchmark share.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import gin
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mrt5_jax.maths import packing
from mrt5_jax.maths import rng as rng_lib
from mrt5_jax.model.flops import layer_flops
from mrt5_jax.model.outputs import EncoderOutput, StageOneOutput
from mrt5_jax.model.shortening.base import deleted_positions, deletion_rate
from mrt5_jax.parallel.partitioning import host_array

MODES = ("packed", "bucketed", "capacity", "soft")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class InferenceConfig:
  """How hard deletion picks the compacted length (see the module docstring).

  bucket_step: buckets are powers of two (0) or multiples of this step.
  min_bucket_length: the smallest bucket.
  capacity_fraction: ``capacity`` mode's length as a fraction of the input
    length, rounded up to a bucket.
  packed_row_buckets: ``packed`` mode's packed row counts per batch size: the
    count is rounded up to a multiple of ceil(rows / packed_row_buckets).
  packed_row_lengths: ``packed`` mode's packed row lengths per input length L:
    ceil(j * L / packed_row_lengths) for j = 1..packed_row_lengths x packed_row_limit.
  packed_row_limit: the longest packed row, in input lengths (1: rows of at most L).
  """
  mode: str = "packed"
  bucket_step: int = 0
  min_bucket_length: int = 8
  capacity_fraction: float = 0.5
  packed_row_buckets: int = 16
  packed_row_lengths: int = 8
  packed_row_limit: float = 2.0

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"InferenceConfig.mode must be one of {MODES}, got {self.mode!r}")
    if not 0.0 < self.capacity_fraction <= 1.0:
      raise ValueError(f"capacity_fraction must be in (0, 1], got {self.capacity_fraction}")
    if self.bucket_step < 0 or self.min_bucket_length < 1:
      raise ValueError("bucket_step must be >= 0 and min_bucket_length >= 1")
    if self.packed_row_buckets < 1:
      raise ValueError(f"packed_row_buckets must be >= 1, got {self.packed_row_buckets}")
    if self.packed_row_lengths < 1:
      raise ValueError(f"packed_row_lengths must be >= 1, got {self.packed_row_lengths}")
    if self.packed_row_limit < 1.0:
      raise ValueError(
          f"packed_row_limit must be >= 1 (input lengths), got {self.packed_row_limit}")

  def replace(self, **changes) -> "InferenceConfig":
    return dataclasses.replace(self, **changes)


def bucket_lengths(inference: InferenceConfig, input_length: int) -> tuple[int, ...]:
  """Every compacted length hard deletion may use for inputs of this length.

  Powers of two (``bucket_step == 0``) or multiples of ``bucket_step``, from
  ``min_bucket_length`` up, always ending with ``input_length`` itself.
  """
  if input_length < 1:
    raise ValueError("input_length must be positive")
  lengths = []
  step = inference.bucket_step
  if step == 0:
    length = 1 << max(0, math.ceil(math.log2(inference.min_bucket_length)))
    while length < input_length:
      lengths.append(length)
      length *= 2
  else:
    length = max(step, step * math.ceil(inference.min_bucket_length / step))
    while length < input_length:
      lengths.append(length)
      length += step
  lengths.append(input_length)
  return tuple(lengths)


def packed_row_lengths(inference: InferenceConfig, input_length: int) -> tuple[int, ...]:
  """``packed`` mode's packed row lengths for inputs of this length, shortest first:
  ceil(j * L / n) for j = 1..floor(n * limit) (n = ``packed_row_lengths``, limit =
  ``packed_row_limit``), so a batch size costs at most n x limit x
  ``packed_row_buckets`` packed shapes."""
  if input_length < 1:
    raise ValueError("input_length must be positive")
  n = inference.packed_row_lengths
  count = math.floor(n * inference.packed_row_limit + 1e-9)
  return tuple(sorted({math.ceil(j * input_length / n) for j in range(1, count + 1)}))


def bucket_for(inference: InferenceConfig, input_length: int, kept: int) -> int:
  """The smallest bucket length that holds ``kept`` positions."""
  for length in bucket_lengths(inference, input_length):
    if length >= kept:
      return length
  return input_length


def capacity_length(inference: InferenceConfig, input_length: int) -> int:
  """Compacted length of ``capacity`` mode: the fraction rounded up to a bucket."""
  wanted = max(1, math.ceil(inference.capacity_fraction * input_length))
  return bucket_for(inference, input_length, wanted)


def _rngs(rng: Optional[jax.Array]) -> dict:
  return {} if rng is None else rng_lib.inference_streams(rng)


class EncodePath:
  """Jitted stage one and stage two of one module, with the bucket chosen between them.

  ``read_gate`` runs stage one and returns its output with the per-row kept
  counts; ``compacted_length`` turns those into a bucket; ``finish`` runs
  stage two; ``encode`` does all three (or one program in ``capacity`` and
  ``soft`` mode). Programs are compiled once per shape and bucket.
  """

  def __init__(self, module: nn.Module, inference: InferenceConfig = InferenceConfig(),
               num_groups: int = 1):
    self.module = module
    self.config = module.config
    self.inference = inference
    self.num_groups = num_groups
    self.shortening = shortening = module.shortening

    def stage_one(params, tokens, segment_ids, rng):
      reading = module.apply({"params": params}, tokens, segment_ids, False,
                             method=module.encode_stage_one, rngs=_rngs(rng))
      return reading, shortening.kept_counts(reading.gate, tokens, segment_ids)

    def stage_two(params, reading, tokens, segment_ids, deletion, length):
      return module.apply({"params": params}, reading, tokens, segment_ids, False,
                          deletion=deletion, compacted_length=length,
                          method=module.encode_stage_two)

    def stage_two_packed(params, reading, tokens, segment_ids, plan, unpacked_length):
      return module.apply({"params": params}, reading, tokens, segment_ids, plan,
                          unpacked_length, False, method=module.encode_stage_two_packed)

    def encode_once(params, tokens, segment_ids, rng, deletion, length):
      return module.apply({"params": params}, tokens, segment_ids, None, False,
                          deletion=deletion, compacted_length=length, return_aux=True,
                          method=module.encode, rngs=_rngs(rng))

    self._stage_one = jax.jit(stage_one)
    self._stage_two = jax.jit(stage_two, static_argnames=("deletion", "length"))
    self._encode_once = jax.jit(encode_once, static_argnames=("deletion", "length"))
    self._stage_two_packed = jax.jit(stage_two_packed, static_argnames="unpacked_length")

  @property
  def programs(self) -> dict:
    """The jitted functions by name, for lowering ahead of time (``.lower(...)``):
    ``encode_once`` (params, tokens, segment_ids, rng, deletion, length), ``stage_one``
    (params, tokens, segment_ids, rng), ``stage_two`` (params, reading, tokens,
    segment_ids, deletion, length), ``stage_two_packed`` (params, reading, tokens,
    segment_ids, plan, unpacked_length)."""
    return {"encode_once": self._encode_once, "stage_one": self._stage_one,
            "stage_two": self._stage_two, "stage_two_packed": self._stage_two_packed}

  @property
  def num_compiled_programs(self) -> int:
    """Encoder programs compiled so far (each jitted function's cache entries)."""
    return sum(fn._cache_size() for fn in self.programs.values())

  def resolved_mode(self, mode: Optional[str] = None) -> str:
    """The mode that runs: ``mode`` (default: the config's), ``soft`` where hard
    shortening equals soft, ``bucketed`` for ``packed`` where nothing can pack."""
    mode = mode or self.inference.mode
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not self.shortening.hard_differs:
      return "soft"
    if mode == "packed" and not self.shortening.packs:
      return "bucketed"
    return mode

  def _rng(self, rng):
    """A shortening that draws at every call (random deletion) gets a fixed key
    unless given one."""
    if rng is None and self.shortening.needs_deletion_rng:
      return rng_lib.inference_key()
    return rng

  def read_gate(self, params, tokens, segment_ids=None, rng=None
                ) -> tuple[StageOneOutput, jax.Array]:
    """Stage one: (hidden entering the gate layer, G, gate logits) and kept counts (B,)."""
    return self._stage_one(params, tokens, segment_ids, self._rng(rng))

  def compacted_length(self, kept, input_length: int) -> int:
    """The bucket that holds the largest of the kept counts ``kept`` (B,)."""
    # every process must pick the same bucket: the kept counts of all hosts
    return bucket_for(self.inference, input_length, max(int(np.max(host_array(kept))), 1))

  def finish(self, params, reading: StageOneOutput, tokens, segment_ids=None, *,
             deletion: str = "hard", length: Optional[int] = None) -> EncoderOutput:
    """Stage two on ``length`` kept positions (hard) or at full length (soft)."""
    return self._stage_two(params, reading, tokens, segment_ids, deletion, length)

  def packing_plan(self, kept, input_length: int) -> packing.PackingPlan:
    """Where every row's kept positions go (``kept`` (B,) from ``read_gate``).

    Packed rows are ``packed_row_lengths(inference, L)`` long: of those that
    hold the longest row, the one whose plan costs fewest FLOPs (attention
    runs over a whole packed row, so short rows pack better into short ones,
    and rows just longer than the longest row waste the fewest slots).
    Made from the kept counts of all processes, so every process makes the
    same plan; one group of rows per data-parallel shard (``num_groups``).
    """
    kept = host_array(kept)
    longest = int(np.max(kept)) if kept.size else 1
    plans = [packing.make_plan(kept, row_length, self.num_groups,
                               self.inference.packed_row_buckets)
             for row_length in packed_row_lengths(self.inference, input_length)
             if row_length >= max(longest, 1)]
    return min(plans, key=self._plan_flops)

  def _plan_flops(self, plan: packing.PackingPlan) -> float:
    return plan.packed_rows * layer_flops(plan.row_length, self.config)

  def choose_packing(self, kept, input_length: int,
                     compacted_length: int) -> Optional[packing.PackingPlan]:
    """``packed`` mode's plan for this batch, or None where the per-row bucket
    ``compacted_length`` costs no more (nothing packs: the rows run per row,
    in place at the input length)."""
    plan = self.packing_plan(kept, input_length)
    per_row = len(host_array(kept)) * layer_flops(compacted_length, self.config)
    return plan if self._plan_flops(plan) < per_row else None

  def stage_two_shape(self, kept, input_length: int, compacted_length: int,
                      mode: Optional[str] = None) -> tuple[int, int]:
    """(rows, length) the layers after the gate ran on for kept counts ``kept``
    (B,) and an output of ``compacted_length`` slots: the packed rows of the
    plan's length in ``packed`` mode, the batch at that length otherwise."""
    if self.resolved_mode(mode) == "packed":
      plan = self.choose_packing(kept, input_length, compacted_length)
      if plan is not None:
        return plan.packed_rows, plan.row_length
    return len(host_array(kept)), compacted_length

  def finish_packed(self, params, reading: StageOneOutput, tokens, segment_ids,
                    plan: packing.PackingPlan, unpacked_length: int) -> EncoderOutput:
    """Stage two with the kept positions packed (``plan``), unpacked to
    (B, ``unpacked_length``)."""
    return self._stage_two_packed(params, reading, tokens, segment_ids, plan, unpacked_length)

  def encode(self, params, tokens, segment_ids=None, *, mode: Optional[str] = None,
             rng=None) -> EncoderOutput:
    """The encoder output in ``mode`` (default: the InferenceConfig's)."""
    mode = self.resolved_mode(mode)
    length = tokens.shape[1]
    rng = self._rng(rng)
    if mode == "soft":
      return self._encode_once(params, tokens, segment_ids, rng, "soft", None)
    if mode == "capacity":
      return self._encode_once(params, tokens, segment_ids, rng, "hard",
                               capacity_length(self.inference, length))
    reading, kept = self.read_gate(params, tokens, segment_ids, rng)
    unpacked_length = self.compacted_length(kept, length)
    plan = self.choose_packing(kept, length, unpacked_length) if mode == "packed" else None
    if plan is not None:
      return self.finish_packed(params, reading, tokens, segment_ids, plan, unpacked_length)
    return self.finish(params, reading, tokens, segment_ids, deletion="hard",
                       length=unpacked_length)


def deletion_figures(out: EncoderOutput, encoder_input_tokens: jax.Array,
                     threshold: float) -> dict[str, jax.Array]:
  """Per-example deletion figures of an encoder output, each (B,) float32.

  input_length: real (non-pad) input positions; kept_length: those not
  deleted (``gate.deleted_positions``, the training metrics' definition);
  deletion_rate: the deleted share; num_dropped: kept positions that did not
  fit the compacted length (capacity mode; 0 otherwise).
  """
  real = encoder_input_tokens > 0
  num_real = jnp.sum(real, axis=-1).astype(jnp.float32)
  if out.gate is None:
    num_deleted = jnp.zeros_like(num_real)
  else:
    deleted = deleted_positions(out.gate, real, threshold)
    num_deleted = jnp.sum(deleted, axis=-1).astype(jnp.float32)
  return {
      "deletion_rate": deletion_rate(num_deleted, num_real),
      "kept_length": num_real - num_deleted,
      "input_length": num_real,
      "num_dropped": jnp.broadcast_to(jnp.asarray(out.num_dropped, jnp.float32), num_real.shape),
  }
