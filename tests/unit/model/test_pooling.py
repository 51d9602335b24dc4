"""BP and CP maths against NumPy / torch references, and their wiring in the network."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mrt5_jax.maths import pooling
from mrt5_jax.model.shortening import boundary
from mrt5_jax.model.shortening.registry import shortening_for
from mrt5_jax.inference.encode_path import EncodePath, InferenceConfig
from mrt5_jax.model.network import StageOneOutput
from tests.fixtures import byte_batch, init_params, model_config


# ----------------------------------------------------------------------------- references


def np_segment_boundaries(boundaries, real, segment_ids=None):
  """Pads 0; the last real position of every row / packed segment 1."""
  b = np.where(real, boundaries, 0.0).astype(np.float64)
  groups = real.astype(int) if segment_ids is None else np.where(real, segment_ids, 0)
  for row in range(b.shape[0]):
    for l in range(b.shape[1]):
      nxt = groups[row, l + 1] if l + 1 < b.shape[1] else 0
      if real[row, l] and nxt != groups[row, l]:
        b[row, l] = 1.0
  return b


def np_segment_pool(hidden, boundaries, real, num_slots, segment_ids=None):
  """Walk each row: a segment collects real positions up to and including a boundary."""
  batch, length, width = hidden.shape
  pooled = np.zeros((batch, num_slots, width))
  valid = np.zeros((batch, num_slots), bool)
  positions = np.zeros((batch, num_slots), int)
  segs = np.zeros((batch, num_slots), int)
  dropped = np.zeros(batch, int)
  for row in range(batch):
    members, segments = [], []
    for l in range(length):
      if not real[row, l]:
        continue
      members.append(l)
      if boundaries[row, l] > 0.5:
        segments.append(members)
        members = []
    for s, group in enumerate(segments):
      if s >= num_slots:
        dropped[row] += 1
        continue
      pooled[row, s] = hidden[row, group].mean(axis=0)
      valid[row, s] = True
      positions[row, s] = group[0]
      if segment_ids is not None:
        segs[row, s] = segment_ids[row, group[0]]
  return pooled, valid, positions, segs, dropped


def np_gelu(x):
  return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def np_strided_conv(hidden, weight, bias, rate):
  """torch-layout weight (out, in, rate); zero-padded last window; exact GELU."""
  batch, length, width = hidden.shape
  slots = -(-length // rate)
  padded = np.zeros((batch, slots * rate, width))
  padded[:, :length] = hidden
  out = np.zeros((batch, slots, weight.shape[0]))
  for b in range(batch):
    for j in range(slots):
      for t in range(rate):
        out[b, j] += weight[:, :, t] @ padded[b, j * rate + t]
      out[b, j] += bias
  return np_gelu(out)


# ----------------------------------------------------------------------------- BP maths


def _packed_case():
  rng = np.random.RandomState(0)
  real = np.ones((3, 12), bool)
  real[1, 9:] = False
  real[2, 7:] = False
  segment_ids = np.array([[1] * 5 + [2] * 7, [1] * 4 + [2] * 5 + [0] * 3,
                          [1] * 7 + [0] * 5], np.int32)
  boundaries = (rng.rand(3, 12) < 0.3).astype(np.float32)
  boundaries[:, 3] = 1.0
  hidden = rng.randn(3, 12, 5).astype(np.float32)
  return hidden, boundaries, real, segment_ids


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("num_slots", [12, 3])
def test_segment_pool_matches_numpy(packed, num_slots):
  hidden, raw, real, segment_ids = _packed_case()
  segments = segment_ids if packed else None
  ref_b = np_segment_boundaries(raw, real, segments)
  b = pooling.segment_boundaries(jnp.asarray(raw), jnp.asarray(real),
                                 None if segments is None else jnp.asarray(segments))
  np.testing.assert_array_equal(np.asarray(b), ref_b)
  out = pooling.segment_pool(jnp.asarray(hidden), b, jnp.asarray(real), num_slots,
                             None if segments is None else jnp.asarray(segments))
  pooled, valid, positions, segs, dropped = np_segment_pool(hidden, ref_b, real, num_slots,
                                                            segments)
  np.testing.assert_array_equal(np.asarray(out.valid), valid)
  np.testing.assert_allclose(np.asarray(out.hidden)[valid], pooled[valid], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out.positions), positions)
  np.testing.assert_array_equal(np.asarray(out.num_dropped), dropped)
  if packed:
    np.testing.assert_array_equal(np.asarray(out.segment_ids), segs)
    # no slot mixes two packed examples: every slot's members share one segment id
    assert np.all(segs[valid] > 0)
  if num_slots == 3:
    assert dropped.sum() > 0


def test_boundary_loss_matches_torch_binomial():
  real = np.ones((3, 10), bool)
  real[1, 6:] = False
  real[2, :] = False  # an empty row is left out of the mean
  boundaries = np.zeros((3, 10), np.float32)
  boundaries[0, [1, 4, 9]] = 1
  boundaries[1, [2, 5]] = 1
  prior = 0.2
  got = float(pooling.boundary_loss(jnp.asarray(boundaries), jnp.asarray(real), prior))
  rows = []
  for row in range(2):
    n = int(real[row].sum())
    k = float(boundaries[row][real[row]].sum())
    log_prob = torch.distributions.Binomial(n, probs=torch.tensor(prior)).log_prob(
        torch.tensor(k))
    rows.append(-float(log_prob) / n)
  assert got == pytest.approx(np.mean(rows), rel=1e-5)


def test_boundary_loss_gradient_is_the_binomial_score():
  """d/dk of -log Binom(k; n, p)/n = (psi(k + 1) - psi(n - k + 1) - log(p / (1 - p))) / n,
  reaching every real position's boundary and no pad."""
  n_real, prior = 7, 0.2
  real = np.zeros((1, 9), bool)
  real[0, :n_real] = True
  boundaries = np.zeros((1, 9), np.float32)
  boundaries[0, [0, 3, 6]] = 1
  grad = np.asarray(jax.grad(lambda b: pooling.boundary_loss(b, jnp.asarray(real), prior))(
      jnp.asarray(boundaries)))
  k = 3.0
  digamma = lambda v: float(torch.special.digamma(torch.tensor(v, dtype=torch.float64)))
  expected = (digamma(k + 1) - digamma(n_real - k + 1) - math.log(prior / (1 - prior))) / n_real
  np.testing.assert_allclose(grad[0, :n_real], expected, rtol=1e-4)
  np.testing.assert_array_equal(grad[0, n_real:], 0.0)


