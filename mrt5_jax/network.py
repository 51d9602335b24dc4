"""The MrT5 network: a ByT5 (T5.1.1) encoder-decoder with a delete gate.

Parameter names follow t5x's ``examples/t5/network.py`` (plus
``encoder/delete_gate``), so t5x ByT5 checkpoints restore unchanged. Methods
keep t5x's signatures; the MrT5 extras are keyword-only.

Shapes: B batch, L encoder input length, Lc compacted encoder length (L with
soft deletion), T decoder length, E d_model, V vocab.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
from flax.linen import partitioning as nn_partitioning
import flax.struct
import jax
import jax.numpy as jnp

from mrt5_jax import attention as attn_lib
from mrt5_jax import compaction
from mrt5_jax import layers
from mrt5_jax import pooling
from mrt5_jax import shortening
from mrt5_jax.config import MrT5Config
from mrt5_jax.gate import DeleteGate

DELETION_MODES = ("soft", "hard")
# BP's fixed key when it samples boundaries outside training without a 'deletion' rng.
BP_INFERENCE_SEED = 0


@flax.struct.dataclass
class StageOneOutput:
  """The encoder up to the gate.

  hidden: (B, L, E) the hidden state entering layer ``delete_gate_layer``.
  gate: (B, L) float32 G (pad = k), or None (no gate).
  gate_logits: (B, L) float32 pre-sigmoid gate scores, or None.
  boundaries: (B, L) float32 BP's pooling boundaries (straight-through in
    training), or None. For the pooling baselines ``gate`` is
    ``shortening.markers`` (0 on the one position per slot, k elsewhere) and
    ``gate_logits`` BP's boundary logits (CP: the markers).
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


def _dtype(config: MrT5Config):
  return jnp.dtype(config.dtype)


REMAT_POLICIES = {
    "full": None,
    "minimal": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "dots": jax.checkpoint_policies.dots_saveable,
}
# What nn.scan stacks along the leading 'layers' axis.
SCANNED_COLLECTIONS = {"params": 0, "cache": 0, "intermediates": 0}


def _rematerialised(layer_cls, config: MrT5Config, static_argnums: tuple[int, ...]):
  """``layer_cls`` under ``nn.remat`` with the config's policy (unchanged for 'none').

  ``static_argnums`` count ``self`` as 0 (flax's convention).
  """
  if config.remat_policy == "none":
    return layer_cls
  return nn.remat(layer_cls, policy=REMAT_POLICIES[config.remat_policy],
                  prevent_cse=not config.scan_layers, static_argnums=static_argnums)


def _scanned(layer_cls, config: MrT5Config, length: int, num_args: int, name: str, **kwargs):
  """One module running ``length`` copies of ``layer_cls`` with ``nn.scan``.

  Parameters, the KV cache and sown intermediates get a leading 'layers'
  axis; every argument after the carried hidden state is broadcast.
  """
  scan = nn_partitioning.scan_with_axes(
      layer_cls, variable_axes=SCANNED_COLLECTIONS,
      split_rngs={"params": True, "dropout": True},
      in_axes=(nn.broadcast,) * num_args, length=length, axis_name="layers")
  return scan(config, scanned=True, name=name, **kwargs)


class EncoderLayer(nn.Module):
  """One encoder layer; ``bias`` is a dense (B|1, H, Q, K) array with its
  ``allowed`` mask, or an ``AttentionBias`` (blocked attention; ``allowed`` None)."""
  config: MrT5Config
  collect_score_penalty: bool = False
  scanned: bool = False

  @nn.compact
  def __call__(self, x, bias, allowed, deterministic: bool = True):
    cfg = self.config
    dtype = _dtype(cfg)
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_attention_layer_norm")(x)
    h = layers.MultiHeadAttention(
        num_heads=cfg.num_heads, head_dim=cfg.head_dim, dropout_rate=cfg.dropout_rate,
        use_softmax1=cfg.use_softmax1, float32_logits=cfg.float32_attention_logits,
        collect_score_penalty=self.collect_score_penalty, dtype=dtype,
        block_size=cfg.attention_block_size, query_block_size=cfg.attention_query_block_size,
        name="attention")(h, h, bias, penalty_valid=allowed, deterministic=deterministic)
    x = x + nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
    h = layers.MlpBlock(cfg.d_ff, cfg.dropout_rate, dtype, name="mlp")(h, deterministic)
    x = x + nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
    x = layers.with_sharding_constraint(x, ("batch", "length", "embed"))
    return (x, None) if self.scanned else x


