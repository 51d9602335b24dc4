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

from mrt5_jax.model.shortening import settings as shortening_settings
from mrt5_jax.model.shortening.settings import ShorteningConfig

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
  """Architecture and shortening settings.

  ``size`` names a ByT5 size (``SIZES``: tiny, small, base, large, xl); the
  size fields left as None (d_model, d_ff, num_heads, head_dim, layer counts,
  and the gate layer) take that size's value, fields given explicitly win.
  A gin file selects a size with ``MrT5Config.size = 'small'``; ``size=None``
  (a custom size, as the converter writes for unnamed shapes) needs every
  size field. Sizes follow
  ByT5 (T5.1.1: gated GELU, RMS norm, relative position bias, untied output
  projection). ``deletion_type``: ``scaled_sigmoid``
  (MrT5, G = k sigmoid(-logit)), ``log_sigmoid`` (G = log sigmoid(logit)),
  the ``random`` and ``fixed`` baselines, the pooling baselines ``boundary``
  (BP: a boundary predictor and segment mean-pooling, Nawrot et al. 2023) and
  ``conv`` (CP: a CANINE-style strided convolution), or ``none`` (ByT5); the
  implementations and the one mapping from these names to them live in
  ``mrt5_jax.model.shortening`` (``registry.shortening_for(config)``); a
  name it does not know is refused when the config is built.
  Every type but ``none`` shortens the encoder at the input of layer
  ``delete_gate_layer`` (the one layer-placement knob). ``shortening`` holds
  the kind's own settings (``mrt5_jax.model.shortening.settings``):
  ``DeleteGateConfig`` for the gates and the random / fixed baselines (scale,
  threshold, gate norm, Gumbel noise, the baselines' rates), ``BoundaryPoolingConfig``
  for BP (temperature, prior, capacity, sampling at inference) and
  ``ConvPoolingConfig`` for CP (rate); None for ByT5. Left as None, it is the
  kind's settings as gin binds them (``DeleteGateConfig.sigmoid_mask_scale = -30.0``);
  a dict of the kind's fields also works. ``deletion_threshold`` and
  ``sigmoid_mask_scale`` read the kind's (the pooling baselines' slot-marker
  constants, which ByT5 shares). ``use_softmax1`` (softmax with 1 added to the
  denominator) applies to every attention layer.

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
  shortening: Optional[ShorteningConfig] = None
  use_softmax1: bool = False

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
    # plain ByT5 has no shortening layer and no settings; what shortens the
    # others: mrt5_jax.model.shortening.registry.shortening_for(config)
    shortens = shortening_settings.shortens(self.deletion_type)
    missing = [name for name in SIZE_FIELDS if getattr(self, name) is None
               and (name != "delete_gate_layer" or shortens)]
    if missing:
      raise ValueError(f"MrT5Config with size=None needs {missing} (or name a size: "
                       f"{sorted(SIZES)})")
    if shortens and not 0 <= self.delete_gate_layer < self.num_encoder_layers:
      raise ValueError(
          f"delete_gate_layer={self.delete_gate_layer} must lie in "
          f"[0, num_encoder_layers={self.num_encoder_layers})")
    object.__setattr__(self, "shortening",
                       shortening_settings.settings_for(self.deletion_type, self.shortening))
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
    if not shortening_settings.shortens(self.deletion_type):
      return self.num_encoder_layers
    return self.delete_gate_layer

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.head_dim

  @property
  def deletion_threshold(self) -> float:
    """Positions whose G lies below this count as deleted (the kind's threshold)."""
    return (self.shortening or shortening_settings.NO_SETTINGS).deletion_threshold

  @property
  def sigmoid_mask_scale(self) -> float:
    """The value G takes on pads (the gate's scale k, or the slot-marker scale)."""
    return (self.shortening or shortening_settings.NO_SETTINGS).sigmoid_mask_scale

  def flat_setting(self, name: str) -> Any:
    """A setting by its flat name (the Hugging Face config's, and older
    model_config.json files'): a field of this config or its scale and threshold,
    else the shortening settings' field it became (``bp_prior`` is
    ``shortening.prior``); None where this kind has no such setting."""
    if name in {f.name for f in dataclasses.fields(self)} or hasattr(type(self), name):
      return getattr(self, name)
    if name not in shortening_settings.FLAT_KEYS:
      raise ValueError(f"unknown MrT5Config setting {name!r}")
    cls, field = shortening_settings.FLAT_KEYS[name]
    return getattr(self.shortening, field) if isinstance(self.shortening, cls) else None

  def replace(self, **changes: Any) -> "MrT5Config":
    """A copy with ``changes``; a new size re-derives the size fields, a new
    ``deletion_type`` keeps the settings when the kind takes the same ones (its
    threshold re-derived) and takes the new kind's defaults otherwise."""
    if "deletion_type" in changes and "shortening" not in changes:
      same = (shortening_settings.settings_class(changes["deletion_type"])
              is type(self.shortening) and self.shortening is not None)
      changes["shortening"] = (self.shortening.unresolved() if same else None)
    if "size" in changes:
      for name in SIZE_FIELDS:
        changes.setdefault(name, None)
    return dataclasses.replace(self, **changes)

  def with_shortening(self, **changes: Any) -> "MrT5Config":
    """A copy whose shortening settings take ``changes``; a new gate scale
    re-derives the threshold unless one is given."""
    if self.shortening is None:
      raise ValueError(f"deletion_type={self.deletion_type!r} has no shortening settings "
                       f"to change ({sorted(changes)})")
    settings = self.shortening
    if "sigmoid_mask_scale" in changes and "deletion_threshold" not in changes:
      settings = settings.unresolved()
    try:
      settings = dataclasses.replace(settings, **changes)
    except TypeError as error:
      raise ValueError(f"{type(settings).__name__} has no field among {sorted(changes)}: "
                       f"{error}") from None
    return dataclasses.replace(self, shortening=settings)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict) -> "MrT5Config":
    """The inverse of ``to_dict``; also reads files written before sizes,
    inference settings and the shortening settings moved (their inference keys
    are ignored, their flat shortening keys nested)."""
    values = {k: v for k, v in values.items() if k not in LEGACY_INFERENCE_KEYS}
    values = shortening_settings.nest_flat_keys(values)
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
