"""Model configuration: ByT5 sizes plus every MrT5 knob.

``MrT5Config`` is a frozen dataclass and gin-configurable, so a gin file binds
it field by field (``MrT5Config.delete_gate_layer = 3``) the way t5x binds its
``T5Config``. The ByT5 sizes are defined once, in ``SIZES``; a config selects
one with its ``size`` field (``preset(name, **overrides)`` from Python). How
hard deletion runs at inference is not part of the network: see
``mrt5_jax.inference.encode_path.InferenceConfig``.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

import gin

# ``deletion_type`` of plain ByT5: no layer shortens the encoder. Every other
# value names a ``mrt5_jax.model.shortening`` implementation; which ones exist,
# what each does and what it needs are that package's business (its
# ``registry`` refuses unknown values when the encoder is built).
NO_SHORTENING = "none"
# The published code's loader uses this threshold for the log-sigmoid gate.
LOG_SIGMOID_THRESHOLD = -5.0

# Byte ids of the fixed-deletion baseline's word separators (space, ASCII
# punctuation, digits' neighbours and EOS), the set the published MrT5 code uses.
FIXED_DELETION_SEPARATOR_IDS = (
    12, 13, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50,
    61, 62, 63, 64, 65, 66, 67, 94, 95, 96, 97, 98, 99, 126, 127, 128, 129, 1,
)


def gate_range_error(deletion_type: str, scale: float, threshold: float) -> Optional[str]:
  """Why ``sigmoid_mask_scale`` / ``deletion_threshold`` cannot run, or None when they can.

  The scaled sigmoid gives G in (scale, 0), so its threshold must lie strictly
  between scale and 0. The log-sigmoid gate gives G = log sigmoid(logit) in
  (-inf, 0) whatever the scale, which only sets the value of pad positions
  (never counted, kept or deleted): its threshold need only be negative, as the
  published code accepts (e.g. scale -10 with threshold -15).
  """
  if not scale < 0:
    return f"sigmoid_mask_scale must be negative (pad positions get it), got {scale}"
  if deletion_type == "log_sigmoid":
    if not threshold < 0:
      return (f"deletion_threshold={threshold} must be negative: the log-sigmoid gate's "
              "values lie below 0, so a threshold at or above 0 deletes every position")
    return None
  if not scale < threshold < 0:
    return (f"deletion_threshold={threshold} must lie strictly between "
            f"sigmoid_mask_scale={scale} and 0 (the {deletion_type} gate's values lie in "
            "(scale, 0))")
  return None


SIZES = {
    "tiny": dict(d_model=64, d_ff=128, num_heads=4, head_dim=16,
                 num_encoder_layers=4, num_decoder_layers=2, delete_gate_layer=1),
    "small": dict(d_model=1472, d_ff=3584, num_heads=6, head_dim=64,
                  num_encoder_layers=12, num_decoder_layers=4, delete_gate_layer=3),
    "base": dict(d_model=1536, d_ff=3968, num_heads=12, head_dim=64,
                 num_encoder_layers=18, num_decoder_layers=6, delete_gate_layer=3),
    "large": dict(d_model=1536, d_ff=3840, num_heads=16, head_dim=64,
                  num_encoder_layers=36, num_decoder_layers=12, delete_gate_layer=3),
    "xl": dict(d_model=2560, d_ff=6720, num_heads=32, head_dim=64,
               num_encoder_layers=36, num_decoder_layers=12, delete_gate_layer=3),
}
SIZE_FIELDS = tuple(SIZES["small"])
# Execution knobs (how the network runs, not what it computes); see MrT5Config.
REMAT_POLICIES = ("none", "full", "minimal", "dots")
ATTENTION_IMPLS = ("dense", "blocked")
EXECUTION_FIELDS = ("remat_policy", "scan_layers", "attention_impl", "attention_block_size",
                    "attention_query_block_size")
# Keys older model_config.json files carry that now live in hard_deletion.InferenceConfig.
LEGACY_INFERENCE_KEYS = ("hard_deletion_mode", "bucket_step", "min_bucket_length",
                         "capacity_fraction")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MrT5Config:
  """Architecture and delete-gate settings.

  ``size`` names a ByT5 size (``SIZES``: tiny, small, base, large, xl); the
  size fields left as None (d_model, d_ff, num_heads, head_dim, layer counts,
  and the gate layer) take that size's value, fields given explicitly win.
  A gin file selects a size with ``MrT5Config.size = 'small'``; ``size=None``
  (a custom size, as the converter writes for unnamed shapes) needs every
  size field. Sizes follow
  ByT5 (T5.1.1: gated GELU, RMS norm, relative position bias, untied output
  projection). Gate fields follow the published MrT5 config so that converted
  checkpoints carry the same keys. ``deletion_type``: ``scaled_sigmoid``
  (MrT5, G = k sigmoid(-logit)), ``log_sigmoid`` (G = log sigmoid(logit)),
  the ``random`` and ``fixed`` baselines, the pooling baselines ``boundary``
  (BP: a boundary predictor and segment mean-pooling, Nawrot et al. 2023) and
  ``conv`` (CP: a CANINE-style strided convolution), or ``none`` (ByT5); the
  implementations and the one mapping from these names to them live in
  ``mrt5_jax.model.shortening`` (``registry.shortening_for(config)``, which
  refuses a name it does not know when the encoder is built).
  Every type but ``none`` shortens the encoder at the input of layer
  ``delete_gate_layer`` (the one layer-placement knob). BP: ``bp_temperature``
  and ``bp_prior`` (relaxed Bernoulli and binomial prior, published 0.5 and
  0.2); ``bp_capacity_fraction`` sets the static number of segment slots in
  training (segments past it are dropped and counted);
  ``bp_sample_at_inference`` draws the boundaries outside training too (a
  relaxed-Bernoulli sample thresholded at 0.5, i.e. boundary ~ Bernoulli(p),
  as the published code does at evaluation; from the ``deletion`` rng, else a
  fixed key), where the default takes the probabilities above 0.5. CP:
  ``cp_rate`` positions per pooled slot (published 4).
  ``deletion_threshold`` None means ``sigmoid_mask_scale / 2`` (log-sigmoid:
  -5, as the published loader). ``use_gumbel_noise`` adds Gumbel noise to the
  gate logits in training (needs the ``gate_noise`` rng).

  Execution knobs (``EXECUTION_FIELDS``: the same function, other memory and
  speed; the Hugging Face config never carries them):
  ``remat_policy`` recomputes each layer's activations in the backward pass:
  ``none``; ``full`` (keep only the layer inputs); ``minimal`` (keep the
  outputs of matmuls without batch dimensions, i.e. the projections and the
  MLP, and recompute attention: ``checkpoint_dots_with_no_batch_dims``);
  ``dots`` (keep every matmul output, attention logits too: ``dots_saveable``).
  ``scan_layers`` runs each encoder stage (layers before the gate, layers from
  the gate on) and the decoder as one ``nn.scan`` over stacked parameters
  (``encoder/stage_one_layers``, ``encoder/stage_two_layers``,
  ``decoder/layers``, leading axis ``layers``); ``mrt5_jax.model.layer_stacking``
  converts between the two trees. ``attention_impl='blocked'`` runs encoder
  self-attention as an online softmax over key blocks of
  ``attention_block_size`` (queries in blocks of ``attention_query_block_size``,
  default the same), memory linear in the input length
  (``mrt5_jax.maths.attention``).
  """

  size: Optional[str] = "small"
  vocab_size: int = 384
  d_model: Optional[int] = None
  d_ff: Optional[int] = None
  num_heads: Optional[int] = None
  head_dim: Optional[int] = None
  num_encoder_layers: Optional[int] = None
  num_decoder_layers: Optional[int] = None
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dropout_rate: float = 0.0
  dtype: str = "float32"
  float32_attention_logits: bool = True

  deletion_type: str = "scaled_sigmoid"
  delete_gate_layer: Optional[int] = None
  sigmoid_mask_scale: float = -30.0
  deletion_threshold: Optional[float] = None
  gate_layer_norm: bool = True
  use_gumbel_noise: bool = False
  use_softmax1: bool = False
  random_deletion_probability: float = 0.5
  fixed_deletion_amount: float = 0.5
  bp_temperature: float = 0.5
  bp_prior: float = 0.2
  bp_capacity_fraction: float = 0.5
  bp_sample_at_inference: bool = False
  cp_rate: int = 4

  remat_policy: str = "none"
  scan_layers: bool = False
  attention_impl: str = "dense"
  attention_block_size: int = 512
  attention_query_block_size: Optional[int] = None

  def __post_init__(self):
    if self.size is not None:
      if self.size not in SIZES:
        raise ValueError(f"unknown size {self.size!r}; choose from {sorted(SIZES)}")
      for name, value in SIZES[self.size].items():
        if getattr(self, name) is None:
          object.__setattr__(self, name, value)
    # plain ByT5 has no shortening layer; what shortens the others (and what
    # it needs): mrt5_jax.model.shortening.registry.shortening_for(config)
    shortens = self.deletion_type != NO_SHORTENING
    missing = [name for name in SIZE_FIELDS if getattr(self, name) is None
               and (name != "delete_gate_layer" or shortens)]
    if missing:
      raise ValueError(f"MrT5Config with size=None needs {missing} (or name a size: "
                       f"{sorted(SIZES)})")
    if self.deletion_threshold is None:
      threshold = (LOG_SIGMOID_THRESHOLD if self.deletion_type == "log_sigmoid"
                   else self.sigmoid_mask_scale / 2.0)
      object.__setattr__(self, "deletion_threshold", threshold)
    if shortens and not 0 <= self.delete_gate_layer < self.num_encoder_layers:
      raise ValueError(
          f"delete_gate_layer={self.delete_gate_layer} must lie in "
          f"[0, num_encoder_layers={self.num_encoder_layers})")
    error = gate_range_error(self.deletion_type, self.sigmoid_mask_scale,
                             self.deletion_threshold)
    if error:
      raise ValueError(error)
    for name in ("random_deletion_probability", "fixed_deletion_amount"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1]")
    if not self.bp_temperature > 0:
      raise ValueError(f"bp_temperature must be positive, got {self.bp_temperature}")
    if not 0.0 < self.bp_prior < 1.0:
      raise ValueError(f"bp_prior must lie in (0, 1), got {self.bp_prior}")
    if not 0.0 < self.bp_capacity_fraction <= 1.0:
      raise ValueError(f"bp_capacity_fraction must lie in (0, 1], got {self.bp_capacity_fraction}")
    if not isinstance(self.cp_rate, int) or self.cp_rate < 1:
      raise ValueError(f"cp_rate must be a positive int, got {self.cp_rate!r}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(
          f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
    for name in ("attention_block_size", "attention_query_block_size"):
      value = getattr(self, name)
      if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int, got {value!r}")

  @property
  def gate_layer(self) -> int:
    """The layer the shortening sits at, i.e. the first one after it (the
    encoder's length for ByT5: ``deletion_type`` 'none')."""
    if self.deletion_type == NO_SHORTENING:
      return self.num_encoder_layers
    return self.delete_gate_layer

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.head_dim

  def replace(self, **changes: Any) -> "MrT5Config":
    """A copy with ``changes``; a new size or scale re-derives the fields that follow it."""
    if (("sigmoid_mask_scale" in changes or "deletion_type" in changes)
        and "deletion_threshold" not in changes):
      changes["deletion_threshold"] = None
    if "size" in changes:
      for name in SIZE_FIELDS:
        changes.setdefault(name, None)
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict) -> "MrT5Config":
    """The inverse of ``to_dict``; also reads files written before sizes and
    inference settings moved (their inference keys are ignored)."""
    values = {k: v for k, v in values.items() if k not in LEGACY_INFERENCE_KEYS}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown MrT5Config fields: {unknown}")
    return cls(**values)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "MrT5Config":
    return cls.from_dict(json.loads(text))


def size_of(config: MrT5Config) -> Optional[str]:
  """The named size whose every dimension ``config`` has, or None."""
  for name, values in SIZES.items():
    if all(getattr(config, key) == value for key, value in values.items()
           if key != "delete_gate_layer"):
      return name
  return None


def preset(name: str = "small", **overrides: Any) -> MrT5Config:
  """A ByT5 size with fields overridden: ``preset("small", deletion_type="none")``
  is plain ByT5 Small (the same as ``MrT5Config(size="small", ...)``)."""
  return MrT5Config(size=name, **overrides)
