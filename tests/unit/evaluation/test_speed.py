"""The speed meter against a reference model: the full-length side is the reference's, on the
same batch, and the FLOP ideal counts the reference's layers (a hand count)."""
import numpy as np
import pytest

from mrt5_jax.evaluation.speed import SpeedMeter
from tests.fixtures import byte_batch, init_params, model_config


def _hand_layer_flops(config, n):
  inner = config.num_heads * config.head_dim
  return 8 * n * config.d_model * inner + 4 * n * n * inner + 6 * n * config.d_model * config.d_ff


def test_speedup_over_a_deeper_byt5_counts_the_reference_layers():
  batch = byte_batch(batch=4, length=32, target_length=8, pad_from=(None, 20, 12, 28))
  mrt5 = model_config()
  byt5 = model_config(deletion_type="none", num_encoder_layers=mrt5.num_encoder_layers + 2)
  _, mrt5_params = init_params(mrt5, batch)
  _, byt5_params = init_params(byt5, batch, seed=3)
  mrt5_params["encoder"]["delete_gate"]["dense"]["bias"] = np.array([-0.5], np.float32)
  alone = SpeedMeter(mrt5, mrt5_params).measure(batch, examples=4, repeats=1)
  against = SpeedMeter(mrt5, mrt5_params, reference=(byt5, byt5_params)).measure(
      batch, examples=4, repeats=1)
  rows, length = 4, 32
  assert against.encoder_flops_full == pytest.approx(
      rows * byt5.num_encoder_layers * _hand_layer_flops(byt5, length))
  assert alone.encoder_flops_full == pytest.approx(
      rows * mrt5.num_encoder_layers * _hand_layer_flops(mrt5, length))
  # the hard side is the same model either way
  assert against.encoder_flops_hard == alone.encoder_flops_hard
  assert against.compacted_lengths == alone.compacted_lengths
  ratio = byt5.num_encoder_layers / mrt5.num_encoder_layers
  assert (against.report()["encoder_ideal_speedup"]
          == pytest.approx(ratio * alone.report()["encoder_ideal_speedup"]))
  assert against.report()["encoder_speedup"] > 0


def test_a_reference_with_another_vocabulary_is_refused():
  batch = byte_batch(batch=2, length=16, target_length=8, pad_from=(None, 9))
  mrt5 = model_config()
  other = model_config(deletion_type="none", vocab_size=mrt5.vocab_size + 128)
  _, params = init_params(mrt5, batch)
  _, other_params = init_params(other, batch)
  with pytest.raises(ValueError, match="vocabulary"):
    SpeedMeter(mrt5, params, reference=(other, other_params))
