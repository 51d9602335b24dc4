"""MrT5Model inside t5x: loss, controller as flax_mutables, metrics, predict/score.

Runs only where t5x is importable (installed from its source repository); the
references are t5x's own code (EncoderDecoderModel, losses, trainer functions,
its ByT5 network), NumPy formulas and the project trainer.
"""
import numpy as np
import pytest

t5x = pytest.importorskip(
    "t5x", reason="t5x is not installed (it comes from its git repository, not PyPI)")

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import seqio  # noqa: E402
from t5x import models as t5x_models  # noqa: E402
from t5x import optimizers as t5x_optimizers  # noqa: E402
from t5x import partitioning as t5x_partitioning  # noqa: E402
from t5x import train_state as t5x_train_state  # noqa: E402
from t5x import trainer as t5x_trainer  # noqa: E402
from t5x.examples.t5 import network as t5x_network  # noqa: E402

from mrt5_jax.model import config as config_lib  # noqa: E402
from mrt5_jax.maths import controller as controller_lib  # noqa: E402
from mrt5_jax.model import network  # noqa: E402
from mrt5_jax.training import objective as objective_lib  # noqa: E402
from mrt5_jax.t5x import model as t5x_model  # noqa: E402
from mrt5_jax.inference.encode_path import InferenceConfig, capacity_length  # noqa: E402
from tests.fixtures import byte_batch  # noqa: E402

