"""What the tests share, in one place: small model configs, one byte-batch
builder, parameter initialisation and short training runs on a diagnostic task.

conftest.py turns some of these into pytest fixtures; sharding_check.py (run
in a subprocess) imports them too.
"""
from __future__ import annotations

import logging

import json
import os
import subprocess
import sys

import numpy as np

from mrt5_jax.model import config as config_lib

# Small shapes, all from the `tiny` size: `network` (4 + 2 layers, gate at
# layer 2) for network-level tests, `trainer` (2 + 1 layers, gate at layer 1)
# for training runs, `preset` the library's tiny size itself.
CONFIGS = {
    "network": dict(d_model=32, d_ff=64, num_heads=4, head_dim=8, num_encoder_layers=4,
                    num_decoder_layers=2, delete_gate_layer=2),
    "trainer": dict(d_model=32, d_ff=64, num_heads=2, head_dim=16, num_encoder_layers=2,
                    num_decoder_layers=1, delete_gate_layer=1),
    "preset": dict(),
}
SEQ = 24

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)


def run_python(args, timeout: int = 600, **popen) -> subprocess.CompletedProcess:
  """``python ARGS`` in a subprocess from the repository root, output captured as text."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                        timeout=timeout, env=env, cwd=REPO_ROOT, **popen)


def run_cli(module: str, *args, timeout: int = 600) -> subprocess.CompletedProcess:
  """``python -m MODULE ARGS`` (a command-line front end) as ``run_python`` runs it."""
  return run_python(["-m", module, *args], timeout=timeout)


def run_check_script(name: str, timeout: int = 600) -> dict:
  """Run ``tests/NAME`` (a script that sets its own XLA_FLAGS, e.g. 8 host devices, before
  jax starts) and return the JSON of its last output line."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, os.path.join(TESTS_DIR, name)], env=env,
                       capture_output=True, text=True, timeout=timeout)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def model_config(kind: str = "network", **overrides) -> config_lib.MrT5Config:
  """One of ``CONFIGS`` with fields overridden."""
  return config_lib.MrT5Config(size="tiny", **{**CONFIGS[kind], **overrides})


def byte_batch(batch: int = 3, length: int = 24, target_length: int = 10, seed: int = 0,
               pad_from=(None, 17, 5), target_pad_from=None, eos: bool = True,
               target_eos=None) -> dict:
  """Random byte ids (3..258) as feature-converted numpy int32 arrays.

  Row ``i`` of the inputs is padded from ``pad_from[i % len(pad_from)]`` on
  (None: not padded), likewise the targets with ``target_pad_from`` (default:
  only the last row, from the middle). With ``eos`` (``target_eos``, default
  the same, for the targets) each unpadded run ends in EOS (1). Inputs are
  drawn before targets, so a seed gives the same bytes whatever the padding.
  """
  rng = np.random.RandomState(seed)
  enc = rng.randint(3, 259, size=(batch, length)).astype(np.int32)
  tgt = rng.randint(3, 259, size=(batch, target_length)).astype(np.int32)
  if target_pad_from is None:
    target_pad_from = (None,) * (batch - 1) + (target_length // 2,)
  target_eos = eos if target_eos is None else target_eos
  for array, pattern, ends in ((enc, pad_from, eos), (tgt, target_pad_from, target_eos)):
    for row in range(batch):
      stop = pattern[row % len(pattern)]
      if stop is not None:
        array[row, stop:] = 0
      if ends:
        array[row, (stop or array.shape[1]) - 1] = 1
  dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt}


def small_batch(**overrides) -> dict:
  """2 rows, 16 input / 8 target bytes, no EOS (the objective and evaluation tests)."""
  values = dict(batch=2, length=16, target_length=8, pad_from=(None, 10),
                target_pad_from=(6, None), eos=False)
  values.update(overrides)
  return byte_batch(**values)


