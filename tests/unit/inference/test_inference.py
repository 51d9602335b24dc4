import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrt5_jax.inference.encode_path import InferenceConfig, bucket_lengths
from mrt5_jax.inference.runner import InferenceRunner
from tests.fixtures import as_tuple, byte_batch, init_params, model_config

jax.config.update("jax_default_matmul_precision", "highest")
BUCKETS = InferenceConfig(mode="bucketed", capacity_fraction=0.5, min_bucket_length=4,
                          bucket_step=4)


@pytest.fixture(scope="module")
def model():
  cfg = model_config()
  batch = as_tuple(byte_batch(length=32, pad_from=(None, 20, 9)))
  module, params = init_params(cfg, batch)
  params["encoder"]["delete_gate"]["dense"]["bias"] = jnp.array([0.0], jnp.float32)
  return cfg, batch, params


def test_capacity_equals_bucketed_without_overflow(model):
  cfg, (enc, dec_in, tgt), params = model
  bucketed = InferenceRunner(cfg, params, mode="bucketed", inference=BUCKETS)
  capacity = InferenceRunner(cfg, params, mode="capacity",
                             inference=BUCKETS.replace(capacity_fraction=0.9))
  a, b = bucketed.encode(enc), capacity.encode(enc)
  assert int(np.asarray(b.num_dropped).sum()) == 0
  assert a.compacted_length < enc.shape[1]
  # capacity 0.9 rounds up to the input length, where the kept positions stay in place
  assert b.compacted_length == enc.shape[1]
  for row in range(enc.shape[0]):
    slots_a = np.flatnonzero(np.asarray(a.mask[row]) > 0)
    slots_b = np.flatnonzero(np.asarray(b.mask[row]) > 0)
    np.testing.assert_array_equal(np.asarray(a.kept_positions)[row, slots_a],
                                  np.asarray(b.kept_positions)[row, slots_b])
    np.testing.assert_allclose(np.asarray(a.encoded)[row, slots_a],
                               np.asarray(b.encoded)[row, slots_b], atol=1e-5)
  np.testing.assert_allclose(bucketed.score(enc, dec_in, tgt), capacity.score(enc, dec_in, tgt),
                             atol=1e-5)


def test_capacity_overflow_keeps_highest_gate_positions(model):
  cfg, (enc, _, _), params = model
  runner = InferenceRunner(cfg, params, mode="capacity",
                           inference=BUCKETS.replace(capacity_fraction=0.25))
  out = runner.encode(enc)
  assert out.compacted_length == 8
  gate = np.asarray(out.gate)
  real = enc > 0
  for row in range(enc.shape[0]):
    passing = np.flatnonzero((gate[row] > cfg.deletion_threshold) & real[row])
    expected = np.sort(sorted(passing, key=lambda i: (-gate[row, i], i))[:8])
    n = len(expected)
    np.testing.assert_array_equal(np.asarray(out.kept_positions)[row, :n], expected)
    assert int(out.num_dropped[row]) == max(0, len(passing) - 8)
  assert int(np.asarray(out.num_dropped).sum()) > 0


def test_bucketing_compiles_at_most_one_program_per_bucket(model):
  cfg, (enc, _, _), params = model
  runner = InferenceRunner(cfg, params, inference=BUCKETS)
  buckets = bucket_lengths(BUCKETS, enc.shape[1])
  rng = np.random.RandomState(0)
  seen = set()
  for step in range(50):
    bias = rng.uniform(-6.0, 6.0)
    runner.params = jax.tree_util.tree_map(lambda x: x, params)
    runner.params["encoder"]["delete_gate"]["dense"]["bias"] = jnp.array([bias], jnp.float32)
    tokens = enc.copy()
    tokens[rng.randint(3), rng.randint(5, 30):] = 0
    out = runner.encode(tokens)
    largest_kept = int(np.asarray(out.mask).sum(1).max())
    assert largest_kept <= out.compacted_length <= enc.shape[1]
    assert out.compacted_length in buckets
    assert int(np.asarray(out.num_dropped).sum()) == 0
    seen.add(out.compacted_length)
  assert len(seen) >= 3
  assert runner.path._stage_two._cache_size() <= len(buckets)
  assert runner.num_compiled_programs <= len(buckets) + 1


