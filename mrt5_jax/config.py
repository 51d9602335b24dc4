"""Model configuration: ByT5 sizes plus every MrT5 knob.

``MrT5Config`` is a frozen dataclass and gin-configurable, so a gin file binds
it field by field (``MrT5Config.delete_gate_layer = 3``) the way t5x binds its
``T5Config``. ``preset(name, **overrides)`` builds the named ByT5 sizes from
Python.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Optional

import gin

DELETION_TYPES = ("scaled_sigmoid", "random", "fixed", "none")
HARD_DELETION_MODES = ("bucketed", "capacity")

# Byte ids of the fixed-deletion baseline's word separators (space, ASCII
# punctuation, digits' neighbours and EOS), the set the published MrT5 code uses.
FIXED_DELETION_SEPARATOR_IDS = (
    12, 13, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50,
    61, 62, 63, 64, 65, 66, 67, 94, 95, 96, 97, 98, 99, 126, 127, 128, 129, 1,
)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MrT5Config:
  """Architecture and delete-gate settings.

  Sizes follow ByT5 (T5.1.1: gated GELU, RMS norm, relative position bias,
  untied output projection). Gate fields follow the published MrT5 config so
  that converted checkpoints carry the same keys.
  """

  vocab_size: int = 384
  d_model: int = 1472
  d_ff: int = 3584
  num_heads: int = 6
  head_dim: int = 64
  num_encoder_layers: int = 12
  num_decoder_layers: int = 4
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dropout_rate: float = 0.0
  dtype: str = "float32"
  float32_attention_logits: bool = True

  deletion_type: str = "scaled_sigmoid"
  delete_gate_layer: int = 3
  sigmoid_mask_scale: float = -30.0
  deletion_threshold: Optional[float] = None
  gate_layer_norm: bool = True
  use_softmax1: bool = False
  random_deletion_probability: float = 0.5
  fixed_deletion_amount: float = 0.5

  hard_deletion_mode: str = "bucketed"
  bucket_step: int = 0
  min_bucket_length: int = 8
  capacity_fraction: float = 0.5

  def __post_init__(self):
    if self.deletion_threshold is None:
      object.__setattr__(self, "deletion_threshold", self.sigmoid_mask_scale / 2.0)
    if self.deletion_type not in DELETION_TYPES:
      raise ValueError(
          f"deletion_type must be one of {DELETION_TYPES}, got {self.deletion_type!r}")
    if self.hard_deletion_mode not in HARD_DELETION_MODES:
      raise ValueError(f"hard_deletion_mode must be one of {HARD_DELETION_MODES}, "
                       f"got {self.hard_deletion_mode!r}")
    if self.has_gate and not 0 <= self.delete_gate_layer < self.num_encoder_layers:
      raise ValueError(
          f"delete_gate_layer={self.delete_gate_layer} must lie in "
          f"[0, num_encoder_layers={self.num_encoder_layers})")
    if self.sigmoid_mask_scale >= 0:
      raise ValueError("sigmoid_mask_scale must be negative (gate values lie in (scale, 0))")
    if not self.sigmoid_mask_scale < self.deletion_threshold < 0:
      raise ValueError(
          f"deletion_threshold={self.deletion_threshold} must lie strictly between "
          f"sigmoid_mask_scale={self.sigmoid_mask_scale} and 0")
    if not 0.0 < self.capacity_fraction <= 1.0:
      raise ValueError(f"capacity_fraction must be in (0, 1], got {self.capacity_fraction}")
    if self.bucket_step < 0 or self.min_bucket_length < 1:
      raise ValueError("bucket_step must be >= 0 and min_bucket_length >= 1")
    for name in ("random_deletion_probability", "fixed_deletion_amount"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1]")

  @property
  def has_gate(self) -> bool:
    return self.deletion_type != "none"

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.head_dim

  def replace(self, **changes: Any) -> "MrT5Config":
    if "sigmoid_mask_scale" in changes and "deletion_threshold" not in changes:
      changes["deletion_threshold"] = None
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict) -> "MrT5Config":
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


SIZES = {
    "tiny": dict(d_model=64, d_ff=128, num_heads=4, head_dim=16,
                 num_encoder_layers=4, num_decoder_layers=2),
    "small": dict(d_model=1472, d_ff=3584, num_heads=6, head_dim=64,
                  num_encoder_layers=12, num_decoder_layers=4),
    "base": dict(d_model=1536, d_ff=3968, num_heads=12, head_dim=64,
                 num_encoder_layers=18, num_decoder_layers=6),
    "large": dict(d_model=1536, d_ff=3840, num_heads=16, head_dim=64,
                  num_encoder_layers=36, num_decoder_layers=12),
    "xl": dict(d_model=2560, d_ff=6720, num_heads=32, head_dim=64,
               num_encoder_layers=36, num_decoder_layers=12),
}


@gin.configurable
def preset(name: str = "small", **overrides: Any) -> MrT5Config:
  """A ByT5 size (tiny, small, base, large, xl) with MrT5 knobs overridden.

  ``preset("small", deletion_type="none")`` is plain ByT5 Small.
  """
  if name not in SIZES:
    raise ValueError(f"unknown size {name!r}; choose from {sorted(SIZES)}")
  values = dict(SIZES[name])
  if name == "tiny":
    values["delete_gate_layer"] = 1
  values.update(overrides)
  return MrT5Config(**values)


def bucket_lengths(config: MrT5Config, input_length: int) -> tuple[int, ...]:
  """Every compacted length hard deletion may use for inputs of this length.

  Powers of two (``bucket_step == 0``) or multiples of ``bucket_step``, from
  ``min_bucket_length`` up, always ending with ``input_length`` itself.
  """
  if input_length < 1:
    raise ValueError("input_length must be positive")
  lengths = []
  if config.bucket_step == 0:
    length = 1 << max(0, math.ceil(math.log2(config.min_bucket_length)))
    while length < input_length:
      lengths.append(length)
      length *= 2
  else:
    length = max(config.bucket_step,
                 config.bucket_step * math.ceil(config.min_bucket_length / config.bucket_step))
    while length < input_length:
      lengths.append(length)
      length += config.bucket_step
  lengths.append(input_length)
  return tuple(lengths)


def bucket_for(config: MrT5Config, input_length: int, kept: int) -> int:
  """The smallest bucket length that holds ``kept`` positions."""
  for length in bucket_lengths(config, input_length):
    if length >= kept:
      return length
  return input_length


def capacity_length(config: MrT5Config, input_length: int) -> int:
  """Compacted length of ``capacity`` mode: the fraction rounded up to a bucket."""
  wanted = max(1, math.ceil(config.capacity_fraction * input_length))
  return bucket_for(config, input_length, wanted)
