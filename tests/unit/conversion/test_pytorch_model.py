"""The PyTorch MrT5 of converted checkpoints against the JAX network (float32, tiny sizes)."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mrt5_jax.pytorch as mrt5_torch  # noqa: E402  (registers model_type "mrt5")
from mrt5_jax.model.shortening import delete_gate as gate_lib  # noqa: E402
from mrt5_jax.model.config import preset  # noqa: E402
from mrt5_jax.conversion import convert, mapping  # noqa: E402
from mrt5_jax.inference.decoding import greedy_decode  # noqa: E402
from mrt5_jax.model.network import Transformer  # noqa: E402

import orbax.checkpoint as ocp  # noqa: E402

from mrt5_jax.maths import trees  # noqa: E402
from tests.fixtures import as_tuple, byte_batch  # noqa: E402

TOLERANCE = 1e-4
GATED = preset("tiny", delete_gate_layer=2, use_softmax1=True)


def batch(seed=0, length=24, target_length=10):
  """Padded byte batch: row 1 padded from 17, row 2 from 6; last target row padded from 6."""
  return as_tuple(byte_batch(seed=seed, length=length, target_length=target_length,
                             pad_from=(None, 17, 6), target_pad_from=(None, None, 6),
                             target_eos=False))


def init_params(config, seed=0):
  """The network's param tree (shapes from tracing its init) filled with random numbers.

  Norm scales are not 1 and the gate kernel is wide, so that roughly half of
  the positions fall below the deletion threshold.
  """
  tokens = np.full((1, 8), 5, np.int32)
  module = Transformer(config)
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), tokens, tokens, tokens,
                                              enable_dropout=False))["params"]
  rng = np.random.RandomState(seed)

  def fill(path, leaf):
    names = [entry.key for entry in path]
    if names[-1] == "scale":
      value = 1.0 + 0.2 * rng.standard_normal(leaf.shape)
    elif names[-2:] == ["dense", "kernel"]:  # the gate: logits of std 3
      value = 3.0 * rng.standard_normal(leaf.shape) / np.sqrt(leaf.shape[0])
    elif names[-1] == "kernel":
      value = rng.standard_normal(leaf.shape) / np.sqrt(leaf.shape[0])
    elif names[-1] == "bias":
      value = np.zeros(leaf.shape)
    else:  # embedding, rel_embedding
      value = rng.standard_normal(leaf.shape)
    return value.astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def jax_forward(config, params, enc, dec, tgt, deletion="soft"):
  """Jitted JAX logits and EncoderOutput; hard deletion compacts to the full length (no cut)."""
  module = Transformer(config)
  length = enc.shape[1] if deletion == "hard" else None
  run = jax.jit(lambda p: module.apply({"params": p}, enc, dec, tgt, enable_dropout=False,
                                       deletion=deletion, compacted_length=length,
                                       return_aux=True))
  logits, aux = run(params)
  return np.asarray(logits), jax.tree_util.tree_map(np.asarray, aux)


def convert_to_folder(tmp_path, name, params, config):
  """Write a trainer-layout checkpoint, run to-pytorch, return the folder."""
  model_dir = tmp_path / name
  ocp.PyTreeCheckpointer().save(str(model_dir / "checkpoints" / "10" / "state"),
                                {"params": params, "step": np.int64(10)})
  (model_dir / "model_config.json").write_text(config.to_json())
  convert.to_pytorch(str(model_dir), str(tmp_path / f"{name}_hf"))
  return str(tmp_path / f"{name}_hf")


def torch_inputs(enc, dec):
  return dict(input_ids=torch.from_numpy(enc).long(),
              attention_mask=torch.from_numpy((enc > 0).astype(np.int64)),
              decoder_input_ids=torch.from_numpy(dec).long())


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
  """(params, converted model loaded through AutoModelForSeq2SeqLM)."""
  params = init_params(GATED)
  folder = convert_to_folder(tmp_path_factory.mktemp("gated"), "run", params, GATED)
  model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
  return params, model


def test_loads_as_mrt5_through_auto_classes(gated):
  _, model = gated
  assert isinstance(model, mrt5_torch.MrT5ForConditionalGeneration)
  assert isinstance(model.config, mrt5_torch.MrT5Config)
  assert model.config.delete_gate_layer == 2 and model.config.use_softmax1
  assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
  assert model.encoder.embed_tokens.weight.data_ptr() == model.shared.weight.data_ptr()


@pytest.mark.parametrize("deletion", ["soft", "hard"])
def test_gated_logits_match_jax(gated, deletion):
  params, model = gated
  enc, dec, tgt = batch()
  hard = deletion == "hard"
  logits, aux = jax_forward(GATED, params, enc, dec, tgt, deletion)
  real = enc > 0
  deleted = (aux.gate < GATED.deletion_threshold)[real]
  assert 0.2 < deleted.mean() < 0.8, "the test needs a spread of gate values"
  with torch.no_grad():
    out = model(**torch_inputs(enc, dec), hard_delete=hard)
    encoded = model.encoder(**{k: v for k, v in torch_inputs(enc, dec).items()
                               if k != "decoder_input_ids"}, hard_delete=hard)
  np.testing.assert_allclose(encoded.delete_gate_values.numpy(), aux.gate,
                             atol=TOLERANCE * 30)
  if hard:
    jax_kept = [list(aux.kept_positions[row][aux.mask[row] > 0])
                for row in range(enc.shape[0])]
    torch_valid = encoded.attention_mask.numpy() > 0
    torch_kept = [list(encoded.kept_positions.numpy()[row][torch_valid[row]])
                  for row in range(enc.shape[0])]
    assert jax_kept == torch_kept
    assert encoded.last_hidden_state.shape[1] == max(len(kept) for kept in jax_kept) < enc.shape[1]
  valid = tgt > 0
  np.testing.assert_allclose(out.logits.numpy()[valid], logits[valid],
                             atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("deletion", ["soft", "hard"])
def test_log_sigmoid_gate_converts_and_matches_jax(tmp_path, deletion):
  """The published LogSigmoidDeleteGate: G = log sigmoid(logit), threshold -5."""
  config = GATED.replace(deletion_type="log_sigmoid")
  params = init_params(config, seed=1)
  params["encoder"]["delete_gate"]["dense"]["bias"] = np.full((1,), -5.0, np.float32)
  model = transformers.AutoModelForSeq2SeqLM.from_pretrained(
      convert_to_folder(tmp_path, "log", params, config)).eval()
  assert model.config.deletion_type == "log_sigmoid" and model.config.deletion_threshold == -5.0
  enc, dec, tgt = batch()
  logits, aux = jax_forward(config, params, enc, dec, tgt, deletion)
  real = enc > 0
  assert 0.2 < (aux.gate < -5.0)[real].mean() < 0.8
  with torch.no_grad():
    out = model(**torch_inputs(enc, dec), hard_delete=deletion == "hard")
  valid = tgt > 0
  np.testing.assert_allclose(out.logits.numpy()[valid], logits[valid], atol=TOLERANCE, rtol=0)


def test_keep_rule_and_compaction_match_jax():
  """At least one real position per row (the best G, first on ties); kept order preserved."""
  from mrt5_jax.maths import compaction
  from mrt5_jax.pytorch import modeling
  rng = np.random.RandomState(3)
  gate = rng.uniform(-30.0, 0.0, (6, 12)).astype(np.float32)
  gate[1] = -20.0  # nothing passes, all tied: the first real position is kept
  gate[2, :] = rng.uniform(-30.0, -16.0, 12)  # nothing passes: the best is kept
  real = np.ones((6, 12), bool)
  real[3, 7:] = False
  real[4] = False  # all pad: position 0
  real[1, 0] = False
  expected = np.asarray(compaction.keep_mask(gate, real, -15.0))
  keep = modeling.keep_mask(torch.from_numpy(gate), torch.from_numpy(real), -15.0)
  np.testing.assert_array_equal(keep.numpy(), expected)
  assert keep[1].nonzero().flatten().tolist() == [1] and keep[4].nonzero().flatten().tolist() == [0]
  indices, valid = modeling.compact(keep)
  chosen = compaction.compact_indices(expected, gate, 12)
  width = indices.shape[1]
  assert width == expected.sum(axis=1).max()
  np.testing.assert_array_equal(valid.numpy(), np.asarray(chosen.valid)[:, :width])
  np.testing.assert_array_equal(indices.numpy(), np.asarray(chosen.indices)[:, :width])
  assert not np.asarray(chosen.valid)[:, width:].any()


@pytest.mark.parametrize("use_softmax1", [False, True])
def test_gateless_logits_match_jax(tmp_path, use_softmax1):
  """Softmax: a plain T5 folder loaded by transformers alone; softmax1: an MrT5 folder."""
  config = preset("tiny", deletion_type="none", use_softmax1=use_softmax1)
  params = init_params(config, seed=3)
  folder = convert_to_folder(tmp_path, "plain", params, config)
  if use_softmax1:
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder)
    assert isinstance(model, mrt5_torch.MrT5ForConditionalGeneration)
  else:
    model = transformers.T5ForConditionalGeneration.from_pretrained(folder)
    assert type(model) is transformers.T5ForConditionalGeneration
  model.eval()
  enc, dec, tgt = batch(seed=1)
  logits, _ = jax_forward(config, params, enc, dec, tgt)
  with torch.no_grad():
    out = model(**torch_inputs(enc, dec))
  valid = tgt > 0
  np.testing.assert_allclose(out.logits.numpy()[valid], logits[valid],
                             atol=TOLERANCE, rtol=0)


def test_generate_matches_jax_greedy_decoding(gated):
  """HF generate (KV cache, reused encoder output) == the JAX greedy decoder, hard deletion."""
  params, model = gated
  enc, _, _ = batch(seed=2)
  module = Transformer(GATED)
  encoded = jax.jit(lambda p: module.apply(
      {"params": p}, enc, enable_dropout=False, deletion="hard", compacted_length=enc.shape[1],
      return_aux=True, method=module.encode))(params)
  expected = np.asarray(greedy_decode(module, params, encoded, 8))
  inputs = torch_inputs(enc, enc)
  with torch.no_grad():
    generated = model.generate(input_ids=inputs["input_ids"],
                               attention_mask=inputs["attention_mask"], max_new_tokens=8,
                               do_sample=False, hard_delete=True)
  assert generated[:, 0].tolist() == [0, 0, 0]
  produced = generated[:, 1:].numpy()
  np.testing.assert_array_equal(produced, expected[:, :produced.shape[1]])


def test_softmax1_matches_numpy():
  logits = np.array([[2.0, -1.0, 0.5], [-50.0, -60.0, -70.0], [800.0, 799.0, -1e30]], np.float32)
  expected = np.exp(logits.astype(np.longdouble))
  expected = expected / (1.0 + expected.sum(axis=-1, keepdims=True))
  got = mrt5_torch.softmax1(torch.from_numpy(logits)).numpy()
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, expected.astype(np.float64), rtol=1e-6, atol=1e-30)


def test_fixed_gate_matches_jax():
  rng = np.random.RandomState(4)
  tokens = rng.choice([12, 35, 1, 70, 71, 72, 73, 200, 201], size=(4, 40)).astype(np.int32)
  tokens[1, 30:] = 0
  from mrt5_jax.pytorch import modeling
  for amount in (0.0, 0.3, 0.5, 1.0):
    expected = np.asarray(gate_lib.fixed_gate(tokens, amount, -30.0))
    got = modeling.fixed_gate(torch.from_numpy(tokens).long(), amount, -30.0).numpy()
    np.testing.assert_array_equal(got, expected)


def test_gate_initialisation_and_bad_requests():
  config = mrt5_torch.MrT5Config(d_model=64, d_kv=16, d_ff=128, num_layers=4,
                                 num_decoder_layers=2, num_heads=4, delete_gate_layer=1)
  model = mrt5_torch.MrT5ForConditionalGeneration(config)
  dense = model.encoder.block[1].delete_gate.feed_forward
  assert torch.equal(dense.bias.detach(), torch.ones(1))
  bound = float(np.sqrt(6.0 / (64 + 1)))
  assert 0.5 * bound < float(dense.weight.detach().abs().max()) <= bound
  with pytest.raises(ValueError, match="delete_gate_layer"):
    mrt5_torch.MrT5Config(num_layers=4, delete_gate_layer=4)
  with pytest.raises(ValueError, match="attn_implementation"):
    mrt5_torch.MrT5ForConditionalGeneration._from_config(config, attn_implementation="sdpa")


def test_folders_saved_by_transformers_convert_back(gated, tmp_path):
  """save_pretrained (safetensors) and a pytorch_model.bin folder both return the same params."""
  from mrt5_jax.checkpointing import readers
  params, model = gated
  model.save_pretrained(str(tmp_path / "saved"))
  again = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "saved")).eval()
  enc, dec, _ = batch(seed=5)
  with torch.no_grad():
    assert torch.equal(model(**torch_inputs(enc, dec)).logits,
                       again(**torch_inputs(enc, dec)).logits)
  (tmp_path / "bin").mkdir()
  torch.save(model.state_dict(), str(tmp_path / "bin" / "pytorch_model.bin"))
  (tmp_path / "bin" / "config.json").write_text((tmp_path / "saved" / "config.json").read_text())
  for name in ("saved", "bin"):
    convert.from_pytorch(str(tmp_path / name), str(tmp_path / f"{name}_back"))
    restored = readers.read_checkpoint(str(tmp_path / f"{name}_back"))
    assert restored.config.delete_gate_layer == 2 and restored.config.use_softmax1
    flat, back = trees.flatten(params), trees.flatten(restored.params)
    assert sorted(flat) == sorted(back)
    assert all(np.array_equal(flat[path], back[path]) for path in flat)


def test_random_gate_deletes_the_configured_share():
  """Random baseline (as mrt5_jax.model.shortening.delete_gate.random_gate): each real position deleted with p."""
  config = mrt5_torch.MrT5Config(d_model=8, num_layers=2, deletion_type="random",
                                 random_deletion_probability=0.3, delete_gate_layer=1)
  gate = mrt5_torch.MrT5DeleteGate(config)
  assert not list(gate.parameters())
  real = torch.ones(4, 2000, dtype=torch.bool)
  real[:, 1500:] = False
  torch.manual_seed(0)
  values, _ = gate(torch.zeros(4, 2000, 8), real, None)
  assert set(values.unique().tolist()) == {-30.0, 0.0}
  assert (values[~real] == -30.0).all()
  assert abs((values[real] == -30.0).float().mean().item() - 0.3) < 0.02


def test_forward_and_generate_do_not_warn_about_past_key_values(gated):
  """No caller passes past_key_values; transformers 5.x must not warn that it is deprecated."""
  import warnings
  _, model = gated
  enc, dec, _ = batch()
  inputs = torch_inputs(enc, dec)
  with warnings.catch_warnings(record=True) as caught, torch.no_grad():
    warnings.simplefilter("always")
    model(**inputs)
    model(**inputs, hard_delete=True)
    model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                   max_new_tokens=3, do_sample=False, hard_delete=True)
  messages = [str(w.message) for w in caught]
  assert not [m for m in messages if "past_key_values" in m], messages
