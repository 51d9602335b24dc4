import jax.numpy as jnp
import numpy as np
import pytest

from mrt5_jax.maths import attention


def numpy_softmax1(x):
  x = x.astype(np.float64)
  return np.exp(x) / (1.0 + np.exp(x).sum(-1, keepdims=True))


def test_softmax1_matches_numpy_formula():
  x = np.random.RandomState(0).randn(3, 5, 7).astype(np.float32) * 4
  np.testing.assert_allclose(attention.softmax1(jnp.asarray(x)), numpy_softmax1(x), rtol=1e-5,
                             atol=1e-7)


def test_softmax1_is_stable_for_large_logits_and_masked_rows():
  x = np.array([[500.0, 499.0, -1e10], [-1e10, -1e10, -1e10], [0.0, 0.0, 0.0]], np.float32)
  y = np.asarray(attention.softmax1(jnp.asarray(x)))
  assert np.all(np.isfinite(y))
  np.testing.assert_allclose(y[0], [1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1)), 0],
                             rtol=1e-6)
  np.testing.assert_array_equal(y[1], 0.0)
  np.testing.assert_allclose(y[2], 0.25, rtol=1e-6)


def test_attention_with_all_masked_keys_is_finite_for_both_normalisers():
  rng = np.random.RandomState(1)
  q, k, v = (jnp.asarray(rng.randn(2, 3, 2, 4), jnp.float32) for _ in range(3))
  bias = attention.mask_to_bias(jnp.zeros((2, 1, 3, 3), bool))
  for use_softmax1 in (False, True):
    out = attention.dot_product_attention(q, k, v, bias, use_softmax1=use_softmax1)
    assert np.all(np.isfinite(np.asarray(out)))
  out = attention.dot_product_attention(q, k, v, bias, use_softmax1=True)
  np.testing.assert_array_equal(np.asarray(out), 0.0)


def test_score_penalty_is_mean_excess_over_five():
  x = np.array([[1.0, 6.0], [9.0, -3.0]], np.float32)
  assert float(attention.score_penalty(jnp.asarray(x))) == np.mean([0.0, 1.0, 4.0, 0.0])
  valid = np.array([[True, True], [False, True]])
  assert float(attention.score_penalty(jnp.asarray(x), jnp.asarray(valid))) == pytest.approx(1 / 3)
