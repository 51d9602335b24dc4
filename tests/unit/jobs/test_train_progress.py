"""The train job's progress line: which target it shows."""
import types

import numpy as np

from mrt5_jax.jobs import train as train_job
from mrt5_jax.maths import controller as ctl
from mrt5_jax.model.shortening.registry import shortening_for
from tests.fixtures import model_config


def test_the_progress_line_shows_the_ramped_target():
  """jobs.train shows the target the controller aims at now; BP / CP keep their own."""
  config = ctl.ControllerConfig(target_deletion_rate=0.4, regularizer_delay=2,
                                target_ramp_steps=4)
  for kind, expected in (("scaled_sigmoid", [0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.4]),
                         ("conv", [0.75] * 7), ("none", [None] * 7)):
    trainer = types.SimpleNamespace(module=types.SimpleNamespace(
        shortening=shortening_for(model_config("network", deletion_type=kind))))
    shown = [train_job._shown_target(trainer, config, step) for step in range(7)]
    if kind == "none":
      assert shown == expected
    else:
      np.testing.assert_allclose(shown, expected, atol=1e-6)
