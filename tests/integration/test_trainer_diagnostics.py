"""Real (tiny) training runs on the vowel-removal diagnostic task.

- the shipped deletion control (``runs/deletion_control.gin``: bounded PI and
  hard-deletion batches) holds a 0.4 target deletion rate (within +-0.05 over
  the last 100 of 600 steps), on two seeds;
- with a low target the gate learns *what* to delete: the vowels.

Both used to train with the published P controller (k_p 0.01), whose outcome
hangs on float round-off (issue 21): its alpha >= 0 can only push deletion
up, so from a gate that starts above the target it never acts, and where the
rate ends depends on the CPU (0.44 here, 0.58 on an Intel Xeon). The vowel
claim is kept with its bounds, but no recipe measured so far meets it on
every machine (docs/deletion_control.md, "The vowel diagnostic"): it is an
expected failure until one does, and it still runs, so a recipe that meets
it shows up as XPASS.
"""
import numpy as np
import pytest

from mrt5_jax.checkpointing import readers
from mrt5_jax.data import pipeline
from mrt5_jax.jobs import gin_files
from mrt5_jax.maths import controller as ctl
from mrt5_jax.model import config as config_lib
from mrt5_jax.model import network
from mrt5_jax.tasks import VOWELS
from mrt5_jax.training import objective as obj
from tests.fixtures import diagnostic_dataset, train_run as run

SEQ = 16
VOWEL_SEQ = 32  # '#' + 30 letters + EOS: long enough that the constant bytes are few


def _shipped_recipe(target: float) -> tuple[ctl.ControllerConfig, obj.ObjectiveConfig]:
  """The controller and objective of ``runs/deletion_control.gin`` (the shipped recipe)."""
  gin_files.parse(["runs/deletion_control.gin"],
                  [f"ControllerConfig.target_deletion_rate = {target}",
                   "ControllerConfig.regularizer_delay = 0"], finalize=False)
  return ctl.ControllerConfig(), obj.ObjectiveConfig()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_controller_reaches_target_in_real_training(tmp_path, seed):
  controller, objective = _shipped_recipe(0.4)
  assert controller.kind == "bounded_pi" and objective.hard_delete_train_prob > 0
  dataset = diagnostic_dataset("vowel_removal", batch_size=64, seed=seed, length=SEQ)
  result = run(tmp_path, 600, dataset=dataset, config=config_lib.preset("tiny"), lr=5e-3,
               seed=seed, controller=controller, objective=objective)
  rates = np.array([h["deletion_rate"] for h in result.history])
  alphas = np.array([h["alpha"] for h in result.history])
  final = rates[-100:].mean()
  print(f"seed {seed}: last 100 steps' deletion {final:.3f}, alpha in [{alphas.min():.4f}, "
        f"{alphas.max():.4f}]")
  assert abs(final - 0.4) <= 0.05, final
  assert np.abs(alphas).max() > 0  # the controller acted


@pytest.mark.slow
@pytest.mark.xfail(run=False, reason="issue 21: no measured recipe meets the vowel bounds on "
                   "every CPU (docs/deletion_control.md); not run, since its outcome (4.5 minutes "
                   "of CI) tells nothing while it is expected to fail")
def test_gate_learns_to_delete_vowels(tmp_path):
  """>= 80% of all deleted positions ('#' prefix and EOS included) are vowels."""
  config = config_lib.preset("tiny")
  dataset = diagnostic_dataset("vowel_removal", batch_size=64, seed=0, length=VOWEL_SEQ)
  result = run(tmp_path, 1500, dataset=dataset, config=config, lr=5e-3, log_every=100,
               controller=ctl.ControllerConfig(kind="p", target_deletion_rate=0.15, k_p=0.01,
                                               regularizer_delay=600))
  assert result.history[-1]["cross_entropy_per_token"] < 0.3  # the task is learned
  params = readers.restore_params(result.model_dir)
  validation = diagnostic_dataset("vowel_removal", batch_size=256, length=VOWEL_SEQ,
                                  split="validation")
  batch = next(pipeline.get_dataset(validation).as_numpy_iterator())
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
