"""The gin files in configs/t5x, parsed by t5x's own gin loader (in a
subprocess, as t5x.train/eval/infer would) and checked against the paper's
settings and ByT5's published sizes. Runs only where t5x is importable."""
import json
import os
import subprocess
import sys

import pytest

from tests.fixtures import REPO_ROOT

pytest.importorskip(
    "t5x", reason="t5x is not installed (it comes from its git repository, not PyPI)")

REPO = REPO_ROOT

# Parses gin files as t5x.<tool> does (its module is __main__ for the gin
# imports) and prints what the run would use, as JSON.
_PROBE = r"""
import importlib, json, sys
tool, files, bindings = sys.argv[1], sys.argv[2].split(','), sys.argv[3:]
sys.modules['__main__'] = importlib.import_module('t5x.' + tool)
import gin, jax, jax.numpy as jnp, numpy as np
from t5x import gin_utils

gin_utils.parse_gin_flags(['configs'], files, bindings)

def value(name):
  v = gin.query_parameter(name)
  return v.scoped_configurable_fn() if hasattr(v, 'scoped_configurable_fn') else v

def maybe(name):
  try:
    return value(name)
  except ValueError:
    return None

def selector(name):
  try:
    return gin.query_parameter(name).selector
  except ValueError:
    return None

model = value('%MODEL')
lengths = dict(value('%TASK_FEATURE_LENGTHS'))
shapes = jax.eval_shape(lambda rng: model.get_initial_variables(
    rng, {'encoder_input_tokens': (1, lengths['inputs']),
          'decoder_input_tokens': (1, lengths['targets'])},
    {'encoder_input_tokens': jnp.int32, 'decoder_input_tokens': jnp.int32}),
    jax.random.PRNGKey(0))
print(json.dumps({
    'model': type(model).__name__,
    'config': model.config.to_dict(),
    'inference': vars(model.inference),
    'inference_deletion': model.inference_deletion,
    'controller': vars(model.controller),
    'loss_normalizing_factor': model.objective.loss_normalizing_factor,
    'hard_delete_train_prob': model.objective.hard_delete_train_prob,
    'optimizer': type(model.optimizer_def).__name__,
    'num_params': int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes['params']))),
    'mutables': sorted(k for k in shapes if k not in ('params', 'params_axes')),
    'lengths': lengths,
    'task': value('%MIXTURE_OR_TASK_NAME'),
    'task_module': value('%MIXTURE_OR_TASK_MODULE'),
    'initial_checkpoint': maybe('%INITIAL_CHECKPOINT_PATH'),
    'assignment_map': maybe('t5x.utils.RestoreCheckpointConfig.assignment_map'),
    'fallback_to_scratch': maybe('t5x.utils.RestoreCheckpointConfig.fallback_to_scratch'),
    'train_steps': maybe('%TRAIN_STEPS'),
    'batch_size': maybe('%BATCH_SIZE'),
    'evaluator': selector('evaluate.inference_evaluator_cls')
                 or selector('train.inference_evaluator_cls'),
    'evaluator_num_examples': maybe('DeletionMetricsEvaluator.num_examples'),
    'write_fn': selector('infer.write_fn'),
    'infer_input_fields': maybe('write_inferences_to_file.input_fields_to_include'),
}))
"""


