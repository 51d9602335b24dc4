"""gin: every shipped gin file parses; unknown bindings give a clear error."""
import glob
import os

import gin
import pytest

from mrt5_jax.model import config as config_lib
from mrt5_jax.cli import gin_flags
import mrt5_jax.jobs.evaluate  # noqa: F401  (the jobs are registered with gin)
import mrt5_jax.jobs.inspect  # noqa: F401
import mrt5_jax.jobs.train  # noqa: F401
import mrt5_jax.jobs.continue_from_byt5  # noqa: F401
from mrt5_jax.jobs import gin_files
from mrt5_jax.model.shortening.registry import shortening_for
from tests.fixtures import REPO_ROOT

CONFIGS = gin_files.configs_dir()
MODEL_FILES = sorted(glob.glob(os.path.join(CONFIGS, "models", "*.gin")))
RUN_FILES = sorted(glob.glob(os.path.join(CONFIGS, "runs", "*.gin")))
REQUIRED = ["MODEL_DIR = '/tmp/x'", "INIT_CHECKPOINT = '/tmp/ckpt'",
            "MIXTURE_OR_TASK_NAME = 'mrt5.span_corruption.sample'"]
# runs/base.gin (the wiring the run files share) leaves these to the run file.
BASE_REQUIRED = ["TRAIN_STEPS = 10", "BATCH_SIZE = 8",
                 "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 16}"]


def test_expected_files_ship():
  names = {os.path.relpath(p, CONFIGS) for p in MODEL_FILES + RUN_FILES}
  for family in ("byt5", "mrt5", "bp", "cp"):
    for size in ("tiny", "small", "base", "large"):
      assert f"models/{family}_{size}.gin" in names
  for run in ("base", "finetune_downstream", "pretrain", "finetune", "local", "local_pooling", "mrt5_small_continued_pretraining",
              "finetune_xnli", "finetune_tydiqa", "finetune_xquad", "finetune_spelling",
              "finetune_word_search"):
    assert f"runs/{run}.gin" in names


@pytest.mark.parametrize("path", MODEL_FILES, ids=os.path.basename)
def test_model_files_parse_and_build(path):
  gin_files.parse([os.path.relpath(path, CONFIGS)])
  config = config_lib.MrT5Config()
  size = os.path.basename(path).split("_")[1].split(".")[0]
  assert config.d_model == config_lib.SIZES[size]["d_model"]
  assert config.num_encoder_layers == config_lib.SIZES[size]["num_encoder_layers"]
  family = os.path.basename(path).split("_")[0]
  assert (shortening_for(config).module_name == "delete_gate") == (family == "mrt5")
  assert config.deletion_type == {"mrt5": "scaled_sigmoid", "byt5": "none", "bp": "boundary",
                                  "cp": "conv"}[family]
  if family in ("bp", "cp"):
    assert config.delete_gate_layer == (1 if size == "tiny" else 3)
    assert not config.use_softmax1
    published = ((config.shortening.temperature, config.shortening.prior) == (0.5, 0.2) if family == "bp"
                 else config.shortening.rate == 4)
    assert published


def _with_prerequisites(path):
  """The gin files to parse for a run file: a model file first where it needs one; a
  deletion recipe fragment after a run file."""
  files = [os.path.relpath(path, CONFIGS)]
  if os.path.basename(path) in ("pretrain.gin", "finetune.gin"):
    files.insert(0, "models/mrt5_small.gin")
  if os.path.basename(path).startswith("deletion_"):
    files.insert(0, "runs/local.gin")
  return files


def _bindings(path):
  return REQUIRED + (BASE_REQUIRED if os.path.basename(path) == "base.gin" else [])


@pytest.mark.parametrize("path", RUN_FILES, ids=os.path.basename)
def test_run_files_parse(path):
  gin_files.parse(_with_prerequisites(path), _bindings(path))
  assert gin.query_parameter("train.train_steps") is not None
  config_lib.MrT5Config()  # the model bindings make a valid config


