"""Full-length against hard-deletion speed of one batch, measured side by side."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from mrt5_jax.evaluation.timing import Speed, paired_seconds
from mrt5_jax.inference.encode_path import InferenceConfig, deletion_figures
from mrt5_jax.inference.runner import InferenceRunner
from mrt5_jax.model.flops import decoder_flops, encoder_flops


class SpeedMeter:
  """Full-length (soft) against hard-deletion encoding and scoring of one batch."""

  def __init__(self, config, params, inference: InferenceConfig = InferenceConfig()):
    self.config = config
    self.full = InferenceRunner(config, params, mode="soft")
    self.hard = InferenceRunner(config, params, mode="bucketed",
                                inference=inference.replace(mode="bucketed"))

  def measure(self, batch: Mapping[str, np.ndarray], examples: int, repeats: int) -> Speed:
    """Time ``batch`` (``examples`` real rows) ``repeats`` times each way, alternately."""
    tokens = batch["encoder_input_tokens"]
    dec_in, targets = batch["decoder_input_tokens"], batch["decoder_target_tokens"]
    length, target_length = tokens.shape[1], targets.shape[1]
    hard_out = self.hard.encode(tokens)
    compacted = hard_out.compacted_length
    kept = deletion_figures(hard_out, tokens, self.config.deletion_threshold)["kept_length"]
    encoder = paired_seconds(
        lambda: self.full.encode(tokens).encoded, lambda: self.hard.encode(tokens).encoded,
        repeats)
    forward = paired_seconds(
        lambda: self.full.score(tokens, dec_in, targets),
        lambda: self.hard.score(tokens, dec_in, targets), repeats)
    rows = tokens.shape[0]
    # the "full" program is the soft one: the input length for a delete gate,
    # BP at its training capacity, CP at its one length
    full_length = self.full.encode(tokens).compacted_length
    enc_full = encoder_flops(self.config, length, full_length)
    enc_hard = encoder_flops(self.config, length, compacted)
    return Speed(
        examples=examples, batches=1,
        encoder_full=float(np.median(encoder[0])), encoder_hard=float(np.median(encoder[1])),
        forward_full=float(np.median(forward[0])), forward_hard=float(np.median(forward[1])),
        encoder_ratios=[f / h for f, h in zip(*encoder)],
        forward_ratios=[f / h for f, h in zip(*forward)],
        encoder_flops_full=rows * enc_full, encoder_flops_hard=rows * enc_hard,
        forward_flops_full=rows * (enc_full + decoder_flops(
            self.config, target_length, full_length)),
        forward_flops_hard=rows * (enc_hard + decoder_flops(
            self.config, target_length, compacted)),
        compacted_lengths=[int(compacted)],
        longest_kept=[int(np.max(np.asarray(kept)))])
