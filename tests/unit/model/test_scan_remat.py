"""Scanned layers and rematerialisation: the same function as the plain network.

Scanned and unscanned networks share weights through ``layer_stacking`` (the
reference is the unscanned network, whose parameter names are t5x's); remat
policies must not change gradients.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrt5_jax.model import layer_stacking
from mrt5_jax.maths import trees
from mrt5_jax.model.config import EXECUTION_FIELDS, MrT5Config
from mrt5_jax.conversion import configs as hf_configs
from mrt5_jax.model.network import Transformer
from mrt5_jax.training.objective import score_regularizer
from tests.fixtures import (as_tuple, assert_prefill_matches_teacher_forcing, byte_batch,
                            init_params, model_config)

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="module")
def plain():
  """(config, batch, params) of the unscanned network: the gate bias moved so
  that hard deletion drops some positions but not all, query kernels scaled
  so that some attention logits pass the score regularizer's margin."""
  cfg = model_config(use_softmax1=True)
  batch = as_tuple(byte_batch())
  _, params = init_params(cfg, batch)
  params = trees.unflatten({
      path: value * 8.0 if path[-2:] == ("query", "kernel") else value
      for path, value in trees.flatten(params).items()})
  params["encoder"]["delete_gate"]["dense"]["bias"] = jnp.array([0.3], jnp.float32)
  return cfg, batch, params


def test_scanned_parameter_tree_is_the_stacked_unscanned_tree(plain):
  cfg, batch, params = plain
  scanned_cfg = cfg.replace(scan_layers=True)
  variables = Transformer(scanned_cfg).init(jax.random.PRNGKey(0), *batch, enable_dropout=False)
  shapes = {k: np.shape(v) for k, v in trees.flatten(variables["params"]).items()}
  stacked = {k: np.shape(v) for k, v in trees.flatten(
      layer_stacking.stack_layers(params, cfg.gate_layer)).items()}
  assert shapes == stacked
  assert shapes[("encoder", "stage_one_layers", "attention", "query", "kernel")] == (
      cfg.gate_layer, cfg.d_model, cfg.inner_dim)
  assert shapes[("encoder", "stage_two_layers", "mlp", "wo", "kernel")][0] == (
      cfg.num_encoder_layers - cfg.gate_layer)
  assert shapes[("decoder", "layers", "self_attention", "query", "kernel")][0] == (
      cfg.num_decoder_layers)
  axes = variables["params_axes"]["encoder"]["stage_two_layers"]["attention"]["query"]
  assert axes["kernel_axes"].names == ("layers", "embed", "joined_kv")
  assert layer_stacking.is_scanned(variables["params"])
  assert Transformer(scanned_cfg).scan_layers and not Transformer(cfg).scan_layers


def test_stacking_round_trips_and_handles_stage_edges(plain):
  cfg, _, params = plain
  for gate_layer in (0, 1, cfg.num_encoder_layers):
    stacked = layer_stacking.stack_layers(params, gate_layer)
    assert layer_stacking.scanned_gate_layer(stacked) == gate_layer
    back = trees.flatten(layer_stacking.unstack_layers(stacked))
    flat = trees.flatten(params)
    assert back.keys() == flat.keys()
    assert all(np.array_equal(np.asarray(flat[k]), np.asarray(back[k])) for k in flat)
  assert "stage_one_layers" not in layer_stacking.stack_layers(params, 0)["encoder"]
  moved = layer_stacking.to_layout(layer_stacking.stack_layers(params, 1),
                                   cfg.replace(scan_layers=True))
  assert layer_stacking.scanned_gate_layer(moved) == cfg.gate_layer
  bad = trees.flatten(params)
  del bad[("encoder", "layers_1", "mlp", "wo", "kernel")]
  with pytest.raises(ValueError, match="layer 1"):
    layer_stacking.stack_layers(trees.unflatten(bad), cfg.gate_layer)


@pytest.mark.parametrize("deletion", ["soft", "hard"])
def test_scanned_network_equals_unscanned(plain, deletion):
  cfg, batch, params = plain
  scanned = layer_stacking.stack_layers(params, cfg.gate_layer)
  kwargs = dict(enable_dropout=False, deletion=deletion, return_aux=True,
                compacted_length=16 if deletion == "hard" else None, mutable=["intermediates"])
  run = lambda c, p: jax.jit(lambda p: Transformer(c).apply({"params": p}, *batch, **kwargs))(p)
  (want, want_aux), want_state = run(cfg, params)
  (got, got_aux), got_state = run(cfg.replace(scan_layers=True), scanned)
  if deletion == "hard":
    assert 0 < int(np.asarray(want_aux.mask).sum()) < int(np.sum(batch[0] > 0))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(got_aux.kept_positions),
                                np.asarray(want_aux.kept_positions))
  penalty = score_regularizer(want_state["intermediates"])
  assert float(penalty) > 0
  np.testing.assert_allclose(float(score_regularizer(got_state["intermediates"])),
                             float(penalty), rtol=1e-5)


def test_scanned_cache_prefill_and_steps_equal_teacher_forcing(plain):
  """The KV cache under scan (a leading layer axis) with t5x's prompt prefilling."""
  cfg, batch, params = plain
  cfg = cfg.replace(scan_layers=True)
  params = layer_stacking.stack_layers(params, cfg.gate_layer)
  module = Transformer(cfg)
  enc, dec_in, _ = batch
  out = module.apply({"params": params}, enc, enable_dropout=False, return_aux=True,
                     deletion="hard", compacted_length=16, method=module.encode)

  def cache_has_a_leading_layer_axis(cache):
    cached_key = cache["decoder"]["layers"]["self_attention"]["cached_key"]
    assert cached_key.shape[:2] == (cfg.num_decoder_layers, enc.shape[0])  # t5x cache_offset 1

  assert_prefill_matches_teacher_forcing(module, params, out, dec_in,
                                         check_cache=cache_has_a_leading_layer_axis)


