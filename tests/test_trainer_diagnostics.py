"""Real (tiny) training runs on the vowel-removal diagnostic task.

- the P-controller holds a 0.4 target deletion rate (within +-0.05 at the end);
- with a low target the gate learns *what* to delete: the vowels.
"""
import numpy as np
import pytest

from mrt5_jax import checkpoints
from mrt5_jax import config as config_lib
from mrt5_jax import controller as ctl
from mrt5_jax import data
from mrt5_jax import network
from mrt5_jax.tasks import VOWELS
from tests.fixtures import diagnostic_dataset, train_run as run

SEQ = 16
VOWEL_SEQ = 32  # '#' + 30 letters + EOS: long enough that the constant bytes are few


@pytest.mark.slow
def test_controller_reaches_target_in_real_training(tmp_path):
  dataset = diagnostic_dataset("vowel_removal", batch_size=64, seed=0, length=SEQ)
  result = run(tmp_path, 600, dataset=dataset, config=config_lib.preset("tiny"), lr=5e-3,
               controller=ctl.ControllerConfig(kind="p", target_deletion_rate=0.4, k_p=0.01))
  final = np.mean([h["deletion_rate"] for h in result.history[-100:]])
  assert abs(final - 0.4) <= 0.05, final
  assert max(h["alpha"] for h in result.history) > 0  # the controller acted


@pytest.mark.slow
def test_gate_learns_to_delete_vowels(tmp_path):
  """>= 80% of all deleted positions ('#' prefix and EOS included) are vowels."""
  config = config_lib.preset("tiny")
  dataset = diagnostic_dataset("vowel_removal", batch_size=64, seed=0, length=VOWEL_SEQ)
  result = run(tmp_path, 1500, dataset=dataset, config=config, lr=5e-3, log_every=100,
               controller=ctl.ControllerConfig(kind="p", target_deletion_rate=0.15, k_p=0.01,
                                               regularizer_delay=600))
  assert result.history[-1]["cross_entropy_per_token"] < 0.3  # the task is learned
  params = checkpoints.restore_params(result.model_dir)
  validation = diagnostic_dataset("vowel_removal", batch_size=256, length=VOWEL_SEQ,
                                  split="validation")
  batch = next(data.get_dataset(validation).as_numpy_iterator())
  module = network.Transformer(config)
  gate = module.apply({"params": params}, batch["encoder_input_tokens"], None, False,
                      method=module.encode_stage_one).gate
  tokens = batch["encoder_input_tokens"]
  deleted = (np.asarray(gate) < config.deletion_threshold) & (tokens > 0)
  vowels = np.isin(tokens, [ord(c) + 3 for c in VOWELS])
  assert deleted.sum() > 0
  vowel_share = (deleted & vowels).sum() / deleted.sum()
  vowels_deleted = (deleted & vowels).sum() / vowels.sum()
  print(f"deleted positions that are vowels: {vowel_share:.3f}; vowels deleted: "
        f"{vowels_deleted:.3f}")
  assert vowel_share >= 0.8, vowel_share
  assert vowels_deleted >= 0.5, vowels_deleted  # and most vowels go