def _probe(tool, files, *bindings):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
  done = subprocess.run([sys.executable, "-c", _PROBE, tool, ",".join(files), *bindings],
                        cwd=REPO, capture_output=True, text=True, env=env, timeout=600,
                        check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_small_span_corruption_is_the_papers_continued_pretraining():
  run = _probe("train", ["t5x/mrt5_small_span_corruption.gin"], "MODEL_DIR='/tmp/unused'")
  assert run["model"] == "MrT5Model"
  assert run["mutables"] == ["controller", "controller_axes", "controller_microbatches",
                             "controller_microbatches_axes"]
  config = run["config"]
  assert (config["d_model"], config["d_ff"], config["num_heads"], config["num_encoder_layers"],
          config["num_decoder_layers"]) == (1472, 3584, 6, 12, 4)
  assert config["size"] == "small"
  assert config["use_softmax1"] and config["delete_gate_layer"] == 3
  assert config["shortening"]["sigmoid_mask_scale"] == -30.0
  assert config["shortening"]["deletion_threshold"] == -15.0
  assert run["controller"]["target_deletion_rate"] == 0.5
  # runs/deletion_published.gin, the same fragment the project trainer's recipe includes.
  assert (run["controller"]["kind"], run["controller"]["k_p"]) == ("pi", 0.5)
  assert run["hard_delete_train_prob"] == 0.0
  assert run["loss_normalizing_factor"] == "NUM_REAL_TARGET_TOKENS"
  assert run["optimizer"] == "OptaxWrapper"
  assert run["lengths"] == {"inputs": 1024, "targets": 189}
  assert run["task"] == "mrt5.span_corruption.mc4.multilingual15"
  assert run["task_module"] == "mrt5_jax.tasks"
  assert (run["train_steps"], run["batch_size"]) == (5000, 1024)
  assert run["initial_checkpoint"] == (
      "gs://t5-data/pretrained_models/t5x/byt5_small/checkpoint_1000000")
  assert run["fallback_to_scratch"] is True
  assert ["target/encoder/delete_gate/.*", None] in run["assignment_map"]
  # ByT5 Small has ~300M parameters; the gate adds 2 * d_model + 1.
  assert abs(run["num_params"] - (2 * 1472 + 1) - 300e6) / 300e6 < 0.005


@pytest.mark.parametrize("size, byt5_params", [("base", 582e6), ("large", 1.23e9)])
def test_size_files_have_byt5_sizes(size, byt5_params):
  run = _probe("train", [f"t5x/mrt5_{size}.gin", "t5x/mrt5_continued_pretraining.gin"],
               "MODEL_DIR='/tmp/unused'", "INITIAL_CHECKPOINT_PATH='/tmp/unused'",
               "INPUTS_LENGTH=64")
  d_model = run["config"]["d_model"]
  assert abs(run["num_params"] - (2 * d_model + 1) - byt5_params) / byt5_params < 0.01
  assert run["optimizer"] == "OptaxWrapper"


@pytest.mark.parametrize("tool, gin_file, bindings", [
    ("eval", "t5x/mrt5_small_eval.gin", ["CHECKPOINT_PATH='/c'", "EVAL_OUTPUT_DIR='/o'"]),
    ("infer", "t5x/mrt5_tiny_infer.gin", ["CHECKPOINT_PATH='/c'", "INFER_OUTPUT_DIR='/o'"]),
    ("train", "t5x/mrt5_tiny_cpu.gin", ["MODEL_DIR='/m'"]),
    ("train", "t5x/pooling_tiny_cpu.gin", ["MODEL_DIR='/m'"]),
    ("train", "t5x/pooling_tiny_cpu.gin", ["MODEL_DIR='/m'", "DELETION_TYPE='conv'"]),
])
def test_eval_infer_and_cpu_files_parse(tool, gin_file, bindings):
  run = _probe(tool, [gin_file], *bindings)
  assert run["model"] == "MrT5Model" and run["task_module"] == "mrt5_jax.tasks"
  assert run["inference"]["mode"] == "capacity" and run["inference_deletion"] == "hard"
  assert run["task"].startswith("mrt5.span_corruption.")
  if "pooling" in gin_file:
    kind = "conv" if "DELETION_TYPE='conv'" in bindings else "boundary"
    assert run["config"]["deletion_type"] == kind and not run["config"]["use_softmax1"]
    assert run["config"]["delete_gate_layer"] == 1
    assert run["config"]["shortening"] == (
        {"rate": 4} if kind == "conv" else
        {"temperature": 0.5, "prior": 0.2, "capacity_fraction": 0.5, "sample_at_inference": False})


def test_memory_macros_reach_the_network():
  """REMAT_POLICY, SCAN_LAYERS, ATTENTION_IMPL, ATTENTION_BLOCK_SIZE (default: off)."""
  default = _probe("train", ["t5x/mrt5_tiny_cpu.gin"], "MODEL_DIR='/m'")
  assert {k: default["config"][k] for k in ("remat_policy", "scan_layers", "attention_impl")} == {
      "remat_policy": "none", "scan_layers": False, "attention_impl": "dense"}
  run = _probe("train", ["t5x/mrt5_tiny_cpu.gin"], "MODEL_DIR='/m'", "REMAT_POLICY='minimal'",
               "SCAN_LAYERS=True", "ATTENTION_IMPL='blocked'", "ATTENTION_BLOCK_SIZE=256")
  config = run["config"]
  assert (config["remat_policy"], config["scan_layers"], config["attention_impl"],
          config["attention_block_size"]) == ("minimal", True, "blocked", 256)
  assert run["num_params"] == default["num_params"]  # the same weights, stacked


@pytest.mark.parametrize("gin_file, num_examples", [
    ("t5x/mrt5_small_eval.gin", 1024), ("t5x/mrt5_tiny_eval.gin", 32)])
def test_eval_files_report_deletion_on_a_bounded_number_of_examples(gin_file, num_examples):
  run = _probe("eval", [gin_file], "CHECKPOINT_PATH='/c'", "EVAL_OUTPUT_DIR='/o'")
  assert run["evaluator"] == "seqio_evaluator.DeletionMetricsEvaluator"
  assert run["evaluator_num_examples"] == num_examples


def test_infer_file_writes_the_inputs():
  run = _probe("infer", ["t5x/mrt5_tiny_infer.gin"], "CHECKPOINT_PATH='/c'",
               "INFER_OUTPUT_DIR='/o'")
  assert run["write_fn"] == "infer_script.write_inferences_to_file"
  assert run["infer_input_fields"] == ["inputs", "targets"]


def test_finetune_file_restores_an_mrt5_checkpoint_with_a_fresh_optimizer():
  run = _probe("train", ["t5x/mrt5_small.gin", "t5x/mrt5_finetune.gin"],
               "MODEL_DIR='/m'", "INITIAL_CHECKPOINT_PATH='/c'", "TRAIN_STEPS=100",
               "MIXTURE_OR_TASK_NAME='mrt5.diagnostic.vowel_removal'",
               "TASK_FEATURE_LENGTHS=@tasks.diagnostic_feature_lengths()")
  assert run["optimizer"] == "Adafactor"
  assert run["fallback_to_scratch"] is True
  assert run["assignment_map"] == [["state/param_states/.*", None], ["state/step", None]]
  assert run["evaluator"] == "seqio_evaluator.DeletionMetricsEvaluator"


# Parses a downstream fine-tuning file as t5x.train does and prints what the
# recipe resolves to: schedule values, the optimizer chain, the data bindings.
_DOWNSTREAM_PROBE = r"""
import importlib, json, sys
files, bindings = sys.argv[1].split(','), sys.argv[2:]
sys.modules['__main__'] = importlib.import_module('t5x.train')
import gin, jax, jax.numpy as jnp, numpy as np
from t5x import gin_utils
gin_utils.parse_gin_flags(['configs'], files, bindings)

def value(name):
  v = gin.query_parameter(name)
  return v.scoped_configurable_fn() if hasattr(v, 'scoped_configurable_fn') else v

import mrt5_jax.tasks as tasks
schedule = value('%LR_SCHEDULE')
model = value('%MODEL')
params = {'w': jnp.ones((4,))}
optimizer = model.optimizer_def.optax_optimizer
state = optimizer.init(params)
# Gradient of norm 20 -> clipped to norm 1 before AdamW.
updates, _ = optimizer.update({'w': jnp.full((4,), 10.0)}, state, params)
print(json.dumps({
    'lr': [float(schedule(s)) for s in (0, 1500, 3000)],
    'optimizer': type(model.optimizer_def).__name__,
    'transformations': [str(t) for t in gin.query_parameter('optimizers.chain.transformations')],
    'max_norm': gin.query_parameter('optax.clip_by_global_norm.max_norm'),
    'first_update': [float(u) for u in updates['w']],
    'infer_eval_lengths': dict(value('infer_eval/utils.DatasetConfig.task_feature_lengths')),
    'dropout': float(model.config.dropout_rate),
    'save_period': value('utils.SaveCheckpointConfig.period'),
    'char_dir': tasks.character_data_dir(),
}))
"""


def _downstream_probe(files, *bindings):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
  done = subprocess.run([sys.executable, "-c", _DOWNSTREAM_PROBE, ",".join(files), *bindings],
                        cwd=REPO, capture_output=True, text=True, env=env, timeout=600,
                        check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name, task, lengths, rate", [
    ("finetune_xnli", "mrt5.xnli.train", (1024, 8), 0.5),
    ("finetune_tydiqa", "mrt5.tydiqa.train", (2048, 256), 0.5),
    ("finetune_xquad", "mrt5.xquad.train", (2048, 256), 0.5),
    ("finetune_spelling", "mrt5.character.spelling_correction_contextual", (64, 64), 0.5),
    ("finetune_word_search", "mrt5.character.word_search", (128, 16), 0.7),
])
def test_downstream_finetune_files(name, task, lengths, rate):
  run = _probe("train", [f"t5x/{name}.gin"], "MODEL_DIR='/m'", "INITIAL_CHECKPOINT_PATH='/c'")
  assert run["model"] == "MrT5Model" and run["task_module"] == "mrt5_jax.tasks"
  assert run["task"] == task
  assert run["lengths"] == {"inputs": lengths[0], "targets": lengths[1]}
  assert (run["train_steps"], run["batch_size"]) == (3000, 64)
  assert run["config"]["d_model"] == 1472 and run["config"]["delete_gate_layer"] == 3
  controller = run["controller"]
  assert (controller["kind"], controller["k_p"], controller["k_i"]) == ("pi", 0.5, 1e-5)
  assert controller["target_deletion_rate"] == rate
  # The published deletion settings, the fragment the project's downstream files include.
  assert (controller["alpha_min"], controller["alpha_max"]) == (0.0, None)
  assert run["hard_delete_train_prob"] == 0.0
  assert run["optimizer"] == "OptaxWrapper"
  # Fine-tuning restores params, gate and controller; optimizer and step start fresh.
  assert run["assignment_map"] == [["state/param_states/.*", None], ["state/step", None]]
  assert run["fallback_to_scratch"] is True