def test_paper_recipe_values():
  gin_files.parse(["runs/mrt5_small_continued_pretraining.gin"], REQUIRED[:2])
  config = config_lib.MrT5Config()
  assert (config.d_model, config.delete_gate_layer, config.use_softmax1) == (1472, 3, True)
  assert gin.query_parameter("%TRAIN_STEPS") == 5000
  assert gin.query_parameter("%BATCH_SIZE") == 1024
  assert gin.query_parameter("%INPUTS_LENGTH") == 1024
  assert gin.query_parameter("%TARGET_DELETION_RATE") == 0.5
  assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "mrt5.span_corruption.mc4.multilingual15"
  assert gin.query_parameter("OptimizerConfig.name") == "adamw"
  assert gin.query_parameter("linear_decay.base_learning_rate") == 1e-4
  assert gin.query_parameter("linear_decay.warmup_steps") == 0


DOWNSTREAM = [
    # file, train task, eval task, {inputs, targets} bytes, target deletion rate
    ("finetune_xnli", "mrt5.xnli.train", "mrt5.xnli.en", (1024, 8), 0.5),
    ("finetune_tydiqa", "mrt5.tydiqa.train", "mrt5.tydiqa.train", (2048, 256), 0.5),
    ("finetune_xquad", "mrt5.xquad.train", "mrt5.xquad.train", (2048, 256), 0.5),
    ("finetune_spelling", "mrt5.character.spelling_correction_contextual",
     "mrt5.character.spelling_correction_contextual", (64, 64), 0.5),
    ("finetune_word_search", "mrt5.character.word_search", "mrt5.character.word_search",
     (128, 16), 0.7),
]


def _datasets():
  from mrt5_jax.data import pipeline
  with gin.config_scope("train"):
    train = pipeline.DatasetConfig()
  with gin.config_scope("eval"):
    evaluation = pipeline.DatasetConfig()
  return train, evaluation


@pytest.mark.parametrize("name, task, eval_task, lengths, rate", DOWNSTREAM,
                         ids=[d[0] for d in DOWNSTREAM])
def test_downstream_finetune_files(name, task, eval_task, lengths, rate):
  import seqio
  from mrt5_jax.maths import controller
  from mrt5_jax.training import optimizers
  gin_files.parse([f"runs/{name}.gin"], REQUIRED[:2])
  train, evaluation = _datasets()
  assert (train.mixture_or_task_name, train.split) == (task, "train")
  assert (evaluation.mixture_or_task_name, evaluation.split) == (eval_task, "validation")
  expected = {"inputs": lengths[0], "targets": lengths[1]}
  assert train.task_feature_lengths == evaluation.task_feature_lengths == expected
  assert train.batch_size == 64
  for dataset in (train, evaluation):
    assert dataset.split in seqio.get_mixture_or_task(dataset.mixture_or_task_name).splits
  # The published fine-tuning defaults (Hugging Face Trainer, train.py).
  assert gin.query_parameter("%TRAIN_STEPS") == 3000
  optimizer = optimizers.OptimizerConfig()
  assert (optimizer.name, optimizer.clip_grad_norm, optimizer.weight_decay) == ("adamw", 1.0, 0.0)
  # lr 1e-4 from step 0 (no warmup), halfway at 1500, 0 at 3000.
  lr = [float(optimizer.learning_rate(step)) for step in (0, 1500, 3000)]
  assert lr == pytest.approx([1e-4, 5e-5, 0.0])
  ctl = controller.ControllerConfig()
  assert (ctl.kind, ctl.k_p, ctl.k_i, ctl.target_deletion_rate) == ("pi", 0.5, 1e-5, rate)
  config = config_lib.MrT5Config()
  assert shortening_for(config).shortens and config.d_model == 1472  # MrT5 Small
  assert gin.query_parameter("%INIT_CHECKPOINT") == "/tmp/ckpt"


