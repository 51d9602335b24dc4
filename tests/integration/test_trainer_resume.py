"""Resume: 2k steps straight == k steps, stop, restart from the checkpoint, k more."""
import logging
import os

import numpy as np

from tests.fixtures import diagnostic_dataset, train_run as run
from mrt5_jax.checkpointing import writer
from mrt5_jax.maths import controller as ctl


def test_resume_matches_uninterrupted_run(tmp_path, caplog):
  k = 3
  dataset = diagnostic_dataset("vowel_removal", batch_size=4, seed=7)
  controller = ctl.ControllerConfig(kind="pi", target_deletion_rate=0.9, k_p=2.0, k_i=0.5)
  straight = run(tmp_path / "a", 2 * k, dataset=dataset, controller=controller)
  first = run(tmp_path / "b", 2 * k, dataset=dataset, controller=controller, stop_after=k)
  assert first.interrupted and first.step == k
  assert writer.latest_step(str(tmp_path / "b")) == k
  assert os.path.isdir(os.path.join(first.checkpoint_dir, "data_iterator"))
  with caplog.at_level(logging.INFO, logger="mrt5_jax"):
    second = run(tmp_path / "b", 2 * k, dataset=dataset, controller=controller)
  assert f"at step {k} (data: iterator)" in caplog.text  # the tf.data iterator, no replay
  assert second.step == 2 * k and not second.interrupted
  resumed = first.history + second.history
  assert [h["step"] for h in resumed] == [h["step"] for h in straight.history]
  for key in ("loss", "cross_entropy_per_token", "alpha", "deletion_rate", "grad_norm"):
    np.testing.assert_allclose([h[key] for h in resumed], [h[key] for h in straight.history],
                               rtol=0, atol=1e-6, err_msg=key)
  # the controller actually moved, so alpha agreement is not vacuous
  assert straight.history[-1]["alpha"] > 0