def as_tuple(batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(encoder inputs, decoder inputs, targets): the positional arguments of the network."""
  return (batch["encoder_input_tokens"], batch["decoder_input_tokens"],
          batch["decoder_target_tokens"])


def init_params(config, batch, seed: int = 0):
  """(module, params) of ``config`` initialised on ``batch`` (a dict or a tuple)."""
  import jax
  from mrt5_jax.model.network import Transformer
  enc, dec_in, tgt = as_tuple(batch) if isinstance(batch, dict) else batch
  module = Transformer(config)
  variables = module.init({"params": jax.random.PRNGKey(seed),
                           "deletion": jax.random.PRNGKey(1)},
                          enc, dec_in, tgt, enable_dropout=False)
  return module, variables["params"]


def assert_prefill_matches_teacher_forcing(module, params, encoder_output, decoder_inputs,
                                           lengths=(2, 5, 3), check_cache=None) -> None:
  """t5x's prompt prefilling: rows continue from their own prompt lengths, and every
  cached step reproduces the teacher-forced logits at its position (atol 1e-5).
  ``check_cache`` sees the freshly initialised cache collection."""
  import jax.numpy as jnp

  out = encoder_output
  decode = lambda tokens, **kw: module.apply(
      {"params": params, **kw.pop("variables", {})}, out.encoded, out.mask, tokens,
      jnp.ones_like(tokens), enable_dropout=False, encoder_key_bias=out.key_bias,
      method=module.decode, **kw)
  reference = np.asarray(decode(decoder_inputs))
  _, variables = decode(jnp.ones_like(decoder_inputs), decode=True, mutable=["cache"])
  if check_cache is not None:
    check_cache(variables["cache"])
  lengths = np.asarray(lengths)
  prompt = np.where(np.arange(decoder_inputs.shape[1])[None] < lengths[:, None],
                    decoder_inputs, 0)
  _, variables = decode(jnp.asarray(prompt), prefill=True, prefill_lengths=jnp.asarray(lengths),
                        variables=variables, mutable=["cache"])
  rows = np.arange(len(lengths))
  for offset in range(3):
    position = lengths + offset
    step = jnp.asarray(decoder_inputs[rows, position][:, None])
    logits, variables = decode(step, decode=True, max_decode_length=decoder_inputs.shape[1],
                               variables=variables, mutable=["cache"])
    np.testing.assert_allclose(np.asarray(logits)[:, 0], reference[rows, position], atol=1e-5)


def diagnostic_dataset(task: str = "copy", batch_size: int = 4, seed: int = 0,
                       length: int = SEQ, split: str = "train"):
  """A seqio stream of a diagnostic task at ``length`` bytes (gin reset first)."""
  import gin
  import mrt5_jax.tasks  # noqa: F401  (registers the tasks and their gin knobs)
  from mrt5_jax.data import pipeline
  gin.clear_config()
  gin.bind_parameter("mrt5_jax.tasks.diagnostic_config.sequence_length", length)
  return pipeline.DatasetConfig(mixture_or_task_name=f"mrt5.diagnostic.{task}",
                            task_feature_lengths={"inputs": length, "targets": length},
                            split=split, batch_size=batch_size, seed=seed,
                            shuffle=split == "train")


def train_run(model_dir, steps, *, dataset, config=None, controller=None, lr=3e-3, **kwargs):
  """``jobs.train.train`` with small-run defaults (log every step, no TensorBoard)."""
  from mrt5_jax.maths import controller as ctl
  from mrt5_jax.training import objective as obj
  from mrt5_jax.training import optimizers
  from mrt5_jax.jobs import train as train_job
  kwargs.setdefault("log_every", 1)
  kwargs.setdefault("checkpoint_every", 1000)
  kwargs.setdefault("async_checkpointing", False)
  kwargs.setdefault("tensorboard", False)
  kwargs.setdefault("objective", obj.ObjectiveConfig())
  return train_job.train(
      model_dir=str(model_dir), model_config=config or model_config("trainer"),
      train_dataset=dataset, train_steps=steps,
      optimizer=optimizers.OptimizerConfig(learning_rate=optimizers.linear_decay(lr, max(steps, 1))),
      controller=controller or ctl.ControllerConfig(target_deletion_rate=0.5, k_p=0.5),
      **kwargs)


DAMAGE_KINDS = ("truncate_data", "delete_file", "flip_bytes", "truncate_metadata",
                "truncate_sharding")


def damage_checkpoint(step_dir: str, kind: str) -> str:
  """Damage one file of a project checkpoint step as a bad disk or a partial copy would.

  ``truncate_data`` / ``delete_file`` / ``flip_bytes`` hit the largest array data
  file of ``state/``; ``truncate_metadata`` and ``truncate_sharding`` cut
  ``state/_METADATA`` / ``state/_sharding`` to half. Returns the file's path
  relative to ``step_dir``.
  """
  import os
  if kind in ("truncate_metadata", "truncate_sharding"):
    relative = os.path.join("state", "_METADATA" if kind == "truncate_metadata" else "_sharding")
  else:
    data = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(step_dir, "state"))
            for name in names if not name.startswith("_") and "manifest" not in name]
    relative = os.path.relpath(max(data, key=os.path.getsize), step_dir)
  path = os.path.join(step_dir, relative)
  size = os.path.getsize(path)
  if kind == "delete_file":
    os.remove(path)
  elif kind == "flip_bytes":
    with open(path, "r+b") as f:
      f.seek(size // 2)
      byte = f.read(1)
      f.seek(size // 2)
      f.write(bytes([byte[0] ^ 0xFF]))
  else:
    os.truncate(path, size // 2)
  return relative


class LogRecords(logging.Handler):
  """The ``mrt5_jax`` log records of a ``with`` block, whatever the CLI's logging setup."""

  def __enter__(self):
    self.records = []
    logging.getLogger("mrt5_jax").addHandler(self)
    return self

  def emit(self, record):
    self.records.append(record)

  def __exit__(self, *exc):
    logging.getLogger("mrt5_jax").removeHandler(self)

  def warnings(self) -> list[str]:
    return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]


def seqio_metrics(name: str, split: str, lengths: dict, predict) -> dict[str, dict[str, float]]:
  """seqio metrics of every task of ``name`` (a task or mixture) when the model outputs
  ``predict(features)`` ids: {task: {metric: value}}."""
  import seqio  # tests of the model do not need seqio loaded
  evaluator = seqio.Evaluator(
      name, feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split=split, sequence_length=lengths, logger_cls=(),
      async_compute_metrics=False)

  def predict_fn(ds, *unused):
    return [(int(i), np.asarray(predict(f))) for i, f in ds.as_numpy_iterator()]

  def score_fn(ds, *unused):
    return [(int(i), 0.0) for i, _ in ds.as_numpy_iterator()]

  futures, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn,
                                  score_fn=score_fn)
  return {task: {k: float(getattr(v, "value", v)) for k, v in m.items()}
          for task, m in futures.result().items()}
