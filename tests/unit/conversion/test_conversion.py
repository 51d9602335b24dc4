"""Checkpoint conversion: mapping round trips, checkpoint layouts, folders, bad inputs, CLI."""
import json
import os
import shutil
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import load_file, save_file

from mrt5_jax.cli import convert as cli
from mrt5_jax.model.config import preset
from mrt5_jax.checkpointing import config_files
from mrt5_jax.checkpointing import integrity
from mrt5_jax.checkpointing import readers
from mrt5_jax.checkpointing import writer
from mrt5_jax.maths import trees
from mrt5_jax.conversion import configs, convert, folders, mapping, run_config
from mrt5_jax.model.network import Transformer
from mrt5_jax.model.shortening.registry import shortening_for
from tests.fixtures import TESTS_DIR

GATED = preset("tiny", delete_gate_layer=2, use_softmax1=True)
PLAIN = preset("tiny", deletion_type="none")


def init_params(config, seed=0):
  """Params of ``Transformer(config).init``."""
  tokens = np.full((1, 8), 5, np.int32)
  init = jax.jit(lambda rng: Transformer(config).init(rng, tokens, tokens, tokens,
                                                      enable_dropout=False))
  return jax.tree_util.tree_map(np.asarray, init(jax.random.PRNGKey(seed))["params"])


def random_params(config, seed=0):
  """The network's param tree (shapes traced from its init) filled with N(0, 1) numbers."""
  tokens = np.full((1, 8), 5, np.int32)
  shapes = jax.eval_shape(lambda: Transformer(config).init(
      jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False))["params"]
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


@pytest.fixture(scope="module")
def gated_params():
  return init_params(GATED)


@pytest.fixture(scope="module")
def plain_params():
  return random_params(PLAIN, seed=1)


def write_project(model_dir, params, config, step):
  """A trainer-style step: <model_dir>/checkpoints/<step>/state/{params, opt_state, step}."""
  state = {"params": params, "opt_state": jax.tree_util.tree_map(np.zeros_like, params),
           "step": np.int64(step)}
  ocp.PyTreeCheckpointer().save(os.path.join(model_dir, "checkpoints", str(step), "state"), state)
  with open(os.path.join(model_dir, "model_config.json"), "w") as f:
    f.write(config.to_json())


def write_t5x(model_dir, params, step):
  """t5x's orbax layout: <model_dir>/checkpoint_<step>/ with {'target': params, 'state': ...}."""
  tree = {"target": params, "state": {"step": np.int32(step)}}
  ocp.PyTreeCheckpointer().save(os.path.join(model_dir, f"checkpoint_{step}"), tree)


def write_t5x_msgpack(model_dir, params, step):
  """t5x's own format: checkpoint_<step>/checkpoint (msgpack) with 2-D arrays as zarr stores.

  The embedding is stored bfloat16 (t5x may save that dtype); the rest float32.
  """
  import tensorstore as ts
  from flax import serialization
  step_dir = os.path.join(model_dir, f"checkpoint_{step}")
  os.makedirs(step_dir)

  def store(path, value):
    if value.ndim < 2:
      return value
    name = "target." + ".".join(entry.key for entry in path)
    dtype = "bfloat16" if name.endswith("token_embedder.embedding") else "float32"
    spec = {"driver": "zarr", "dtype": dtype, "kvstore": {"driver": "file", "path": name},
            "metadata": {"compressor": {"id": "gzip"}, "shape": list(value.shape),
                         "chunks": list(value.shape)}}
    absolute = dict(spec, kvstore={"driver": "file", "path": os.path.join(step_dir, name)})
    ts.open(absolute, create=True).result().write(value.astype(dtype)).result()
    return spec

  target = jax.tree_util.tree_map_with_path(store, params)
  contents = {"version": 3, "optimizer": {"target": target, "state": {"step": np.int32(step)}}}
  with open(os.path.join(step_dir, "checkpoint"), "wb") as f:
    f.write(serialization.msgpack_serialize(contents))


def assert_trees_equal(a, b):
  flat_a, flat_b = trees.flatten(a), trees.flatten(b)
  assert sorted(flat_a) == sorted(flat_b)
  for path, value in flat_a.items():
    other = np.asarray(flat_b[path])
    assert other.dtype == np.float32, path
    assert np.array_equal(np.asarray(value), other), path


def leftovers(parent, name):
  return [entry for entry in os.listdir(parent) if entry.startswith(f".{name}.")]


def test_mapping_round_trip_is_bit_identical(gated_params):
  state_dict = mapping.jax_to_hf_state_dict(gated_params, GATED)
  assert_trees_equal(gated_params, mapping.hf_state_dict_to_jax(state_dict, GATED))


