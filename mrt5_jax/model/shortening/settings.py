"""Each shortening's own settings, nested in ``MrT5Config.shortening``.

``deletion_type`` picks the kind; the kind's settings object holds only what
that kind reads: ``DeleteGateConfig`` (the learned gates and the random and
fixed deletion baselines), ``BoundaryPoolingConfig`` (BP) and
``ConvPoolingConfig`` (CP). Plain ByT5 ('none') has none. Each is a frozen,
gin-configurable dataclass, so a gin file binds ``DeleteGateConfig.sigmoid_mask_scale
= -30.0`` and ``MrT5Config`` builds the kind's settings from those bindings.

Every kind reports per-position scores G where "deleted" means
``G < deletion_threshold`` and pads carry ``sigmoid_mask_scale``: the delete
gate's are settings; the pooling baselines' slot markers use the fixed
``MARKER_SCALE`` / ``MARKER_THRESHOLD`` (a slot's position 0, the rest the scale).

``FLAT_KEYS`` maps the flat field names of older ``model_config.json`` files
(and of the Hugging Face config) to the settings they now are. This module
imports none of the project's modules.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional, Union

import gin

# The published code's loader uses this threshold for the log-sigmoid gate.
LOG_SIGMOID_THRESHOLD = -5.0
# The pooling baselines' slot markers: the value of a position that starts no slot, and
# the threshold below which a position counts as not starting one.
MARKER_SCALE = -30.0
MARKER_THRESHOLD = MARKER_SCALE / 2.0

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


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DeleteGateConfig:
  """The delete gate (``scaled_sigmoid``: G = k sigmoid(-logit); ``log_sigmoid``:
  G = log sigmoid(logit)) and the ``random`` / ``fixed`` deletion baselines.

  ``sigmoid_mask_scale`` k (< 0; G lies in (k, 0), pads get k);
  ``deletion_threshold`` (hard deletion keeps G > threshold; None means k / 2,
  or -5 for the log-sigmoid gate, as the published loader); ``gate_layer_norm``
  (an RMS norm before the gate's projection); ``use_gumbel_noise`` (Gumbel
  noise on the logits in training; needs the ``gate_noise`` rng);
  ``random_deletion_probability`` (``random``: each real position deleted with
  it); ``fixed_deletion_amount`` (``fixed``: the trailing share of every word
  deleted). The names are the published MrT5 config's. ``gate_bias_init``: the
  initial bias b of a fresh gate's projection, read only when parameters are
  initialised (a checkpoint carries the trained bias; conversion ignores it). The
  published 1.0 has a fresh gate delete about a quarter of the positions (the
  logit's spread is about sqrt(2)); at 4.0 a fresh gate deletes almost none
  (G about k sigmoid(-4), -0.5 for k = -30). ``gate_kernel_init_scale``: a factor
  on the fresh projection's Xavier-uniform kernel (1.0 the published init; 0.0 a
  zero kernel, so every position starts at the same logit and only the loss's
  gradient orders them), read only at initialisation like the bias.
  """

  sigmoid_mask_scale: float = -30.0
  deletion_threshold: Optional[float] = None
  gate_layer_norm: bool = True
  use_gumbel_noise: bool = False
  random_deletion_probability: float = 0.5
  fixed_deletion_amount: float = 0.5
  gate_bias_init: float = 1.0
  gate_kernel_init_scale: float = 1.0

  def resolved(self, deletion_type: str) -> "DeleteGateConfig":
    """A copy with the threshold filled in for ``deletion_type``, checked."""
    settings = self
    if self.deletion_threshold is None:
      threshold = (LOG_SIGMOID_THRESHOLD if deletion_type == "log_sigmoid"
                   else self.sigmoid_mask_scale / 2.0)
      settings = dataclasses.replace(self, deletion_threshold=threshold)
    error = gate_range_error(deletion_type, settings.sigmoid_mask_scale,
                             settings.deletion_threshold)
    if error:
      raise ValueError(error)
    for name in ("random_deletion_probability", "fixed_deletion_amount"):
      if not 0.0 <= getattr(settings, name) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {getattr(settings, name)}")
    return settings

  def unresolved(self) -> "DeleteGateConfig":
    """A copy whose threshold follows the scale and kind again."""
    return dataclasses.replace(self, deletion_threshold=None)


class _Markers:
  """The slot-marker scale and threshold, for the kinds whose G is a marker."""

  sigmoid_mask_scale: ClassVar[float] = MARKER_SCALE
  deletion_threshold: ClassVar[float] = MARKER_THRESHOLD

  def unresolved(self):
    return self


# What plain ByT5 ('none') reports for the scale and threshold: no position is ever deleted.
NO_SETTINGS = _Markers()


@gin.configurable
@dataclasses.dataclass(frozen=True)
class BoundaryPoolingConfig(_Markers):
  """BP (a boundary predictor and segment mean-pooling, Nawrot et al. 2023).

  ``temperature`` and ``prior``: the relaxed Bernoulli the boundaries are drawn
  from in training and the binomial prior that steers their rate (published 0.5
  and 0.2; the length reduction it aims at is 1 - prior); ``capacity_fraction``:
  the static number of segment slots in training, as a share of the input
  length (segments past it are dropped and counted); ``sample_at_inference``:
  draw the boundaries outside training too (boundary ~ Bernoulli(p), as the
  published code does at evaluation; from the ``deletion`` rng, else a fixed
  key), where the default takes the probabilities above 0.5.
  """

  temperature: float = 0.5
  prior: float = 0.2
  capacity_fraction: float = 0.5
  sample_at_inference: bool = False

  def resolved(self, deletion_type: str) -> "BoundaryPoolingConfig":
    del deletion_type
    if not self.temperature > 0:
      raise ValueError(f"temperature must be positive, got {self.temperature}")
    if not 0.0 < self.prior < 1.0:
      raise ValueError(f"prior must lie in (0, 1), got {self.prior}")
    if not 0.0 < self.capacity_fraction <= 1.0:
      raise ValueError(f"capacity_fraction must lie in (0, 1], got {self.capacity_fraction}")
    return self


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ConvPoolingConfig(_Markers):
  """CP (a CANINE-style strided convolution): ``rate`` positions pooled into
  each slot (published 4), so the length reduction is 1 - 1 / rate."""

  rate: int = 4

  def resolved(self, deletion_type: str) -> "ConvPoolingConfig":
    del deletion_type
    if isinstance(self.rate, bool) or not isinstance(self.rate, int) or self.rate < 1:
      raise ValueError(f"rate must be a positive int, got {self.rate!r}")
    return self


ShorteningConfig = Union[DeleteGateConfig, BoundaryPoolingConfig, ConvPoolingConfig]

# The settings class of each kind that shortens (None: a kind without settings);
# 'none', plain ByT5, is not one.
SETTINGS_FOR_KIND: dict[str, Optional[type]] = {
    "scaled_sigmoid": DeleteGateConfig, "log_sigmoid": DeleteGateConfig,
    "random": DeleteGateConfig, "fixed": DeleteGateConfig,
    "boundary": BoundaryPoolingConfig, "conv": ConvPoolingConfig,
}

# Flat keys of older model_config.json files -> (settings class, field).
FLAT_KEYS: dict[str, tuple[type, str]] = {
    **{f.name: (DeleteGateConfig, f.name) for f in dataclasses.fields(DeleteGateConfig)},
    "bp_temperature": (BoundaryPoolingConfig, "temperature"),
    "bp_prior": (BoundaryPoolingConfig, "prior"),
    "bp_capacity_fraction": (BoundaryPoolingConfig, "capacity_fraction"),
    "bp_sample_at_inference": (BoundaryPoolingConfig, "sample_at_inference"),
    "cp_rate": (ConvPoolingConfig, "rate"),
}


# ``deletion_type`` of plain ByT5: nothing shortens the encoder.
NO_SHORTENING = "none"
# Every value ``deletion_type`` may take (the registry maps each to its implementation).
DELETION_TYPES = (*SETTINGS_FOR_KIND, NO_SHORTENING)


def shortens(deletion_type: str) -> bool:
  """Whether ``deletion_type`` shortens the encoder; refuses unknown names."""
  if deletion_type != NO_SHORTENING and deletion_type not in SETTINGS_FOR_KIND:
    raise ValueError(f"deletion_type must be one of {(*SETTINGS_FOR_KIND, NO_SHORTENING)}, "
                     f"got {deletion_type!r}")
  return deletion_type != NO_SHORTENING


def settings_class(deletion_type: str) -> Optional[type]:
  """The settings class of ``deletion_type`` (None for 'none' and kinds without
  settings); refuses unknown names."""
  return SETTINGS_FOR_KIND.get(deletion_type) if shortens(deletion_type) else None


def settings_for(deletion_type: str, given: Any = None) -> Optional[ShorteningConfig]:
  """The resolved settings of ``deletion_type``: ``given`` (a settings object, a
  dict of its fields, or None for the gin-bound defaults), checked against the kind."""
  cls = settings_class(deletion_type)
  if cls is None:
    if given is not None:
      raise ValueError(f"deletion_type={deletion_type!r} takes no shortening settings, "
                       f"got {given!r}")
    return None
  if given is None:
    given = cls()
  elif isinstance(given, dict):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - known)
    if unknown:
      raise ValueError(f"unknown {cls.__name__} fields {unknown} for "
                       f"deletion_type={deletion_type!r}; it has {sorted(known)}")
    given = cls(**given)
  elif not isinstance(given, cls):
    raise ValueError(f"deletion_type={deletion_type!r} takes {cls.__name__} settings, got "
                     f"{type(given).__name__}")
  return given.resolved(deletion_type)


def nest_flat_keys(values: dict) -> dict:
  """``values`` (a model_config.json dict) with flat shortening keys moved into
  ``shortening`` for its ``deletion_type``; keys of other kinds are dropped
  (older files carried every kind's defaults)."""
  flat = {key: values[key] for key in FLAT_KEYS if key in values}
  if not flat:
    return values
  values = {key: value for key, value in values.items() if key not in FLAT_KEYS}
  kind = values.get("deletion_type", "scaled_sigmoid")
  cls = SETTINGS_FOR_KIND.get(kind) if isinstance(kind, str) else None
  nested = {FLAT_KEYS[key][1]: value for key, value in flat.items()
            if FLAT_KEYS[key][0] is cls}
  if cls is not None:
    values["shortening"] = {**nested, **(values.get("shortening") or {})}
  return values
