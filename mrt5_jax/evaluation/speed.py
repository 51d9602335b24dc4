"""Full-length against hard-deletion speed of one batch, measured side by side."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from mrt5_jax.evaluation.timing import Speed, paired_seconds
from mrt5_jax.inference.encode_path import InferenceConfig, deletion_figures
from mrt5_jax.inference.runner import InferenceRunner
from mrt5_jax.model.flops import batch_encoder_flops, decoder_flops, encoder_flops


class SpeedMeter:
  """Full-length (soft) against hard-deletion encoding and scoring of one batch.

  Hard deletion runs in the ``InferenceConfig``'s mode (``bucketed`` where
  that is ``soft``). The full-length side is the same model run soft, or
  ``reference`` = (config, params) of another model on the same bytes (a
  ByT5, so the speedup is over the model MrT5 replaces; its vocabulary must
  be the same).
  """

  def __init__(self, config, params, inference: InferenceConfig = InferenceConfig(),
               reference: Optional[tuple[Any, Any]] = None):
    self.config = config
    self.full_config, full_params = reference or (config, params)
    if self.full_config.vocab_size != config.vocab_size:
      raise ValueError(f"the speed reference's vocabulary ({self.full_config.vocab_size}) is not "
                       f"the evaluated model's ({config.vocab_size})")
    self.full = InferenceRunner(self.full_config, full_params, mode="soft")
    mode = "bucketed" if inference.mode == "soft" else inference.mode
    self.hard = InferenceRunner(config, params, inference=inference.replace(mode=mode))

  def measure(self, batch: Mapping[str, np.ndarray], examples: int, repeats: int) -> Speed:
    """Time ``batch`` (``examples`` real rows) ``repeats`` times each way, alternately."""
    tokens = batch["encoder_input_tokens"]
    dec_in, targets = batch["decoder_input_tokens"], batch["decoder_target_tokens"]
    length, target_length = tokens.shape[1], targets.shape[1]
    hard_out = self.hard.encode(tokens)
    compacted = hard_out.compacted_length
    kept = np.asarray(deletion_figures(hard_out, tokens,
                                       self.config.deletion_threshold)["kept_length"])
    kept_counts = self.hard.path.read_gate(self.hard.params, tokens)[1]
    rows, run_length = self.hard.path.stage_two_shape(kept_counts, length, compacted)
    encoder = paired_seconds(
        lambda: self.full.encode(tokens).encoded, lambda: self.hard.encode(tokens).encoded,
        repeats)
    forward = paired_seconds(
        lambda: self.full.score(tokens, dec_in, targets),
        lambda: self.hard.score(tokens, dec_in, targets), repeats)
    batch_rows = tokens.shape[0]
    # the "full" program is the soft one: the input length for a delete gate,
    # BP at its training capacity, CP at its one length (or the reference's)
    full_length = self.full.encode(tokens).compacted_length
    enc_full = batch_rows * encoder_flops(self.full_config, length, full_length)
    enc_hard = batch_encoder_flops(self.config, batch_rows, length, rows, run_length)
    enc_exact = sum(encoder_flops(self.config, length, max(int(k), 1)) for k in kept)
    dec_full = batch_rows * decoder_flops(self.full_config, target_length, full_length)
    dec_hard = batch_rows * decoder_flops(self.config, target_length, compacted)
    return Speed(
        examples=examples, batches=1,
        encoder_full=float(np.median(encoder[0])), encoder_hard=float(np.median(encoder[1])),
        forward_full=float(np.median(forward[0])), forward_hard=float(np.median(forward[1])),
        encoder_ratios=[f / h for f, h in zip(*encoder)],
        forward_ratios=[f / h for f, h in zip(*forward)],
        encoder_flops_full=enc_full, encoder_flops_hard=enc_hard,
        encoder_flops_exact=enc_exact,
        forward_flops_full=enc_full + dec_full, forward_flops_hard=enc_hard + dec_hard,
        compacted_lengths=[int(compacted)],
        longest_kept=[int(np.max(kept))],
        stage_two_rows=[int(rows)], batch_rows=[int(batch_rows)])