def test_unexpected_or_inconsistent_tensors_are_refused(gated_params):
  sd = mapping.jax_to_hf_state_dict(gated_params, GATED)
  sd["encoder.embed_tokens.weight"] = sd["shared.weight"].copy()
  sd["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = np.zeros((32, 4))
  mapping.hf_state_dict_to_jax(sd, GATED)  # tied copy and unused table are accepted
  sd["encoder.embed_tokens.weight"] = sd["shared.weight"] + 1.0
  with pytest.raises(ValueError, match="encoder.embed_tokens.weight"):
    mapping.hf_state_dict_to_jax(sd, GATED)
  sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
  sd["encoder.block.0.layer.1.DenseReluDense.wi.weight"] = np.zeros((128, 64), np.float32)
  with pytest.raises(ValueError, match=r"DenseReluDense\.wi\.weight"):
    mapping.hf_state_dict_to_jax(sd, GATED)
  with pytest.raises(ValueError, match="encoder/delete_gate"):
    mapping.jax_to_hf_state_dict(gated_params, PLAIN)


def test_state_dict_names_and_layout(gated_params):
  sd = mapping.jax_to_hf_state_dict(gated_params, GATED)
  flat = trees.flatten(gated_params)
  gate = "encoder.block.2.delete_gate"
  assert sd[f"{gate}.feed_forward.weight"].shape == (1, 64)
  assert sd[f"{gate}.feed_forward.bias"].shape == (1,)
  assert np.array_equal(sd[f"{gate}.layer_norm.weight"],
                        flat[("encoder", "delete_gate", "layer_norm", "scale")])
  relpos = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
  assert relpos.shape == (32, 4)
  assert np.array_equal(relpos, flat[("encoder", "relpos_bias", "rel_embedding")].T)
  query = flat[("decoder", "layers_1", "encoder_decoder_attention", "query", "kernel")]
  assert np.array_equal(sd["decoder.block.1.layer.1.EncDecAttention.q.weight"], query.T)
  assert np.array_equal(sd["lm_head.weight"], flat[("decoder", "logits_dense", "kernel")].T)
  assert np.array_equal(sd["shared.weight"], flat[("token_embedder", "embedding")])
  assert not any(name.startswith("encoder.block.2.delete_gate") for name in
                 mapping.jax_to_hf_state_dict(random_params(PLAIN), PLAIN))


def test_state_dict_matches_transformers_models(gated_params, plain_params):
  """Names and shapes equal those of the instantiated torch models (less tied copies)."""
  torch = pytest.importorskip("torch")
  import transformers
  import mrt5_jax.pytorch as mrt5_torch
  for config, params in ((GATED, gated_params), (PLAIN, plain_params)):
    hf = configs.to_hf_config(config)
    settings = {k: v for k, v in hf.items() if k not in ("architectures", "model_type", "dtype")}
    if hf["model_type"] == "mrt5":
      model = mrt5_torch.MrT5ForConditionalGeneration(mrt5_torch.MrT5Config(**settings))
    else:
      model = transformers.T5ForConditionalGeneration(transformers.T5Config(**settings))
    expected = {name: tuple(value.shape) for name, value in model.state_dict().items()
                if name not in mapping.TIED_EMBEDDINGS}
    sd = mapping.jax_to_hf_state_dict(params, config)
    assert {name: value.shape for name, value in sd.items()} == expected
    assert isinstance(model, torch.nn.Module)


def test_config_round_trip():
  for config in (GATED, PLAIN, preset("tiny", deletion_type="none", use_softmax1=True),
                 preset("small",
                        shortening=dict(sigmoid_mask_scale=-10.0, deletion_threshold=-2.0))):
    hf = configs.to_hf_config(config)
    back = configs.from_hf_config(json.loads(json.dumps(hf)))
    for field in ("vocab_size", "d_model", "d_ff", "num_heads", "head_dim", "num_encoder_layers",
                  "num_decoder_layers", "deletion_type", "use_softmax1", "layer_norm_epsilon"):
      assert getattr(back, field) == getattr(config, field), field
    if shortening_for(config).shortens:
      for key in configs.GATE_KEYS:
        assert back.flat_setting(key) == config.flat_setting(key), key
    assert back.shortening == config.shortening
  hf = configs.to_hf_config(GATED)
  assert hf["model_type"] == "mrt5" and hf["delete_gate_layer"] == 2 and hf["use_softmax1"]
  assert hf["has_absolute_position_embeddings"] is False and hf["tie_word_embeddings"] is False
  assert (hf["decoder_start_token_id"], hf["pad_token_id"], hf["eos_token_id"]) == (0, 0, 1)
  assert configs.to_hf_config(PLAIN)["model_type"] == "t5"
  assert "delete_gate_layer" not in configs.to_hf_config(PLAIN)


def test_from_hf_config_refuses_unsupported():
  hf = configs.to_hf_config(PLAIN)
  for change, message in ((dict(feed_forward_proj="relu"), "gated-gelu"),
                          (dict(tie_word_embeddings=True), "tie_word_embeddings"),
                          (dict(scale_decoder_outputs=True), "scale_decoder_outputs"),
                          (dict(model_type="bart"), "model_type"),
                          (dict(model_type="mrt5", deletion_type="tanh"), "tanh")):
    with pytest.raises(ValueError, match=message):
      configs.from_hf_config({**hf, **change})


def test_infer_config_from_shapes(gated_params, plain_params):
  config = configs.infer_config(gated_params, delete_gate_layer=2, use_softmax1=True,
                                sigmoid_mask_scale=-30.0)
  for field in ("vocab_size", "d_model", "d_ff", "num_heads", "head_dim", "num_encoder_layers",
                "num_decoder_layers", "deletion_type", "gate_layer_norm", "delete_gate_layer"):
    assert config.flat_setting(field) == GATED.flat_setting(field), field
  assert configs.infer_config(plain_params).deletion_type == "none"
  with pytest.raises(ValueError, match="contradicts"):
    configs.infer_config(gated_params, deletion_type="none")
  with pytest.raises(ValueError, match=r"lacks \['sigmoid_mask_scale', 'use_softmax1'\]"):
    configs.infer_config(gated_params, delete_gate_layer=2)


def test_project_checkpoint_to_pytorch_and_back(tmp_path, gated_params):
  model_dir = tmp_path / "run"
  older = jax.tree_util.tree_map(lambda x: x + 1.0, gated_params)
  write_project(str(model_dir), older, GATED, step=100)
  write_project(str(model_dir), gated_params, GATED, step=200)
  out = tmp_path / "hf"
  summary = convert.to_pytorch(str(model_dir), str(out))
  assert summary["layout"] == "project" and summary["step"] == 200
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer_config.json"]
  hf = json.load(open(out / "config.json"))
  assert hf["model_type"] == "mrt5" and hf["architectures"] == ["MrT5ForConditionalGeneration"]
  tensors = load_file(str(out / "model.safetensors"))
  assert all(value.dtype == np.float32 for value in tensors.values())
  assert "encoder.block.2.delete_gate.feed_forward.weight" in tensors

  back = tmp_path / "back"
  convert.from_pytorch(str(out), str(back))
  restored = readers.read_checkpoint(str(back))
  assert restored.layout == "project" and restored.step == 0
  assert restored.config == GATED.replace(dropout_rate=restored.config.dropout_rate)
  assert_trees_equal(gated_params, restored.params)

  step_100 = tmp_path / "hf100"
  convert.to_pytorch(str(model_dir / "checkpoints" / "100"), str(step_100))
  first = load_file(str(step_100 / "model.safetensors"))["shared.weight"]
  assert np.array_equal(first, tensors["shared.weight"] + 1.0)


def test_trainer_checkpoints_interoperate(tmp_path, gated_params):
  """The trainer's own save is readable here; from-pytorch output is readable by the trainer."""
  model_dir = str(tmp_path / "run")
  config_files.write_config(model_dir, GATED)
  state = {"params": gated_params, "step": np.int64(30),
           "opt_state": jax.tree_util.tree_map(np.zeros_like, gated_params)}
  with writer.manager(model_dir, async_save=False) as mngr:
    writer.save(mngr, 30, state, {"batches_consumed": 30})
    mngr.wait_until_finished()
  convert.to_pytorch(model_dir, str(tmp_path / "hf"))
  convert.from_pytorch(str(tmp_path / "hf"), str(tmp_path / "back"))
  assert_trees_equal(gated_params, readers.restore_params(str(tmp_path / "back")))
  assert config_files.read_config(str(tmp_path / "back")).delete_gate_layer == 2


def test_t5x_layout_converts(tmp_path, gated_params, plain_params):
  write_t5x(str(tmp_path / "t5x_gated"), gated_params, step=1000)
  out = tmp_path / "hf"
  summary = convert.to_pytorch(str(tmp_path / "t5x_gated"), str(out), delete_gate_layer=2,
                               use_softmax1=True, sigmoid_mask_scale=-30.0)
  assert summary["layout"] == "t5x" and summary["step"] == 1000
  hf = json.load(open(out / "config.json"))
  assert (hf["model_type"], hf["delete_gate_layer"], hf["use_softmax1"]) == ("mrt5", 2, True)
  assert (hf["d_model"], hf["d_kv"], hf["num_heads"], hf["num_layers"]) == (64, 16, 4, 4)
  expected = mapping.jax_to_hf_state_dict(gated_params, GATED)
  tensors = load_file(str(out / "model.safetensors"))
  assert sorted(tensors) == sorted(expected)
  assert all(np.array_equal(tensors[name], expected[name]) for name in expected)

  write_t5x(str(tmp_path / "t5x_plain"), plain_params, step=7)
  plain_out = tmp_path / "hf_plain"
  convert.to_pytorch(str(tmp_path / "t5x_plain" / "checkpoint_7"), str(plain_out))
  assert json.load(open(plain_out / "config.json"))["model_type"] == "t5"


def test_t5x_msgpack_tensorstore_format_converts(tmp_path, gated_params):
  write_t5x_msgpack(str(tmp_path / "t5x"), gated_params, step=20)
  summary = convert.to_pytorch(str(tmp_path / "t5x"), str(tmp_path / "hf"), delete_gate_layer=2,
                               use_softmax1=True, sigmoid_mask_scale=-30.0)
  assert summary["layout"] == "t5x" and summary["step"] == 20
  expected = mapping.jax_to_hf_state_dict(gated_params, GATED)
  expected["shared.weight"] = expected["shared.weight"].astype(ml_dtypes.bfloat16).astype(
      np.float32)
  tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
  assert sorted(tensors) == sorted(expected)
  assert all(np.array_equal(tensors[name], expected[name]) for name in expected)
  os.remove(tmp_path / "t5x" / "checkpoint_20" / "target.decoder.logits_dense.kernel" / ".zarray")
  with pytest.raises(ValueError, match="target.decoder.logits_dense.kernel"):
    convert.to_pytorch(str(tmp_path / "t5x"), str(tmp_path / "hf2"), delete_gate_layer=2)
  assert not (tmp_path / "hf2").exists()


def test_bfloat16_output(tmp_path, plain_params):
  write_t5x(str(tmp_path / "ckpt"), plain_params, step=1)
  convert.to_pytorch(str(tmp_path / "ckpt"), str(tmp_path / "hf"), dtype="bfloat16")
  tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
  expected = mapping.jax_to_hf_state_dict(plain_params, PLAIN)
  for name, value in tensors.items():
    assert value.dtype == ml_dtypes.bfloat16, name
    assert np.array_equal(value, expected[name].astype(ml_dtypes.bfloat16)), name
  assert json.load(open(tmp_path / "hf" / "config.json"))["dtype"] == "bfloat16"


def test_truncated_safetensors_is_refused(tmp_path, plain_params):
  write_t5x(str(tmp_path / "ckpt"), plain_params, step=1)
  convert.to_pytorch(str(tmp_path / "ckpt"), str(tmp_path / "hf"))
  weights = tmp_path / "hf" / "model.safetensors"
  data = weights.read_bytes()
  weights.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match="model.safetensors"):
    convert.from_pytorch(str(tmp_path / "hf"), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists() and not leftovers(tmp_path, "out")


def test_wrong_shape_tensor_is_refused(tmp_path, gated_params):
  write_project(str(tmp_path / "run"), gated_params, GATED, step=1)
  convert.to_pytorch(str(tmp_path / "run"), str(tmp_path / "hf"))
  weights = str(tmp_path / "hf" / "model.safetensors")
  tensors = load_file(weights)
  name = "decoder.block.1.layer.0.SelfAttention.k.weight"
  tensors[name] = tensors[name][:, :32].copy()
  save_file(tensors, weights, metadata={"format": "pt"})
  with pytest.raises(ValueError, match=name.replace(".", r"\.") + r".*\(64, 32\).*\(64, 64\)"):
    convert.from_pytorch(str(tmp_path / "hf"), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists() and not leftovers(tmp_path, "out")

  bad = jax.tree_util.tree_map(lambda x: x, gated_params)
  bad["encoder"]["layers_3"]["mlp"]["wo"]["kernel"] = np.zeros((64, 64), np.float32)
  write_project(str(tmp_path / "bad_run"), bad, GATED, step=1)
  with pytest.raises(ValueError, match="encoder/layers_3/mlp/wo/kernel"):
    convert.to_pytorch(str(tmp_path / "bad_run"), str(tmp_path / "hf_bad"))
  assert not (tmp_path / "hf_bad").exists() and not leftovers(tmp_path, "hf_bad")


def test_missing_gate_is_refused(tmp_path, plain_params):
  """A gated config over gate-less weights names the missing gate tensor."""
  write_project(str(tmp_path / "run"), plain_params, GATED, step=1)
  with pytest.raises(ValueError, match="encoder/delete_gate"):
    convert.to_pytorch(str(tmp_path / "run"), str(tmp_path / "hf"))
  write_t5x(str(tmp_path / "t5x"), plain_params, step=1)
  convert.to_pytorch(str(tmp_path / "t5x"), str(tmp_path / "hf"))
  hf = json.load(open(tmp_path / "hf" / "config.json"))
  hf.update(configs.to_hf_config(GATED))
  json.dump(hf, open(tmp_path / "hf" / "config.json", "w"))
  with pytest.raises(ValueError, match=r"encoder\.block\.2\.delete_gate\.\w+\.weight"):
    convert.from_pytorch(str(tmp_path / "hf"), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_existing_output_is_refused_unless_overwrite(tmp_path, plain_params):
  write_t5x(str(tmp_path / "ckpt"), plain_params, step=1)
  out = tmp_path / "hf"
  out.mkdir()
  (out / "keep.txt").write_text("precious")
  with pytest.raises(ValueError, match="already exists"):
    convert.to_pytorch(str(tmp_path / "ckpt"), str(out))
  assert os.listdir(out) == ["keep.txt"]
  convert.to_pytorch(str(tmp_path / "ckpt"), str(out), overwrite=True)
  assert "keep.txt" not in os.listdir(out) and "model.safetensors" in os.listdir(out)
  with pytest.raises(ValueError, match="already exists"):
    convert.from_pytorch(str(out), str(out))
  assert not leftovers(tmp_path, "hf")


def test_failure_while_writing_leaves_nothing(tmp_path, plain_params, monkeypatch):
  write_t5x(str(tmp_path / "ckpt"), plain_params, step=1)

  def write_then_fail(directory, config, state_dict):
    open(os.path.join(directory, "config.json"), "w").write("{}")
    raise OSError("disk full")

  monkeypatch.setattr(folders, "write_hf_folder", write_then_fail)
  with pytest.raises(OSError, match="disk full"):
    convert.to_pytorch(str(tmp_path / "ckpt"), str(tmp_path / "hf"))
  assert not (tmp_path / "hf").exists() and not leftovers(tmp_path, "hf")


def test_unknown_layout_and_step_are_refused(tmp_path, plain_params):
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="unknown checkpoint layout"):
    convert.to_pytorch(str(tmp_path / "empty"), str(tmp_path / "hf"))
  with pytest.raises(ValueError, match="does not exist"):
    convert.to_pytorch(str(tmp_path / "nowhere"), str(tmp_path / "hf"))
  write_t5x(str(tmp_path / "ckpt"), plain_params, step=5)
  with pytest.raises(ValueError, match=r"no step 6.*\[5\]"):
    convert.to_pytorch(str(tmp_path / "ckpt"), str(tmp_path / "hf"), step=6)
  (tmp_path / "odd" / "checkpoint_3").mkdir(parents=True)
  with pytest.raises(ValueError, match="no orbax pytree"):
    convert.to_pytorch(str(tmp_path / "odd"), str(tmp_path / "hf"))
  (tmp_path / "hf_folder").mkdir()
  with pytest.raises(ValueError, match="config.json"):
    convert.from_pytorch(str(tmp_path / "hf_folder"), str(tmp_path / "out"))
  assert not (tmp_path / "hf").exists() and not (tmp_path / "out").exists()


def test_gate_options_conflict_with_model_config(tmp_path, gated_params):
  write_project(str(tmp_path / "run"), gated_params, GATED, step=1)
  with pytest.raises(ValueError, match=r"contradict .*model_config\.json: delete_gate_layer=3 "
                     r"\(the file has 2\)"):
    convert.to_pytorch(str(tmp_path / "run"), str(tmp_path / "hf"), delete_gate_layer=3)
  assert not (tmp_path / "hf").exists()
  summary = convert.to_pytorch(str(tmp_path / "run"), str(tmp_path / "hf"), delete_gate_layer=2,
                               use_softmax1=True)
  assert summary["settings_from"] == str(tmp_path / "run" / "model_config.json")


def test_cli(tmp_path, plain_params, capsys):
  write_t5x(str(tmp_path / "ckpt"), plain_params, step=3)
  assert cli.main(["to-pytorch", "--checkpoint", str(tmp_path / "ckpt"), "--output",
                   str(tmp_path / "hf"), "--dtype", "bfloat16"]) == 0
  assert json.loads(capsys.readouterr().out)["step"] == 3
  assert cli.main(["from-pytorch", "--model", str(tmp_path / "hf"), "--output",
                   str(tmp_path / "back")]) == 0
  assert readers.read_checkpoint(str(tmp_path / "back")).config.deletion_type == "none"
  assert cli.main(["from-pytorch", "--model", str(tmp_path / "hf"), "--output",
                   str(tmp_path / "back")]) == 2
  assert "already exists" in capsys.readouterr().err


def test_module_entry_point():
  result = subprocess.run([sys.executable, "-m", "mrt5_jax.cli.convert", "to-pytorch", "--help"],
                          capture_output=True, text=True, check=True)
  assert "--checkpoint" in result.stdout and "--delete_gate_layer" in result.stdout


def test_scanned_checkpoint_converts_to_pytorch_and_back(tmp_path, gated_params):
  """A scan_layers run (stacked layers) gives the same HF folder as the unscanned
  tree, and from-pytorch --scan_layers gives the stacked tree back bit for bit."""
  from mrt5_jax.model import layer_stacking
  scanned_config = GATED.replace(scan_layers=True)
  scanned = layer_stacking.stack_layers(gated_params, GATED.gate_layer)
  assert np.shape(scanned["encoder"]["stage_one_layers"]["mlp"]["wo"]["kernel"])[0] == 2
  model_dir = tmp_path / "scanned"
  write_project(str(model_dir), scanned, scanned_config, step=7)
  convert.to_pytorch(str(model_dir), str(tmp_path / "hf"))
  write_project(str(tmp_path / "plain"), gated_params, GATED, step=7)
  convert.to_pytorch(str(tmp_path / "plain"), str(tmp_path / "hf_plain"))
  got = load_file(str(tmp_path / "hf" / "model.safetensors"))
  want = load_file(str(tmp_path / "hf_plain" / "model.safetensors"))
  assert sorted(got) == sorted(want)
  for name in want:
    assert np.array_equal(got[name], want[name]), name
  assert "scan_layers" not in json.load(open(tmp_path / "hf" / "config.json"))

  assert cli.main(["from-pytorch", "--model", str(tmp_path / "hf"), "--output",
                   str(tmp_path / "back"), "--scan_layers", "true"]) == 0
  restored = readers.read_checkpoint(str(tmp_path / "back"))
  assert restored.config.scan_layers
  assert_trees_equal(scanned, restored.params)
  convert.from_pytorch(str(tmp_path / "hf"), str(tmp_path / "back_plain"))
  assert_trees_equal(gated_params, readers.restore_params(str(tmp_path / "back_plain")))


def test_scanned_t5x_checkpoint_gives_its_gate_layer(tmp_path, gated_params):
  from mrt5_jax.model import layer_stacking
  scanned = layer_stacking.stack_layers(gated_params, 2)
  config = configs.infer_config(scanned, use_softmax1=True,
                                sigmoid_mask_scale=GATED.sigmoid_mask_scale)
  assert config.delete_gate_layer == 2 and config.scan_layers
  assert config.num_encoder_layers == GATED.num_encoder_layers
  with pytest.raises(ValueError, match="contradicts the scanned tree"):
    configs.infer_config(scanned, delete_gate_layer=3, use_softmax1=True,
                         sigmoid_mask_scale=GATED.sigmoid_mask_scale)
  write_t5x(str(tmp_path / "t5x"), scanned, step=10)
  convert.to_pytorch(str(tmp_path / "t5x"), str(tmp_path / "hf"), use_softmax1=True,
                     sigmoid_mask_scale=GATED.sigmoid_mask_scale)
  hf = json.load(open(tmp_path / "hf" / "config.json"))
  assert hf["delete_gate_layer"] == 2
  want = mapping.jax_to_hf_state_dict(gated_params, GATED)
  got = load_file(str(tmp_path / "hf" / "model.safetensors"))
  assert all(np.array_equal(got[name], want[name]) for name in want)


def _largest_file(directory):
  files = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
  return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["truncate_chunk", "truncate_msgpack"])
def test_damaged_t5x_msgpack_step_is_named_with_the_newest_intact_step(tmp_path, plain_params,
                                                                       damage):
  for step in (10, 20):
    write_t5x_msgpack(str(tmp_path / "t5x"), plain_params, step=step)
  step_dir = tmp_path / "t5x" / "checkpoint_20"
  if damage == "truncate_chunk":
    path = _largest_file(str(step_dir / "target.token_embedder.embedding"))
  else:
    path = str(step_dir / "checkpoint")
  os.truncate(path, os.path.getsize(path) // 2)
  with pytest.raises(integrity.DamagedCheckpointError) as caught:
    convert.to_pytorch(str(tmp_path / "t5x"), str(tmp_path / "hf"))
  message = str(caught.value)
  named = ("target.token_embedder.embedding" if damage == "truncate_chunk" else
           os.path.join(str(step_dir), "checkpoint"))
  assert "checkpoint step 20 is damaged" in message and named in message
  assert message.endswith("The newest intact step is 10: rerun with --step 10")
  assert not (tmp_path / "hf").exists()
  assert convert.to_pytorch(str(tmp_path / "t5x"), str(tmp_path / "hf"), step=10)["step"] == 10


def test_damaged_t5x_orbax_step_is_named_with_the_newest_intact_step(tmp_path, plain_params,
                                                                     capsys):
  for step in (1, 2):
    write_t5x(str(tmp_path / "t5x"), plain_params, step=step)
  path = _largest_file(str(tmp_path / "t5x" / "checkpoint_2" / "ocdbt.process_0"))
  os.truncate(path, os.path.getsize(path) // 2)
  capsys.readouterr()
  assert cli.main(["to-pytorch", "--checkpoint", str(tmp_path / "t5x"), "--output",
                   str(tmp_path / "hf")]) == 2
  [line] = capsys.readouterr().err.strip().splitlines()
  assert line.startswith("mrt5-convert: error: checkpoint step 2 is damaged: ")
  assert "checkpoint_2" in line and "cannot be read" in line
  assert line.endswith("The newest intact step is 1: rerun with --step 1")
  assert not (tmp_path / "hf").exists()
  assert cli.main(["to-pytorch", "--checkpoint", str(tmp_path / "t5x"), "--step", "1",
                   "--output", str(tmp_path / "hf")]) == 0


def test_project_checkpoint_from_pytorch_carries_an_integrity_record(tmp_path, plain_params):
  write_t5x(str(tmp_path / "t5x"), plain_params, step=1)
  convert.to_pytorch(str(tmp_path / "t5x"), str(tmp_path / "hf"))
  convert.from_pytorch(str(tmp_path / "hf"), str(tmp_path / "back"), step=5)
  step_dir = tmp_path / "back" / "checkpoints" / "5"
  assert (step_dir / "_INTEGRITY.json").exists()
  path = _largest_file(str(step_dir / "state"))
  with open(path, "r+b") as f:
    f.seek(10)
    f.write(b"\x00\x01\x02")
  with pytest.raises(integrity.DamagedCheckpointError, match="CRC-32 differs"):
    convert.to_pytorch(str(tmp_path / "back"), str(tmp_path / "hf2"))


T5X_CONFIG_GIN = os.path.join(TESTS_DIR, "data",
                              "t5x_mrt5_tiny_config.gin")
# What that real t5x config.gin says (its macros; DELETE_GATE_LAYER = None takes the tiny
# size's layer 1 from mrt5_jax.model.config.SIZES).
T5X_TINY = preset("tiny", delete_gate_layer=1, use_softmax1=True,
                  shortening=dict(sigmoid_mask_scale=-30.0))


def test_t5x_config_gin_supplies_the_gate_settings(tmp_path, gated_params):
  model_dir = tmp_path / "t5x_run"
  write_t5x(str(model_dir), gated_params, step=2)
  shutil.copy(T5X_CONFIG_GIN, model_dir / "config.gin")
  for checkpoint in (model_dir, model_dir / "checkpoint_2"):
    out = tmp_path / f"hf_{checkpoint.name}"
    summary = cli.main(["to-pytorch", "--checkpoint", str(checkpoint), "--output", str(out)])
    assert summary == 0
    hf = json.load(open(out / "config.json"))
    assert (hf["delete_gate_layer"], hf["use_softmax1"], hf["sigmoid_mask_scale"],
            hf["deletion_threshold"], hf["gate_layer_norm"], hf["deletion_type"]) == (
                1, True, -30.0, -15.0, True, "scaled_sigmoid")
  assert convert.to_pytorch(str(model_dir), str(tmp_path / "hf_agree"), use_softmax1=True,
                            delete_gate_layer=1)["settings_from"] == str(model_dir / "config.gin")
  tensors = load_file(str(tmp_path / "hf_agree" / "model.safetensors"))
  expected = mapping.jax_to_hf_state_dict(gated_params, T5X_TINY)
  assert "encoder.block.1.delete_gate.feed_forward.weight" in tensors
  assert all(np.array_equal(tensors[name], expected[name]) for name in expected)
  with pytest.raises(ValueError, match=r"contradict .*config\.gin: delete_gate_layer=3 \(the "
                     r"file has 1\); use_softmax1=False \(the file has True\)"):
    convert.to_pytorch(str(model_dir), str(tmp_path / "hf_bad"), delete_gate_layer=3,
                       use_softmax1=False)
  assert not (tmp_path / "hf_bad").exists()


def test_gated_checkpoint_without_settings_is_refused(tmp_path, gated_params, capsys):
  write_t5x(str(tmp_path / "t5x"), gated_params, step=5)
  out = tmp_path / "hf"
  with pytest.raises(ValueError, match="missing: delete_gate_layer, sigmoid_mask_scale, "
                     "use_softmax1"):
    convert.to_pytorch(str(tmp_path / "t5x"), str(out))
  with pytest.raises(ValueError, match=r"missing: sigmoid_mask_scale\. "):
    convert.to_pytorch(str(tmp_path / "t5x"), str(out), delete_gate_layer=1, use_softmax1=False)
  assert cli.main(["to-pytorch", "--checkpoint", str(tmp_path / "t5x"), "--output", str(out),
                   "--use_softmax1", "true"]) == 2
  err = capsys.readouterr().err
  assert "missing: delete_gate_layer, sigmoid_mask_scale" in err
  assert "--delete_gate_layer ... --sigmoid_mask_scale ..." in err
  assert not out.exists() and not leftovers(tmp_path, "hf")
  assert cli.main(["to-pytorch", "--checkpoint", str(tmp_path / "t5x"), "--output", str(out),
                   "--use_softmax1", "true", "--delete_gate_layer", "2",
                   "--sigmoid_mask_scale", "-30"]) == 0
  assert json.loads(capsys.readouterr().out)["settings_from"] == "explicit settings"
  assert json.load(open(out / "config.json"))["delete_gate_layer"] == 2


def test_gin_bindings_are_read_without_importing_the_configurables(tmp_path):
  def read(text):
    path = tmp_path / "config.gin"
    path.write_text(text)
    return run_config.read_gin_bindings(str(path))

  assert read(open(T5X_CONFIG_GIN).read()) == {
      "delete_gate_layer": None, "deletion_threshold": None, "deletion_type": "scaled_sigmoid",
      "dropout_rate": 0.0, "dtype": "float32", "fixed_deletion_amount": 0.5,
      "float32_attention_logits": True, "gate_layer_norm": True,
      "random_deletion_probability": 0.5, "sigmoid_mask_scale": -30.0, "size": "tiny",
      "use_softmax1": True, "vocab_size": 384}
  text = ("import no_such_module\n"
          "LAYER = %OTHER\nOTHER = 2\n"
          "mrt5_jax.model.config.MrT5Config.delete_gate_layer = %LAYER\n"
          "MrT5Config.use_softmax1 = False\n"
          "network.Transformer.config = @mrt5_jax.model.config.MrT5Config()\n"
          "mrt5_jax.model.config.MrT5Config:\n  size = 'small'\n  sigmoid_mask_scale = -10.0\n")
  assert read(text) == {"delete_gate_layer": 2, "use_softmax1": False, "size": "small",
                        "sigmoid_mask_scale": -10.0}
  assert read("MODEL_DIR = '/x'\nnetwork.T5Config.num_layers = 12\n") is None
  with pytest.raises(ValueError, match="scopes"):
    read("train/config.MrT5Config.delete_gate_layer = 2\n")
  with pytest.raises(ValueError, match="unbound or circular macro"):
    read("config.MrT5Config.delete_gate_layer = %NOWHERE\n")
  with pytest.raises(ValueError, match="configurable reference"):
    read("config.MrT5Config.size = @sizes.pick()\n")
  with pytest.raises(ValueError, match="cannot parse"):
    read("config.MrT5Config.size = = 3\n")
  nested = ("from __gin__ import dynamic_registration\nSCALE = -12.0\n"
            "mrt5_jax.model.config.MrT5Config.size = 'tiny'\n"
            "mrt5_jax.model.config.MrT5Config.shortening = @settings.DeleteGateConfig()\n"
            "mrt5_jax.model.shortening.settings.DeleteGateConfig.sigmoid_mask_scale = %SCALE\n"
            "BoundaryPoolingConfig.prior = 0.3\n")
  assert read(nested) == {"size": "tiny", "shortening_bindings": {
      "DeleteGateConfig": {"sigmoid_mask_scale": -12.0}, "BoundaryPoolingConfig": {"prior": 0.3}}}
  path = tmp_path / "nested.gin"
  path.write_text(nested)
  gate = run_config.config_from_gin(str(path)).shortening
  assert (gate.sigmoid_mask_scale, gate.deletion_threshold) == (-12.0, -6.0)
  path.write_text(nested + "MrT5Config.deletion_type = 'boundary'\n")
  assert run_config.config_from_gin(str(path)).shortening.prior == 0.3
  with pytest.raises(ValueError, match="not one of"):
    read("MrT5Config.shortening = @other.Settings()\n")
  path = tmp_path / "bad.gin"
  path.write_text("config.MrT5Config.delete_gate_layer = 9\nconfig.MrT5Config.size = 'tiny'\n")
  with pytest.raises(ValueError, match="delete_gate_layer=9 must lie"):
    run_config.config_from_gin(str(path))


def test_hf_mrt5_config_without_gate_settings_is_refused():
  hf = configs.to_hf_config(GATED)
  for key in configs.REQUIRED_GATE_KEYS:
    with pytest.raises(ValueError, match=f"lacks \\['{key}'\\]"):
      configs.from_hf_config({k: v for k, v in hf.items() if k != key})


def test_published_log_sigmoid_config_converts(tmp_path, gated_params):
  """A published log_sigmoid folder (scale -10, threshold -15 below it) converts back and loads;
  for the log-sigmoid gate the scale only sets the pad value."""
  config = GATED.replace(deletion_type="log_sigmoid")
  model_dir = tmp_path / "run"
  write_project(str(model_dir), gated_params, config, step=10)
  folder = tmp_path / "published"
  convert.to_pytorch(str(model_dir), str(folder))
  hf = json.loads((folder / "config.json").read_text())
  hf.update(sigmoid_mask_scale=-10, deletion_threshold=-15)
  (folder / "config.json").write_text(json.dumps(hf))

  assert cli.main(["from-pytorch", "--model", str(folder), "--output",
                   str(tmp_path / "back")]) == 0
  restored = readers.read_checkpoint(str(tmp_path / "back"))
  assert restored.config.deletion_type == "log_sigmoid"
  assert (restored.config.sigmoid_mask_scale, restored.config.deletion_threshold) == (-10, -15)
  assert_trees_equal(gated_params, restored.params)
  torch_config = pytest.importorskip("mrt5_jax.pytorch").MrT5Config(**{
      k: v for k, v in hf.items() if k not in ("architectures", "model_type")})
  assert torch_config.deletion_threshold == -15

  # What cannot run is refused with its reason: the scaled sigmoid's G lies in (scale, 0),
  # and the log-sigmoid's below 0.
  with pytest.raises(ValueError, match=r"strictly between sigmoid_mask_scale=-10 and 0 \(the "
                                       r"scaled_sigmoid gate's values lie in \(scale, 0\)\)"):
    configs.from_hf_config({**hf, "deletion_type": "scaled_sigmoid"})
  with pytest.raises(ValueError, match="a threshold at or above 0 deletes every position"):
    configs.from_hf_config({**hf, "deletion_threshold": 0.5})
