"""PyTorch MrT5: transformers' T5ForConditionalGeneration plus the delete gate.

The gate sits at the input of encoder block ``delete_gate_layer`` and
produces G (B, L) = k * sigmoid(-(w . RMSNorm(h) + b)), with G = k at padding.

* Soft deletion (default): G is added to the attention logits of encoder
  self-attention from the gate's block on and of every decoder
  cross-attention.
* Hard deletion (``hard_delete=True``): positions with G > threshold are
  gathered (at least one real position per row, as in the JAX network), the
  relative position bias uses their original positions, and the remaining
  encoder blocks and the decoder only see the kept positions (no gate bias,
  only the padding mask).

Attention uses softmax or softmax1 (``use_softmax1``) in every layer; both
run through one attention function registered with transformers as
``"mrt5"``. State-dict names follow the published MrT5 checkpoints
(``encoder.block.{l}.delete_gate.feed_forward.weight``, ...).
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
from typing import Optional

import torch
from torch import nn
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import AttentionInterface
from transformers.models.t5.modeling_t5 import (T5Attention, T5ForConditionalGeneration,
                                                T5LayerNorm, T5Stack)

from mrt5_jax.model.shortening.settings import FIXED_DELETION_SEPARATOR_IDS
from mrt5_jax.pytorch.configuration import MrT5Config

# The published gates with weights (the PyTorch side mirrors the published
# MrT5 code, which branches on deletion_type itself).
LEARNED_GATES = ("scaled_sigmoid", "log_sigmoid")

ATTENTION_IMPLEMENTATION = "mrt5"


def softmax1(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
  """``exp(x_i) / (1 + sum_j exp(x_j))``, stable: shift by max(max_j x_j, 0)."""
  shift = logits.detach().amax(dim=dim, keepdim=True).clamp_min(0.0)
  exps = torch.exp(logits - shift)
  return exps / (torch.exp(-shift) + exps.sum(dim=dim, keepdim=True))


def mrt5_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                           value: torch.Tensor, attention_mask: Optional[torch.Tensor],
                           scaling: float = 1.0, dropout: float = 0.0,
                           position_bias: Optional[torch.Tensor] = None, **kwargs):
  """Eager T5 attention with softmax or softmax1 (``module.config.use_softmax1``).

  query (B, H, Q, D), key/value (B, H, K, D); ``position_bias`` and the
  additive ``attention_mask`` broadcast to (B, H, Q, K). Returns the output
  (B, Q, H, D) and the weights (B, H, Q, K).
  """
  scores = torch.matmul(query, key.transpose(2, 3)) * scaling
  if position_bias is not None:
    scores = scores + position_bias
  if attention_mask is not None:
    if attention_mask.dtype == torch.bool:
      attention_mask = torch.zeros_like(attention_mask, dtype=scores.dtype).masked_fill(
          ~attention_mask, torch.finfo(scores.dtype).min)
    scores = scores + attention_mask
  if getattr(module.config, "use_softmax1", False):
    weights = softmax1(scores.float(), dim=-1).type_as(scores)
  else:
    weights = nn.functional.softmax(scores.float(), dim=-1).type_as(scores)
  weights = nn.functional.dropout(weights, p=dropout, training=module.training)
  output = torch.matmul(weights, value).transpose(1, 2).contiguous()
  return output, weights


AttentionInterface.register(ATTENTION_IMPLEMENTATION, mrt5_attention_forward)
AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, eager_mask)


def additive_mask(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
  """(B, K) bool -> (B, 1, 1, K) additive mask: 0 where valid, the dtype's minimum elsewhere."""
  bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
  bias = bias.masked_fill(~valid, torch.finfo(dtype).min)
  return bias[:, None, None, :]


def keep_mask(gate: torch.Tensor, real: torch.Tensor, threshold: float) -> torch.Tensor:
  """(B, L) bool: G > threshold on real positions, at least one kept per row.

  A row where nothing passes keeps its real position with the highest G (an
  all-pad row keeps position 0), the rule of ``mrt5_jax.maths.compaction``.
  """
  keep = (gate > threshold) & real
  best = torch.where(real, gate, torch.full_like(gate, -torch.inf)).argmax(dim=-1)
  rescue = nn.functional.one_hot(best, gate.shape[-1]).bool()
  empty = ~keep.any(dim=-1, keepdim=True)
  return torch.where(empty, rescue, keep)


