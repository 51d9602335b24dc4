"""Inference with real (hard) deletion under static shapes.

``bucketed``: the encoder runs as two compiled stages; between them the host
reads the batch's largest kept count and picks the smallest bucket that holds
it, so a stream of batches costs at most one stage-two program per bucket.
``capacity``: one program whose compacted length is a fixed fraction of the
input length; overflow keeps the highest-G positions and is reported.
``soft``: no compaction (the training-time computation), for comparison.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from mrt5_jax import compaction
from mrt5_jax import decoding
from mrt5_jax.config import MrT5Config, bucket_for, capacity_length
from mrt5_jax.network import EncoderOutput, Transformer

RUNNER_MODES = ("bucketed", "capacity", "soft")


def _as_tokens(array, name: str) -> jax.Array:
  tokens = np.asarray(array)
  if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
    raise ValueError(f"{name} must be a non-empty (batch, length) array, got shape {tokens.shape}")
  if not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"{name} must hold integer token ids, got {tokens.dtype}")
  return jnp.asarray(tokens, jnp.int32)


class InferenceRunner:
  """Encode, score and generate with one set of params, caching compiled programs."""

  def __init__(self, config: MrT5Config, params, *, mode: Optional[str] = None):
    mode = mode or config.hard_deletion_mode
    if mode not in RUNNER_MODES:
      raise ValueError(f"mode must be one of {RUNNER_MODES}, got {mode!r}")
    self.config = config
    self.params = params
    self.mode = mode if config.has_gate else "soft"
    self.module = Transformer(config)
    module = self.module

    def stage_one(params, tokens, segment_ids):
      hidden, gate, logits = module.apply({"params": params}, tokens, segment_ids, False,
                                          method=module.encode_stage_one)
      kept = compaction.count_kept(gate, tokens > 0, config.deletion_threshold, segment_ids)
      return hidden, gate, logits, jnp.max(kept)

    def stage_two(params, hidden, gate, logits, tokens, segment_ids, length):
      return module.apply({"params": params}, hidden, gate, logits, tokens, segment_ids, False,
                          deletion="hard", compacted_length=length,
                          method=module.encode_stage_two)

    def encode_once(params, tokens, segment_ids, deletion, length):
      return module.apply({"params": params}, tokens, segment_ids, None, False,
                          deletion=deletion, compacted_length=length, return_aux=True,
                          method=module.encode)

    def score(params, encoder_output, decoder_input_tokens, decoder_target_tokens):
      logits = decoding.decoder_logits(module, params, encoder_output, decoder_input_tokens,
                                       decoder_target_tokens)
      return decoding.token_log_likelihood(logits, decoder_target_tokens)

    def generate(params, encoder_output, max_decode_length):
      return decoding.greedy_decode(module, params, encoder_output, max_decode_length)

    self._stage_one = jax.jit(stage_one)
    self._stage_two = jax.jit(stage_two, static_argnames="length")
    self._encode_once = jax.jit(encode_once, static_argnames=("deletion", "length"))
    self._score = jax.jit(score)
    self._generate = jax.jit(generate, static_argnames="max_decode_length")
    self._encoder_programs = (self._stage_one, self._stage_two, self._encode_once)

  @property
  def num_compiled_programs(self) -> int:
    """Encoder programs compiled so far (each jitted function's cache entries)."""
    return sum(fn._cache_size() for fn in self._encoder_programs)

  def encode(self, encoder_input_tokens, encoder_segment_ids=None) -> EncoderOutput:
    tokens = _as_tokens(encoder_input_tokens, "encoder_input_tokens")
    segments = None
    if encoder_segment_ids is not None:
      segments = _as_tokens(encoder_segment_ids, "encoder_segment_ids")
      if segments.shape != tokens.shape:
        raise ValueError(f"encoder_segment_ids shape {segments.shape} != tokens {tokens.shape}")
    length = tokens.shape[1]
    if self.mode == "soft":
      return self._encode_once(self.params, tokens, segments, "soft", None)
    if self.mode == "capacity":
      return self._encode_once(self.params, tokens, segments, "hard",
                               capacity_length(self.config, length))
    hidden, gate, logits, max_kept = self._stage_one(self.params, tokens, segments)
    bucket = bucket_for(self.config, length, int(max_kept))
    return self._stage_two(self.params, hidden, gate, logits, tokens, segments, length=bucket)

  def score(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
            encoder_segment_ids=None) -> jax.Array:
    """Per-token log-likelihood (B, T) of the targets; 0 at target padding."""
    out = self.encode(encoder_input_tokens, encoder_segment_ids)
    decoder_input = _as_tokens(decoder_input_tokens, "decoder_input_tokens")
    targets = _as_tokens(decoder_target_tokens, "decoder_target_tokens")
    return self._score(self.params, out, decoder_input, targets)

  def generate(self, encoder_input_tokens, max_decode_length: int) -> jax.Array:
    """Greedy decoding (B, max_decode_length) int32 with the KV cache."""
    if max_decode_length < 1:
      raise ValueError("max_decode_length must be positive")
    out = self.encode(encoder_input_tokens)
    return self._generate(self.params, out, max_decode_length=int(max_decode_length))