def test_greedy_decoding_with_cache_equals_repeated_full_passes(model):
  cfg, (enc, _, _), params = model
  runner = InferenceRunner(cfg, params, mode="bucketed", inference=BUCKETS)
  steps = 8
  generated = np.asarray(runner.generate(enc, steps))
  out = runner.encode(enc)
  module = runner.module
  batch = enc.shape[0]
  tokens = np.zeros((batch, steps), np.int32)
  done = np.zeros(batch, bool)
  for i in range(steps):
    dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tokens[:, :-1]], 1)
    logits = module.apply({"params": params}, out.encoded, out.mask, dec_in,
                          np.ones_like(dec_in), enable_dropout=False,
                          encoder_key_bias=out.key_bias, method=module.decode)
    nxt = np.where(done, 0, np.asarray(logits)[:, i].argmax(-1))
    tokens[:, i] = nxt
    done |= nxt == 1
  np.testing.assert_array_equal(generated, tokens)


def test_score_is_teacher_forced_log_likelihood(model):
  cfg, (enc, dec_in, tgt), params = model
  runner = InferenceRunner(cfg, params, mode="soft")
  scores = np.asarray(runner.score(enc, dec_in, tgt))
  logits = np.asarray(runner.module.apply({"params": params}, enc, dec_in, tgt,
                                          enable_dropout=False), np.float64)
  log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                              keepdims=True))
  log_probs -= logits.max(-1, keepdims=True)
  expected = np.take_along_axis(log_probs, tgt[..., None], -1)[..., 0] * (tgt > 0)
  np.testing.assert_allclose(scores, expected, atol=1e-4)
  np.testing.assert_array_equal(scores[tgt == 0], 0.0)


def test_runner_refuses_bad_input(model):
  cfg, _, params = model
  runner = InferenceRunner(cfg, params)
  with pytest.raises(ValueError, match="non-empty"):
    runner.encode(np.zeros((0, 8), np.int32))
  with pytest.raises(ValueError, match="integer"):
    runner.encode(np.zeros((2, 8), np.float32))
  with pytest.raises(ValueError, match="mode must be"):
    InferenceRunner(cfg, params, mode="fast")


def test_bucket_arithmetic():
  powers = InferenceConfig(min_bucket_length=8)
  assert bucket_lengths(powers, 100) == (8, 16, 32, 64, 100)
  steps = InferenceConfig(bucket_step=64, min_bucket_length=100)
  assert bucket_lengths(steps, 300) == (128, 192, 256, 300)
  from mrt5_jax.inference.encode_path import bucket_for, capacity_length
  assert bucket_for(powers, 100, 33) == 64 and bucket_for(powers, 100, 99) == 100
  assert capacity_length(InferenceConfig(capacity_fraction=0.3), 100) == 32
  with pytest.raises(ValueError, match="mode must be"):
    InferenceConfig(mode="fast")
  with pytest.raises(ValueError, match="packed_row_lengths"):
    InferenceConfig(packed_row_lengths=0)
  with pytest.raises(ValueError, match="packed_row_limit"):
    InferenceConfig(packed_row_limit=0.5)


def test_packed_row_lengths_are_eighths_of_the_input_length():
  from mrt5_jax.inference.encode_path import packed_row_lengths
  assert packed_row_lengths(InferenceConfig(), 128) == tuple(range(16, 257, 16))
  within = InferenceConfig(packed_row_limit=1.0)
  assert packed_row_lengths(within, 128) == (16, 32, 48, 64, 80, 96, 112, 128)
  assert packed_row_lengths(within, 100) == (13, 25, 38, 50, 63, 75, 88, 100)
  assert packed_row_lengths(InferenceConfig(packed_row_limit=1.5), 100) == (
      13, 25, 38, 50, 63, 75, 88, 100, 113, 125, 138, 150)
  assert packed_row_lengths(within.replace(packed_row_lengths=4), 6) == (2, 3, 5, 6)
