"""Hugging Face config of the PyTorch MrT5: T5Config plus the delete-gate keys.

The keys and their meaning match the published MrT5 config (``model_type``
"mrt5"), so folders written by ``mrt5-convert`` load with this class and with
the published MrT5 code.
"""
from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import T5Config

from mrt5_jax.model.shortening.settings import LOG_SIGMOID_THRESHOLD, gate_range_error

DELETION_TYPES = ("scaled_sigmoid", "log_sigmoid", "random", "fixed", "none")


@strict
class MrT5Config(T5Config):
  """ByT5 sizes by default (vocab 384, gated GELU, untied output projection).

  Gate keys: ``delete_gate_layer`` (0-based encoder layer whose input the gate
  reads), ``sigmoid_mask_scale`` k (< 0; G lies in (k, 0); for log_sigmoid
  only the pad value, its threshold need only be < 0),
  ``deletion_threshold`` (None -> k / 2, or -5 for log_sigmoid; hard deletion
  keeps G > threshold), ``gate_layer_norm``, ``use_softmax1`` (every
  attention layer), ``use_gumbel_noise`` (training only),
  ``deletion_type`` (scaled_sigmoid, log_sigmoid, random, fixed; "none" for a
  gate-less model that needs softmax1, which plain T5 lacks),
  ``random_deletion_probability``, ``fixed_deletion_amount``.
  """

  model_type = "mrt5"

  vocab_size: int = 384
  feed_forward_proj: str = "gated-gelu"
  decoder_start_token_id: int | None = 0
  has_absolute_position_embeddings: bool = False
  delete_gate_layer: int = 3
  sigmoid_mask_scale: float | int = -30.0
  deletion_threshold: float | int | None = None
  use_softmax1: bool = False
  gate_layer_norm: bool = True
  use_gumbel_noise: bool = False
  deletion_type: str = "scaled_sigmoid"
  random_deletion_probability: float | int = 0.5
  fixed_deletion_amount: float | int = 0.5

  def __post_init__(self, **kwargs):
    kwargs.pop("tie_word_embeddings", None)
    if self.deletion_threshold is None:
      self.deletion_threshold = (LOG_SIGMOID_THRESHOLD if self.deletion_type == "log_sigmoid"
                                 else self.sigmoid_mask_scale / 2.0)
    super().__post_init__(**kwargs)
    # T5Config ties shared/encoder/decoder embeddings through this flag; MrT5
    # keeps lm_head separate (see MrT5ForConditionalGeneration) and never
    # rescales the decoder output.
    self.scale_decoder_outputs = False
    self._check_gate()

  @property
  def has_gate(self) -> bool:
    return self.deletion_type != "none"

  def _check_gate(self):
    """ValueError for gate settings the model cannot run."""
    if self.deletion_type not in DELETION_TYPES:
      raise ValueError(f"deletion_type must be one of {DELETION_TYPES}, "
                       f"got {self.deletion_type!r}")
    if self.has_gate and not 0 <= self.delete_gate_layer < self.num_layers:
      raise ValueError(f"delete_gate_layer={self.delete_gate_layer} must lie in "
                       f"[0, num_layers={self.num_layers})")
    error = gate_range_error(self.deletion_type, self.sigmoid_mask_scale,
                             self.deletion_threshold)
    if error:
      raise ValueError(error)
    if self.has_absolute_position_embeddings:
      raise ValueError("has_absolute_position_embeddings=True is not supported (MrT5 uses "
                       "relative position biases only)")
    if self.feed_forward_proj != "gated-gelu":
      raise ValueError(f"feed_forward_proj must be 'gated-gelu' (T5.1.1), got "
                       f"{self.feed_forward_proj!r}")
