"""The shortening protocol: what shortens the encoder at layer ``delete_gate_layer``.

One ``Shortening`` object per model, chosen once from ``deletion_type`` by
``mrt5_jax.model.shortening.registry.shortening_for`` (the only place that
looks at the kind). The network, the objective, the evaluator, the inference
path, the speed meter and the t5x adapter talk to it and never to the kind:

* ``make_module``: the Flax module it owns (``encoder/<module_name>``), or None.
* ``read``: what it reads at its layer (the hidden state entering that layer)
  -> ``Reading``: per-position scores ``gate`` (B, L) where "deleted" means
  ``gate < deletion_threshold`` (the delete gate's G; the pooling baselines'
  slot markers), raw ``gate_logits``, and BP's ``boundaries``.
* ``soft`` / ``hard`` (``shorten``): the hidden state, the positions, validity
  and segment ids the remaining layers run on (``Shortened``), and the key
  bias of the decoder's cross-attention.
* ``auxiliary_losses``, ``metric_sums``: its terms of the loss and its
  deletion statistics (the same keys for every kind).
* ``length_reduction_target``, ``target_rate``: the length reduction it aims
  at (its own, or the controller's).
* ``deleted``, ``kept_counts``: what "deleted" means for the deletion profile,
  the inspect tool and the hard-deletion buckets.
* ``keep_mask``: the positions hard shortening keeps, for the kinds whose
  hard shortening is keeping positions (``packs``: packed hard deletion,
  ``mrt5_jax.maths.packing``).
* Flags for the few places that need to know what exists: ``shortens``
  (False only for plain ByT5), ``hard_differs`` (hard shortening differs from
  soft), ``packs`` (hard shortening keeps a subset of positions),
  ``trains_hard`` (``hard_delete_train_prob`` applies), ``learned_gate``
  (the published MrT5 state dict holds its weights), ``converts`` (to PyTorch),
  ``needs_deletion_rng`` (draws from the 'deletion' rng at every call).

The base class is the identity (ByT5: nothing shortens). This module imports
none of the project's modules, so every implementation sits one level above it.

Shapes: B batch, L input length, L' length the remaining layers run on.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

import flax.struct
import jax
import jax.numpy as jnp

# The model's ``mrt5_jax.model.config.MrT5Config`` (not imported: the implementations
# sit below the config module, which nests their settings).
ModelConfig = Any
# Logical name of a one-wide score axis (the gate's, BP's; never sharded nor factored).
GATE_SCORE_AXIS = "gate_score"
# Loss terms every kind reports (0 where it has none), so metric sums always add up.
AUXILIARY_LOSSES = ("gate_loss", "entropy_penalty", "boundary_loss")
# Of those, the ones a t5x run logs only for the kinds that name them in ``optional_metrics``.
OPTIONAL_METRICS = ("boundary_loss",)
# Column titles of the task report for kinds whose "deletion" is a length reduction.
LENGTH_REDUCTION_TITLES = {"deleted": "len reduction", "kept/len": "slots/len"}


def deleted_positions(gate: jax.Array, real: jax.Array, threshold: float) -> jax.Array:
  """(B, L) bool: real positions whose G lies below the threshold.

  The one definition of "deleted" behind every deletion rate (training
  metrics, the controller, evaluation, prediction aux, the deletion profile).
  """
  return jnp.logical_and(gate < threshold, real > 0)


def deletion_rate(num_deleted: jax.Array, num_real: jax.Array) -> jax.Array:
  """Deleted share of real positions from counts (0 when there are none)."""
  return jnp.asarray(num_deleted, jnp.float32) / jnp.maximum(
      jnp.asarray(num_real, jnp.float32), 1.0)


def gate_sums(gate: jax.Array, real: jax.Array, threshold: float) -> dict[str, jax.Array]:
  """Additive statistics of G (B, L) over real positions.

  Returns gate_sum, num_real, num_deleted, gate_min, gate_max (min/max over real
  positions; +/-inf when there are none) and kept_max (largest kept count of a row).
  """
  real = real.astype(bool)
  gate = gate.astype(jnp.float32)
  deleted = deleted_positions(gate, real, threshold)
  kept_per_row = jnp.sum(jnp.logical_and(real, ~deleted), axis=-1)
  return {
      "gate_sum": jnp.sum(jnp.where(real, gate, 0.0)),
      "num_real": jnp.sum(real).astype(jnp.float32),
      "num_deleted": jnp.sum(deleted).astype(jnp.float32),
      "gate_min": jnp.min(jnp.where(real, gate, jnp.inf)),
      "gate_max": jnp.max(jnp.where(real, gate, -jnp.inf)),
      "kept_max": jnp.max(kept_per_row).astype(jnp.float32),
  }


class Reading(NamedTuple):
  """What a shortening reads at its layer (see the module docstring); None where absent."""
  gate: Optional[jax.Array] = None
  gate_logits: Optional[jax.Array] = None
  boundaries: Optional[jax.Array] = None


@flax.struct.dataclass
class Shortened:
  """What the layers after the shortening run on.

  hidden: (B, L', E) their input.
  positions: (B|1, L') int32 positions for the relative position bias.
  valid: (B, L') bool, the slot holds data (the decoder's cross-attention mask).
  segment_ids: (B, L') int32 packed segment of each slot, or None.
  kept_positions: (B, L') int32 original position of each slot.
  num_dropped: (B,) int32 positions (BP: segments) that did not fit.
  key_bias: (B, L') float32 added to the decoder's cross-attention logits.
  self_key_bias: (B, L') float32 added to the encoder self-attention logits, or None.
  """
  hidden: jax.Array
  positions: jax.Array
  valid: jax.Array
  segment_ids: Optional[jax.Array]
  kept_positions: jax.Array
  num_dropped: jax.Array
  key_bias: jax.Array
  self_key_bias: Optional[jax.Array] = None


def full_length(hidden: jax.Array, tokens: jax.Array, segment_ids: Optional[jax.Array],
                gate: Optional[jax.Array] = None) -> Shortened:
  """Every position kept; ``gate`` (if given) biases the keys (soft deletion)."""
  batch, length = tokens.shape
  return Shortened(
      hidden=hidden, positions=jnp.arange(length, dtype=jnp.int32)[None, :],
      valid=tokens > 0, segment_ids=segment_ids,
      kept_positions=jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length)),
      num_dropped=jnp.zeros((batch,), jnp.int32),
      key_bias=jnp.zeros((batch, length), jnp.float32) if gate is None else gate,
      self_key_bias=gate)


def pooled_slots(pooled) -> Shortened:
  """Pooled slots (a ``mrt5_jax.maths.pooling.Pooled``) as what the remaining
  layers run on: each slot at its first input position, no key bias."""
  return Shortened(
      hidden=pooled.hidden, positions=pooled.positions, valid=pooled.valid,
      segment_ids=pooled.segment_ids, kept_positions=pooled.positions,
      num_dropped=pooled.num_dropped, key_bias=jnp.zeros(pooled.valid.shape, jnp.float32))


class Shortening:
  """The protocol, with the identity as its default (plain ByT5: ``deletion_type='none'``).

  ``config`` is the model's ``MrT5Config``. Subclasses set ``name`` (their
  ``deletion_type``) and override what differs.
  """
  name = "none"
  title = "ByT5 (no shortening)"
  module_name: Optional[str] = None
  shortens = False
  hard_differs = False
  packs = False
  trains_hard = False
  learned_gate = False
  converts = True
  needs_deletion_rng = False
  optional_metrics: tuple[str, ...] = ()
  metric_titles: Mapping[str, str] = {}
  most_deleted_label = "most deleted"
  # What a removed position is called in reports: "deleted", or "pooled" for BP / CP.
  verb = "deleted"

  def __init__(self, config: Any):
    self.config = config

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.name!r})"

  # ------------------------------------------------------------------------- the network

  def make_module(self):
    """The Flax module the encoder owns as ``module_name``, or None."""
    return None

  def read(self, host, module, hidden: jax.Array, tokens: jax.Array,
           segment_ids: Optional[jax.Array], deterministic: bool) -> Reading:
    """Read ``hidden`` (B, L, E), the state entering the layer. ``host`` is the
    encoder module (its rngs), ``module`` this shortening's own module."""
    return Reading()

  def soft(self, module, hidden: jax.Array, reading, tokens: jax.Array,
           segment_ids: Optional[jax.Array], compacted_length: Optional[int]) -> Shortened:
    """Soft (training-time) shortening; ``reading`` is the encoder's ``StageOneOutput``."""
    return full_length(hidden, tokens, segment_ids)

  def hard(self, module, hidden: jax.Array, reading, tokens: jax.Array,
           segment_ids: Optional[jax.Array], compacted_length: Optional[int]) -> Shortened:
    """Hard shortening into ``compacted_length`` static slots (default: the kind's own)."""
    return self.soft(module, hidden, reading, tokens, segment_ids, compacted_length)

  def shorten(self, module, hidden, reading, tokens, segment_ids, *, deletion: str,
              compacted_length: Optional[int]) -> Shortened:
    """``soft`` or ``hard`` by name (``deletion``, already validated)."""
    method = self.hard if deletion == "hard" else self.soft
    return method(module, hidden, reading, tokens, segment_ids, compacted_length)

  # ------------------------------------------------------------------------- the objective

  def auxiliary_losses(self, forward: Mapping[str, Any], real: jax.Array, *, objective: Any,
                       num_real: jax.Array, num_microbatches: int) -> dict[str, jax.Array]:
    """Its terms of the loss, keyed by ``AUXILIARY_LOSSES``. ``forward`` holds the
    encoder's ``gate``, ``gate_logits`` and ``boundaries``; ``objective`` is the
    ``ObjectiveConfig``; ``gate_loss`` is weighted by the controller's alpha."""
    return {name: jnp.float32(0.0) for name in AUXILIARY_LOSSES}

  def metric_sums(self, gate: Optional[jax.Array], real: jax.Array) -> dict[str, jax.Array]:
    """``gate_sums`` of its scores (a model without any: zeros, nothing deleted)."""
    if gate is None:
      return gate_sums(jnp.zeros(real.shape, jnp.float32), real, 0.0)
    return gate_sums(gate, real, self.config.deletion_threshold)

  @property
  def length_reduction_target(self) -> Optional[float]:
    """The length reduction the method sets by itself (BP, CP), or None."""
    return None

  def target_rate(self, controller_target: float) -> Optional[float]:
    """The deletion rate training aims at: the controller's, the method's own, or None."""
    return None

  # ------------------------------------------------------------------------- inference

  def deleted(self, gate: Optional[jax.Array], real: jax.Array) -> jax.Array:
    """(B, L) bool: the positions it deletes (pools away) among ``real`` ones."""
    if gate is None:
      return jnp.zeros(real.shape, jnp.bool_)
    return deleted_positions(gate, real, self.config.deletion_threshold)

  def keep_mask(self, gate: Optional[jax.Array], tokens: jax.Array,
                segment_ids: Optional[jax.Array]) -> jax.Array:
    """(B, L) bool: the positions hard shortening keeps (``packs`` kinds only)."""
    raise NotImplementedError(f"{self.title} does not keep a subset of positions")

  def kept_counts(self, gate: Optional[jax.Array], tokens: jax.Array,
                  segment_ids: Optional[jax.Array]) -> jax.Array:
    """(B,) int32 positions each row keeps (hard shortening's bucket reads the largest)."""
    return jnp.sum(tokens > 0, axis=-1).astype(jnp.int32)