# static_argnums of the layers' __call__ under nn.remat (self = 0).
ENCODER_LAYER_STATIC = (4,)
DECODER_LAYER_STATIC = (6, 7, 8)


class Encoder(nn.Module):
  """Layers before the gate at full length, the gate, then the rest (soft or compacted).

  The pooling baselines (``config.is_pooling``) put ``boundary_predictor``
  (BP) or ``conv_pool`` (CP, ``mrt5_jax.shortening``) where the gate sits and
  run the rest on their pooled slots.

  The layers are ``layers_{i}`` submodules, or with ``scan_layers`` two
  scanned stacks: ``stage_one_layers`` ([0, gate)) and ``stage_two_layers``
  ([gate, N)). ``apply_layers`` is the one place either stage runs.
  """
  config: MrT5Config

  def setup(self):
    cfg = self.config
    self.relpos_bias = layers.RelativePositionBiases(
        cfg.num_heads, cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance, bidirectional=True, dtype=jnp.float32)
    layer_cls = _rematerialised(EncoderLayer, cfg, ENCODER_LAYER_STATIC)
    gate, total = cfg.gate_layer, cfg.num_encoder_layers
    if cfg.scan_layers:
      self.stage_one_layers = (_scanned(layer_cls, cfg, gate, 3, "stage_one_layers")
                               if gate > 0 else None)
      self.stage_two_layers = (_scanned(layer_cls, cfg, total - gate, 3, "stage_two_layers",
                                        collect_score_penalty=cfg.has_gate)
                               if total > gate else None)
    else:
      self.layers = [layer_cls(cfg, collect_score_penalty=cfg.has_gate and i >= gate)
                     for i in range(total)]
    if cfg.has_delete_gate:
      self.delete_gate = DeleteGate(cfg)
    elif cfg.deletion_type == "boundary":
      self.boundary_predictor = shortening.BoundaryPredictor(cfg)
    elif cfg.deletion_type == "conv":
      self.conv_pool = shortening.ConvPool(cfg)
    self.encoder_norm = layers.RMSNorm(cfg.layer_norm_epsilon, _dtype(cfg))
    self.dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))

  def self_attention_bias(self, positions, valid, segment_ids=None,
                          key_bias=None) -> attn_lib.AttentionBias:
    """The factored self-attention bias of positions (B|1, L'), valid (B, L')."""
    return attn_lib.AttentionBias(
        relpos_table=self.relpos_bias.table(), query_positions=positions,
        key_positions=positions, query_valid=valid, key_valid=valid,
        query_segments=segment_ids, key_segments=segment_ids, key_bias=key_bias,
        bidirectional=True, max_distance=self.config.relative_attention_max_distance)

  def apply_layers(self, stage: int, x, bias: attn_lib.AttentionBias,
                   deterministic: bool = True):
    """Stage 1 (layers [0, gate)) or stage 2 (layers [gate, N)) on x (B, L', E).

    The bias is built densely once for the stage, or handed to the blocked
    attention as it is (``attention_impl``).
    """
    cfg = self.config
    if cfg.attention_impl == "blocked":
      dense_bias, allowed = bias, None
    else:
      dense_bias, allowed = bias.build()
    if cfg.scan_layers:
      stack = self.stage_one_layers if stage == 1 else self.stage_two_layers
      if stack is not None:
        x, _ = stack(x, dense_bias, allowed, deterministic)
      return x
    chosen = self.layers[:cfg.gate_layer] if stage == 1 else self.layers[cfg.gate_layer:]
    for layer in chosen:
      x = layer(x, dense_bias, allowed, deterministic)
    return x

  def _full_length_bias(self, tokens, segment_ids, key_bias=None):
    positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
    return self.self_attention_bias(positions, tokens > 0, segment_ids, key_bias)

  def stage_one(self, embedded, tokens, segment_ids=None,
                deterministic: bool = True) -> StageOneOutput:
    """Embedded inputs (B, L, E) -> the hidden state entering the gate layer, G, logits."""
    x = self.dropout(embedded, deterministic=deterministic)
    x = self.apply_layers(1, x, self._full_length_bias(tokens, segment_ids), deterministic)
    if not self.config.has_gate:
      return StageOneOutput(hidden=x, gate=None, gate_logits=None)
    if self.config.is_pooling:
      return self._pooling_reading(x, tokens, segment_ids, deterministic)
    gate, gate_logits = self.delete_gate(x, tokens > 0, tokens, deterministic=deterministic)
    return StageOneOutput(hidden=x, gate=gate, gate_logits=gate_logits)

  def _pooling_reading(self, x, tokens, segment_ids, deterministic: bool) -> StageOneOutput:
    """BP: boundary logits and boundaries (sampled in training); CP: its window markers."""
    cfg = self.config
    real = tokens > 0
    if cfg.deletion_type == "conv":
      marks = shortening.markers(pooling.window_markers(real, cfg.cp_rate), real,
                                 cfg.sigmoid_mask_scale)
      return StageOneOutput(hidden=x, gate=marks, gate_logits=marks)
    logits = self.boundary_predictor(x)
    rng = None
    if not deterministic:
      rng = self.make_rng("gate_noise")
    elif cfg.bp_sample_at_inference:
      rng = (self.make_rng("deletion") if self.has_rng("deletion")
             else jax.random.PRNGKey(BP_INFERENCE_SEED))
    chosen = shortening.boundaries(logits, real, segment_ids, config=cfg, rng=rng)
    marks = shortening.markers(jax.lax.stop_gradient(chosen), real, cfg.sigmoid_mask_scale)
    return StageOneOutput(hidden=x, gate=marks, gate_logits=logits, boundaries=chosen)

  def _pooled_stage_two(self, reading: StageOneOutput, tokens, segment_ids, deletion: str,
                        compacted_length: Optional[int], deterministic: bool):
    """BP (segment mean-pooling into static slots) or CP (strided convolution),
    then the remaining layers on the slots; relative positions are each slot's
    first input position (the published choice)."""
    cfg = self.config
    real = tokens > 0
    if cfg.deletion_type == "conv":
      pooled = self.conv_pool(reading.hidden, real, segment_ids)
    else:
      slots = shortening.boundary_slots(cfg, tokens.shape[1], compacted_length, deletion)
      pooled = pooling.segment_pool(reading.hidden, reading.boundaries, real, slots, segment_ids)
    bias = self.self_attention_bias(pooled.positions, pooled.valid, pooled.segment_ids)
    x = self.apply_layers(2, pooled.hidden, bias, deterministic)
    x = self.dropout(self.encoder_norm(x), deterministic=deterministic)
    return EncoderOutput(encoded=x, mask=pooled.valid.astype(jnp.int32),
                         key_bias=jnp.zeros(pooled.valid.shape, jnp.float32),
                         segment_ids=pooled.segment_ids, gate=reading.gate,
                         gate_logits=reading.gate_logits, kept_positions=pooled.positions,
                         num_dropped=pooled.num_dropped, boundaries=reading.boundaries)

  def stage_two(self, reading: StageOneOutput, tokens, segment_ids=None, *,
                deletion: str = "soft", compacted_length: Optional[int] = None,
                deterministic: bool = True) -> EncoderOutput:
    """Remaining layers, with G as key bias (soft) or on compacted positions (hard).

    Hard deletion compacts to ``compacted_length`` slots (default: the input
    length, which never overflows); see ``hard_deletion.InferenceConfig``.
    The pooling baselines always run on their slots: BP on
    ``compacted_length`` of them (default: ``bp_capacity_fraction`` of the
    input length with soft, all of it with hard), CP on ceil(L / cp_rate).
    """
    cfg = self.config
    batch, length = tokens.shape
    real = tokens > 0
    hidden, gate, gate_logits = reading.hidden, reading.gate, reading.gate_logits
    if deletion not in DELETION_MODES:
      raise ValueError(f"deletion must be one of {DELETION_MODES}, got {deletion!r}")
    if cfg.is_pooling:
      return self._pooled_stage_two(reading, tokens, segment_ids, deletion, compacted_length,
                                    deterministic)
    if gate is None or deletion == "soft":
      key_bias = jnp.zeros((batch, length), jnp.float32) if gate is None else gate
      bias = self._full_length_bias(tokens, segment_ids, None if gate is None else gate)
      x = self.apply_layers(2, hidden, bias, deterministic)
      kept_positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
      mask, num_dropped = real.astype(jnp.int32), jnp.zeros((batch,), jnp.int32)
      compacted_segments = segment_ids
    else:
      if compacted_length is None:
        compacted_length = length
      keep = compaction.keep_mask(gate, real, cfg.deletion_threshold, segment_ids)
      chosen = compaction.compact_indices(keep, gate, compacted_length)
      x = compaction.gather(hidden, chosen.indices)
      compacted_segments = None
      if segment_ids is not None:
        compacted_segments = jnp.where(chosen.valid, compaction.gather(segment_ids, chosen.indices), 0)
      bias = self.self_attention_bias(chosen.indices, chosen.valid, compacted_segments)
      x = self.apply_layers(2, x, bias, deterministic)
      key_bias = jnp.zeros(chosen.valid.shape, jnp.float32)
      kept_positions, mask = chosen.indices, chosen.valid.astype(jnp.int32)
      num_dropped = chosen.num_dropped
    x = self.dropout(self.encoder_norm(x), deterministic=deterministic)
    return EncoderOutput(encoded=x, mask=mask, key_bias=key_bias, segment_ids=compacted_segments,
                         gate=gate, gate_logits=gate_logits, kept_positions=kept_positions,
                         num_dropped=num_dropped)

  def __call__(self, embedded, tokens, segment_ids=None, *, deletion: str = "soft",
               compacted_length: Optional[int] = None, deterministic: bool = True):
    reading = self.stage_one(embedded, tokens, segment_ids, deterministic)
    return self.stage_two(reading, tokens, segment_ids, deletion=deletion,
                          compacted_length=compacted_length, deterministic=deterministic)


