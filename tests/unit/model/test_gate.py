import jax
import jax.numpy as jnp
import numpy as np

from mrt5_jax.model.shortening import base as shortening_base
from mrt5_jax.model.shortening import delete_gate as gate_lib
from mrt5_jax.model.shortening.registry import shortening_for
from mrt5_jax.model.shortening.settings import FIXED_DELETION_SEPARATOR_IDS
from tests.fixtures import model_config as tiny_config


def reference_gate(hidden, real, scale, kernel, bias, k=-30.0):
  """NumPy G = k sigmoid(-(RMSNorm(h) w + b)), pads k (the published formula)."""
  normed = hidden / np.sqrt(np.mean(hidden**2, -1, keepdims=True) + 1e-6) * scale
  return np.where(real > 0, k / (1.0 + np.exp(normed @ kernel[:, 0] + bias[0])), k)


def test_gate_value_matches_published_formula():
  cfg = tiny_config(shortening=dict(sigmoid_mask_scale=-30.0))
  rng = np.random.RandomState(0)
  hidden = rng.randn(2, 5, cfg.d_model).astype(np.float32)
  real = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
  module = gate_lib.DeleteGate(cfg)
  variables = module.init(jax.random.PRNGKey(0), hidden, real)
  params = variables["params"]
  scale = rng.rand(cfg.d_model).astype(np.float32) + 0.5
  kernel = rng.randn(cfg.d_model, 1).astype(np.float32) * 0.3
  bias = np.array([0.7], np.float32)
  params = {"layer_norm": {"scale": scale}, "dense": {"kernel": kernel, "bias": bias}}
  gate, _ = module.apply({"params": params}, hidden, real)
  expected = reference_gate(hidden, real, scale, kernel, bias)
  np.testing.assert_allclose(np.asarray(gate), expected, rtol=1e-5, atol=1e-5)


def test_fresh_gate_has_bias_one_so_a_neutral_input_gets_k_sigmoid_minus_one():
  cfg = tiny_config()
  hidden = np.zeros((1, 4, cfg.d_model), np.float32)
  module = gate_lib.DeleteGate(cfg)
  variables = module.init(jax.random.PRNGKey(0), hidden, np.ones((1, 4)))
  np.testing.assert_array_equal(variables["params"]["dense"]["bias"], [1.0])
  gate, _ = module.apply(variables, hidden, np.ones((1, 4)))
  np.testing.assert_allclose(gate, -30.0 / (1 + np.e), rtol=1e-5)


def test_gate_bias_init_sets_a_fresh_gates_bias_and_what_it_deletes():
  """A fresh gate on random hidden states: the configured bias, the published
  formula's values for it (NumPy), and the share of positions below k / 2."""
  hidden = np.random.RandomState(1).randn(4, 256, tiny_config().d_model).astype(np.float32)
  real = np.ones(hidden.shape[:2])
  shares = {}
  for bias in (1.0, 4.0):
    cfg = tiny_config(shortening=dict(gate_bias_init=bias))
    module = gate_lib.DeleteGate(cfg)
    variables = module.init(jax.random.PRNGKey(0), hidden, real)
    params = variables["params"]
    np.testing.assert_array_equal(params["dense"]["bias"], [bias])
    gate, _ = module.apply(variables, hidden, real)
    expected = reference_gate(hidden, real, np.asarray(params["layer_norm"]["scale"]),
                              np.asarray(params["dense"]["kernel"]), [bias])
    np.testing.assert_allclose(np.asarray(gate), expected, rtol=1e-4, atol=1e-4)
    shares[bias] = float(np.mean(np.asarray(gate) < cfg.deletion_threshold))
  assert 0.1 < shares[1.0] < 0.4 and shares[4.0] < 0.02, shares


def test_gate_kernel_init_scale_scales_the_xavier_draw_and_zero_gives_one_logit_for_all():
  """The factor multiplies the published Xavier-uniform draw (same rng); at 0 the
  kernel is zero, so every real position starts at G = k sigmoid(-b) (NumPy)."""
  hidden = np.random.RandomState(2).randn(2, 64, tiny_config().d_model).astype(np.float32)
  real = np.ones(hidden.shape[:2])
  kernels = {}
  for factor in (1.0, 0.25, 0.0):
    cfg = tiny_config(shortening=dict(gate_bias_init=4.0, gate_kernel_init_scale=factor))
    module = gate_lib.DeleteGate(cfg)
    variables = module.init(jax.random.PRNGKey(3), hidden, real)
    kernels[factor] = np.asarray(variables["params"]["dense"]["kernel"])
    gate, _ = module.apply(variables, hidden, real)
    if factor == 0.0:
      np.testing.assert_allclose(np.asarray(gate), -30.0 / (1 + np.exp(4.0)), rtol=1e-6)
  limit = np.sqrt(6.0 / (tiny_config().d_model + 1))
  assert np.all(np.abs(kernels[1.0]) <= limit) and np.std(kernels[1.0]) > limit / 3
  np.testing.assert_allclose(kernels[0.25], 0.25 * kernels[1.0], rtol=1e-6)
  assert not np.any(kernels[0.0])


