"""Controller: P and PI updates against hand-computed values; delay and period."""
import numpy as np
import pytest

from mrt5_jax.maths import controller as ctl


def _run(config, rates):
  state = ctl.init_state(config)
  alphas = []
  for rate in rates:
    alphas.append(float(ctl.effective_alpha(state, config)))
    state = ctl.update(state, np.float32(rate), config)
  return alphas, state


def test_p_controller_matches_hand_computed():
  config = ctl.ControllerConfig(kind="p", target_deletion_rate=0.5, k_p=0.5)
  rates = [0.0, 0.1, 0.9, 1.0, 0.2]
  alphas, state = _run(config, rates)
  # alpha_{t+1} = max(0, alpha_t + 0.5 * (0.5 - rate_t)), alpha_0 = 0
  expected = [0.0, 0.25, 0.45, 0.25, 0.0]
  np.testing.assert_allclose(alphas, expected, atol=1e-7)
  np.testing.assert_allclose(float(state["alpha"]), 0.15, atol=1e-7)
  assert int(state["step"]) == 5


def test_pi_controller_matches_hand_computed():
  config = ctl.ControllerConfig(kind="pi", target_deletion_rate=0.4, k_p=2.0, k_i=0.1)
  rates = [0.0, 0.2, 0.6, 0.9]
  _, state = _run(config, rates)
  # by hand: err = .4, .2, -.2, -.5
  #   p = .08, .072+.04 = .112, .1008-.04 = .0608, .05472-.1 = -.04528
  #   i = .04, .06, .04, -.01 ;  alpha = max(0, p + i) = .12, .172, .1008, 0
  alphas, _ = _run(config, rates + [0.4])
  np.testing.assert_allclose(alphas, [0.0, 0.12, 0.172, 0.1008, 0.0], atol=1e-6)
  np.testing.assert_allclose(float(state["p"]), -0.04528, atol=1e-6)
  np.testing.assert_allclose(float(state["i"]), -0.01, atol=1e-7)
  assert float(state["alpha"]) == 0.0


def test_delay_and_period():
  config = ctl.ControllerConfig(kind="p", target_deletion_rate=1.0, k_p=1.0,
                                regularizer_delay=2, controller_step=3, initial_alpha=0.5)
  alphas, state = _run(config, [0.0] * 8)
  # steps 0,1: delayed (alpha seen as 0, no update); updates at steps 3 and 6 only.
  assert alphas == [0.0, 0.0, 0.5, 0.5, 1.5, 1.5, 1.5, 2.5]
  assert float(state["alpha"]) == 2.5


def test_alpha_never_negative_and_constant_kind():
  config = ctl.ControllerConfig(kind="p", target_deletion_rate=0.0, k_p=10.0, initial_alpha=1.0)
  alphas, _ = _run(config, [1.0, 1.0])
  assert alphas == [1.0, 0.0]
  const = ctl.ControllerConfig(kind="constant", initial_alpha=0.3)
  alphas, _ = _run(const, [0.0, 1.0, 0.5])
  np.testing.assert_allclose(alphas, [0.3] * 3, atol=1e-7)


def test_bad_config_is_rejected():
  with pytest.raises(ValueError, match="kind"):
    ctl.ControllerConfig(kind="pid")
  with pytest.raises(ValueError, match="target_deletion_rate"):
    ctl.ControllerConfig(target_deletion_rate=1.5)


def test_published_kinds_are_unchanged_by_the_default_bounds():
  for kind in ("p", "pi"):
    config = ctl.ControllerConfig(kind=kind, target_deletion_rate=0.3, k_p=0.7, k_i=0.2)
    alphas, _ = _run(config, [0.9, 0.95, 0.1, 0.5, 0.99])
    assert min(alphas) >= 0.0


def test_p_controller_with_a_negative_floor_pulls_back():
  config = ctl.ControllerConfig(kind="p", target_deletion_rate=0.5, k_p=0.5, alpha_min=-0.1,
                                alpha_max=0.3)
  alphas, state = _run(config, [1.0, 1.0, 1.0, 0.0, 0.0])
  # 0 -> -0.25 clipped to -0.1 -> -0.1 -> -0.1 -> 0.15 -> (0.4 clipped) 0.3
  np.testing.assert_allclose(alphas, [0.0, -0.1, -0.1, -0.1, 0.15], atol=1e-7)
  np.testing.assert_allclose(float(state["alpha"]), 0.3, atol=1e-7)


def _bounded_pi_reference(rates, target, k_p, k_i, low, high):
  """Hand-written PI with clamping and conditional integration (NumPy floats)."""
  alpha, i, alphas = 0.0, 0.0, []
  for rate in rates:
    alphas.append(alpha)
    e = target - rate
    p = k_p * e
    candidate = i + k_i * e
    u = p + candidate
    if not ((u > high and e > 0) or (u < low and e < 0)):
      i = candidate
    alpha = min(high, max(low, p + i))
  return alphas, alpha, i


def test_bounded_pi_matches_a_hand_written_reference_with_anti_windup():
  rates = [0.0, 0.0, 0.0, 0.0, 0.9, 0.9, 0.9, 0.5, 0.2, 1.0, 1.0, 1.0, 1.0, 0.45]
  config = ctl.ControllerConfig(kind="bounded_pi", target_deletion_rate=0.5, k_p=0.4, k_i=0.3,
                                alpha_min=-0.2, alpha_max=0.5)
  alphas, state = _run(config, rates)
  expected, alpha, i = _bounded_pi_reference(rates, 0.5, 0.4, 0.3, -0.2, 0.5)
  np.testing.assert_allclose(alphas, expected, atol=1e-6)
  np.testing.assert_allclose(float(state["alpha"]), alpha, atol=1e-6)
  np.testing.assert_allclose(float(state["i"]), i, atol=1e-6)
  # the integral never winds up beyond what the bound needs
  assert max(abs(a) for a in alphas) <= 0.5 + 1e-6 and float(state["i"]) <= 0.5 + 1e-6


def test_bounds_are_checked():
  with pytest.raises(ValueError, match="initial_alpha"):
    ctl.ControllerConfig(alpha_min=0.1)
  with pytest.raises(ValueError, match="kind"):
    ctl.ControllerConfig(kind="pid")


def test_target_ramp_rises_from_zero_after_the_delay():
  """P controller against a hand-written loop: the target after delay d over R steps
  is target * min(1, (step - d + 1) / R); before the delay alpha stays 0."""
  config = ctl.ControllerConfig(kind="p", target_deletion_rate=0.4, k_p=0.5,
                                regularizer_delay=2, target_ramp_steps=4)
  rates = [0.0, 0.0, 0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.4]
  alphas, _ = _run(config, rates)
  alpha, expected = 0.0, []
  for step, rate in enumerate(rates):
    expected.append(alpha if step >= 2 else 0.0)
    if step >= 2:
      target = 0.4 * min(1.0, (step - 2 + 1) / 4)
      alpha = max(0.0, alpha + 0.5 * (target - rate))
  np.testing.assert_allclose(alphas, expected, atol=1e-6)
  state = ctl.init_state(config)
  targets = []
  for _ in range(8):
    targets.append(float(ctl.current_target(state, config)))
    state = ctl.update(state, np.float32(0.0), config)
  np.testing.assert_allclose(targets, [0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4], atol=1e-7)
  flat = ctl.ControllerConfig(target_deletion_rate=0.4)
  assert float(ctl.current_target(ctl.init_state(flat), flat)) == pytest.approx(0.4)
  with pytest.raises(ValueError, match="target_ramp_steps"):
    ctl.ControllerConfig(target_ramp_steps=-1)