def test_relaxed_bernoulli_formula_and_rate():
  logits = jnp.asarray(np.linspace(-3, 3, 7), jnp.float32)
  rng = jax.random.PRNGKey(3)
  u = np.asarray(jax.random.uniform(rng, logits.shape, jnp.float32), np.float64)
  u = np.clip(u, np.finfo(np.float32).eps, 1 - np.finfo(np.float32).eps)
  temperature = 0.5
  expected = 1 / (1 + np.exp(-(np.asarray(logits) + np.log(u) - np.log1p(-u)) / temperature))
  got = np.asarray(pooling.relaxed_bernoulli(rng, logits, temperature))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # P(sample > 0.5) = sigmoid(logit), whatever the temperature
  many = jnp.full((20000,), 0.4, jnp.float32)
  hard = np.asarray(pooling.relaxed_bernoulli(jax.random.PRNGKey(1), many, 0.5)) > 0.5
  assert hard.mean() == pytest.approx(1 / (1 + math.exp(-0.4)), abs=0.015)


def test_straight_through_forward_is_hard_and_gradient_is_soft():
  soft = jnp.asarray([0.1, 0.49, 0.51, 0.9, 0.5], jnp.float32)
  np.testing.assert_array_equal(np.asarray(pooling.straight_through(soft)), [0, 0, 1, 1, 0])
  weights = jnp.asarray([1.0, -2.0, 3.0, 0.5, 4.0])
  grad = jax.grad(lambda s: jnp.sum(weights * pooling.straight_through(s)))(soft)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(weights))
  # through the sample: d ST(sigmoid((x + g) / T)) / dx = s (1 - s) / T
  logits = jnp.asarray([-1.0, 0.3, 2.0], jnp.float32)
  rng = jax.random.PRNGKey(0)
  s = np.asarray(pooling.relaxed_bernoulli(rng, logits, 0.5), np.float64)
  grad = jax.grad(lambda x: jnp.sum(pooling.straight_through(
      pooling.relaxed_bernoulli(rng, x, 0.5))))(logits)
  np.testing.assert_allclose(np.asarray(grad), s * (1 - s) / 0.5, rtol=1e-5)