def compact(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
  """(B, L) bool -> kept positions in order (B, Lc) int64 and their validity (B, Lc).

  Lc is the largest kept count of the batch; unused slots point at 0 and are invalid.
  """
  length = int(keep.sum(dim=-1).max())
  position = torch.arange(keep.shape[-1], device=keep.device)
  order = torch.where(keep, position, keep.shape[-1] + position).argsort(dim=-1)[:, :length]
  valid = torch.gather(keep, 1, order)
  return torch.where(valid, order, torch.zeros_like(order)), valid


def fixed_gate(input_ids: torch.Tensor, amount: float, scale: float) -> torch.Tensor:
  """Fixed-deletion baseline, as ``mrt5_jax.model.gate.fixed_gate``: G (B, L) in {k, 0}.

  Words are runs between separator bytes (and pads); a word of n bytes keeps
  its first ceil((1 - amount) * n) bytes.
  """
  separators = torch.tensor(FIXED_DELETION_SEPARATOR_IDS, device=input_ids.device)
  is_sep = torch.isin(input_ids, separators) | (input_ids == 0)
  length = input_ids.shape[-1]
  idx = torch.arange(length, device=input_ids.device).expand_as(input_ids)
  previous_sep = torch.cummax(torch.where(is_sep, idx, torch.full_like(idx, -1)), dim=-1).values
  next_sep = torch.cummin(torch.where(is_sep, idx, torch.full_like(idx, length)).flip(-1),
                          dim=-1).values.flip(-1)
  word_length = (next_sep - previous_sep - 1).float()
  keep_count = torch.ceil((1.0 - amount) * word_length).long()
  keep = is_sep | (idx - previous_sep - 1 < keep_count)
  return torch.where(keep, 0.0, scale).float()


class DeleteGateDense(nn.Linear):
  """d_model -> 1 projection of the gate; its own class so init can find it."""


class MrT5DeleteGate(nn.Module):
  """Scores each position of the hidden state entering its block.

  Params (scaled_sigmoid, log_sigmoid): ``layer_norm.weight`` (optional) and
  ``feed_forward.weight`` (1, d_model) / ``.bias`` (1,). The random and fixed
  baselines have no params.
  """

  def __init__(self, config: MrT5Config):
    super().__init__()
    self.config = config
    if config.deletion_type in LEARNED_GATES:
      if config.gate_layer_norm:
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
      self.feed_forward = DeleteGateDense(config.d_model, 1)

  def forward(self, hidden: torch.Tensor, real: torch.Tensor,
              input_ids: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden (B, L, E), real (B, L) bool -> (G, logits), both (B, L) float32."""
    cfg = self.config
    scale = float(cfg.sigmoid_mask_scale)
    if cfg.deletion_type in LEARNED_GATES:
      x = self.layer_norm(hidden) if cfg.gate_layer_norm else hidden
      logits = nn.functional.linear(x.float(), self.feed_forward.weight.float(),
                                    self.feed_forward.bias.float())[..., 0]
      if self.training and cfg.use_gumbel_noise:
        uniform = torch.empty_like(logits).uniform_(1e-10, 1 - 1e-10)
        logits = logits - torch.log(-torch.log(uniform))
      if cfg.deletion_type == "log_sigmoid":
        gate = nn.functional.logsigmoid(logits)
      else:
        gate = scale * torch.sigmoid(-logits)
    elif cfg.deletion_type == "random":
      deleted = torch.rand(real.shape, device=real.device) < cfg.random_deletion_probability
      gate = logits = torch.where(deleted, scale, 0.0)
    else:
      if input_ids is None:
        raise ValueError("the fixed-deletion baseline needs input_ids")
      gate = logits = fixed_gate(input_ids, cfg.fixed_deletion_amount, scale)
    return torch.where(real, gate, torch.full_like(gate, scale)), logits


@dataclasses.dataclass
class MrT5EncoderOutput(BaseModelOutput):
  """Encoder output with what the decoder and users need from the gate.

  attention_mask: (B, Lk) int64, 1 = real key (after hard deletion: kept slot).
  key_bias: (B, Lk) float gate bias for cross-attention (soft: G; hard: None).
  delete_gate_values / delete_gate_logits: (B, L) full-length G and logits.
  kept_positions: (B, Lk) original index of each slot (hard deletion only).
  """
  attention_mask: Optional[torch.Tensor] = None
  key_bias: Optional[torch.Tensor] = None
  delete_gate_values: Optional[torch.Tensor] = None
  delete_gate_logits: Optional[torch.Tensor] = None
  kept_positions: Optional[torch.Tensor] = None


def relative_bias(attention: T5Attention, query_positions: torch.Tensor,
                  key_positions: torch.Tensor) -> torch.Tensor:
  """T5 relative position bias at given positions: (B, Q), (B, K) -> (B, H, Q, K)."""
  bucket = attention._relative_position_bucket(
      key_positions[:, None, :] - query_positions[:, :, None],
      bidirectional=not attention.is_decoder,
      num_buckets=attention.relative_attention_num_buckets,
      max_distance=attention.relative_attention_max_distance)
  return attention.relative_attention_bias(bucket).permute(0, 3, 1, 2)


def init_gate_weights(module: nn.Module) -> None:
  """Xavier-uniform gate kernel and bias 1 (G ~ -8 at start: nothing deleted)."""
  if isinstance(module, DeleteGateDense):
    nn.init.xavier_uniform_(module.weight)
    nn.init.ones_(module.bias)


class MrT5EncoderStack(T5Stack):
  """T5 encoder stack whose block ``delete_gate_layer`` owns a delete gate."""

  def __init__(self, config: MrT5Config):
    super().__init__(config)
    if config.has_gate:
      self.block[config.delete_gate_layer].delete_gate = MrT5DeleteGate(config)
      self.post_init()

  @torch.no_grad()
  def _init_weights(self, module):
    super()._init_weights(module)
    init_gate_weights(module)

  def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None,
              hard_delete: bool = False, deletion_threshold: Optional[float] = None,
              output_hidden_states: Optional[bool] = None, **kwargs) -> MrT5EncoderOutput:
    """Encode; padding is ``attention_mask == 0`` or, without a mask, ``input_ids == pad``.

    Other transformers keyword arguments (return_dict, output_attentions) are
    accepted and ignored: attention weights are not recorded.
    """
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if inputs_embeds is None:
      inputs_embeds = self.embed_tokens(input_ids)
    batch, length = inputs_embeds.shape[:2]
    device = inputs_embeds.device
    if attention_mask is not None:
      real = attention_mask.to(device).bool()
    elif input_ids is not None:
      real = input_ids != self.config.pad_token_id
    else:
      real = torch.ones(batch, length, dtype=torch.bool, device=device)
    threshold = self.config.deletion_threshold if deletion_threshold is None else deletion_threshold
    gate_layer = self.config.delete_gate_layer if self.config.has_gate else None
    dtype = inputs_embeds.dtype

    positions = torch.arange(length, device=device)[None, :]
    position_bias = relative_bias(self.block[0].layer[0].SelfAttention, positions, positions)
    mask = additive_mask(real, dtype)
    gate = logits = key_bias = kept = None
    all_hidden = [] if output_hidden_states else None
    hidden = self.dropout(inputs_embeds)
    for index, block in enumerate(self.block):
      if index == gate_layer:
        gate, logits = block.delete_gate(hidden, real, input_ids)
        if hard_delete:
          kept, real = compact(keep_mask(gate, real, threshold))
          hidden = torch.gather(hidden, 1, kept[..., None].expand(-1, -1, hidden.shape[-1]))
          position_bias = relative_bias(self.block[0].layer[0].SelfAttention, kept, kept)
          mask = additive_mask(real, dtype)
        else:
          key_bias = gate.to(dtype)
          mask = mask + key_bias[:, None, None, :]
      if all_hidden is not None:
        all_hidden.append(hidden)
      hidden, _, _ = block(hidden, mask, position_bias)
    hidden = self.dropout(self.final_layer_norm(hidden))
    if all_hidden is not None:
      all_hidden.append(hidden)
    return MrT5EncoderOutput(
        last_hidden_state=hidden, hidden_states=tuple(all_hidden) if all_hidden else None,
        attention_mask=real.long(), key_bias=key_bias, delete_gate_values=gate,
        delete_gate_logits=logits, kept_positions=kept)


# transformers 5.x renamed T5's ``past_key_values`` argument to ``cache`` and warns
# whenever the old name is passed, even as None: pass the cache on under the name
# the installed version takes, and only when there is one.
_CACHE_ARGUMENT = ("cache" if "cache" in inspect.signature(
    T5ForConditionalGeneration.forward).parameters else "past_key_values")


class MrT5ForConditionalGeneration(T5ForConditionalGeneration):
  """T5ForConditionalGeneration with MrT5's delete gate, hard deletion and softmax1.

  ``model(input_ids, attention_mask, decoder_input_ids | labels,
  hard_delete=False)`` returns transformers' ``Seq2SeqLMOutput``;
  ``model.encoder(...)`` returns an ``MrT5EncoderOutput`` with the gate values.
  ``generate(..., hard_delete=True)`` decodes over the kept positions.
  """

  config_class = MrT5Config
  # lm_head stays separate from the shared embedding (ByT5 / MrT5 are untied).
  _tied_weights_keys = {
      "encoder.embed_tokens.weight": "shared.weight",
      "decoder.embed_tokens.weight": "shared.weight",
  }
  _supports_sdpa = False
  _supports_flex_attn = False

  def __init__(self, config: MrT5Config):
    super().__init__(config)
    encoder_config = copy.deepcopy(config)
    encoder_config.is_decoder = False
    encoder_config.use_cache = False
    self.encoder = MrT5EncoderStack(encoder_config)
    self.post_init()

  def get_correct_attn_implementation(self, requested_attention: Optional[str],
                                      is_init_check: bool = False) -> str:
    """Always the MrT5 attention function (softmax1 and the gate bias need it)."""
    if requested_attention not in (None, "eager", ATTENTION_IMPLEMENTATION):
      raise ValueError(f"MrT5 runs its own eager attention ({ATTENTION_IMPLEMENTATION!r}); "
                       f"attn_implementation={requested_attention!r} is not supported")
    return ATTENTION_IMPLEMENTATION

  @torch.no_grad()
  def _init_weights(self, module):
    super()._init_weights(module)
    init_gate_weights(module)

  def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None,
              decoder_attention_mask=None, encoder_outputs=None, past_key_values=None,
              inputs_embeds=None, decoder_inputs_embeds=None, labels=None, use_cache=None,
              hard_delete: bool = False, deletion_threshold: Optional[float] = None, **kwargs):
    """As T5ForConditionalGeneration.forward; cross-attention masks come from the encoder output.

    ``hard_delete`` runs the layers from the gate on over the kept positions
    only; ``deletion_threshold`` overrides the config's threshold.
    """
    if encoder_outputs is None:
      encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                     inputs_embeds=inputs_embeds, hard_delete=hard_delete,
                                     deletion_threshold=deletion_threshold)
    if isinstance(encoder_outputs, MrT5EncoderOutput):
      hidden = encoder_outputs.last_hidden_state
      attention_mask = additive_mask(encoder_outputs.attention_mask.to(hidden.device).bool(),
                                     hidden.dtype)
      if encoder_outputs.key_bias is not None:
        attention_mask = attention_mask + encoder_outputs.key_bias[:, None, None, :]
    if past_key_values is not None:  # passed on under the name this transformers takes
      kwargs[_CACHE_ARGUMENT] = past_key_values
    return super().forward(
        attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
        decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs,
        decoder_inputs_embeds=decoder_inputs_embeds, labels=labels, use_cache=use_cache,
        **kwargs)
