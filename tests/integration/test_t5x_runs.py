"""End to end: ``python -m t5x.train / t5x.eval / t5x.infer`` with the gin files
in configs/t5x (tiny model, sample corpus, CPU). Runs only where t5x is
importable; each t5x process takes ~30 s, so these are marked slow."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.fixtures import REPO_ROOT

pytest.importorskip(
    "t5x", reason="t5x is not installed (it comes from its git repository, not PyPI)")

import orbax.checkpoint as ocp  # noqa: E402
import tensorflow as tf  # noqa: E402
from flax import traverse_util  # noqa: E402

REPO = REPO_ROOT
sys.path.insert(0, REPO)
from launch import t5x_command  # noqa: E402
from tests.fixtures import REPO_ROOT

pytestmark = pytest.mark.slow
CONFIGS = os.path.join(REPO, "configs")
DELETION_TAGS = ("deletion/rate", "deletion/alpha", "deletion/gate_mean",
                 "deletion/compacted_length", "deletion/kept_length")


def _t5x(tool, gin_file, **bindings):
  """Runs t5x.<tool> with our gin files; returns its log (raises on failure)."""
  pairs = [(k, t5x_command.gin_string(v) if isinstance(v, str) and k.isupper()
            and ("DIR" in k or "PATH" in k) else str(v)) for k, v in bindings.items()]
  argv = t5x_command.t5x_argv(tool, [gin_file], [CONFIGS], pairs, python=sys.executable)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
  done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900, check=False)
  assert done.returncode == 0, done.stderr[-4000:]
  return done.stderr


def _restore(checkpoint_dir):
  return ocp.PyTreeCheckpointer().restore(os.path.join(checkpoint_dir, "state"))


def _scalars(event_dir):
  """{tag: {step: value}} from the TensorBoard event files t5x wrote."""
  values = {}
  for path in glob.glob(os.path.join(event_dir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.HasField("tensor") and not value.tensor.string_val:
          values.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
  return values


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Run A: 20 steps, then a restart to 30. Run C: 30 steps uninterrupted."""
  root = tmp_path_factory.mktemp("t5x_runs")
  common = {"CHECKPOINT_PERIOD": 10, "ControllerConfig.kind": "'pi'"}
  a, c = str(root / "a"), str(root / "c")
  _t5x("train", "t5x/mrt5_tiny_cpu.gin", MODEL_DIR=a, TRAIN_STEPS=20, **common)
  restart_log = _t5x("train", "t5x/mrt5_tiny_cpu.gin", MODEL_DIR=a, TRAIN_STEPS=30, **common)
  _t5x("train", "t5x/mrt5_tiny_cpu.gin", MODEL_DIR=c, TRAIN_STEPS=30, **common)
  return {"a": a, "c": c, "restart_log": restart_log, "root": root}


def test_train_writes_deletion_metrics_and_the_loss_falls(runs):
  scalars = _scalars(os.path.join(runs["c"], "train"))
  for tag in DELETION_TAGS:
    assert set(scalars.get(tag, {})) == {10, 20, 30}, tag
  ce = scalars["cross_ent_loss"]
  assert ce[30] < ce[10]
  assert all(0.0 <= v <= 1.0 for v in scalars["deletion/rate"].values())
  assert scalars["deletion/compacted_length"][10] == 64.0
  eval_dirs = glob.glob(os.path.join(runs["c"], "training_eval", "*"))
  assert eval_dirs and "deletion/rate" in _scalars(eval_dirs[0])


def test_checkpoint_holds_the_controller_and_a_restart_continues_it(runs):
  assert "Restoring checkpoint from" in runs["restart_log"]
  assert os.path.join(runs["a"], "checkpoint_20") in runs["restart_log"]
  at_20 = _restore(os.path.join(runs["a"], "checkpoint_20"))["flax_mutables"]["controller"]
  assert int(at_20["step"]) == 20 and float(at_20["p"]) != 0.0 and float(at_20["i"]) != 0.0
  resumed = traverse_util.flatten_dict(_restore(os.path.join(runs["a"], "checkpoint_30")), sep="/")
  straight = traverse_util.flatten_dict(_restore(os.path.join(runs["c"], "checkpoint_30")),
                                        sep="/")
  assert set(resumed) == set(straight)
  assert int(resumed["flax_mutables/controller/step"]) == 30
  for key in resumed:
    np.testing.assert_array_equal(np.asarray(resumed[key]), np.asarray(straight[key]), err_msg=key)