def test_pooling_gradient_reaches_the_boundaries():
  """The task loss reaches the predictor through the pooling weights (published ST path):
  raising boundary l shifts later positions towards the next slot."""
  hidden = jnp.asarray(np.random.RandomState(0).randn(1, 6, 3), jnp.float32)
  real = jnp.ones((1, 6), bool)
  b = jnp.asarray([[0, 1, 0, 0, 1, 1]], jnp.float32)
  grad = jax.grad(lambda bb: jnp.sum(pooling.segment_pool(hidden, bb, real, 4).hidden ** 2))(b)
  assert np.any(np.abs(np.asarray(grad)) > 1e-6)


# ----------------------------------------------------------------------------- CP maths


@pytest.mark.parametrize("length", [12, 14])
def test_strided_conv_matches_numpy(length):
  rng = np.random.RandomState(1)
  rate, width, out = 4, 5, 3
  hidden = rng.randn(2, length, width).astype(np.float32)
  weight = rng.randn(out, width, rate).astype(np.float32)  # torch Conv1d layout
  bias = rng.randn(out).astype(np.float32)
  kernel = jnp.asarray(np.transpose(weight, (2, 1, 0)))
  got = pooling.strided_conv(jnp.asarray(hidden), kernel, jnp.asarray(bias), rate)
  np.testing.assert_allclose(np.asarray(got), np_strided_conv(hidden, weight, bias, rate),
                             rtol=1e-4, atol=1e-5)
  torch_out = torch.nn.functional.gelu(torch.nn.functional.conv1d(
      torch.tensor(np.pad(hidden, ((0, 0), (0, -length % rate), (0, 0)))).transpose(1, 2),
      torch.tensor(weight), torch.tensor(bias), stride=rate)).transpose(1, 2).numpy()
  np.testing.assert_allclose(np.asarray(got), torch_out, rtol=1e-4, atol=1e-5)


def test_downsampled_mask_segments_and_positions():
  real = np.zeros((2, 10), bool)
  real[0, :10] = True
  real[1, :5] = True
  segment_ids = np.array([[1] * 6 + [2] * 4, [1] * 3 + [2] * 2 + [0] * 5], np.int32)
  mask = np.asarray(pooling.downsample_mask(jnp.asarray(real), 4))
  np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 1, 0]])
  reference = np.array([[max(real[b, j * 4:(j + 1) * 4]) for j in range(3)] for b in range(2)])
  np.testing.assert_array_equal(mask, reference)
  segs = np.asarray(pooling.downsample_segments(jnp.asarray(segment_ids), 4))
  np.testing.assert_array_equal(segs, [[1, 2, 2], [2, 2, 0]])
  out = pooling.conv_pool(jnp.zeros((2, 10, 3)), jnp.zeros((4, 3, 3)), jnp.zeros(3),
                          jnp.asarray(real), 4, jnp.asarray(segment_ids))
  np.testing.assert_array_equal(np.asarray(out.positions), [[0, 4, 8], [0, 4, 0]])
  markers = np.asarray(pooling.window_markers(jnp.asarray(real), 4))
  assert markers.sum(axis=1).tolist() == mask.sum(axis=1).tolist()


# ----------------------------------------------------------------------------- network