VOCAB = seqio.ByteVocabulary()
CONTROLLER = controller_lib.ControllerConfig(kind="p", target_deletion_rate=0.6, k_p=0.5)
OBJECTIVE = objective_lib.ObjectiveConfig(z_loss=1e-4,
                                          loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
THRESHOLD = -15.0
INFERENCE = InferenceConfig(mode="capacity", capacity_fraction=0.75, bucket_step=4)


def _batch(seed=0, batch=4, length=24, target_length=10):
  """Byte ids with EOS and padding (rows padded from different places), as jax arrays."""
  values = byte_batch(batch=batch, length=length, target_length=target_length, seed=seed,
                      pad_from=(None, 17, 9, 20), target_pad_from=(None, 6, None, None))
  values["decoder_loss_weights"] = (values["decoder_target_tokens"] > 0).astype(np.float32)
  return {k: jnp.asarray(v) for k, v in values.items()}


def _config(**overrides):
  values = dict(d_model=32, d_ff=64, num_heads=4, head_dim=8, num_encoder_layers=4,
                num_decoder_layers=2, delete_gate_layer=2)
  values.update(overrides)
  return config_lib.preset("tiny", **values)


def _model(config=None, **kwargs):
  kwargs.setdefault("controller", CONTROLLER)
  kwargs.setdefault("inference", INFERENCE)
  kwargs.setdefault("objective", OBJECTIVE)
  return t5x_model.MrT5Model(
      network.Transformer(config or _config()), VOCAB, VOCAB, t5x_optimizers.adamw(1e-3),
      **kwargs)


def _variables(model, batch, seed=0):
  shapes = {k: v.shape for k, v in batch.items()}
  types = {k: v.dtype for k, v in batch.items()}
  return model.get_initial_variables(jax.random.PRNGKey(seed), shapes, types)


def _train_state(model, batch):
  return t5x_train_state.FlaxOptimTrainState.create(model.optimizer_def,
                                                     _variables(model, batch))


def _state(alpha, step=5):
  state = controller_lib.init_state(CONTROLLER)
  state["alpha"] = jnp.float32(alpha)
  state["step"] = jnp.int32(step)
  return state


def _mutables(model, alpha, step=5):
  return {**model.initial_flax_mutables(), "controller": _state(alpha, step)}


def _gate_numpy(model, params, batch):
  """G (B, L) from the network and the real-position mask, as NumPy."""
  _, aux = model.module.apply({"params": params}, batch["encoder_input_tokens"],
                              batch["decoder_input_tokens"], batch["decoder_target_tokens"],
                              enable_dropout=False, return_aux=True)
  return np.asarray(aux.gate), np.asarray(batch["encoder_input_tokens"]) > 0


def _decisive_gate(params, scale=1e5):
  """Gate params whose G sits at ~0 or ~k (soft deletion then matches hard)."""
  params = flax.core.unfreeze(params)
  dense = params["encoder"]["delete_gate"]["dense"]
  dense["kernel"] = dense["kernel"] * scale
  dense["bias"] = jnp.zeros_like(dense["bias"])
  return flax.core.freeze(params)


# ----------------------------------------------------------------------------- construction


def test_rejects_a_module_that_is_not_the_mrt5_network():
  module = t5x_network.Transformer(t5x_network.T5Config(vocab_size=384))
  with pytest.raises(ValueError, match="mrt5_jax.model.network.Transformer"):
    t5x_model.MrT5Model(module, VOCAB, VOCAB, t5x_optimizers.adamw(1e-3))
  with pytest.raises(ValueError, match="inference_deletion"):
    _model(inference_deletion="bucketed")


def test_initial_variables_hold_the_controller_and_t5x_can_partition_them():
  model = _model()
  batch = _batch()
  variables = _variables(model, batch)
  assert set(variables) == {"params", "params_axes", "controller", "controller_axes",
                            "controller_microbatches", "controller_microbatches_axes"}
  assert {k: float(v) for k, v in variables["controller"].items()} == {
      "alpha": 0.0, "p": 0.0, "i": 0.0, "step": 0.0}
  state = t5x_train_state.FlaxOptimTrainState.create(model.optimizer_def, variables)
  assert set(state.flax_mutables) == {"controller", "controller_microbatches"}
  partitioner = t5x_partitioning.PjitPartitioner(num_partitions=1)
  axes = partitioner.get_mesh_axes(state)
  assert set(axes.flax_mutables["controller"]) == {"alpha", "p", "i", "step"}


# ----------------------------------------------------------------------------- loss


def test_loss_is_t5x_cross_entropy_plus_alpha_times_mean_gate():
  """t5x's own EncoderDecoderModel.loss_fn on the same module (soft deletion)
  gives the CE + z-loss; the gate term is checked in NumPy."""
  model = _model()
  batch = _batch()
  params = _variables(model, batch)["params"]
  alpha = 0.37
  loss, (metrics, _) = model.loss_fn(params, batch, None, _mutables(model, alpha))

  reference = t5x_models.EncoderDecoderModel(
      model.module, VOCAB, VOCAB, t5x_optimizers.adamw(1e-3), z_loss=1e-4,
      loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
  t5x_loss, _ = reference.loss_fn(params, batch, None)
  gate, real = _gate_numpy(model, params, batch)
  expected = float(t5x_loss) + alpha * gate[real].mean()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(float(metrics["deletion/rate"].compute()),
                             (gate[real] < THRESHOLD).mean(), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["deletion/gate_mean"].compute()), gate[real].mean(),
                             rtol=1e-6)
  assert float(metrics["deletion/alpha"].compute()) == pytest.approx(alpha)
  assert float(metrics["deletion/compacted_length"].compute()) == batch[
      "encoder_input_tokens"].shape[1]
  np.testing.assert_allclose(float(metrics["deletion/kept_length"].compute()),
                             (real & (gate >= THRESHOLD)).sum() / real.shape[0], rtol=1e-6)


def test_loss_without_gate_equals_t5x_plain_encoder_decoder():
  config = _config(deletion_type="none")
  model = _model(config)
  batch = _batch(seed=3)
  params = _variables(model, batch)["params"]
  loss, metrics = model.loss_fn(params, batch, None)
  reference = t5x_models.EncoderDecoderModel(
      model.module, VOCAB, VOCAB, t5x_optimizers.adamw(1e-3), z_loss=1e-4,
      loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
  t5x_loss, t5x_metrics = reference.loss_fn(params, batch, None)
  np.testing.assert_allclose(float(loss), float(t5x_loss), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["accuracy"].compute()),
                             float(t5x_metrics["accuracy"].compute()), rtol=1e-6)
  assert float(metrics["deletion/rate"].compute()) == 0.0


def test_loss_equals_the_project_trainer_loss():
  """Same params, batch and controller state: the project trainer's step
  reports the loss of the params it starts from; MrT5Model.loss_fn (jitted,
  and inside t5x's own train step) agrees within 1e-6."""
  from mrt5_jax.training import optimizers as project_optimizers
  from mrt5_jax.training import trainer as project_trainer

  config = _config()
  objective = objective_lib.ObjectiveConfig(z_loss=1e-4,
                                            loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
  trainer = project_trainer.Trainer(
      config, optimizer=project_optimizers.OptimizerConfig(learning_rate=1e-3),
      objective=objective, controller=CONTROLLER, enable_dropout=False)
  model = _model(config)
  batch = _batch(seed=5)
  state = trainer.init_state(batch["encoder_input_tokens"].shape[1],
                             batch["decoder_target_tokens"].shape[1])
  controller_state = _state(0.21, step=3)
  state["flax_mutables"] = {"controller": controller_state}
  params = flax.core.freeze(jax.device_get(state["params"]))
  mutables = flax.core.freeze({**model.initial_flax_mutables(), "controller": controller_state})

  loss, (_, new_mutables) = jax.jit(model.loss_fn)(params, batch, None, mutables)
  t5x_state = _train_state(model, batch).replace_params(params).replace_flax_mutables(mutables)
  _, t5x_metrics = jax.jit(lambda s, b: t5x_trainer.train_with_lr(
      s, b, jnp.float32(1e-3), jax.random.PRNGKey(0), model, None))(t5x_state, batch)
  _, trainer_metrics = trainer.train_step(state, {k: np.asarray(v) for k, v in batch.items()})

  assert abs(float(loss) - float(trainer_metrics["loss"])) < 1e-6
  assert abs(float(t5x_metrics["loss"].compute()) - float(trainer_metrics["loss"])) < 1e-6
  expected_alpha = max(0.0, 0.21 + CONTROLLER.k_p * (
      CONTROLLER.target_deletion_rate - float(trainer_metrics["deletion_rate"])))
  assert float(new_mutables["controller"]["alpha"]) == pytest.approx(expected_alpha, abs=1e-6)


def test_eval_fn_reads_the_controller_without_stepping_it():
  model = _model()
  batch = _batch()
  params = _variables(model, batch)["params"]
  mutables = _mutables(model, 0.5)
  eval_loss, metrics = model.eval_fn(params, batch, mutables)
  train_loss, _ = model.loss_fn(params, batch, None, mutables)
  assert float(eval_loss) == pytest.approx(float(train_loss), rel=1e-6)
  assert float(metrics["deletion/alpha"].compute()) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- t5x train step


def test_t5x_train_step_advances_the_controller_from_the_measured_rate():
  model = _model()
  batch = _batch()
  state = _train_state(model, batch)
  gate, real = _gate_numpy(model, state.params, batch)
  rate = (gate[real] < THRESHOLD).mean()
  new_state, metrics = t5x_trainer.train_with_lr(
      state, batch, learning_rate=jnp.float32(1e-3), dropout_rng=jax.random.PRNGKey(0),
      model=model, num_microbatches=None)
  controller = new_state.flax_mutables["controller"]
  assert isinstance(new_state.flax_mutables, flax.core.FrozenDict)
  assert int(controller["step"]) == 1
  expected = max(0.0, CONTROLLER.k_p * (CONTROLLER.target_deletion_rate - rate))
  assert float(controller["alpha"]) == pytest.approx(expected, abs=1e-6)
  assert int(new_state.step) == 1
  assert "deletion/rate" in metrics and "deletion/alpha" in metrics


def test_microbatched_step_steps_the_controller_once_on_the_whole_batch_rate():
  batch = _batch(batch=4)
  whole = _model()
  micro = _model(num_microbatches=2)
  state = _train_state(micro, batch)
  gate, real = _gate_numpy(micro, state.params, batch)
  new_state, metrics = t5x_trainer.train_with_lr(
      state, batch, learning_rate=jnp.float32(1e-3), dropout_rng=jax.random.PRNGKey(0),
      model=micro, num_microbatches=2)
  controller = new_state.flax_mutables["controller"]
  assert int(controller["step"]) == 1
  rate = (gate[real] < THRESHOLD).mean()
  expected = max(0.0, CONTROLLER.k_p * (CONTROLLER.target_deletion_rate - rate))
  assert float(controller["alpha"]) == pytest.approx(expected, abs=1e-6)
  counts = new_state.flax_mutables[t5x_model.MICROBATCH_COLLECTION]
  assert int(counts["count"]) == 0 and float(counts["num_real"]) == 0.0
  np.testing.assert_allclose(float(metrics["deletion/rate"].compute()), rate, rtol=1e-6)
  whole_state, _ = t5x_trainer.train_with_lr(
      _train_state(whole, batch), batch, learning_rate=jnp.float32(1e-3),
      dropout_rng=jax.random.PRNGKey(0), model=whole, num_microbatches=None)
  for key in ("alpha", "p", "i", "step"):
    assert float(whole_state.flax_mutables["controller"][key]) == pytest.approx(
        float(controller[key]), abs=1e-6)


# ----------------------------------------------------------------------------- inference


def test_predict_and_score_match_t5x_encoder_decoder_model_without_a_gate():
  """No gate: our predict/score (own decoding wiring) == t5x's implementation."""
  config = _config(deletion_type="none")
  model = _model(config, inference_deletion="soft")
  reference = t5x_models.EncoderDecoderModel(model.module, VOCAB, VOCAB,
                                             t5x_optimizers.adamw(1e-3))
  batch = _batch(seed=7)
  params = _variables(model, batch)["params"]
  ours, ours_aux = jax.jit(model.predict_batch_with_aux)(params, batch)
  theirs, theirs_aux = reference.predict_batch_with_aux(params, batch)
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
  np.testing.assert_allclose(np.asarray(ours_aux["scores"]), np.asarray(theirs_aux["scores"]),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(jax.jit(model.score_batch)(params, batch)),
                             np.asarray(reference.score_batch(params, batch)), rtol=1e-5)


def test_hard_deletion_predict_and_score_agree_with_soft_when_the_gate_is_decisive():
  """G at ~0 or ~k: soft deletion is (numerically) removal, so hard deletion,
  which physically drops the positions, must give the same tokens and scores."""
  batch = _batch(seed=11)
  hard = _model(inference_deletion="hard")
  soft = _model(inference_deletion="soft")
  params = _decisive_gate(_variables(hard, batch)["params"])
  gate, real = _gate_numpy(hard, params, batch)
  deleted = (gate < THRESHOLD) & real
  assert 0 < deleted.sum() < real.sum()
  assert np.all((gate[real] > -1e-3) | (gate[real] < -30 + 1e-3))

  hard_tokens, hard_aux = jax.jit(hard.predict_batch_with_aux)(params, batch)
  soft_tokens, soft_aux = jax.jit(soft.predict_batch_with_aux)(params, batch)
  assert int(np.sum(hard_aux["num_dropped"])) == 0
  np.testing.assert_array_equal(np.asarray(hard_tokens), np.asarray(soft_tokens))
  np.testing.assert_allclose(np.asarray(hard_aux["scores"]), np.asarray(soft_aux["scores"]),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(hard_aux["deletion_rate"]),
                             deleted.sum(-1) / real.sum(-1), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(hard_aux["kept_length"]),
                                (real & ~deleted).sum(-1))
  np.testing.assert_array_equal(np.asarray(hard_aux["input_length"]), real.sum(-1))
  np.testing.assert_allclose(np.asarray(jax.jit(hard.score_batch)(params, batch)),
                             np.asarray(jax.jit(soft.score_batch)(params, batch)),
                             rtol=1e-4, atol=1e-4)


def test_hard_deletion_shortens_the_encoder_output():
  batch = _batch(seed=11)
  model = _model()
  params = _decisive_gate(_variables(model, batch)["params"])
  out = jax.jit(model.encode)(params, batch["encoder_input_tokens"])
  length = batch["encoder_input_tokens"].shape[1]
  assert out.encoded.shape[1] == capacity_length(INFERENCE, length) == 20 < length
  gate, real = _gate_numpy(model, params, batch)
  np.testing.assert_array_equal(np.asarray(out.mask).sum(-1),
                                (real & (gate >= THRESHOLD)).sum(-1))


def test_random_deletion_baseline_gets_its_rng_stream_everywhere():
  """The random baseline needs a 'deletion' rng in init, training, eval and
  prediction; its measured rate follows random_deletion_probability."""
  config = _config(deletion_type="random", shortening=dict(random_deletion_probability=0.5))
  model = _model(config, inference_deletion="soft")
  batch = _batch(batch=4, length=64)
  variables = _variables(model, batch)
  assert "delete_gate" not in variables["params"]["encoder"]
  mutables = _mutables(model, 0.0)
  loss, (metrics, _) = model.loss_fn(variables["params"], batch, jax.random.PRNGKey(1), mutables)
  rate = float(metrics["deletion/rate"].compute())
  real = int((np.asarray(batch["encoder_input_tokens"]) > 0).sum())
  assert abs(rate - 0.5) < 4 * np.sqrt(0.25 / real)
  other_loss, _ = model.loss_fn(variables["params"], batch, jax.random.PRNGKey(2), mutables)
  assert float(other_loss) != float(loss)  # another key deletes other positions
  model.eval_fn(variables["params"], batch, mutables)
  tokens, aux = jax.jit(model.predict_batch_with_aux)(variables["params"], batch)
  assert tokens.shape == batch["decoder_input_tokens"].shape
  assert np.all((np.asarray(aux["deletion_rate"]) > 0) & (np.asarray(aux["deletion_rate"]) < 1))


# ----------------------------------------------------------------------------- ByT5 checkpoints


def _byt5_reference(config):
  return t5x_network.Transformer(t5x_network.T5Config(
      vocab_size=config.vocab_size, dtype="float32", emb_dim=config.d_model,
      num_heads=config.num_heads, num_encoder_layers=config.num_encoder_layers,
      num_decoder_layers=config.num_decoder_layers, head_dim=config.head_dim,
      mlp_dim=config.d_ff, mlp_activations=("gelu", "linear"), dropout_rate=0.0,
      logits_via_embedding=False))


def test_t5x_byt5_params_fill_mrt5_and_give_the_same_logits():
  """t5x's own ByT5 network: same parameter tree minus the gate; with the gate
  off, MrT5 on those params reproduces t5x ByT5's logits."""
  config = _config(deletion_type="none")
  batch = _batch(seed=2)
  byt5 = _byt5_reference(config)
  byt5_vars = byt5.init(jax.random.PRNGKey(3), batch["encoder_input_tokens"],
                        batch["decoder_input_tokens"], batch["decoder_target_tokens"],
                        enable_dropout=False)
  gated = _model(_config())
  mrt5_vars = _variables(gated, batch)
  flat_byt5 = flax.traverse_util.flatten_dict(flax.core.unfreeze(byt5_vars["params"]), sep="/")
  flat_mrt5 = flax.traverse_util.flatten_dict(flax.core.unfreeze(mrt5_vars["params"]), sep="/")
  assert sorted(set(flat_mrt5) - set(flat_byt5)) == [
      "encoder/delete_gate/dense/bias", "encoder/delete_gate/dense/kernel",
      "encoder/delete_gate/layer_norm/scale"]
  assert set(flat_byt5) <= set(flat_mrt5)
  assert all(flat_byt5[k].shape == flat_mrt5[k].shape for k in flat_byt5)

  expected = byt5.apply(byt5_vars, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                        batch["decoder_target_tokens"], enable_dropout=False)
  plain = _model(config)
  logits = plain.module.apply({"params": byt5_vars["params"]}, batch["encoder_input_tokens"],
                              batch["decoder_input_tokens"], batch["decoder_target_tokens"],
                              enable_dropout=False)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), rtol=1e-4, atol=1e-4)


