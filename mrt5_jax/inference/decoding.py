"""Scoring and greedy decoding against a (possibly compacted) encoder output."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrt5_jax.model.outputs import EncoderOutput

EOS_ID = 1


def token_log_likelihood(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """log p(target_t | ...) per position, (B, T) float32; 0 where targets are pad."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return jnp.where(targets > 0, picked, 0.0)


def decoder_logits(module: nn.Module, params, encoder_output: EncoderOutput,
                   decoder_input_tokens: jax.Array, decoder_target_tokens: jax.Array) -> jax.Array:
  """Teacher-forced logits (B, T, V) against ``encoder_output``."""
  return module.apply({"params": params}, encoder_output.encoded, encoder_output.mask,
                      decoder_input_tokens, decoder_target_tokens,
                      encoder_segment_ids=encoder_output.segment_ids, enable_dropout=False,
                      encoder_key_bias=encoder_output.key_bias, method=module.decode)


def greedy_decode(module: nn.Module, params, encoder_output: EncoderOutput,
                  max_decode_length: int, eos_id: int = EOS_ID) -> jax.Array:
  """Greedy decoding with the KV cache: (B, max_decode_length) int32.

  Each row stops after its first EOS; later slots are 0. Decoding starts from
  token 0 (T5's decoder start token).
  """
  encoded = encoder_output.encoded
  batch = encoded.shape[0]

  def step_fn(tokens, cache=None):
    variables = {"params": params}
    if cache is not None:
      variables["cache"] = cache
    return module.apply(variables, encoded, encoder_output.mask, tokens, tokens,
                        enable_dropout=False, decode=True, max_decode_length=max_decode_length,
                        encoder_key_bias=encoder_output.key_bias, mutable=["cache"],
                        method=module.decode)

  full = jnp.zeros((batch, max_decode_length), jnp.int32)
  cache_shapes = jax.eval_shape(step_fn, full)[1]["cache"]
  cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)

  def cond(state):
    index, _, _, _, done = state
    return jnp.logical_and(index < max_decode_length, ~jnp.all(done))

  def body(state):
    index, token, cache, out, done = state
    logits, updated = step_fn(token, cache)
    next_token = jnp.argmax(logits[:, -1, :], axis=-1).astype(jnp.int32)
    next_token = jnp.where(done, 0, next_token)
    out = jax.lax.dynamic_update_slice(out, next_token[:, None], (0, index))
    done = jnp.logical_or(done, next_token == eos_id)
    return index + 1, next_token[:, None], updated["cache"], out, done

  start = (jnp.array(0, jnp.int32), jnp.zeros((batch, 1), jnp.int32), cache, full,
           jnp.zeros((batch,), jnp.bool_))
  return jax.lax.while_loop(cond, body, start)[3]
