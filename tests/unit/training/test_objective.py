"""Objective: CE/z-loss/normalisation against NumPy, gate terms, micro-batch additivity."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrt5_jax.maths import controller as ctl
from mrt5_jax.maths import packing
from mrt5_jax.training import objective as obj
from mrt5_jax.training import train_step
from tests.fixtures import small_batch as make_batch


def _np_log_softmax(x):
  x = x.astype(np.float64)
  m = x.max(-1, keepdims=True)
  lz = m + np.log(np.exp(x - m).sum(-1, keepdims=True))
  return x - lz, lz[..., 0]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_token_cross_entropy_matches_numpy(smoothing):
  rng = np.random.RandomState(1)
  logits = rng.randn(2, 5, 7).astype(np.float32) * 3
  targets = rng.randint(0, 7, (2, 5))
  loss, z = obj.token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), z_loss=1e-4,
                                    label_smoothing=smoothing)
  logp, log_z = _np_log_softmax(logits)
  q = np.full(logits.shape, smoothing / 6)
  np.put_along_axis(q, targets[..., None], 1 - smoothing, axis=-1)
  with np.errstate(divide="ignore", invalid="ignore"):
    kl = np.where(q > 0, q * (np.log(q) - logp), 0).sum(-1)  # CE minus entropy of q
  np.testing.assert_allclose(np.asarray(z), 1e-4 * log_z ** 2, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(loss), kl + 1e-4 * log_z ** 2, rtol=1e-5, atol=1e-5)


def test_loss_normalizing_factors():
  targets = np.array([[5, 6, 7, 0], [8, 0, 0, 0]])
  batch = {"decoder_target_tokens": jnp.asarray(targets)}
  w, f = obj.loss_weights_and_normalizer(batch, obj.NUM_REAL_TARGET_TOKENS)
  assert float(f) == 4.0 and np.asarray(w).tolist() == (targets > 0).astype(float).tolist()
  assert float(obj.loss_weights_and_normalizer(batch, obj.NUM_TOTAL_TARGET_TOKENS)[1]) == 8.0
  assert float(obj.loss_weights_and_normalizer(batch, 233472.0)[1]) == 233472.0
  assert float(obj.loss_weights_and_normalizer(batch, None)[1]) == 1.0
  # per sequence: each row's weights sum to 1, factor = number of sequences.
  w, f = obj.loss_weights_and_normalizer(batch, obj.AVERAGE_PER_SEQUENCE)
  np.testing.assert_allclose(np.asarray(w), [[1 / 3, 1 / 3, 1 / 3, 0], [1, 0, 0, 0]], rtol=1e-6)
  assert float(f) == pytest.approx(2.0)
  # packed: row 0 holds two segments of lengths 2 and 1
  packed = {"decoder_target_tokens": jnp.asarray(targets),
            "decoder_segment_ids": jnp.asarray([[1, 1, 2, 0], [1, 0, 0, 0]])}
  w, f = obj.loss_weights_and_normalizer(packed, obj.AVERAGE_PER_SEQUENCE)
  np.testing.assert_allclose(np.asarray(w), [[.5, .5, 1, 0], [1, 0, 0, 0]], rtol=1e-6)
  assert float(f) == pytest.approx(3.0)


def test_bad_normalizing_factor():
  with pytest.raises(ValueError, match="loss_normalizing_factor"):
    obj.ObjectiveConfig(loss_normalizing_factor="NUM_TOKENS")
  with pytest.raises(ValueError, match="loss_normalizing_factor"):
    obj.ObjectiveConfig(loss_normalizing_factor=-1.0)


def test_gate_terms_use_segment_ids_when_packed():
  gate = np.array([[-1.0, -20.0, -29.0, -30.0], [-16.0, -14.0, -30.0, -30.0]], np.float32)
  tokens = np.array([[5, 6, 7, 0], [5, 6, 0, 0]])
  segs = np.array([[1, 1, 2, 0], [1, 0, 0, 0]])  # packed: row 1 keeps only 1 real position
  real = obj.real_encoder_mask(jnp.asarray(tokens), jnp.asarray(segs))
  assert np.asarray(real).tolist() == (segs > 0).tolist()
  sums = obj.gate_sums(jnp.asarray(gate), real, -15.0)
  real_vals = gate[segs > 0]
  assert float(sums["num_real"]) == 4
  np.testing.assert_allclose(float(sums["gate_sum"]), real_vals.sum())
  assert float(sums["num_deleted"]) == 3  # -20, -29, -16
  assert float(sums["gate_min"]) == -29.0 and float(sums["gate_max"]) == -1.0
  assert float(sums["kept_max"]) == 1.0
  np.testing.assert_allclose(float(sums["gate_sum"] / sums["num_real"]), real_vals.mean(),
                             rtol=1e-6)
  unpacked = obj.gate_sums(jnp.asarray(gate), obj.real_encoder_mask(jnp.asarray(tokens)), -15.0)
  np.testing.assert_allclose(float(unpacked["gate_sum"] / unpacked["num_real"]),
                             gate[tokens > 0].mean(), rtol=1e-6)


def test_score_regularizer_averages_sown_values():
  tree = {"encoder": {"layers_1": {"attention": {"score_penalty": (jnp.float32(1.0),)}},
                      "layers_2": {"attention": {"score_penalty": (jnp.float32(3.0),)}}},
          "decoder": {"other": (jnp.float32(100.0),)}}
  assert float(obj.score_regularizer(tree)) == 2.0
  assert float(obj.score_regularizer({})) == 0.0


def test_compute_loss_composition(tiny_model):
  module, variables = tiny_model
  batch = {k: jnp.asarray(v) for k, v in make_batch(seed=3).items()}
  cc = ctl.ControllerConfig(initial_alpha=0.7)
  state = ctl.init_state(cc)
  oc = obj.ObjectiveConfig(z_loss=1e-4)
  loss, sums = obj.compute_loss(module, variables["params"], state, batch, None,
                                objective=oc, controller=cc, enable_dropout=False)
  logits, aux = module.apply(variables, *[batch[k] for k in ("encoder_input_tokens",
                             "decoder_input_tokens", "decoder_target_tokens")],
                             enable_dropout=False, return_aux=True)
  logp, log_z = _np_log_softmax(np.asarray(logits))
  tgt = np.asarray(batch["decoder_target_tokens"])
  nll = -np.take_along_axis(logp, tgt[..., None], -1)[..., 0] + 1e-4 * log_z ** 2
  w = tgt > 0
  ce = (nll * w).sum() / w.sum()
  real = np.asarray(batch["encoder_input_tokens"]) > 0
  gate = np.asarray(aux.gate)
  expected = ce + 0.7 * gate[real].mean()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  from mrt5_jax.training import metrics as metrics_lib
  assert set(sums) == set(metrics_lib.SUM_KEYS)  # every sum has a row in the metrics table
  metrics = train_step.finalize(train_step.step_metrics(sums, ctl.effective_alpha(state, cc)))
  np.testing.assert_allclose(float(metrics["deletion_rate"]),
                             (gate[real] < module.config.deletion_threshold).mean(), rtol=1e-6)
  assert float(metrics["alpha"]) == pytest.approx(0.7)
  np.testing.assert_allclose(float(metrics["gate_mean"]), gate[real].mean(), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["cross_entropy_per_token"]),
                             ((nll - 1e-4 * log_z ** 2) * w).sum() / w.sum(), rtol=1e-5)


def test_compute_loss_from_a_precomputed_stage_one_is_the_same(tiny_model):
  module, variables = tiny_model
  batch = {k: jnp.asarray(v) for k, v in make_batch(seed=3).items()}
  cc = ctl.ControllerConfig(initial_alpha=0.7)
  state = ctl.init_state(cc)
  oc = obj.ObjectiveConfig(z_loss=1e-4, score_loss_coeff=0.1)
  reading = module.apply(variables, batch["encoder_input_tokens"], None, False,
                         method=module.encode_stage_one)
  for deletion, length in (("soft", None), ("hard", 16), ("hard", 8)):
    kwargs = dict(objective=oc, controller=cc, enable_dropout=False, deletion=deletion,
                  compacted_length=length)
    loss, sums = obj.compute_loss(module, variables["params"], state, batch, None, **kwargs)
    again, sums_again = obj.compute_loss(module, variables["params"], state, batch, None,
                                         stage_one=reading, **kwargs)
    assert float(again) == float(loss)
    for key in ("cross_entropy_sum", "num_deleted", "score_penalty", "compacted_length"):
      assert float(sums_again[key]) == float(sums[key])


def test_microbatches_add_up_to_full_batch(tiny_model):
  module, variables = tiny_model
  full = make_batch(seed=4, batch=4, pad_from=(None, 10, 3, None), target_pad_from=(6, None, 2, 7))
  full = {k: jnp.asarray(v) for k, v in full.items()}
  cc = ctl.ControllerConfig(initial_alpha=0.3)
  state = ctl.init_state(cc)
  oc = obj.ObjectiveConfig()

  def loss(params, batch, normalizers):
    return obj.compute_loss(module, params, state, batch, None, objective=oc, controller=cc,
                            enable_dropout=False, normalizers=normalizers)

  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
  norms = train_step.loss_normalizers(full, oc, whole_batch=full)
  (l_full, s_full), g_full = grad_fn(variables["params"], full, norms)
  halves = [{k: v[i * 2:(i + 1) * 2] for k, v in full.items()} for i in range(2)]
  (l0, s0), g0 = grad_fn(variables["params"], halves[0], norms)
  (l1, s1), g1 = grad_fn(variables["params"], halves[1], norms)
  np.testing.assert_allclose(float(l0 + l1), float(l_full), rtol=1e-5)
  merged = obj.merge_metric_sums(s0, s1)
  for key in ("num_real", "num_deleted", "gate_sum", "gate_min", "kept_max"):
    np.testing.assert_allclose(float(merged[key]), float(s_full[key]), rtol=1e-5)
  jax.tree_util.tree_map(lambda a, b, c: np.testing.assert_allclose(
      np.asarray(a + b), np.asarray(c), rtol=1e-4, atol=1e-6), g0, g1, g_full)


def test_all_pad_batch_is_finite(tiny_model):
  module, variables = tiny_model
  batch = {k: jnp.zeros_like(jnp.asarray(v)) for k, v in make_batch().items()}
  cc = ctl.ControllerConfig(initial_alpha=1.0)
  (loss, sums), grads = jax.jit(jax.value_and_grad(
      lambda p: obj.compute_loss(module, p, ctl.init_state(cc), batch, None,
                                 objective=obj.ObjectiveConfig(), controller=cc,
                                 enable_dropout=False), has_aux=True))(variables["params"])
  assert np.isfinite(float(loss))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
  metrics = train_step.finalize(train_step.step_metrics(sums, jnp.float32(1.0)))
  assert float(metrics["deletion_rate"]) == 0.0
  assert all(np.isfinite(float(v)) for k, v in metrics.items() if k not in ("gate_min", "gate_max"))


GATE = np.array([[-1.0, -20.0, -29.0, -30.0], [-16.0, -14.0, -30.0, -30.0]], np.float32)
LOGITS = np.array([[-3.0, 2.0, -45.0, 0.5], [1.5, -31.0, 9.0, -2.0]], np.float32)
REAL = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)


@pytest.mark.parametrize("kind, expected", [
    ("gate_mean", GATE[REAL].mean()),
    ("clamped_logits_mean", np.maximum(LOGITS[REAL], -30.0).mean()),
    ("logits_mean", LOGITS[REAL].mean()),
    ("gate_var", -np.var(GATE[REAL], ddof=1)),
])
def test_gate_loss_variants_match_numpy(kind, expected):
  value = obj.gate_regularizer(kind, jnp.asarray(GATE), jnp.asarray(LOGITS), jnp.asarray(REAL),
                               -15.0, jnp.float32(REAL.sum()))
  np.testing.assert_allclose(float(value), expected, rtol=1e-5)
  with pytest.raises(ValueError, match="gate_loss"):
    obj.ObjectiveConfig(gate_loss="gate_median")


def test_entropy_regularizer_matches_the_published_formula():
  gate = np.array([[-0.1, -2.0, -0.7, -30.0], [-5.0, -0.01, -1.5, -0.3]], np.float64)

  def entropy(g):
    e = np.exp(g)
    return -(e * g + (1 - e) * np.log1p(-np.minimum(e, 1 - np.finfo(np.float32).eps)))

  pooled = np.log(np.exp(gate).sum(1)) - np.log(gate.shape[1])
  expected = 0.3 * entropy(gate).mean(1).mean() - 0.7 * entropy(pooled).mean()
  value = obj.entropy_regularizer(jnp.asarray(gate, jnp.float32), 0.3, 0.7)
  np.testing.assert_allclose(float(value), expected, rtol=1e-5)


def test_hard_delete_training_draws_per_batch_and_follows_its_probability(tiny_model):
  module, variables = tiny_model
  batch = {k: jnp.asarray(v) for k, v in make_batch(seed=3).items()}
  cc = ctl.ControllerConfig(initial_alpha=0.2)
  state = ctl.init_state(cc)

  def run(prob, rng, **kwargs):
    oc = obj.ObjectiveConfig(hard_delete_train_prob=prob)
    rngs = {"dropout": rng, "hard_delete": rng}
    return obj.compute_loss(module, variables["params"], state, batch, rngs, objective=oc,
                            controller=cc, **kwargs)

  rng = jax.random.PRNGKey(0)
  soft_loss, soft = obj.compute_loss(module, variables["params"], state, batch, None,
                                     objective=obj.ObjectiveConfig(), controller=cc,
                                     enable_dropout=False)
  hard_loss, hard = obj.compute_loss(module, variables["params"], state, batch, None,
                                     objective=obj.ObjectiveConfig(), controller=cc,
                                     enable_dropout=False, deletion="hard")
  assert float(soft["cross_entropy_sum"]) != float(hard["cross_entropy_sum"])
  always, sums = run(1.0, rng)
  assert float(always) == pytest.approx(float(hard_loss), rel=1e-6)
  assert float(sums["hard_deletion_batches"]) == 1.0
  never, sums = run(0.0, rng)
  assert float(never) == pytest.approx(float(soft_loss), rel=1e-6)
  assert float(sums["hard_deletion_batches"]) == 0.0
  assert float(run(1.0, rng, enable_dropout=False)[0]) == pytest.approx(float(soft_loss))
  draws = jax.jit(lambda r: run(0.3, r)[1]["hard_deletion_batches"])
  keys = jax.random.split(jax.random.PRNGKey(1), 200)
  flips = np.array([float(draws(k)) for k in keys[:60]])
  assert 0.1 < flips.mean() < 0.55
  np.testing.assert_array_equal(flips[:10], [float(draws(k)) for k in keys[:10]])
  expected = np.asarray(jax.vmap(lambda k: jax.random.bernoulli(k, 0.3))(keys[:60]))
  np.testing.assert_array_equal(flips, expected.astype(np.float32))


@pytest.mark.parametrize("start,ramp", [(None, 0), (0, 0), (200, 0), (200, 300)])
def test_hard_delete_probability_follows_its_schedule(start, ramp):
  objective = obj.ObjectiveConfig(hard_delete_train_prob=0.5, hard_delete_train_start=start,
                                  hard_delete_train_ramp=ramp)
  delay = 700
  for step in (0, 699, 700, 899, 900, 901, 1000, 1199, 1200, 5000):
    if start is None:
      expected = 0.5
    elif step < delay + start:
      expected = 0.0
    elif ramp == 0:
      expected = 0.5
    else:
      expected = 0.5 * min(1.0, (step - delay - start + 1) / ramp)
    value = float(obj.hard_delete_probability(objective, jnp.int32(step), delay))
    assert value == pytest.approx(expected, abs=1e-7), (step, value, expected)


def test_hard_delete_batches_wait_for_their_start_step(tiny_model):
  module, variables = tiny_model
  batch = {k: jnp.asarray(v) for k, v in make_batch(seed=3).items()}
  cc = ctl.ControllerConfig(regularizer_delay=10)
  oc = obj.ObjectiveConfig(hard_delete_train_prob=1.0, hard_delete_train_start=5)
  rng = jax.random.PRNGKey(0)

  def hard_batches(step):
    state = {**ctl.init_state(cc), "step": jnp.int32(step)}
    _, sums = obj.compute_loss(module, variables["params"], state, batch,
                               {"dropout": rng, "hard_delete": rng}, objective=oc, controller=cc)
    return float(sums["hard_deletion_batches"])

  assert [hard_batches(s) for s in (0, 14, 15, 40)] == [0.0, 0.0, 1.0, 1.0]


def test_score_regularizer_waits_for_its_start_step(tiny_model):
  """With ``score_loss_start`` = 5 and a delay of 10 the loss carries no score term
  before step 15 and 0.5 x the penalty from there; without the regularizer the same
  loss at every step."""
  module, variables = tiny_model
  batch = {k: jnp.asarray(v) for k, v in make_batch(seed=3).items()}
  sharpen = lambda path, leaf: leaf * 30.0 if "query" in jax.tree_util.keystr(path) else leaf
  params = jax.tree_util.tree_map_with_path(sharpen, variables["params"])  # scores above 5
  cc = ctl.ControllerConfig(regularizer_delay=10, initial_alpha=0.3)
  late = obj.ObjectiveConfig(score_loss_coeff=0.5, score_loss_start=5)
  off = obj.ObjectiveConfig()

  def loss(objective, step):
    state = {**ctl.init_state(cc), "step": jnp.int32(step)}
    value, sums = obj.compute_loss(module, params, state, batch, None,
                                   objective=objective, controller=cc, enable_dropout=False)
    return float(value), float(sums["score_penalty"])

  for step in (0, 14, 15, 40):
    (with_term, penalty), (without, _) = loss(late, step), loss(off, step)
    assert penalty > 0
    expected = without if step < 15 else without + 0.5 * penalty
    assert with_term == pytest.approx(expected, rel=1e-6), step
    assert float(obj.score_loss_weight(late, jnp.int32(step), 10)) == (0.0 if step < 15 else 0.5)
  assert float(obj.score_loss_weight(obj.ObjectiveConfig(score_loss_coeff=0.5), 0, 10)) == 0.5


def test_a_gate_frozen_until_the_delay_gets_no_gradient_and_nothing_else_changes(tiny_model):
  module, variables = tiny_model
  batch = {k: jnp.asarray(v) for k, v in make_batch(seed=3).items()}
  cc = ctl.ControllerConfig(regularizer_delay=10, initial_alpha=0.3)
  published, frozen = obj.ObjectiveConfig(), obj.ObjectiveConfig(freeze_gate_before_delay=True)
  params = variables["params"]

  def loss_and_grads(objective, step):
    state = {**ctl.init_state(cc), "step": jnp.int32(step)}
    loss = lambda p: obj.compute_loss(module, p, state, batch, None, objective=objective,
                                      controller=cc, enable_dropout=False)[0]
    return jax.value_and_grad(loss)(params)

  for step in (3, 9, 10, 25):
    (loss, grads), (loss_frozen, grads_frozen) = (loss_and_grads(published, step),
                                                  loss_and_grads(frozen, step))
    assert float(loss_frozen) == float(loss)
    gate, gate_frozen = grads["encoder"]["delete_gate"], grads_frozen["encoder"]["delete_gate"]
    waiting = step < cc.regularizer_delay
    for leaf, leaf_frozen in zip(jax.tree_util.tree_leaves(gate),
                                 jax.tree_util.tree_leaves(gate_frozen)):
      assert np.abs(np.asarray(leaf)).max() > 0  # the published gate learns from step 0
      expected = np.zeros_like(leaf) if waiting else np.asarray(leaf)
      np.testing.assert_array_equal(np.asarray(leaf_frozen), expected)
    rest = lambda tree: {**tree, "encoder": {k: v for k, v in tree["encoder"].items()
                                             if k != "delete_gate"}}
    for leaf, leaf_frozen in zip(jax.tree_util.tree_leaves(rest(grads)),
                                 jax.tree_util.tree_leaves(rest(grads_frozen))):
      np.testing.assert_allclose(np.asarray(leaf_frozen), np.asarray(leaf), rtol=1e-6, atol=1e-9)


def test_hard_delete_schedule_settings_are_checked():
  with pytest.raises(ValueError, match="hard_delete_train_start"):
    obj.ObjectiveConfig(hard_delete_train_start=-1)
  with pytest.raises(ValueError, match="score_loss_start"):
    obj.ObjectiveConfig(score_loss_start=-1)
  with pytest.raises(ValueError, match="hard_delete_train_ramp"):
    obj.ObjectiveConfig(hard_delete_train_ramp=-5)


def _hard_batch_setup(tiny_model):
  """(module, params whose gate deletes some positions, a 4-row batch with
  padding, controller config, its state, rng) for the hard-batch tests."""
  module, variables = tiny_model
  params = jax.tree_util.tree_map(lambda x: x, variables["params"])
  params["encoder"]["delete_gate"]["dense"]["bias"] = jnp.array([2.0], jnp.float32)
  batch = {k: jnp.asarray(v) for k, v in make_batch(batch=4, seed=5,
                                                    pad_from=(None, 12, 5, None)).items()}
  cc = ctl.ControllerConfig(initial_alpha=0.2)
  return module, params, batch, cc, ctl.init_state(cc), jax.random.PRNGKey(0)


@pytest.mark.parametrize("groups", [1, 2])
def test_packed_hard_batches_equal_per_row_hard_deletion(tiny_model, groups):
  module, params, batch, cc, state, rng = _hard_batch_setup(tiny_model)

  def loss_and_grads(packed_rows):
    oc = obj.ObjectiveConfig(hard_delete_train_prob=1.0,
                             hard_delete_train_packed_rows=packed_rows)
    fn = lambda p: obj.compute_loss(module, p, state, batch, {"dropout": rng,
                                                              "hard_delete": rng},
                                    objective=oc, controller=cc, num_groups=groups)
    return jax.jit(jax.value_and_grad(fn, has_aux=True))(params)

  (per_row, per_row_sums), per_row_grads = loss_and_grads(0.0)
  (packed, packed_sums), packed_grads = loss_and_grads(0.75)
  (overflow, overflow_sums), _ = loss_and_grads(0.25)
  kept = np.asarray(module.shortening.kept_counts(
      module.apply({"params": params}, batch["encoder_input_tokens"], None, False,
                   method=module.encode_stage_one).gate, batch["encoder_input_tokens"], None))
  # The setup this test relies on: first-fit decreasing needs more packed rows per group than
  # the 0.25 share gives and no more than the 0.75 share gives (rows of the input length, 16).
  needed = max(packing.first_fit_decreasing(group, 16)[1] for group in kept.reshape(groups, -1))
  rows_per_group = kept.size // groups
  assert math.ceil(0.25 * rows_per_group) < needed <= math.ceil(0.75 * rows_per_group), needed
  assert float(per_row_sums["packed_hard_batches"]) == 0.0
  assert float(packed_sums["packed_hard_batches"]) == 1.0
  # one packed row (per group) is too few: the batch falls back to per-row hard deletion
  assert float(overflow_sums["packed_hard_batches"]) == 0.0
  for sums in (per_row_sums, packed_sums, overflow_sums):
    assert float(sums["hard_deletion_batches"]) == 1.0
  assert float(packed) == pytest.approx(float(per_row), abs=1e-5)
  assert float(overflow) == pytest.approx(float(per_row), abs=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(per_row_grads),
                  jax.tree_util.tree_leaves(packed_grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_packed_rows_setting_is_checked():
  with pytest.raises(ValueError, match="hard_delete_train_packed_rows"):
    obj.ObjectiveConfig(hard_delete_train_packed_rows=1.5)


def test_host_drawn_hard_batches_run_one_branch_and_cap_what_does_not_fit(tiny_model):
  """hard_coin (the project trainer's host draw): packed equals per-row hard
  deletion where the batch fits; where it does not, the rows are capped at the
  largest length with which NumPy's first-fit decreasing fits them, and the
  positions past the cap are gone as if the gate had deleted them (counted in
  num_dropped)."""
  module, params, batch, cc, state, rng = _hard_batch_setup(tiny_model)
  tokens = batch["encoder_input_tokens"]
  stage_one = module.apply({"params": params}, tokens, None, False,
                           method=module.encode_stage_one)

  def loss(packed_rows, hard_coin, stage=None):
    oc = obj.ObjectiveConfig(hard_delete_train_prob=1.0,
                             hard_delete_train_packed_rows=packed_rows)
    return obj.compute_loss(module, params, state, batch, {"dropout": rng, "hard_delete": rng},
                            objective=oc, controller=cc, hard_coin=hard_coin, stage_one=stage)

  per_row, per_row_sums = loss(0.0, True)
  packed, packed_sums = loss(0.75, True)
  soft, soft_sums = loss(0.75, False)
  in_graph_soft, _ = obj.compute_loss(module, params, state, batch, {"dropout": rng},
                                      objective=obj.ObjectiveConfig(), controller=cc)
  assert float(packed_sums["packed_hard_batches"]) == 1.0
  assert float(packed) == pytest.approx(float(per_row), abs=1e-5)
  assert float(soft_sums["hard_deletion_batches"]) == 0.0
  assert float(soft) == pytest.approx(float(in_graph_soft), abs=1e-6)

  overflow, overflow_sums = loss(0.25, True)   # one packed row of 16 for the whole batch
  keep = np.asarray(module.shortening.keep_mask(stage_one.gate, tokens, None))
  kept = keep.sum(-1)
  cap = next(c for c in packing.overflow_caps(16, 4, 1)
             if packing.first_fit_decreasing(np.minimum(kept, c), 16)[1] <= 1)
  assert float(overflow_sums["num_dropped"]) == float((kept - np.minimum(kept, cap)).sum()) > 0
  assert float(overflow_sums["packed_hard_batches"]) == 1.0
  gate = np.asarray(stage_one.gate).copy()
  for row in range(4):
    gate[row, np.flatnonzero(keep[row])[cap:]] = module.config.sigmoid_mask_scale
  _, reference = loss(0.0, True, stage_one.replace(gate=jnp.asarray(gate)))
  assert float(overflow_sums["cross_entropy_sum"]) == pytest.approx(
      float(reference["cross_entropy_sum"]), rel=1e-5)