class DecoderLayer(nn.Module):
  config: MrT5Config
  scanned: bool = False

  @nn.compact
  def __call__(self, y, encoded, self_bias, cross_bias, cross_allowed,
               deterministic: bool = True, decode: bool = False, prefill: bool = False,
               prefill_lengths: Optional[jax.Array] = None):
    cfg = self.config
    dtype = _dtype(cfg)
    attention = lambda name, penalty: layers.MultiHeadAttention(
        num_heads=cfg.num_heads, head_dim=cfg.head_dim, dropout_rate=cfg.dropout_rate,
        use_softmax1=cfg.use_softmax1, float32_logits=cfg.float32_attention_logits,
        collect_score_penalty=penalty, dtype=dtype, name=name)
    drop = lambda h: nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(
        h, deterministic=deterministic)
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_self_attention_layer_norm")(y)
    h = attention("self_attention", False)(h, h, self_bias, decode=decode, prefill=prefill,
                                            prefill_lengths=prefill_lengths,
                                            deterministic=deterministic)
    y = y + drop(h)
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_cross_attention_layer_norm")(y)
    h = attention("encoder_decoder_attention", cfg.has_gate)(
        h, encoded, cross_bias, penalty_valid=cross_allowed, deterministic=deterministic)
    y = y + drop(h)
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(y)
    h = layers.MlpBlock(cfg.d_ff, cfg.dropout_rate, dtype, name="mlp")(h, deterministic)
    y = y + drop(h)
    y = layers.with_sharding_constraint(y, ("batch", "length", "embed"))
    return (y, None) if self.scanned else y


