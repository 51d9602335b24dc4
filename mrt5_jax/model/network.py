"""The MrT5 network: a ByT5 (T5.1.1) encoder-decoder with a delete gate.

Parameter names follow t5x's ``examples/t5/network.py`` (plus the
shortening's own module, e.g. ``encoder/delete_gate``), so t5x ByT5
checkpoints restore unchanged. What shortens the encoder is one
``mrt5_jax.model.shortening`` object, chosen once from the config
(``Transformer.shortening``); the network never looks at its kind. Methods
keep t5x's signatures; the MrT5 extras are keyword-only.

Shapes: B batch, L encoder input length, Lc compacted encoder length (L with
soft deletion), T decoder length, E d_model, V vocab.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
import jax.numpy as jnp

from mrt5_jax.maths import attention as attn_lib
from mrt5_jax.maths import packing
from mrt5_jax.model.attention import MultiHeadAttention, RelativePositionBiases
from mrt5_jax.model import layers
from mrt5_jax.model.config import MrT5Config
from mrt5_jax.model.outputs import EncoderOutput, StageOneOutput
from mrt5_jax.model.shortening.base import Shortening
from mrt5_jax.model.shortening.registry import shortening_for

DELETION_MODES = ("soft", "hard")


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
    h = MultiHeadAttention(
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
  """Layers before the shortening at full length, the shortening, then the rest.

  The shortening (``mrt5_jax.model.shortening``: the delete gate, BP, CP, or
  none) owns its submodule (``encoder/<its module_name>``), reads the hidden
  state entering layer ``gate_layer`` and says what the remaining layers run
  on, softly (G as key bias) or hard (compacted or pooled slots).

  The layers are ``layers_{i}`` submodules, or with ``scan_layers`` two
  scanned stacks: ``stage_one_layers`` ([0, gate)) and ``stage_two_layers``
  ([gate, N)). ``apply_layers`` is the one place either stage runs.
  """
  config: MrT5Config

  def setup(self):
    cfg = self.config
    self.shortening = shortening_for(cfg)
    self.relpos_bias = RelativePositionBiases(
        cfg.num_heads, cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance, bidirectional=True, dtype=jnp.float32)
    layer_cls = _rematerialised(EncoderLayer, cfg, ENCODER_LAYER_STATIC)
    gate, total = cfg.gate_layer, cfg.num_encoder_layers
    penalty = self.shortening.shortens
    if cfg.scan_layers:
      self.stage_one_layers = (_scanned(layer_cls, cfg, gate, 3, "stage_one_layers")
                               if gate > 0 else None)
      self.stage_two_layers = (_scanned(layer_cls, cfg, total - gate, 3, "stage_two_layers",
                                        collect_score_penalty=penalty)
                               if total > gate else None)
    else:
      self.layers = [layer_cls(cfg, collect_score_penalty=penalty and i >= gate)
                     for i in range(total)]
    module = self.shortening.make_module()
    if module is not None:
      setattr(self, self.shortening.module_name, module)
    self.encoder_norm = layers.RMSNorm(cfg.layer_norm_epsilon, _dtype(cfg))
    self.dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))

  def _shortening_module(self):
    """The shortening's own submodule, or None."""
    name = self.shortening.module_name
    return None if name is None else getattr(self, name)

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

  def stage_one(self, embedded, tokens, segment_ids=None,
                deterministic: bool = True) -> StageOneOutput:
    """Embedded inputs (B, L, E) -> the hidden state entering the shortening's
    layer and what the shortening reads there (G, logits, BP's boundaries)."""
    x = self.dropout(embedded, deterministic=deterministic)
    positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
    x = self.apply_layers(1, x, self.self_attention_bias(positions, tokens > 0, segment_ids),
                          deterministic)
    reading = self.shortening.read(self, self._shortening_module(), x, tokens, segment_ids,
                                   deterministic)
    return StageOneOutput(hidden=x, gate=reading.gate, gate_logits=reading.gate_logits,
                          boundaries=reading.boundaries)

  def stage_two(self, reading: StageOneOutput, tokens, segment_ids=None, *,
                deletion: str = "soft", compacted_length: Optional[int] = None,
                deterministic: bool = True) -> EncoderOutput:
    """The remaining layers on what the shortening makes of the reading, soft or hard.

    ``compacted_length``: the static number of slots of hard shortening (the
    delete gate's default: the input length, which never overflows; see
    ``encode_path.InferenceConfig``); BP takes it in soft mode too (default
    ``BoundaryPoolingConfig.capacity_fraction`` of the input length), CP always
    runs on ceil(L / ``ConvPoolingConfig.rate``).
    """
    if deletion not in DELETION_MODES:
      raise ValueError(f"deletion must be one of {DELETION_MODES}, got {deletion!r}")
    short = self.shortening.shorten(self._shortening_module(), reading.hidden, reading, tokens,
                                    segment_ids, deletion=deletion,
                                    compacted_length=compacted_length)
    bias = self.self_attention_bias(short.positions, short.valid, short.segment_ids,
                                    short.self_key_bias)
    x = self.apply_layers(2, short.hidden, bias, deterministic)
    x = self.dropout(self.encoder_norm(x), deterministic=deterministic)
    return EncoderOutput(encoded=x, mask=short.valid.astype(jnp.int32), key_bias=short.key_bias,
                         segment_ids=short.segment_ids, gate=reading.gate,
                         gate_logits=reading.gate_logits, kept_positions=short.kept_positions,
                         num_dropped=short.num_dropped, boundaries=reading.boundaries)

  def stage_two_packed(self, reading: StageOneOutput, tokens, segment_ids,
                       plan: packing.PackingPlan, unpacked_length: int, *,
                       deterministic: bool = True) -> EncoderOutput:
    """Hard deletion with every row's kept positions packed (``maths.packing``):
    the remaining layers run on ``plan.packed_rows`` rows of ``plan.row_length``
    slots; the output is unpacked to (B, ``unpacked_length``) per-row slots,
    kept positions first in order, as per-row hard deletion returns them.
    ``num_dropped``: each row's kept positions the plan had no room for."""
    keep = self.shortening.keep_mask(reading.gate, tokens, segment_ids)
    num_dropped = jnp.sum(keep, axis=-1, dtype=jnp.int32) - plan.kept
    packed = packing.pack(keep, plan, segment_ids)
    groups = plan.num_groups
    x = packing.gather_packed(reading.hidden, packed, groups)
    bias = self.self_attention_bias(packed.positions, packed.valid, packed.segment_ids)
    x = self.apply_layers(2, x, bias, deterministic)
    x = self.dropout(self.encoder_norm(x), deterministic=deterministic)
    slots, valid = packing.unpack_slots(plan, unpacked_length)
    kept_positions = jnp.where(valid, packing.gather_unpacked(packed.positions, slots, groups), 0)
    unpacked_segments = None
    if segment_ids is not None:
      unpacked_segments = jnp.where(
          valid, jnp.take_along_axis(jnp.asarray(segment_ids, jnp.int32), kept_positions, 1), 0)
    return EncoderOutput(encoded=packing.gather_unpacked(x, slots, groups),
                         mask=valid.astype(jnp.int32),
                         key_bias=jnp.zeros(valid.shape, jnp.float32),
                         segment_ids=unpacked_segments, gate=reading.gate,
                         gate_logits=reading.gate_logits, kept_positions=kept_positions,
                         num_dropped=num_dropped, boundaries=reading.boundaries)

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
    attention = lambda name, penalty: MultiHeadAttention(
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
    h = attention("encoder_decoder_attention", shortening_for(cfg).shortens)(
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
    relpos = RelativePositionBiases(
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
  def shortening(self) -> Shortening:
    """What shortens the encoder (``mrt5_jax.model.shortening``), chosen from the config."""
    return shortening_for(self.config)

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

  def encode_stage_two_packed(self, reading: StageOneOutput, encoder_input_tokens,
                              encoder_segment_ids, plan: packing.PackingPlan,
                              unpacked_length: int,
                              enable_dropout: bool = True) -> EncoderOutput:
    """The layers from the gate on with the kept positions of all rows packed."""
    return self.encoder.stage_two_packed(reading, encoder_input_tokens, encoder_segment_ids,
                                         plan, unpacked_length,
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
               return_aux: bool = False, stage_one: Optional[StageOneOutput] = None,
               packing_plan: Optional[packing.PackingPlan] = None):
    """Logits (B, T, V), or (logits, EncoderOutput) with ``return_aux``.

    ``deletion='hard'`` compacts to ``compacted_length`` (default: the input
    length), all inside one traced program; with ``packing_plan`` the kept
    positions of all rows are packed as it says (``encode_stage_two_packed``)
    and unpacked to ``compacted_length`` slots. ``stage_one``: the
    ``encode_stage_one`` output of these inputs when it was computed already
    (the evaluator reads the gate once, then runs the rest here).
    """
    if stage_one is None:
      stage_one = self.encode_stage_one(encoder_input_tokens, encoder_segment_ids,
                                        enable_dropout)
    if packing_plan is not None:
      if deletion != "hard":
        raise ValueError("a packing plan needs deletion='hard'")
      out = self.encode_stage_two_packed(
          stage_one, encoder_input_tokens, encoder_segment_ids, packing_plan,
          compacted_length or encoder_input_tokens.shape[1], enable_dropout)
    else:
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