@pytest.mark.parametrize("name, mixture, split", [
    ("finetune_xnli", "mrt5.xnli.zeroshot15", "test"),
    ("finetune_tydiqa", "mrt5.tydiqa.goldp9", "validation"),
    ("finetune_xquad", "mrt5.xquad.zeroshot11", "test"),
    ("finetune_spelling", "mrt5.character.spelling_correction_contextual",
     "test_context_dependent"),
    ("finetune_word_search", "mrt5.character.word_search", "test_paraphrase_overlap"),
])
def test_downstream_files_evaluate_the_papers_test_sets(name, mixture, split):
  import seqio
  gin_files.parse([f"runs/{name}.gin"], REQUIRED[:2] + [f"EVAL_MIXTURE_OR_TASK_NAME = '{mixture}'",
                                         f"EVAL_SPLIT = '{split}'"])
  _, evaluation = _datasets()
  assert (evaluation.mixture_or_task_name, evaluation.split) == (mixture, split)
  assert split in seqio.get_mixture_or_task(mixture).splits
  assert gin.query_parameter("evaluate.seqio_metrics") is True
  assert gin.query_parameter("evaluate.seqio_num_examples") is None


@pytest.mark.parametrize("binding, name", [
    ("MrT5Confg.d_model = 3", "MrT5Confg"),
    ("train.no_such_argument = 1", "no_such_argument"),
])
def test_unknown_binding_is_a_clear_error(binding, name):
  with pytest.raises(ValueError, match=name):
    gin_files.parse(["runs/local.gin"], [binding])


def test_missing_gin_file_names_the_search_path():
  with pytest.raises(ValueError, match="not found; looked in"):
    gin_files.parse(["runs/does_not_exist.gin"])


def test_flag_splitting_and_string_values():
  files, bindings, paths, rest = gin_flags.split_flags(
      ["--gin_file=runs/local.gin", "--gin_file", "x.gin", "--gin.MODEL_DIR=/tmp/run",
       "--gin.TRAIN_STEPS=10", "--gin.train.resume=False", "--gin_search_path=/p", "--other"])
  assert files == ["runs/local.gin", "x.gin"] and paths == ["/p"] and rest == ["--other"]
  assert bindings == ["MODEL_DIR = '/tmp/run'", "TRAIN_STEPS = 10", "train.resume = False"]


def test_a_flat_shortening_binding_names_where_it_moved():
  with pytest.raises(ValueError, match=r"(?s)'bp_prior'.*bind BoundaryPoolingConfig\.prior"):
    gin_files.parse(["models/bp_tiny.gin"], ["MrT5Config.bp_prior = 0.3"])


def test_a_rebound_scale_moves_the_threshold_and_sizes_come_from_one_table():
  gin_files.parse(["models/mrt5_small.gin"], ["DeleteGateConfig.sigmoid_mask_scale = -100.0"])
  config = config_lib.MrT5Config()
  assert config.deletion_threshold == -50.0
  assert config.size == "small" and config.delete_gate_layer == 3
  assert {k: getattr(config, k) for k in config_lib.SIZES["small"]} == config_lib.SIZES["small"]


def test_run_files_bind_the_inference_config():
  from mrt5_jax.inference import encode_path
  from mrt5_jax.training import trainer
  gin_files.parse(["runs/local.gin"], ["InferenceConfig.bucket_step = 4"])
  bound = gin.query_parameter("train.inference").scoped_configurable_fn()
  assert isinstance(bound, encode_path.InferenceConfig) and bound.bucket_step == 4
  assert "hard_deletion_mode" not in config_lib.MrT5Config().to_dict()
  del trainer