def _bp_model(**overrides):
  config = model_config("network", deletion_type="boundary", **overrides)
  batch = byte_batch(batch=3, length=24, pad_from=(None, 17, 9))
  module, params = init_params(config, batch)
  return config, batch, module, params


def test_bp_inference_path_equals_training_path_on_the_same_boundaries():
  config, batch, module, params = _bp_model()
  tokens = jnp.asarray(batch["encoder_input_tokens"])
  path = EncodePath(module, InferenceConfig(mode="bucketed", bucket_step=4, min_bucket_length=4))
  inferred = path.encode(params, tokens)
  reading = module.apply({"params": params}, tokens, None, False,
                         method=module.encode_stage_one)
  # the training path: straight-through boundaries from a "sample" that equals the
  # probabilities, so the hard boundaries are the inference ones
  probs = jax.nn.sigmoid(reading.gate_logits)
  trained = boundary.boundaries(reading.gate_logits, tokens > 0, None, config=config,
                                  rng=None)
  train_b = pooling.segment_boundaries(pooling.straight_through(probs), tokens > 0)
  np.testing.assert_array_equal(np.asarray(train_b), np.asarray(trained))
  training = module.apply({"params": params},
                          StageOneOutput(hidden=reading.hidden, gate=reading.gate,
                                         gate_logits=reading.gate_logits, boundaries=train_b),
                          tokens, None, True, deletion="soft",
                          method=module.encode_stage_two, rngs={"dropout": jax.random.PRNGKey(0)})
  slots = inferred.compacted_length
  assert slots < tokens.shape[1]
  valid = np.asarray(inferred.mask).astype(bool)
  assert np.all(np.asarray(training.mask)[:, slots:] == 0)
  np.testing.assert_array_equal(np.asarray(training.mask)[:, :slots], valid)
  np.testing.assert_allclose(np.asarray(training.encoded)[:, :slots][valid],
                             np.asarray(inferred.encoded)[valid], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(training.kept_positions)[:, :slots][valid],
                                np.asarray(inferred.kept_positions)[valid])
  # the slots' count is the number of boundaries, which the deletion metrics read
  kept = np.asarray(reading.gate == 0).sum(axis=1)
  np.testing.assert_array_equal(valid.sum(axis=1), kept)


def test_bp_training_gradient_reaches_the_predictor_through_the_task_loss():
  from mrt5_jax.maths import controller as ctl
  from mrt5_jax.training import objective as obj
  config, batch, module, params = _bp_model()

  def ce_only(p):
    _, sums = obj.compute_loss(module, p, ctl.init_state(ctl.ControllerConfig()), batch,
                               {"gate_noise": jax.random.PRNGKey(4)},
                               objective=obj.ObjectiveConfig(),
                               controller=ctl.ControllerConfig(), enable_dropout=True)
    return sums["ce_loss"]

  grads = jax.grad(ce_only)(params)
  predictor = grads["encoder"]["boundary_predictor"]
  assert float(jnp.abs(predictor["score"]["kernel"]).sum()) > 0


def test_pooled_encoder_output_feeds_cross_attention():
  for kind in ("boundary", "conv"):
    config = model_config("network", deletion_type=kind)
    batch = byte_batch(batch=2, length=24, pad_from=(None, 13))
    module, params = init_params(config, batch)
    logits, out = module.apply({"params": params}, *[jnp.asarray(batch[k]) for k in (
        "encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")],
        enable_dropout=False, deletion="hard", return_aux=True)
    assert out.encoded.shape[1] == (24 if kind == "boundary" else 6)
    # the decoder reads exactly the pooled slots: dropping invalid slots changes nothing
    direct = module.apply({"params": params}, out.encoded, out.mask,
                          jnp.asarray(batch["decoder_input_tokens"]),
                          jnp.asarray(batch["decoder_target_tokens"]), enable_dropout=False,
                          method=module.decode)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(direct), rtol=1e-5, atol=1e-5)
    if kind == "conv":
      np.testing.assert_array_equal(np.asarray(out.mask), [[1] * 6, [1] * 4 + [0] * 2])