def test_deleted_positions_and_rate_count_real_positions_only():
  gate = jnp.array([[-20.0, -1.0, -30.0, -30.0], [-16.0, -14.0, -15.5, -1.0]])
  real = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]])
  deleted = shortening_base.deleted_positions(gate, real, -15.0)
  np.testing.assert_array_equal(deleted, [[True, False, False, False],
                                          [True, False, True, False]])
  assert float(shortening_base.deletion_rate(jnp.sum(deleted), jnp.sum(real))) == 3 / 6
  assert float(shortening_base.deletion_rate(0.0, 0.0)) == 0.0


def reference_fixed_keep(tokens, amount):
  separators = set(FIXED_DELETION_SEPARATOR_IDS) | {0}
  keep = []
  word = []
  def flush():
    count = int(np.ceil((1 - amount) * len(word)))
    keep.extend([i < count for i in range(len(word))])
    word.clear()
  for token in tokens:
    if token in separators:
      flush()
      keep.append(True)
    else:
      word.append(token)
  flush()
  return np.array(keep)


def test_fixed_gate_deletes_trailing_share_of_each_word():
  text = b"the quick brown fox, jumps over a lazy dog!"
  tokens = np.array([[b + 3 for b in text] + [1, 0, 0]], np.int32)
  for amount in (0.25, 0.5, 0.75):
    gate = np.asarray(gate_lib.fixed_gate(jnp.asarray(tokens), amount, -30.0))
    np.testing.assert_array_equal(gate[0] == 0.0, reference_fixed_keep(list(tokens[0]), amount))


def test_random_gate_rate_and_pads():
  real = jnp.ones((8, 512)).at[:, 400:].set(0)
  gate = gate_lib.mask_pads(gate_lib.random_gate(jax.random.PRNGKey(3), real, 0.3, -30.0), real,
                            -30.0)
  deleted = shortening_base.deleted_positions(gate, real, -15.0)
  rate = float(shortening_base.deletion_rate(jnp.sum(deleted), jnp.sum(real)))
  assert abs(rate - 0.3) < 0.03
  assert np.all(np.asarray(gate)[:, 400:] == -30.0)


def test_log_sigmoid_gate_and_its_threshold():
  cfg = tiny_config(deletion_type="log_sigmoid")
  assert cfg.deletion_threshold == -5.0 and shortening_for(cfg).learned_gate
  rng = np.random.RandomState(1)
  hidden = rng.randn(2, 6, cfg.d_model).astype(np.float32)
  real = np.array([[1] * 6, [1, 1, 1, 1, 0, 0]])
  module = shortening_for(cfg).make_module()
  params = module.init(jax.random.PRNGKey(0), hidden, real)["params"]
  gate, logits = module.apply({"params": params}, hidden, real)
  scale = np.asarray(params["layer_norm"]["scale"])
  kernel, bias = np.asarray(params["dense"]["kernel"]), np.asarray(params["dense"]["bias"])
  normed = hidden / np.sqrt(np.mean(hidden**2, -1, keepdims=True) + 1e-6) * scale
  raw = normed @ kernel[:, 0] + bias[0]
  expected = np.where(real > 0, -np.log1p(np.exp(-raw)), cfg.sigmoid_mask_scale)
  np.testing.assert_allclose(np.asarray(gate), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(logits), raw, rtol=1e-5, atol=1e-5)


def test_gumbel_noise_is_the_published_formula_and_only_in_training():
  rng = jax.random.PRNGKey(4)
  noise = np.asarray(gate_lib.gumbel_noise(rng, (4000,)))
  uniform = np.asarray(jax.random.uniform(rng, (4000,), jnp.float32, minval=1e-10, maxval=1.0),
                       np.float64)
  np.testing.assert_allclose(noise, -np.log(-np.log(uniform)), rtol=1e-5, atol=1e-5)
  assert abs(noise.mean() - np.euler_gamma) < 0.06 and abs(noise.var() - np.pi**2 / 6) < 0.15
  cfg = tiny_config(shortening=dict(use_gumbel_noise=True))
  hidden = np.random.RandomState(0).randn(2, 5, cfg.d_model).astype(np.float32)
  real = np.ones((2, 5))
  module = gate_lib.DeleteGate(cfg)
  variables = module.init(jax.random.PRNGKey(0), hidden, real)
  clean, clean_logits = module.apply(variables, hidden, real)
  noisy, noisy_logits = module.apply(variables, hidden, real, deterministic=False,
                                     rngs={"gate_noise": rng})
  noise = np.asarray(noisy_logits) - np.asarray(clean_logits)
  assert np.all(noise != 0) and len(np.unique(noise)) == noise.size
  again = module.apply(variables, hidden, real, deterministic=False, rngs={"gate_noise": rng})[1]
  np.testing.assert_array_equal(np.asarray(again), np.asarray(noisy_logits))
  assert np.all(np.asarray(module.apply(variables, hidden, real, rngs={"gate_noise": rng})[1])
                == np.asarray(clean_logits))
  np.testing.assert_allclose(np.asarray(noisy),
                             -30.0 / (1 + np.exp(np.asarray(noisy_logits))), rtol=1e-5)