class Decoder(nn.Module):
  """Decoder layers ``layers_{i}``, or one scanned stack ``layers`` (``scan_layers``)."""
  config: MrT5Config

  @nn.compact
  def __call__(self, embedded, encoded, self_mask, cross_bias, cross_allowed, *,
               deterministic: bool = True, decode: bool = False, prefill: bool = False,
               prefill_lengths: Optional[jax.Array] = None):
    """embedded (B, T, E); self_mask (B|1, 1, T', T') bool where T' is the cache
    length when decoding. Returns float32 logits (B, T, V)."""
    cfg = self.config
    dtype = _dtype(cfg)
    length = self_mask.shape[-1]
    positions = jnp.arange(length, dtype=jnp.int32)[None, :]
    relpos = layers.RelativePositionBiases(
        cfg.num_heads, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
        bidirectional=False, dtype=jnp.float32, name="relpos_bias")(positions, positions)
    self_bias = relpos + attn_lib.mask_to_bias(self_mask, relpos.dtype)
    y = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(embedded, deterministic=deterministic)
    layer_cls = _rematerialised(DecoderLayer, cfg, DECODER_LAYER_STATIC)
    args = (encoded, self_bias, cross_bias, cross_allowed, deterministic, decode, prefill,
            prefill_lengths)
    if cfg.scan_layers:
      y, _ = _scanned(layer_cls, cfg, cfg.num_decoder_layers, len(args), "layers")(y, *args)
    else:
      for i in range(cfg.num_decoder_layers):
        y = layer_cls(cfg, name=f"layers_{i}")(y, *args)
    y = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="decoder_norm")(y)
    y = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
    logits = layers.Dense(cfg.vocab_size, ("embed", "vocab"), dtype=jnp.float32,
                          name="logits_dense")(y)
    return layers.with_sharding_constraint(logits, ("batch", "length", "vocab"))