def test_t5x_byt5_checkpoint_restores_into_mrt5_with_a_fresh_gate(tmp_path):
  byt5_dir, mrt5_dir = str(tmp_path / "byt5"), str(tmp_path / "mrt5")
  _t5x("train", "t5x/byt5_tiny_cpu.gin", MODEL_DIR=byt5_dir, TRAIN_STEPS=2)
  log = _t5x("train", "t5x/mrt5_tiny_from_byt5.gin", MODEL_DIR=mrt5_dir, TRAIN_STEPS=1,
             INITIAL_CHECKPOINT_PATH=os.path.join(byt5_dir, "checkpoint_2"))
  assert "delete_gate" in log
  byt5 = traverse_util.flatten_dict(_restore(os.path.join(byt5_dir, "checkpoint_2"))["target"],
                                    sep="/")
  restored = _restore(os.path.join(mrt5_dir, "checkpoint_0"))
  mrt5 = traverse_util.flatten_dict(restored["target"], sep="/")
  assert sorted(set(mrt5) - set(byt5)) == [
      "encoder/delete_gate/dense/bias", "encoder/delete_gate/dense/kernel",
      "encoder/delete_gate/layer_norm/scale"]
  assert set(byt5) <= set(mrt5)
  for key in byt5:
    np.testing.assert_array_equal(np.asarray(mrt5[key]), np.asarray(byt5[key]), err_msg=key)
  # the shipped recipe's fresh gate (runs/deletion_control.gin: gate_bias_init 4, keeping)
  np.testing.assert_array_equal(np.asarray(mrt5["encoder/delete_gate/dense/bias"]), [4.0])
  np.testing.assert_array_equal(np.asarray(mrt5["encoder/delete_gate/layer_norm/scale"]), 1.0)
  assert int(restored["state"]["step"]) == 0
  assert {k: float(v) for k, v in restored["flax_mutables"]["controller"].items()} == {
      "alpha": 0.0, "p": 0.0, "i": 0.0, "step": 0.0}


def test_t5x_eval_and_infer_report_results(runs):
  checkpoint = os.path.join(runs["c"], "checkpoint_30")
  eval_dir, infer_dir = str(runs["root"] / "eval"), str(runs["root"] / "infer")
  _t5x("eval", "t5x/mrt5_tiny_eval.gin", CHECKPOINT_PATH=checkpoint, EVAL_OUTPUT_DIR=eval_dir)
  (metrics_file,) = glob.glob(os.path.join(eval_dir, "inference_eval", "*-metrics.jsonl"))
  with open(metrics_file) as f:
    metrics = json.loads(f.readline())
  assert metrics["step"] == 30
  assert 0.0 <= metrics["sequence_accuracy"] <= 100.0
  assert metrics["log_likelihood"] < 0.0
  assert 0.0 <= metrics["deletion/rate"] <= 1.0
  assert 0.0 < metrics["deletion/kept_length"] <= metrics["deletion/input_length"] <= 64
  assert metrics["deletion/dropped_positions"] >= 0

  # the seed of t5x.eval's dataset (span corruption draws its noise from it)
  _t5x("infer", "t5x/mrt5_tiny_infer.gin", CHECKPOINT_PATH=checkpoint, INFER_OUTPUT_DIR=infer_dir,
       **{"utils.DatasetConfig.seed": 42})
  (outputs,) = glob.glob(os.path.join(infer_dir, "*predict_with_aux.jsonl-00000-of-00001"))
  with open(outputs) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) >= 8
  for row in rows:
    assert isinstance(row["prediction"], str)
    assert 0.0 <= row["aux"]["deletion_rate"] <= 1.0
    assert row["aux"]["num_dropped"] == 0
    assert row["aux"]["scores"] < 0.0
    inputs = row["inputs"]
    assert len(inputs["inputs"]) == 64 and inputs["inputs"][-1] in (0, 1)
    assert row["aux"]["input_length"] == sum(1 for t in inputs["inputs"] if t > 0)
    assert "<extra_id_0>" in inputs["inputs_pretokenized"]
    assert isinstance(inputs["targets"], list)
  # the deletion figures of t5x.eval are the mean of the predictions' aux (same examples)
  evaluated = rows[:32]
  kept = sum(r["aux"]["kept_length"] for r in evaluated)
  real = sum(r["aux"]["input_length"] for r in evaluated)
  assert metrics["deletion/rate"] == pytest.approx(1 - kept / real, abs=1e-6)


