"""What the encoder returns: its state at the gate, and its output for the decoder."""
from __future__ import annotations

from typing import Optional

import flax.struct
import jax


@flax.struct.dataclass
class StageOneOutput:
  """The encoder up to the gate.

  hidden: (B, L, E) the hidden state entering layer ``delete_gate_layer``.
  gate: (B, L) float32 the shortening's per-position scores, "deleted" where
    below ``deletion_threshold`` (the delete gate's G, pad = k; the pooling
    baselines' ``pooling.slot_markers``: 0 on the one position per slot, k
    elsewhere), or None (no shortening). ``mrt5_jax.model.shortening.base.Reading``.
  gate_logits: (B, L) float32 raw scores (gate logits; BP's boundary logits;
    CP: the markers), or None.
  boundaries: (B, L) float32 BP's pooling boundaries (straight-through in
    training), or None.
  """
  hidden: jax.Array
  gate: Optional[jax.Array]
  gate_logits: Optional[jax.Array]
  boundaries: Optional[jax.Array] = None


@flax.struct.dataclass
class EncoderOutput:
  """What the encoder hands the decoder, the loss and the metrics.

  encoded: (B, Lc, E) final encoder states.
  mask: (B, Lc) int32, 1 where the decoder may attend.
  key_bias: (B, Lc) float32 added to cross-attention logits (soft: G; hard: 0).
  segment_ids: (B, Lc) int32 packed segment of each slot, or None.
  gate: (B, L) float32 gate values at full length (pad = k), or None (no gate).
  gate_logits: (B, L) float32 pre-sigmoid gate scores, or None.
  kept_positions: (B, Lc) int32 original position of each slot.
  num_dropped: (B,) int32 positions over capacity (hard deletion only; BP:
    segments over its slots).
  boundaries: (B, L) float32 BP's boundaries (``StageOneOutput``), or None.
  """
  encoded: jax.Array
  mask: jax.Array
  key_bias: jax.Array
  segment_ids: Optional[jax.Array]
  gate: Optional[jax.Array]
  gate_logits: Optional[jax.Array]
  kept_positions: jax.Array
  num_dropped: jax.Array
  boundaries: Optional[jax.Array] = None

  @property
  def compacted_length(self) -> int:
    return self.encoded.shape[1]