class Transformer(nn.Module):
  """MrT5 / ByT5 encoder-decoder with t5x's ``__call__``/``encode``/``decode``."""
  config: MrT5Config

  @property
  def scan_layers(self) -> bool:
    """t5x's ``EncoderDecoderModel`` reads this: scanned caches put the batch on axis 1."""
    return self.config.scan_layers

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.d_model, _dtype(cfg))
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)

  def encode_stage_one(self, encoder_input_tokens, encoder_segment_ids=None,
                       enable_dropout: bool = True) -> StageOneOutput:
    """Embedding, the layers before the gate, and the gate."""
    self._check_tokens(encoder_input_tokens, "encoder_input_tokens")
    embedded = self.token_embedder(encoder_input_tokens.astype(jnp.int32))
    return self.encoder.stage_one(embedded, encoder_input_tokens, encoder_segment_ids,
                                  not enable_dropout)

  def encode_stage_two(self, reading: StageOneOutput, encoder_input_tokens,
                       encoder_segment_ids=None, enable_dropout: bool = True, *,
                       deletion: str = "soft",
                       compacted_length: Optional[int] = None) -> EncoderOutput:
    """The layers from the gate on, soft or on ``compacted_length`` kept positions."""
    return self.encoder.stage_two(reading, encoder_input_tokens,
                                  encoder_segment_ids, deletion=deletion,
                                  compacted_length=compacted_length,
                                  deterministic=not enable_dropout)

  def encode(self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None,
             enable_dropout: bool = True, *, deletion: str = "soft",
             compacted_length: Optional[int] = None, return_aux: bool = False):
    """Encoded (B, Lc, E), or the whole ``EncoderOutput`` with ``return_aux``.

    ``encoder_positions`` is accepted for t5x compatibility; relative
    positions come from indices, which within a packed segment differ exactly
    as the segment positions do.
    """
    del encoder_positions
    reading = self.encode_stage_one(encoder_input_tokens, encoder_segment_ids, enable_dropout)
    out = self.encode_stage_two(reading, encoder_input_tokens, encoder_segment_ids,
                                enable_dropout, deletion=deletion,
                                compacted_length=compacted_length)
    return out if return_aux else out.encoded

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
             encoder_segment_ids=None, decoder_segment_ids=None, decoder_positions=None,
             enable_dropout: bool = True, decode: bool = False,
             max_decode_length: Optional[int] = None, *,
             encoder_key_bias: Optional[jax.Array] = None, prefill: bool = False,
             prefill_lengths: Optional[jax.Array] = None):
    """Decoder logits (B, T, V) float32.

    The cross-attention mask is ``encoder_input_tokens > 0`` as in t5x; after
    hard deletion pass ``EncoderOutput.mask`` in its place (and
    ``EncoderOutput.segment_ids`` for packed inputs). ``encoder_key_bias``
    (B, Lc) is added to cross-attention logits: ``EncoderOutput.key_bias``.
    ``prefill`` writes the prompt ``decoder_input_tokens`` into an initialised
    KV cache, row ``b`` continuing at ``prefill_lengths[b]`` (t5x's prompt
    prefilling).
    """
    del decoder_positions
    self._check_tokens(decoder_input_tokens, "decoder_input_tokens")
    if prefill and prefill_lengths is None:
      raise ValueError("prefill needs prefill_lengths (B,)")
    if decode or prefill:
      length = max_decode_length or decoder_input_tokens.shape[1]
      self_mask = attn_lib.make_causal_mask(length)
      query_valid = jnp.ones(decoder_input_tokens.shape, jnp.bool_)
    else:
      target_valid = decoder_target_tokens > 0
      self_mask = jnp.logical_and(attn_lib.make_causal_mask(decoder_target_tokens.shape[1]),
                                  attn_lib.make_attention_mask(target_valid, target_valid))
      if decoder_segment_ids is not None:
        self_mask = jnp.logical_and(
            self_mask, attn_lib.make_segment_mask(decoder_segment_ids, decoder_segment_ids))
      query_valid = target_valid
    cross_allowed = attn_lib.make_attention_mask(query_valid, encoder_input_tokens > 0)
    if (encoder_segment_ids is not None and decoder_segment_ids is not None
        and not (decode or prefill)):
      cross_allowed = jnp.logical_and(
          cross_allowed, attn_lib.make_segment_mask(decoder_segment_ids, encoder_segment_ids))
    cross_bias = attn_lib.mask_to_bias(cross_allowed)
    if encoder_key_bias is not None:
      cross_bias = cross_bias + encoder_key_bias[:, None, None, :].astype(cross_bias.dtype)
    embedded = self.token_embedder(decoder_input_tokens.astype(jnp.int32))
    return self.decoder(embedded, encoded, self_mask, cross_bias, cross_allowed,
                        deterministic=not enable_dropout, decode=decode, prefill=prefill,
                        prefill_lengths=prefill_lengths)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
               encoder_segment_ids=None, decoder_segment_ids=None, encoder_positions=None,
               decoder_positions=None, *, enable_dropout: bool = True, decode: bool = False,
               deletion: str = "soft", compacted_length: Optional[int] = None,
               return_aux: bool = False, stage_one: Optional[StageOneOutput] = None):
    """Logits (B, T, V), or (logits, EncoderOutput) with ``return_aux``.

    ``deletion='hard'`` compacts to ``compacted_length`` (default: the input
    length), all inside one traced program. ``stage_one``: the
    ``encode_stage_one`` output of these inputs when it was computed already
    (the evaluator reads the gate once, then runs the rest here).
    """
    if stage_one is None:
      stage_one = self.encode_stage_one(encoder_input_tokens, encoder_segment_ids,
                                        enable_dropout)
    out = self.encode_stage_two(stage_one, encoder_input_tokens, encoder_segment_ids,
                                enable_dropout, deletion=deletion,
                                compacted_length=compacted_length)
    logits = self.decode(out.encoded, out.mask, decoder_input_tokens, decoder_target_tokens,
                         out.segment_ids, decoder_segment_ids, decoder_positions,
                         enable_dropout, decode, encoder_key_bias=out.key_bias)
    return (logits, out) if return_aux else logits

  @staticmethod
  def _check_tokens(tokens, name):
    if tokens.ndim != 2:
      raise ValueError(f"{name} must be (batch, length), got shape {tokens.shape}")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
      raise ValueError(f"{name} is empty: shape {tokens.shape}")