def test_downstream_recipe_adamw_schedule_clipping_and_data_bindings():
  run = _downstream_probe(["t5x/finetune_word_search.gin"], "MODEL_DIR='/m'",
                          "INITIAL_CHECKPOINT_PATH='/c'",
                          "tasks.character_data_dir.path='/data/char_iit_json'")
  assert run["lr"] == pytest.approx([1e-4, 5e-5, 0.0])
  assert run["max_norm"] == 1.0
  assert [t.split(".")[-1] for t in run["transformations"]] == [
      "clip_by_global_norm()", "adamw()"]
  # AdamW's first step moves each weight by about lr (here 1e-4) against the
  # gradient sign, whatever the clipped gradient's scale.
  assert run["first_update"] == pytest.approx([-1e-4] * 4, rel=1e-3)
  assert run["infer_eval_lengths"] == {"inputs": 128, "targets": 16}
  assert run["dropout"] == 0.1
  assert run["save_period"] == 500
  assert run["char_dir"] == "/data/char_iit_json"


@pytest.mark.parametrize("task, lengths_fn, split, lengths", [
    ("mrt5.xnli.zeroshot15", "xnli_feature_lengths", "test", (1024, 8)),
    ("mrt5.tydiqa.goldp9", "qa_feature_lengths", "validation", (2048, 256)),
    ("mrt5.xquad.zeroshot11", "qa_feature_lengths", "test", (2048, 256)),
    ("mrt5.character.word_search", "word_search_feature_lengths", "test_oov", (128, 16)),
])
def test_downstream_eval_commands_of_the_file_headers_parse(task, lengths_fn, split, lengths):
  run = _probe("eval", ["t5x/mrt5_small.gin", "t5x/mrt5_eval.gin"],
               f"MIXTURE_OR_TASK_NAME='{task}'", f"TASK_FEATURE_LENGTHS=@tasks.{lengths_fn}()",
               f"EVAL_SPLIT='{split}'", "CHECKPOINT_PATH='/c'", "EVAL_OUTPUT_DIR='/o'")
  assert run["task"] == task
  assert run["lengths"] == {"inputs": lengths[0], "targets": lengths[1]}