def test_prompted_prediction_prefills_and_matches_t5x_without_prefill():
  """prompt_with_targets: our decode has `prefill`, so t5x's predict prefills
  the KV cache with the prompt; t5x's own ByT5 network has none, so t5x feeds
  the prompt step by step. Same params, same greedy continuation."""
  import inspect
  from t5x import decoding as t5x_decoding

  config = _config(deletion_type="none")
  batch = dict(_batch(seed=4))
  prompt = np.asarray(batch["decoder_input_tokens"]).copy()
  for row, length in enumerate([2, 5, 1, 3]):
    prompt[row, length:] = 0
  batch["decoder_input_tokens"] = jnp.asarray(prompt)
  byt5 = _byt5_reference(config)
  params = byt5.init(jax.random.PRNGKey(3), batch["encoder_input_tokens"],
                     batch["decoder_input_tokens"], batch["decoder_target_tokens"],
                     enable_dropout=False)["params"]
  decoder = dict(decode_fn=t5x_decoding.temperature_sample,
                 default_decoder_params=t5x_models.DecoderParams(
                     return_all_decodes=False, num_decodes=1))
  ours = _model(config, inference_deletion="soft", **decoder)
  theirs = t5x_models.EncoderDecoderModel(byt5, VOCAB, VOCAB, t5x_optimizers.adamw(1e-3),
                                          **decoder)
  assert "prefill" in inspect.signature(ours.module.decode).parameters
  assert "prefill" not in inspect.signature(byt5.decode).parameters
  greedy = {"topk": 1}
  our_tokens, _ = jax.jit(lambda p, b: ours.predict_batch_with_aux(
      p, b, decoder_params=dict(greedy), prompt_with_targets=True))(params, batch)
  their_tokens, _ = theirs.predict_batch_with_aux(params, batch, decoder_params=dict(greedy),
                                                  prompt_with_targets=True)
  np.testing.assert_array_equal(np.asarray(our_tokens), np.asarray(their_tokens))
  assert np.any(np.asarray(our_tokens)[prompt == 0] != 0)  # it did decode past the prompts


