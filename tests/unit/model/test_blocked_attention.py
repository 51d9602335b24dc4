"""Blocked (online-softmax) attention against the dense path: values, gradients,
the score regularizer, dropout, and no (L, L) intermediate anywhere."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrt5_jax.maths import attention
from mrt5_jax.maths import attention as blocked_attention
from mrt5_jax.model.attention import MultiHeadAttention
from mrt5_jax.model.network import Transformer
from tests.fixtures import as_tuple, byte_batch, init_params, model_config

jax.config.update("jax_default_matmul_precision", "highest")

B, L, H, D = 2, 37, 3, 8


def random_problem(seed=0, *, packed=False, key_bias=True, hard=False):
  """q, k, v (B, L, H, D) and an AttentionBias with padding (row 1 from 29 on),
  optionally two packed segments, a gate-like key bias, or compacted positions."""
  rng = np.random.RandomState(seed)
  q, k, v = (jnp.asarray(rng.randn(B, L, H, D) * 1.5, jnp.float32) for _ in range(3))
  valid = np.ones((B, L), bool)
  valid[1, 29:] = False
  if hard:  # kept positions of a longer input, in order, with gaps
    positions = np.sort(rng.choice(300, size=(B, L), replace=False), axis=1).astype(np.int32)
  else:
    positions = np.arange(L, dtype=np.int32)[None]
  segments = None
  if packed:
    segments = np.where(np.arange(L)[None] < 15, 1, 2).repeat(B, 0).astype(np.int32)
    segments[~valid] = 0
    segments = jnp.asarray(segments)
  gate = jnp.asarray(-30.0 * rng.rand(B, L), jnp.float32) if key_bias else None
  bias = attention.AttentionBias(
      relpos_table=jnp.asarray(rng.randn(H, 32), jnp.float32),
      query_positions=jnp.asarray(positions), key_positions=jnp.asarray(positions),
      query_valid=jnp.asarray(valid), key_valid=jnp.asarray(valid),
      query_segments=segments, key_segments=segments, key_bias=gate)
  return q, k, v, bias


def dense(q, k, v, bias, use_softmax1):
  full, allowed = bias.build()
  out, logits = attention.dot_product_attention(q, k, v, full, use_softmax1=use_softmax1,
                                                return_logits=True)
  return out, attention.score_penalty(logits, allowed)


def blocked(q, k, v, bias, use_softmax1, key_block=8, query_block=None):
  out, (total, count) = blocked_attention.blocked_dot_product_attention(
      q, k, v, bias, key_block_size=key_block, query_block_size=query_block,
      use_softmax1=use_softmax1, return_penalty=True)
  return out, total / jnp.maximum(count, 1.0)


@pytest.mark.parametrize("use_softmax1", [False, True])
@pytest.mark.parametrize("case,blocks", [("soft", (8, None)), ("packed", (5, 16)),
                                         ("hard", (16, 4)), ("no_key_bias", (64, None))])
def test_blocked_equals_dense_outputs_and_score_penalty(use_softmax1, case, blocks):
  """Key blocks that divide L or not, query blocks larger or smaller, one block."""
  q, k, v, bias = random_problem(packed=case == "packed", hard=case == "hard",
                                 key_bias=case != "no_key_bias")
  want, want_penalty = jax.jit(dense, static_argnums=4)(q, k, v, bias, use_softmax1)
  got, got_penalty = jax.jit(blocked, static_argnums=(4, 5, 6))(q, k, v, bias, use_softmax1,
                                                               *blocks)
  # every position, padded query rows (all keys masked) included
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(float(got_penalty), float(want_penalty), rtol=1e-5)
  assert float(want_penalty) > 0


@pytest.mark.parametrize("use_softmax1", [False, True])
def test_blocked_gradients_equal_dense(use_softmax1):
  q, k, v, bias = random_problem(seed=3, packed=True)
  weights = jnp.asarray(np.random.RandomState(4).randn(B, L, H, D), jnp.float32)

  def loss(fn, q, k, v, table, key_bias):
    b = bias.replace(relpos_table=table, key_bias=key_bias)
    out, penalty = fn(q, k, v, b, use_softmax1)
    return jnp.sum(out * weights) + 3.0 * penalty

  args = (q, k, v, bias.relpos_table, bias.key_bias)
  want = jax.jit(jax.grad(lambda *a: loss(dense, *a), argnums=range(5)))(*args)
  got = jax.jit(jax.grad(lambda *a: loss(blocked, *a), argnums=range(5)))(*args)
  for name, g, w in zip(("q", "k", "v", "relpos table", "key bias"), got, want):
    scale = float(jnp.abs(w).max())
    assert scale > 0, name
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5 * max(scale, 1.0),
                               err_msg=name)


def test_all_masked_rows_match_dense_for_both_normalisers():
  q, k, v, bias = random_problem(seed=5)
  bias = bias.replace(key_valid=jnp.zeros((B, L), bool))
  for use_softmax1 in (False, True):
    want, _ = jax.jit(dense, static_argnums=4)(q, k, v, bias, use_softmax1)
    got, _ = jax.jit(blocked, static_argnums=(4, 5))(q, k, v, bias, use_softmax1, 16)
    assert np.all(np.isfinite(np.asarray(got)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(got), 0.0)  # softmax1: no weight anywhere


def test_dropout_uses_one_mask_per_block_pair():
  """Against a NumPy softmax whose dropout mask is assembled from the same per-block draws."""
  q, k, v, bias = random_problem(seed=6)
  rate, q_block, k_block = 0.3, 16, 8
  rng = jax.random.PRNGKey(7)
  got = jax.jit(lambda q, k, v, bias: blocked_attention.blocked_dot_product_attention(
      q, k, v, bias, key_block_size=k_block, query_block_size=q_block, dropout_rng=rng,
      dropout_rate=rate, deterministic=False))(q, k, v, bias)
  keep = np.zeros((B, H, L, L), bool)
  for qi in range(-(-L // q_block)):
    for ki in range(-(-L // k_block)):
      block = np.asarray(blocked_attention.dropout_keep(rng, qi, ki, (B, H, q_block, k_block),
                                                        rate))
      rows, cols = slice(qi * q_block, (qi + 1) * q_block), slice(ki * k_block, (ki + 1) * k_block)
      span = keep[:, :, rows, cols]
      keep[:, :, rows, cols] = block[:, :, :span.shape[2], :span.shape[3]]
  full, _ = bias.build()
  logits = np.einsum("bqhd,bkhd->bhqk", np.asarray(q, np.float64), np.asarray(k, np.float64))
  logits = logits + np.asarray(full, np.float64)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  want = np.einsum("bhqk,bkhd->bqhd", weights * keep / (1 - rate), np.asarray(v, np.float64))
  assert 0.6 < keep.mean() < 0.8
  real = np.asarray(bias.query_valid)  # fully masked rows depend on float32 rounding of -1e10
  np.testing.assert_allclose(np.asarray(got)[real], want[real], atol=1e-5)


def test_no_quadratic_intermediate_in_forward_or_backward():
  """Every array the blocked forward+backward program builds is at most
  O(query block x L) per head: none has the L x L elements the dense path has."""
  length, block = 256, 32
  rng = np.random.RandomState(0)
  q, k, v = (jnp.asarray(rng.randn(1, length, 2, 8), jnp.float32) for _ in range(3))
  positions = jnp.arange(length, dtype=jnp.int32)[None]
  valid = jnp.ones((1, length), bool)
  bias = attention.AttentionBias(jnp.asarray(rng.randn(2, 32), jnp.float32), positions,
                                 positions, valid, valid, key_bias=jnp.zeros((1, length)))

  def loss(q, k, v, key_bias):
    out = blocked_attention.blocked_dot_product_attention(
        q, k, v, bias.replace(key_bias=key_bias), key_block_size=block, use_softmax1=True)
    return jnp.sum(out ** 2)

  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2, 3)))(q, k, v, bias.key_bias)

  def sizes(jaxpr):
    for eqn in jaxpr.eqns:
      for var in eqn.outvars:
        yield int(np.prod(getattr(var.aval, "shape", ())))
      for param in eqn.params.values():
        for sub in (param if isinstance(param, (list, tuple)) else [param]):
          inner = getattr(sub, "jaxpr", None)
          if inner is not None:
            yield from sizes(getattr(inner, "jaxpr", inner))

  largest = max(sizes(jaxpr.jaxpr))
  assert largest <= 2 * block * length, largest  # dense: 2 heads x 256 x 256 = 4 x this bound
  dense_jaxpr = jax.make_jaxpr(lambda q: attention.dot_product_attention(
      q, k, v, bias.build()[0]))(q)
  assert max(sizes(dense_jaxpr.jaxpr)) >= 2 * length * length


@pytest.mark.parametrize("use_softmax1", [False, True])
@pytest.mark.parametrize("deletion", ["soft", "hard"])
def test_network_with_blocked_attention_equals_dense(use_softmax1, deletion):
  """Whole-model logits, encoder output and the score regularizer, padded rows
  included; hard deletion compacts keys and keeps their original positions."""
  cfg = model_config(use_softmax1=use_softmax1)
  batch = as_tuple(byte_batch())
  module, params = init_params(cfg, batch)
  params["encoder"]["delete_gate"]["dense"]["bias"] = jnp.array([0.3], jnp.float32)
  fast = Transformer(cfg.replace(attention_impl="blocked", attention_block_size=5,
                                 attention_query_block_size=8))
  kwargs = dict(enable_dropout=False, deletion=deletion, return_aux=True,
                compacted_length=16 if deletion == "hard" else None, mutable=["intermediates"])
  run = lambda m: jax.jit(lambda p: m.apply({"params": p}, *batch, **kwargs))(params)
  (want, want_aux), want_state = run(module)
  (got, got_aux), got_state = run(fast)
  if deletion == "hard":
    assert 0 < int(np.asarray(want_aux.mask).sum()) < np.sum(batch[0] > 0)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  np.testing.assert_allclose(np.asarray(got_aux.encoded), np.asarray(want_aux.encoded), atol=1e-5)
  from mrt5_jax.training.objective import score_regularizer
  np.testing.assert_allclose(float(score_regularizer(got_state["intermediates"])),
                             float(score_regularizer(want_state["intermediates"])), rtol=1e-5)


def test_network_gradients_with_blocked_attention_equal_dense_on_packed_inputs():
  cfg = model_config(use_softmax1=True)
  rng = np.random.RandomState(2)
  enc = rng.randint(3, 259, size=(2, 24)).astype(np.int32)
  segments = np.where(np.arange(24)[None] < 11, 1, 2).repeat(2, 0).astype(np.int32)
  enc[1, 20:], segments[1, 20:] = 0, 0
  _, dec_in, tgt = as_tuple(byte_batch(batch=2))
  module, params = init_params(cfg, (enc, dec_in, tgt))
  fast = Transformer(cfg.replace(attention_impl="blocked", attention_block_size=8))

  def loss(m, p):
    logits = m.apply({"params": p}, enc, dec_in, tgt, encoder_segment_ids=segments,
                     enable_dropout=False)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 5])

  want = jax.jit(jax.grad(lambda p: loss(module, p)))(params)
  got = jax.jit(jax.grad(lambda p: loss(fast, p)))(params)
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-6,
                               err_msg=jax.tree_util.keystr(path))
  gate_grad = want["encoder"]["delete_gate"]["dense"]["kernel"]
  assert float(jnp.abs(gate_grad).max()) > 0


def test_blocked_attention_refuses_a_kv_cache_and_mismatched_bias():
  q, k, v, bias = random_problem()
  with pytest.raises(ValueError, match="covers"):
    blocked_attention.blocked_dot_product_attention(q[:, :5], k, v, bias)
  from mrt5_jax.model import layers
  mha = MultiHeadAttention(num_heads=H, head_dim=D)
  x = jnp.ones((B, L, 4))
  variables = mha.init(jax.random.PRNGKey(0), x, x, bias)
  with pytest.raises(ValueError, match="no KV cache"):
    mha.apply(variables, x, x, bias, decode=True, mutable=["cache"])
