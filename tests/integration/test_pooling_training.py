"""BP and CP train on a diagnostic task with the project trainer and reach their
length-reduction targets; their checkpoints refuse to convert to PyTorch."""
from __future__ import annotations

import numpy as np
import pytest

from mrt5_jax.conversion import configs as conversion_configs
from mrt5_jax.conversion import convert
from tests.fixtures import diagnostic_dataset, model_config, train_run

pytestmark = pytest.mark.slow


def _window_mean(history, key, last=15):
  return float(np.mean([row[key] for row in history[-last:]]))


def test_bp_trains_to_its_prior_and_refuses_conversion(tmp_path):
  prior = 0.2
  config = model_config("trainer", deletion_type="boundary", shortening=dict(prior=prior))
  result = train_run(tmp_path / "bp", 60, dataset=diagnostic_dataset("copy", batch_size=8),
                     config=config)
  history = result.history
  boundary_rate = 1.0 - _window_mean(history, "deletion_rate")
  assert abs(boundary_rate - prior) <= 0.05, boundary_rate
  assert _window_mean(history, "boundary_loss") > 0
  assert _window_mean(history, "cross_entropy_per_token") < history[0]["cross_entropy_per_token"] - 1.0
  assert all(row["gate_loss"] == 0.0 for row in history)
  with pytest.raises(conversion_configs.NotConvertibleError, match="BP"):
    convert.to_pytorch(str(tmp_path / "bp"), str(tmp_path / "hf"))
  assert not (tmp_path / "hf").exists()


def test_cp_trains_at_its_fixed_reduction_and_refuses_conversion(tmp_path):
  config = model_config("trainer", deletion_type="conv", shortening=dict(rate=4))
  result = train_run(tmp_path / "cp", 40, dataset=diagnostic_dataset("copy", batch_size=8),
                     config=config)
  history = result.history
  # 24-byte rows: 6 windows of 4, so the length reduction is 1 - 6/24
  assert all(row["deletion_rate"] == pytest.approx(0.75, abs=0.02) for row in history)
  assert _window_mean(history, "cross_entropy_per_token") < history[0]["cross_entropy_per_token"] - 1.0
  with pytest.raises(conversion_configs.NotConvertibleError, match="CP"):
    convert.to_pytorch(str(tmp_path / "cp"), str(tmp_path / "hf"))