# ----------------------------------------------------------------------------- scan, remat, blocked


@pytest.mark.slow
def test_scanned_rematerialised_blocked_model_trains_and_predicts_like_the_plain_one():
  """scan_layers + remat + blocked attention under t5x: the partitioner reads the
  stacked axes, one t5x train step and beam-search / prompted prediction (t5x's
  cache_offset=1 for scanned caches) give what the plain model gives on the same
  weights, stacked."""
  from t5x import decoding as t5x_decoding
  from mrt5_jax.model import layer_stacking

  plain_config = _config()
  fast_config = plain_config.replace(scan_layers=True, remat_policy="full",
                                     attention_impl="blocked", attention_block_size=8)
  batch = _batch(seed=11)
  plain, fast = _model(plain_config), _model(fast_config)
  assert fast.module.scan_layers and not plain.module.scan_layers
  fast_variables = _variables(fast, batch)
  plain_variables = _variables(plain, batch)
  params = _decisive_gate(plain_variables["params"])
  stacked = layer_stacking.stack_layers(flax.core.unfreeze(params), plain_config.gate_layer)
  assert (jax.tree_util.tree_map(np.shape, flax.core.unfreeze(fast_variables["params"]))
          == jax.tree_util.tree_map(np.shape, stacked))
  state = t5x_train_state.FlaxOptimTrainState.create(
      fast.optimizer_def, flax.core.freeze({**flax.core.unfreeze(fast_variables),
                                            "params": stacked}))
  axes = t5x_partitioning.PjitPartitioner(num_partitions=1).get_mesh_axes(state)
  query_axes = axes.params["encoder"]["stage_two_layers"]["attention"]["query"]["kernel"]
  assert tuple(query_axes) == (None, None, "model")  # layers, embed, joined_kv

  def step(model, params):
    variables = {**flax.core.unfreeze(_variables(model, batch)), "params": params}
    train_state = t5x_train_state.FlaxOptimTrainState.create(model.optimizer_def,
                                                             flax.core.freeze(variables))
    return t5x_trainer.train_with_lr(
        train_state, batch, learning_rate=jnp.float32(1e-3), dropout_rng=jax.random.PRNGKey(0),
        model=model, num_microbatches=None)

  plain_state, plain_metrics = step(plain, flax.core.unfreeze(params))
  fast_state, fast_metrics = step(fast, stacked)
  for name in ("loss", "deletion/rate", "cross_ent_loss"):
    np.testing.assert_allclose(float(fast_metrics[name].compute()),
                               float(plain_metrics[name].compute()), rtol=1e-5, err_msg=name)
  np.testing.assert_allclose(float(fast_state.flax_mutables["controller"]["alpha"]),
                             float(plain_state.flax_mutables["controller"]["alpha"]), atol=1e-6)
  updated = layer_stacking.unstack_layers(flax.core.unfreeze(fast_state.params))
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(updated),
                               jax.tree_util.tree_leaves(flax.core.unfreeze(plain_state.params))):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5,
                               err_msg=jax.tree_util.keystr(path))

  beams = dict(decoder_params={}, num_decodes=2, return_all_decodes=True)
  plain_tokens, plain_aux = jax.jit(lambda p, b: plain.predict_batch_with_aux(p, b, **beams))(
      params, batch)
  fast_tokens, fast_aux = jax.jit(lambda p, b: fast.predict_batch_with_aux(p, b, **beams))(
      stacked, batch)
  np.testing.assert_array_equal(np.asarray(fast_tokens), np.asarray(plain_tokens))
  np.testing.assert_allclose(np.asarray(fast_aux["scores"]), np.asarray(plain_aux["scores"]),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(jax.jit(fast.score_batch)(stacked, batch)),
                             np.asarray(jax.jit(plain.score_batch)(params, batch)),
                             rtol=1e-4, atol=1e-4)

  prompt = np.asarray(batch["decoder_input_tokens"]).copy()
  for row, length in enumerate([2, 5, 1, 3]):
    prompt[row, length:] = 0
  prompted = {**batch, "decoder_input_tokens": jnp.asarray(prompt)}
  sampling = dict(decode_fn=t5x_decoding.temperature_sample)
  outputs = []
  for config, weights in ((plain_config, params), (fast_config, stacked)):
    model = _model(config, **sampling)
    tokens, _ = jax.jit(lambda p, b: model.predict_batch_with_aux(
        p, b, decoder_params={"topk": 1}, prompt_with_targets=True))(weights, prompted)
    outputs.append(np.asarray(tokens))
  np.testing.assert_array_equal(outputs[1], outputs[0])
  assert np.any(outputs[0][prompt == 0] != 0)


