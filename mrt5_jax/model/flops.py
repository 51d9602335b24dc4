"""Matmul FLOPs of the network per example, at the lengths that actually run.

The hand count behind every "FLOP ideal" speedup: projections, attention
scores and MLP of each encoder layer (the layers from the gate on at the
kept length), and the decoder with cross-attention over the encoder's length.
"""
from __future__ import annotations

from typing import Optional

from mrt5_jax.model.config import MrT5Config


def layer_flops(length: int, config: MrT5Config) -> float:
  """Matmul FLOPs of one encoder layer at ``length`` positions (per example)."""
  d, inner, ff = config.d_model, config.inner_dim, config.d_ff
  projections = 4 * length * d * inner * 2
  scores = 2 * length * length * inner * 2
  mlp = 3 * length * d * ff * 2
  return float(projections + scores + mlp)


def encoder_flops(config: MrT5Config, length: int, kept: Optional[int] = None) -> float:
  gate_layer = config.gate_layer if kept is not None else config.num_encoder_layers
  kept = length if kept is None else kept
  return (gate_layer * layer_flops(length, config)
          + (config.num_encoder_layers - gate_layer) * layer_flops(kept, config))


def batch_encoder_flops(config: MrT5Config, batch: int, length: int, rows: int,
                        run_length: int) -> float:
  """Matmul FLOPs of a batch whose layers from the gate on run on ``rows`` rows
  of ``run_length`` positions (per-row hard deletion: ``batch`` rows of the
  bucket; packed: the packed rows of the input length)."""
  gate = config.gate_layer
  return (batch * gate * layer_flops(length, config)
          + rows * (config.num_encoder_layers - gate) * layer_flops(run_length, config))


def decoder_flops(config: MrT5Config, target_length: int, encoder_length: int) -> float:
  d, inner, ff, t = config.d_model, config.inner_dim, config.d_ff, target_length
  self_attention = 4 * t * d * inner * 2 + 2 * t * t * inner * 2
  cross = 2 * t * d * inner * 2 + 2 * encoder_length * d * inner * 2 + 2 * t * encoder_length * inner * 2
  mlp = 3 * t * d * ff * 2
  return config.num_decoder_layers * (self_attention + cross + mlp) + t * d * config.vocab_size * 2


def ideal_speedup(config: MrT5Config, length: int, kept: int, target_length: int = 0) -> float:
  """FLOP ratio ByT5 / MrT5 (encoder only when ``target_length`` is 0)."""
  byt5 = encoder_flops(config, length)
  mrt5 = encoder_flops(config, length, kept)
  if target_length:
    byt5 += decoder_flops(config, target_length, length)
    mrt5 += decoder_flops(config, target_length, kept)
  return byt5 / mrt5
