"""Encode, score and generate with real (hard) deletion under static shapes.

``InferenceRunner`` wraps ``encode_path.EncodePath`` (the one stage one ->
bucket -> stage two path) with scoring and greedy decoding. Modes are those of
``encode_path.InferenceConfig``: ``packed`` (the default: two compiled
stages, the host packs every row's kept positions into fewer rows),
``bucketed`` (two stages, every row at the bucket of the longest),
``capacity`` (one program, fixed compacted length) and ``soft`` (no
compaction, the training-time computation).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from mrt5_jax.inference import decoding
from mrt5_jax.model import layer_stacking
from mrt5_jax.model.config import MrT5Config
from mrt5_jax.inference.encode_path import MODES as RUNNER_MODES
from mrt5_jax.inference.encode_path import EncodePath, InferenceConfig
from mrt5_jax.model.network import EncoderOutput, Transformer


def _as_tokens(array, name: str) -> jax.Array:
  tokens = np.asarray(array)
  if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
    raise ValueError(f"{name} must be a non-empty (batch, length) array, got shape {tokens.shape}")
  if not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"{name} must hold integer token ids, got {tokens.dtype}")
  return jnp.asarray(tokens, jnp.int32)


class InferenceRunner:
  """Encode, score and generate with one set of params, caching compiled programs.

  ``mode`` overrides ``inference.mode``; a model without a gate always runs
  soft, BP and CP run ``packed`` as ``bucketed`` (``EncodePath.resolved_mode``).
  """

  def __init__(self, config: MrT5Config, params, *, mode: Optional[str] = None,
               inference: InferenceConfig = InferenceConfig()):
    mode = mode or inference.mode
    if mode not in RUNNER_MODES:
      raise ValueError(f"mode must be one of {RUNNER_MODES}, got {mode!r}")
    self.config = config
    self.params = layer_stacking.to_layout(params, config)
    self.module = Transformer(config)
    self.path = EncodePath(self.module, inference.replace(mode=mode))
    self.mode = self.path.resolved_mode()
    module = self.module

    def score(params, encoder_output, decoder_input_tokens, decoder_target_tokens):
      logits = decoding.decoder_logits(module, params, encoder_output, decoder_input_tokens,
                                       decoder_target_tokens)
      return decoding.token_log_likelihood(logits, decoder_target_tokens)

    def generate(params, encoder_output, max_decode_length):
      return decoding.greedy_decode(module, params, encoder_output, max_decode_length)

    self._score = jax.jit(score)
    self._generate = jax.jit(generate, static_argnames="max_decode_length")

  @property
  def num_compiled_programs(self) -> int:
    """Encoder programs compiled so far."""
    return self.path.num_compiled_programs

  def encode(self, encoder_input_tokens, encoder_segment_ids=None) -> EncoderOutput:
    tokens = _as_tokens(encoder_input_tokens, "encoder_input_tokens")
    segments = None
    if encoder_segment_ids is not None:
      segments = _as_tokens(encoder_segment_ids, "encoder_segment_ids")
      if segments.shape != tokens.shape:
        raise ValueError(f"encoder_segment_ids shape {segments.shape} != tokens {tokens.shape}")
    return self.path.encode(self.params, tokens, segments)

  def score(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
            encoder_segment_ids=None) -> jax.Array:
    """Per-token log-likelihood (B, T) of the targets; 0 at target padding."""
    return self.score_from(self.encode(encoder_input_tokens, encoder_segment_ids),
                           decoder_input_tokens, decoder_target_tokens)

  def score_from(self, encoder_output: EncoderOutput, decoder_input_tokens,
                 decoder_target_tokens) -> jax.Array:
    """``score`` against an ``encode`` result."""
    decoder_input = _as_tokens(decoder_input_tokens, "decoder_input_tokens")
    targets = _as_tokens(decoder_target_tokens, "decoder_target_tokens")
    return self._score(self.params, encoder_output, decoder_input, targets)

  def generate(self, encoder_input_tokens, max_decode_length: int) -> jax.Array:
    """Greedy decoding (B, max_decode_length) int32 with the KV cache."""
    return self.generate_from(self.encode(encoder_input_tokens), max_decode_length)

  def generate_from(self, encoder_output: EncoderOutput, max_decode_length: int) -> jax.Array:
    """Greedy decoding against an ``encode`` result (its deletion figures stay readable)."""
    if max_decode_length < 1:
      raise ValueError("max_decode_length must be positive")
    return self._generate(self.params, encoder_output, max_decode_length=int(max_decode_length))