def test_conversion_takes_the_gate_settings_from_the_runs_config_gin(runs, tmp_path, capsys):
  """t5x writes config.gin into the model dir; mrt5-convert reads the tiny run's gate there
  (layer 1 and softmax1, t5x/mrt5_tiny.gin) instead of assuming anything."""
  import shutil
  from mrt5_jax.cli import convert as convert_cli
  out = tmp_path / "hf"
  assert convert_cli.main(["to-pytorch", "--checkpoint", runs["c"], "--output", str(out)]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["settings_from"] == os.path.join(runs["c"], "config.gin")
  with open(out / "config.json") as f:
    hf = json.load(f)
  assert (hf["delete_gate_layer"], hf["use_softmax1"], hf["sigmoid_mask_scale"],
          hf["num_layers"]) == (1, True, -30.0, 4)
  lone = tmp_path / "copied" / "checkpoint_30"
  shutil.copytree(os.path.join(runs["c"], "checkpoint_30"), lone)
  assert convert_cli.main(["to-pytorch", "--checkpoint", str(lone), "--output",
                           str(tmp_path / "hf2")]) == 2
  assert "missing: delete_gate_layer, sigmoid_mask_scale, use_softmax1" in capsys.readouterr().err
  assert not (tmp_path / "hf2").exists()


_TINY_DOWNSTREAM = """
from __gin__ import dynamic_registration
import __main__ as train_script
from t5x import utils
include 't5x/mrt5_tiny.gin'
include 't5x/mrt5_finetune_downstream.gin'
MIXTURE_OR_TASK_NAME = 'mrt5.xnli.train'
TASK_FEATURE_LENGTHS = {'inputs': 128, 'targets': 8}
BATCH_SIZE = 2
TRAIN_STEPS = 6
EVAL_PERIOD = 3
EVAL_STEPS = 1
DROPOUT_RATE = 0.0
RANDOM_SEED = 0
train/utils.DatasetConfig.seed = 0
train_script.train.stats_period = 3
"""


def test_downstream_recipe_finetunes_a_t5x_checkpoint_on_xnli(tmp_path):
  """The t5x downstream recipe (AdamW chain, PI controller) on the XNLI fixture."""
  from mrt5_jax.tasks import testing
  testing.write_xnli_fixtures(str(tmp_path / "tfds"))
  (tmp_path / "tiny_xnli.gin").write_text(_TINY_DOWNSTREAM)
  init, model_dir = str(tmp_path / "init"), str(tmp_path / "xnli")
  _t5x("train", "t5x/mrt5_tiny_cpu.gin", MODEL_DIR=init, TRAIN_STEPS=2, CHECKPOINT_PERIOD=2)
  argv = t5x_command.t5x_argv(
      "train", ["tiny_xnli.gin"], [str(tmp_path), CONFIGS],
      [("MODEL_DIR", t5x_command.gin_string(model_dir)),
       ("INITIAL_CHECKPOINT_PATH", t5x_command.gin_string(os.path.join(init, "checkpoint_2")))],
      python=sys.executable, tfds_data_dir=str(tmp_path / "tfds"))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
  done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900, check=False)
  assert done.returncode == 0, done.stderr[-4000:]
  assert os.path.isdir(os.path.join(model_dir, "checkpoint_6"))
  scalars = _scalars(os.path.join(model_dir, "train"))
  assert set(scalars["cross_ent_loss"]) == {3, 6}
  assert scalars["cross_ent_loss"][6] < scalars["cross_ent_loss"][3]
  # lr 1e-4 decays linearly to 0 over the 6 steps (t5x logs the step-3 average).
  assert 0 < scalars["learning_rate"][6] < scalars["learning_rate"][3] < 1e-4
  assert scalars["deletion/alpha"][6] > 0  # the PI controller runs
  # seqio inference evaluation reports the task's accuracy.
  assert "mrt5.xnli.train/accuracy at step 6" in done.stderr