# ----------------------------------------------------------------------------- pooling baselines


@pytest.mark.parametrize("kind", ["boundary", "conv"])
def test_pooling_baselines_train_and_predict_under_t5x(kind):
  """BP and CP in t5x: a t5x train step with Adafactor (CP's window axis has a
  factor rule), the boundary loss logged for BP only, deletion/rate as the
  length reduction, and prediction against the pooled encoder output."""
  from t5x import adafactor as t5x_adafactor
  config = _config(deletion_type=kind, use_softmax1=False)
  optimizer = t5x_adafactor.Adafactor(
      decay_rate=0.8, logical_factor_rules=t5x_model.adafactor_logical_factor_rules())
  model = t5x_model.MrT5Model(network.Transformer(config), VOCAB, VOCAB, optimizer,
                              objective=OBJECTIVE, controller=CONTROLLER, inference=INFERENCE)
  batch = _batch(seed=5)
  state = _train_state(model, batch)
  axes = t5x_partitioning.PjitPartitioner(num_partitions=1).get_mesh_axes(state)
  subtree = "boundary_predictor" if kind == "boundary" else "conv_pool"
  assert subtree in axes.params["encoder"] and "delete_gate" not in state.params["encoder"]
  new_state, metrics = t5x_trainer.train_with_lr(
      state, batch, learning_rate=jnp.float32(1e-2), dropout_rng=jax.random.PRNGKey(0),
      model=model, num_microbatches=None)
  assert ("deletion/boundary_loss" in metrics) == (kind == "boundary")
  assert float(metrics["deletion/gate_loss"].compute()) == 0.0
  real = np.asarray(batch["encoder_input_tokens"]) > 0
  rate = float(metrics["deletion/rate"].compute())
  if kind == "conv":
    kept = sum(-(-int(n) // 4) for n in real.sum(axis=1))
    assert rate == pytest.approx(1 - kept / real.sum(), abs=1e-6)
  else:
    assert 0.0 < rate < 1.0
  changed = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()),
                                   flax.core.unfreeze(new_state.params["encoder"][subtree]),
                                   flax.core.unfreeze(state.params["encoder"][subtree]))
  assert max(jax.tree_util.tree_leaves(changed)) > 0
  tokens, aux = jax.jit(model.predict_batch_with_aux)(new_state.params, batch)
  assert tokens.shape == batch["decoder_input_tokens"].shape
  out = jax.jit(model.encode)(new_state.params, batch["encoder_input_tokens"])
  length = batch["encoder_input_tokens"].shape[1]
  assert out.encoded.shape[1] == (6 if kind == "conv" else capacity_length(INFERENCE, length))
  np.testing.assert_allclose(np.asarray(aux["kept_length"]), np.asarray(out.mask).sum(-1))
