import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrt5_jax.maths import relpos
from mrt5_jax.model import attention
from mrt5_jax.model import layers

torch = pytest.importorskip("torch")
from transformers.models.t5.modeling_t5 import T5Attention  # noqa: E402


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_buckets_match_hugging_face(bidirectional):
  relative = np.arange(-3000, 3001, dtype=np.int64)
  expected = T5Attention._relative_position_bucket(
      torch.from_numpy(relative), bidirectional=bidirectional, num_buckets=32,
      max_distance=128).numpy()
  ours = np.asarray(relpos.relative_position_bucket(jnp.asarray(relative, jnp.int32),
                                                    bidirectional, 32, 128))
  np.testing.assert_array_equal(ours, expected)


def test_rms_norm_matches_numpy():
  x = np.random.RandomState(0).randn(2, 3, 8).astype(np.float32)
  module = layers.RMSNorm(epsilon=1e-6)
  variables = module.init(jax.random.PRNGKey(0), x)
  scale = np.linspace(0.5, 2.0, 8).astype(np.float32)
  variables = {"params": {"scale": jnp.asarray(scale)}}
  expected = x / np.sqrt(np.mean(x**2, -1, keepdims=True) + 1e-6) * scale
  np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-5, atol=1e-6)


def test_relative_position_bias_uses_given_positions():
  module = attention.RelativePositionBiases(num_heads=2, bidirectional=True)
  pos = jnp.array([[0, 3, 7]], jnp.int32)
  variables = module.init(jax.random.PRNGKey(0), pos, pos)
  table = np.asarray(variables["params"]["rel_embedding"])
  bias = np.asarray(module.apply(variables, pos, pos))
  assert bias.shape == (1, 2, 3, 3)
  for qi, q in enumerate([0, 3, 7]):
    for ki, k in enumerate([0, 3, 7]):
      bucket = int(relpos.relative_position_bucket(jnp.array(k - q), True))
      np.testing.assert_allclose(bias[0, :, qi, ki], table[:, bucket])