@pytest.mark.parametrize("scan_layers,policies", [(False, ("full", "dots")),
                                                  (True, ("full", "minimal"))])
def test_remat_policies_leave_gradients_unchanged(plain, scan_layers, policies):
  cfg, batch, params = plain
  if scan_layers:
    params = layer_stacking.stack_layers(params, cfg.gate_layer)
  targets = batch[2]

  def grads(policy):
    module = Transformer(cfg.replace(remat_policy=policy, scan_layers=scan_layers))

    def loss(p):
      logits, state = module.apply({"params": p}, *batch, enable_dropout=False,
                                   mutable=["intermediates"])
      ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)
      return jnp.mean(ce) + 0.1 * score_regularizer(state["intermediates"])

    return jax.jit(jax.grad(loss))(params)

  want = trees.flatten(grads("none"))
  for policy in policies:
    got = trees.flatten(grads(policy))
    for path in want:
      # float32 noise of a recomputed forward pass: measured up to 1.04e-6 (scanned, full)
      np.testing.assert_allclose(np.asarray(got[path]), np.asarray(want[path]), atol=2e-6,
                                 rtol=1e-6, err_msg=f"{policy}: {'/'.join(path)}")
  assert float(jnp.abs(want[("encoder", "delete_gate", "dense", "kernel")]).max()) > 0


def test_execution_knobs_are_validated_and_kept_out_of_hf_config():
  with pytest.raises(ValueError, match="remat_policy"):
    model_config(remat_policy="some")
  with pytest.raises(ValueError, match="attention_impl"):
    model_config(attention_impl="flash")
  with pytest.raises(ValueError, match="attention_block_size"):
    model_config(attention_block_size=0)
  cfg = model_config(remat_policy="full", scan_layers=True, attention_impl="blocked",
                     attention_block_size=128, attention_query_block_size=64)
  assert MrT5Config.from_json(cfg.to_json()) == cfg
  old = json.loads(model_config().to_json())
  for name in EXECUTION_FIELDS:
    del old[name]
  assert MrT5Config.from_dict(old) == model_config()  # model_config.json written before them
  hf = hf_configs.to_hf_config(cfg)
  assert not set(EXECUTION_FIELDS) & set(hf)
  assert hf_configs.to_hf_config(cfg) == hf_configs.to_hf_config(model_config())


def test_project_trainer_gradients_with_scan_remat_and_blocked_attention_equal_plain(plain):
  """mrt5-train's gradient computation: an unscanned init checkpoint merges into
  the scanned model (layer_stacking.like) and gives the plain model's loss and
  gradients."""
  from mrt5_jax.maths import controller as controller_lib
  from mrt5_jax.training import optimizers
  from mrt5_jax.training.trainer import Trainer, merge_init_params
  cfg, batch, params = plain
  host = jax.tree_util.tree_map(np.asarray, params)
  enc, dec_in, tgt = batch
  feed = {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt}

  def gradients(config):
    trainer = Trainer(config, optimizer=optimizers.OptimizerConfig(learning_rate=1e-3),
                      enable_dropout=False)
    state = trainer.init_state(enc.shape[1], tgt.shape[1], init_params=host, reinit_gate=False)
    controller = controller_lib.init_state(trainer.controller)
    sums, grads, _ = jax.jit(trainer._loss_and_grads)(state["params"], controller, feed,
                                                      jax.random.PRNGKey(0))
    return float(sums["loss"]), trees.flatten(layer_stacking.unstack_layers(
        jax.device_get(grads)))

  want_loss, want = gradients(cfg)
  got_loss, got = gradients(cfg.replace(scan_layers=True, remat_policy="minimal",
                                        attention_impl="blocked", attention_block_size=8))
  assert got_loss == pytest.approx(want_loss, rel=1e-5)
  for path in want:
    scale = max(float(np.abs(want[path]).max()), 1e-3)
    # blocked attention sums in another order; the gate bias's gradient is a sum over every
    # position with cancellation: measured 1.5e-4 of its size
    np.testing.assert_allclose(got[path], want[path], atol=2e-4 * scale, err_msg="/".join(path))
  scanned_fresh = layer_stacking.stack_layers(host, cfg.gate_layer)
  merged, fresh = merge_init_params(scanned_fresh, jax.tree_util.tree_map(lambda x: x + 1, host),
                                    reinit_gate=True)
  assert fresh == ["encoder/delete_gate/dense/bias", "encoder/delete_gate/dense/kernel",
                   "encoder/delete_gate/layer_norm/scale"]
  np.testing.assert_array_equal(merged["decoder"]["layers"]["mlp"]["wo"]["kernel"],
                                scanned_fresh["decoder"]["layers"]["mlp"]["wo"]["kernel"] + 1)


def test_inference_runner_accepts_either_layout(plain):
  from mrt5_jax.inference.runner import InferenceRunner
  cfg, batch, params = plain
  enc = batch[0]
  want = InferenceRunner(cfg, params).encode(enc)
  got = InferenceRunner(cfg.replace(scan_layers=True, attention_impl="blocked",
                                    attention_block_size=8), params).encode(enc)
  assert got.compacted_length == want.compacted_length < enc.shape[1]
  np.testing.assert_allclose(np.asarray(got.encoded), np.asarray(want.encoded), atol=1e-5)