def test_deletion_recipes_shipped_and_published():
  from mrt5_jax.maths import controller as ctl
  from mrt5_jax.training import objective as obj
  gin_files.parse(["runs/local.gin"])
  shipped = ctl.ControllerConfig(), obj.ObjectiveConfig()
  assert shipped[0].kind == "bounded_pi" and shipped[0].alpha_min < 0
  assert shipped[1].hard_delete_train_prob == 0.5
  assert (shipped[1].hard_delete_train_start, shipped[1].hard_delete_train_ramp) == (200, 300)
  assert shipped[1].freeze_gate_before_delay  # the gate waits for the regularizer delay
  assert config_lib.MrT5Config().shortening.gate_bias_init == 4.0  # a fresh gate keeps
  assert shipped[1].score_loss_coeff == 0.5  # trained from scratch: the published beta
  assert (shipped[0].k_p, shipped[0].k_i) == (1.0, 0.001)  # from scratch: the larger k_p
  gin.clear_config()
  gin_files.parse(["runs/local.gin", "runs/deletion_published.gin"])
  published = ctl.ControllerConfig(), obj.ObjectiveConfig()
  assert config_lib.MrT5Config().shortening.gate_bias_init == 1.0  # the published init
  assert (published[0].kind, published[0].k_p, published[0].k_i) == ("pi", 0.5, 1e-5)
  assert published[0].alpha_min == 0.0 and published[0].alpha_max is None
  assert published[1].hard_delete_train_prob == 0.0 and published[1].gate_loss == "gate_mean"
  assert not published[1].freeze_gate_before_delay  # trained from the first step
  gin.clear_config()
  gin_files.parse(["runs/mrt5_small_continued_pretraining.gin"],
                  ["MODEL_DIR = '/tmp/x'", "INIT_CHECKPOINT = '/tmp/c'"])
  assert ctl.ControllerConfig().kind == "pi"  # the paper's exact recipe
  gin.clear_config()
  gin_files.parse(["runs/byt5_to_mrt5.gin"])
  assert obj.ObjectiveConfig().score_loss_coeff == 0.0  # continued from ByT5: no beta
  assert ctl.ControllerConfig().k_p == 0.2  # and the shared fragment's gain


def _value(name):
  value = gin.query_parameter(name)
  return value.scoped_configurable_fn() if hasattr(value, "scoped_configurable_fn") else value


@pytest.mark.parametrize("path", RUN_FILES, ids=os.path.basename)
def test_run_files_wire_mrt5_eval_and_mrt5_inspect(path):
  gin_files.parse(_with_prerequisites(path),
                  _bindings(path) + ["EVAL_MIXTURE_OR_TASK_NAME = 'mrt5.xnli.zeroshot15'"])
  assert _value("inspect_deletion.model_dir") == "/tmp/x"
  assert _value("evaluate.model_dir") == "/tmp/x"
  from mrt5_jax.data import pipeline
  with gin.config_scope("eval"):
    assert pipeline.DatasetConfig().mixture_or_task_name == "mrt5.xnli.zeroshot15"
  assert gin.query_parameter("evaluate.speed_batches") >= 1


@pytest.mark.parametrize("size, gate_layer, dtype", [("base", 3, "float32"),
                                                     ("large", 5, "bfloat16"),
                                                     ("tiny", 1, "float32")])
def test_finetune_files_take_another_size(size, gate_layer, dtype):
  """docs/commands.md 'Fine-tuning another size': the flags it shows, parsed as mrt5-train does."""
  argv = ["--gin_file=runs/finetune_xnli.gin", "--gin.MODEL_DIR=/runs/xnli",
          "--gin.INIT_CHECKPOINT=/runs/mrt5", "--gin.mrt5_jax.tasks.tfds_data_dir.path=/data/tfds",
          f"--gin.MrT5Config.size={size}", f"--gin.MrT5Config.delete_gate_layer={gate_layer}",
          f"--gin.ACTIVATION_DTYPE={dtype}"]
  assert gin_flags.parse_argv(argv) == []
  config = gin.query_parameter("train.model_config").scoped_configurable_fn()
  expected = config_lib.SIZES[size]
  assert (config.size, config.d_model, config.num_encoder_layers, config.num_heads) == (
      size, expected["d_model"], expected["num_encoder_layers"], expected["num_heads"])
  assert config.delete_gate_layer == gate_layer and config.dtype == dtype
  assert config.deletion_type == "scaled_sigmoid" and config.use_softmax1  # the model file's
  docs = open(os.path.join(REPO_ROOT, "docs", "commands.md")).read()
  for flag in ("--gin.MrT5Config.size=base", "--gin.MrT5Config.delete_gate_layer=3",
               "--gin.ACTIVATION_DTYPE=float32"):
    assert flag in docs
