"""Length arithmetic of span corruption (the T5 ``random_spans_helper`` rule).

A raw chunk of ``n`` tokens has ``round(n * noise_density)`` noise tokens in
``round(noise / mean_noise_span_length)`` spans (clamped to at least one noise
token and one span, as the noise mask does, which only matters for tiny
lengths where T5's helper would undercount). The corrupted inputs keep the
non-noise tokens plus one sentinel per span plus EOS; the targets hold the
noise tokens plus one sentinel per span plus EOS. Rounding is Python's
(half to even on float64), the same as the TF noise mask uses.
"""
from __future__ import annotations

from typing import Tuple


def validate_noise_settings(noise_density: float,
                            mean_noise_span_length: float) -> None:
  """Raises ValueError unless 0 < density < 1 and mean span length >= 1."""
  if not 0.0 < noise_density < 1.0:
    raise ValueError(
        f"noise_density must be in (0, 1), got {noise_density!r}")
  if not mean_noise_span_length >= 1.0:
    raise ValueError(
        f"mean_noise_span_length must be >= 1, got {mean_noise_span_length!r}")


def noise_counts(raw_length: int, noise_density: float,
                 mean_noise_span_length: float) -> Tuple[int, int]:
  """(noise tokens, noise spans) of a raw chunk, clamped as the mask clamps.

  At least one noise and one non-noise token and 1 <= spans <= either count
  (chunks shorter than 2 tokens get no noise); for ordinary lengths this is
  T5's unclamped arithmetic.
  """
  if raw_length < 2:
    return 0, 0
  num_noise = min(max(int(round(raw_length * noise_density)), 1),
                  raw_length - 1)
  num_spans = int(round(num_noise / mean_noise_span_length))
  num_spans = min(max(num_spans, 1), num_noise, raw_length - num_noise)
  return num_noise, num_spans


def corrupted_lengths(raw_length: int, noise_density: float,
                      mean_noise_span_length: float) -> Tuple[int, int]:
  """(inputs, targets) lengths, EOS included, of a corrupted raw chunk."""
  if raw_length < 2:  # the token stays; targets hold one sentinel
    return raw_length + 1, raw_length + 1
  num_noise, num_spans = noise_counts(raw_length, noise_density,
                                      mean_noise_span_length)
  return (raw_length - num_noise + num_spans + 1, num_noise + num_spans + 1)


def span_corruption_lengths(inputs_length: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 20.0
                           ) -> Tuple[int, int]:
  """Raw chunk length whose corrupted inputs fill ``inputs_length`` exactly.

  Args:
    inputs_length: encoder length in tokens, EOS included (ByT5: 1024).
    noise_density: share of raw tokens that become noise.
    mean_noise_span_length: mean length of a noise span in tokens.

  Returns:
    ``(raw_tokens_length, targets_length)``; targets include EOS.
    ByT5 / MrT5 settings (1024, 0.15, 20) give (1193, 189).
  """
  validate_noise_settings(noise_density, mean_noise_span_length)
  if int(inputs_length) != inputs_length or inputs_length < 2:
    raise ValueError(
        f"inputs_length must be an integer >= 2, got {inputs_length!r}")
  inputs_length = int(inputs_length)
  raw_length = inputs_length - 1
  while corrupted_lengths(raw_length + 1, noise_density,
                          mean_noise_span_length)[0] <= inputs_length:
    raw_length += 1
  targets_length = corrupted_lengths(raw_length, noise_density,
                                     mean_noise_span_length)[1]
  # T5's rule: at density 0.5 prefer targets no longer than the inputs.
  if noise_density == 0.5 and targets_length > inputs_length:
    raw_length -= 1
    targets_length -= 1
  return raw_length, targets_length
