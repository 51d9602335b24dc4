import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrt5_jax.model.network import Transformer
from tests.fixtures import (as_tuple, assert_prefill_matches_teacher_forcing, byte_batch,
                            init_params, model_config)

jax.config.update("jax_default_matmul_precision", "highest")


def encoder_output(module, params, enc, **kwargs):
  return module.apply({"params": params}, enc, enable_dropout=False, return_aux=True,
                      method=module.encode, **kwargs)


def test_parameter_tree_names_and_shapes():
  cfg = model_config()
  module, params = init_params(cfg, as_tuple(byte_batch()))
  flat = {"/".join(k.key for k in path): v.shape
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  inner = cfg.num_heads * cfg.head_dim
  assert flat["token_embedder/embedding"] == (384, cfg.d_model)
  assert flat["encoder/relpos_bias/rel_embedding"] == (cfg.num_heads, 32)
  assert flat["decoder/relpos_bias/rel_embedding"] == (cfg.num_heads, 32)
  assert flat["encoder/layers_0/attention/query/kernel"] == (cfg.d_model, inner)
  assert flat["encoder/layers_0/attention/out/kernel"] == (inner, cfg.d_model)
  assert flat["decoder/layers_1/encoder_decoder_attention/key/kernel"] == (cfg.d_model, inner)
  assert flat["decoder/layers_1/mlp/wo/kernel"] == (cfg.d_ff, cfg.d_model)
  assert flat["decoder/logits_dense/kernel"] == (cfg.d_model, 384)
  assert flat["encoder/delete_gate/dense/kernel"] == (cfg.d_model, 1)
  assert flat["encoder/delete_gate/dense/bias"] == (1,)
  assert flat["encoder/delete_gate/layer_norm/scale"] == (cfg.d_model,)
  gate_params = [k for k in flat if "delete_gate" in k]
  assert sum(int(np.prod(flat[k])) for k in gate_params) == cfg.d_model * 2 + 1
  plain_module, plain = init_params(model_config(deletion_type="none"), as_tuple(byte_batch()))
  plain_flat = {"/".join(k.key for k in path)
                for path, _ in jax.tree_util.tree_flatten_with_path(plain)[0]}
  assert plain_flat == set(flat) - set(gate_params)


def test_params_carry_logical_axis_names():
  cfg = model_config()
  batch = as_tuple(byte_batch())
  variables = Transformer(cfg).init(jax.random.PRNGKey(0), *batch, enable_dropout=False)
  axes = variables["params_axes"]
  assert axes["token_embedder"]["embedding_axes"].names == ("vocab", "embed")
  assert axes["encoder"]["layers_0"]["attention"]["query"]["kernel_axes"].names == (
      "embed", "joined_kv")
  assert axes["encoder"]["layers_0"]["mlp"]["wo"]["kernel_axes"].names == ("mlp", "embed")
  assert axes["decoder"]["logits_dense"]["kernel_axes"].names == ("embed", "vocab")
  gate = axes["encoder"]["delete_gate"]
  assert gate["dense"]["kernel_axes"].names == ("embed", "gate_score")
  assert gate["dense"]["bias_axes"].names == ("gate_score",)
  names = [tuple(leaf.names) for leaf in jax.tree_util.tree_leaves(
      axes, is_leaf=lambda x: hasattr(x, "names"))]
  assert all(None not in n for n in names), "every parameter axis has a logical name"


def test_soft_deletion_with_zero_gate_equals_plain_byt5_exactly():
  cfg = model_config()
  batch = as_tuple(byte_batch())
  module, params = init_params(cfg, batch)
  params = jax.tree_util.tree_map(lambda x: x, params)
  params["encoder"]["delete_gate"]["dense"]["bias"] = jnp.array([1e4], jnp.float32)
  gated = module.apply({"params": params}, *batch, enable_dropout=False, return_aux=True)
  real = batch[0] > 0
  assert np.all(np.asarray(gated[1].gate)[real] == 0.0)
  plain_params = dict(params)
  plain_params["encoder"] = {k: v for k, v in params["encoder"].items() if k != "delete_gate"}
  plain = Transformer(model_config(deletion_type="none")).apply(
      {"params": plain_params}, *batch, enable_dropout=False)
  np.testing.assert_array_equal(np.asarray(gated[0]), np.asarray(plain))


def forced_gate(enc, kept):
  """G = 0 on the chosen positions, far below threshold elsewhere."""
  gate = np.full(enc.shape, -1e9, np.float32)
  for row, positions in enumerate(kept):
    gate[row, positions] = 0.0
  return jnp.asarray(gate)


@pytest.mark.parametrize("use_softmax1", [False, True])
def test_hard_deletion_equals_soft_deletion_with_minus_infinity(use_softmax1):
  cfg = model_config(use_softmax1=use_softmax1)
  enc, dec_in, tgt = batch = as_tuple(byte_batch())
  module, params = init_params(cfg, batch)
  kept = [[0, 3, 4, 9, 15, 23], [1, 2, 5, 16], [0, 4]]
  gate = forced_gate(enc, kept)
  reading = module.apply({"params": params}, enc, None, False, method=module.encode_stage_one)
  reading = reading.replace(gate=gate)
  soft = module.apply({"params": params}, reading, enc, None, False,
                      deletion="soft", method=module.encode_stage_two)
  hard = module.apply({"params": params}, reading, enc, None, False,
                      deletion="hard", compacted_length=8, method=module.encode_stage_two)
  for row, positions in enumerate(kept):
    n = len(positions)
    np.testing.assert_array_equal(hard.kept_positions[row, :n], positions)
    np.testing.assert_array_equal(hard.mask[row], [1] * n + [0] * (8 - n))
    np.testing.assert_allclose(hard.encoded[row, :n], soft.encoded[row, positions], atol=1e-5)
  decode = lambda out: module.apply({"params": params}, out.encoded, out.mask, dec_in, tgt,
                                    enable_dropout=False, encoder_key_bias=out.key_bias,
                                    method=module.decode)
  real_targets = tgt > 0
  np.testing.assert_allclose(np.asarray(decode(hard))[real_targets],
                             np.asarray(decode(soft))[real_targets], atol=1e-5)


def test_hard_deletion_of_everything_and_all_pad_rows_stay_finite():
  cfg = model_config()
  enc, dec_in, tgt = batch = as_tuple(byte_batch())
  enc = enc.copy()
  enc[2, :] = 0
  module, params = init_params(cfg, batch)
  params["encoder"]["delete_gate"]["dense"]["bias"] = jnp.array([-1e4], jnp.float32)
  for deletion in ("soft", "hard"):
    logits, out = module.apply({"params": params}, enc, dec_in, tgt, enable_dropout=False,
                               deletion=deletion, compacted_length=4, return_aux=True)
    assert np.all(np.isfinite(np.asarray(logits)))
    assert np.all(np.isfinite(np.asarray(out.encoded)))
  assert np.all(np.asarray(out.gate) < cfg.deletion_threshold)
  np.testing.assert_array_equal(np.asarray(out.mask).sum(1), [1, 1, 1])
  assert enc[0, out.kept_positions[0, 0]] > 0


def test_packed_segments_never_attend_across_segments():
  cfg = model_config()
  rng = np.random.RandomState(5)
  a, b = rng.randint(3, 259, 9), rng.randint(3, 259, 7)
  a[-1] = b[-1] = 1
  packed = np.zeros((1, 20), np.int32)
  packed[0, :9], packed[0, 9:16] = a, b
  segments = np.zeros((1, 20), np.int32)
  segments[0, :9], segments[0, 9:16] = 1, 2
  module, params = init_params(cfg, as_tuple(byte_batch(length=20)))
  params["encoder"]["delete_gate"]["dense"]["bias"] = jnp.array([0.0], jnp.float32)
  for deletion in ("soft", "hard"):
    both = encoder_output(module, params, packed, encoder_segment_ids=segments,
                          deletion=deletion, compacted_length=20 if deletion == "hard" else None)
    for offset, seq in ((0, a), (9, b)):
      alone = encoder_output(module, params, seq[None].astype(np.int32), deletion=deletion,
                             compacted_length=len(seq) if deletion == "hard" else None)
      if deletion == "soft":
        np.testing.assert_allclose(both.encoded[0, offset:offset + len(seq)], alone.encoded[0],
                                   atol=1e-5)
        continue
      # at the full length hard deletion masks in place; compare the kept slots
      slots = np.flatnonzero(np.asarray(both.segment_ids[0]) == (1 if offset == 0 else 2))
      alone_slots = np.flatnonzero(np.asarray(alone.mask[0]) > 0)
      assert len(slots) == len(alone_slots) and 0 < len(slots) < len(seq)
      np.testing.assert_array_equal(both.kept_positions[0, slots] - offset,
                                    alone.kept_positions[0, alone_slots])
      np.testing.assert_allclose(both.encoded[0, slots], alone.encoded[0, alone_slots],
                                 atol=1e-5)


def test_random_and_fixed_baselines_run():
  batch = as_tuple(byte_batch())
  for deletion_type in ("random", "fixed"):
    cfg = model_config(deletion_type=deletion_type)
    module, params = init_params(cfg, batch)
    assert "delete_gate" not in params["encoder"]
    logits, out = module.apply({"params": params}, *batch, enable_dropout=False,
                               return_aux=True, rngs={"deletion": jax.random.PRNGKey(0)})
    assert set(np.unique(np.asarray(out.gate))) <= {0.0, cfg.sigmoid_mask_scale}
    assert np.all(np.isfinite(np.asarray(logits)))


def test_empty_and_malformed_inputs_are_refused():
  cfg = model_config()
  module, params = init_params(cfg, as_tuple(byte_batch()))
  with pytest.raises(ValueError, match="empty"):
    module.apply({"params": params}, np.zeros((2, 0), np.int32), method=module.encode)
  with pytest.raises(ValueError, match="batch, length"):
    module.apply({"params": params}, np.zeros((4,), np.int32), method=module.encode)
  with pytest.raises(ValueError, match="deletion must be"):
    module.apply({"params": params}, as_tuple(byte_batch())[0], deletion="maybe", method=module.encode)


def test_bfloat16_activations_give_float32_logits_close_to_float32():
  batch = as_tuple(byte_batch())
  module, params = init_params(model_config(), batch)
  reference = module.apply({"params": params}, *batch, enable_dropout=False)
  half = Transformer(model_config(dtype="bfloat16"))
  for deletion in ("soft", "hard"):
    logits = half.apply({"params": params}, *batch, enable_dropout=False, deletion=deletion,
                        compacted_length=24)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))
  logits = half.apply({"params": params}, *batch, enable_dropout=False)
  scale = float(jnp.abs(reference).max())
  assert float(jnp.abs(logits - reference).max()) < 0.1 * scale


def test_prefilled_cache_then_steps_equal_teacher_forcing():
  """t5x's prompt prefilling: rows continue from their own prompt lengths, and
  every cached step reproduces the teacher-forced logits at its position."""
  cfg = model_config(use_softmax1=True)
  enc, dec_in, _ = batch = as_tuple(byte_batch())
  module, params = init_params(cfg, batch)
  out = encoder_output(module, params, enc, deletion="hard", compacted_length=16)
  assert_prefill_matches_teacher_forcing(module, params, out, dec_in)