def test_pooling_configs_are_validated():
  with pytest.raises(ValueError, match="prior must lie"):
    model_config("network", deletion_type="boundary", shortening=dict(prior=1.0))
  with pytest.raises(ValueError, match="rate must be a positive int"):
    model_config("network", deletion_type="conv", shortening=dict(rate=0))
  with pytest.raises(ValueError, match="unknown ConvPoolingConfig fields"):
    model_config("network", deletion_type="conv", shortening=dict(prior=0.2))
  config = model_config("network", deletion_type="conv")
  kind = shortening_for(config)
  assert kind.shortens and kind.module_name == "conv_pool" and not kind.trains_hard
  assert not kind.hard_differs and kind.length_reduction_target == 0.75


def test_conversion_refuses_the_pooling_baselines_by_config_and_by_tree():
  from mrt5_jax.conversion import configs as conversion_configs
  from mrt5_jax.conversion import mapping
  for kind, subtree, name in (("boundary", "boundary_predictor", "BP"),
                              ("conv", "conv_pool", "CP")):
    config = model_config("network", deletion_type=kind)
    with pytest.raises(conversion_configs.NotConvertibleError, match=name):
      conversion_configs.to_hf_config(config)
    _, params = init_params(config, byte_batch(batch=1, length=8))
    assert subtree in params["encoder"]
    with pytest.raises(conversion_configs.NotConvertibleError, match="do not convert"):
      conversion_configs.check_convertible(params=params)
    with pytest.raises(conversion_configs.NotConvertibleError):
      mapping.jax_to_hf_state_dict(params, config)
  conversion_configs.check_convertible(model_config("network"))  # MrT5 converts


def test_scanned_layers_run_the_pooling_baselines_like_the_plain_ones():
  from mrt5_jax.model import layer_stacking
  from mrt5_jax.model.network import Transformer
  batch = byte_batch(batch=2, length=24, pad_from=(None, 13))
  args = [jnp.asarray(batch[k]) for k in ("encoder_input_tokens", "decoder_input_tokens",
                                          "decoder_target_tokens")]
  for kind in ("boundary", "conv"):
    config = model_config("network", deletion_type=kind)
    module, params = init_params(config, batch)
    stacked = layer_stacking.stack_layers(params, config.gate_layer)
    plain = module.apply({"params": params}, *args, enable_dropout=False, deletion="hard")
    scanned = Transformer(config.replace(scan_layers=True)).apply(
        {"params": stacked}, *args, enable_dropout=False, deletion="hard")
    np.testing.assert_allclose(np.asarray(scanned), np.asarray(plain), rtol=1e-5, atol=1e-5)


def test_bp_inference_thresholds_the_probabilities_or_samples_them():
  """With every boundary probability at 0.2, thresholding keeps only the forced
  last boundary; sampling (the published evaluation) keeps about 20%."""
  config = model_config("network", deletion_type="boundary")
  batch = byte_batch(batch=4, length=64, pad_from=(None,))
  module, params = init_params(config, batch)
  score = params["encoder"]["boundary_predictor"]["score"]
  score["kernel"] = jnp.zeros_like(score["kernel"])
  score["bias"] = jnp.full_like(score["bias"], math.log(0.2 / 0.8))
  tokens = jnp.asarray(batch["encoder_input_tokens"])
  for sample, low, high in ((False, 1, 1), (True, 0.2 * 64 - 12, 0.2 * 64 + 12)):
    m = type(module)(config.with_shortening(sample_at_inference=sample))
    reading = m.apply({"params": params}, tokens, None, False, method=m.encode_stage_one)
    counts = np.asarray(reading.boundaries).sum(axis=1)
    assert np.all(counts >= low) and np.all(counts <= high), counts
    if sample:
      assert 0.15 < counts.mean() / 64 < 0.25
      other = m.apply({"params": params}, tokens, None, False, method=m.encode_stage_one,
                      rngs={"deletion": jax.random.PRNGKey(7)})
      assert not np.array_equal(np.asarray(other.boundaries), np.asarray(reading.boundaries))
