"""The training job: ``train`` (gin-configurable) runs the loop around ``Trainer``.

Resume or initialise (optionally from another checkpoint with a fresh gate),
log progress, write TensorBoard summaries, evaluate, checkpoint, and stop
cleanly on interruption.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from typing import Mapping, Optional

import gin
import jax
import numpy as np

from mrt5_jax.checkpointing import config_files
from mrt5_jax.checkpointing import integrity
from mrt5_jax.checkpointing import readers
from mrt5_jax.checkpointing import writer
from mrt5_jax.data import pipeline as data_lib
from mrt5_jax.evaluation import evaluator as evaluation
from mrt5_jax.inference.encode_path import InferenceConfig
from mrt5_jax.maths import controller as controller_lib
from mrt5_jax.model.config import MrT5Config
from mrt5_jax.parallel import partitioning
from mrt5_jax.training import objective as objective_lib
from mrt5_jax.training import optimizers
from mrt5_jax.training import summaries
from mrt5_jax.training.trainer import Trainer

logger = logging.getLogger("mrt5_jax")


@dataclasses.dataclass
class TrainResult:
  model_dir: str
  checkpoint_dir: Optional[str]
  step: int
  metrics: dict
  eval_metrics: dict
  target_deletion_rate: Optional[float]
  wall_seconds: float
  interrupted: bool = False
  history: list = dataclasses.field(default_factory=list)
  deletion_profile: dict = dataclasses.field(default_factory=dict)


class _StopFlag:
  """SIGTERM/SIGINT -> finish the current step, checkpoint, exit."""

  def __init__(self):
    self.stop = False
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handler)
      except ValueError:  # not the main thread
        pass
    return self

  def _handler(self, signum, frame):
    if self.stop:  # a second signal: give up at once
      raise KeyboardInterrupt
    logger.warning("signal %d: stopping after this step and saving a checkpoint", signum)
    self.stop = True

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _to_host(metrics: Mapping[str, jax.Array]) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}


SUMMARY_FILE = "train_summary.json"


def _write_summary(model_dir: str, metrics: Mapping[str, float]) -> None:
  """The last logged train metrics of a finished run (read back when it is re-run)."""
  with open(os.path.join(model_dir, SUMMARY_FILE), "w") as f:
    json.dump(dict(metrics), f, indent=2, sort_keys=True)


def _shown_target(trainer: Trainer, controller: controller_lib.ControllerConfig,
                  step: int) -> Optional[float]:
  """The target the progress line shows at ``step``: the controller's current one (its
  ramp, if any) or the length reduction BP / CP set by themselves."""
  now = controller_lib.current_target({"step": np.int32(step)}, controller)
  return trainer.module.shortening.target_rate(float(now))


def _read_summary(model_dir: str) -> dict:
  path = os.path.join(model_dir, SUMMARY_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


@gin.configurable(denylist=["stop_after"])
def train(*,
          model_dir: str = gin.REQUIRED,
          model_config: MrT5Config = gin.REQUIRED,
          train_dataset: data_lib.DatasetConfig = gin.REQUIRED,
          train_steps: int = gin.REQUIRED,
          eval_dataset: Optional[data_lib.DatasetConfig] = None,
          optimizer: optimizers.OptimizerConfig = optimizers.OptimizerConfig(),
          objective: objective_lib.ObjectiveConfig = objective_lib.ObjectiveConfig(),
          controller: controller_lib.ControllerConfig = controller_lib.ControllerConfig(),
          mesh: partitioning.MeshConfig = partitioning.MeshConfig(),
          num_microbatches: int = 1,
          seed: int = 0,
          enable_dropout: bool = True,
          log_every: int = 50,
          checkpoint_every: int = 1000,
          keep_checkpoints: Optional[int] = None,
          async_checkpointing: bool = True,
          eval_every: int = 0,
          eval_steps: int = 8,
          inference: InferenceConfig = InferenceConfig(),
          init_checkpoint: Optional[str] = None,
          reinit_gate: bool = True,
          resume: bool = True,
          on_damaged_checkpoint: str = "fall_back",
          tensorboard: bool = True,
          stop_after: Optional[int] = None) -> TrainResult:
  """Train ``model_config`` on ``train_dataset`` for ``train_steps`` steps into ``model_dir``.

  Resumes from the newest checkpoint in ``model_dir`` (params, optimizer,
  controller, step, data position) unless ``resume=False``; otherwise starts
  from ``init_checkpoint`` (params only, gate fresh) or from scratch.
  A damaged newest checkpoint (``writer.restore_newest``) is moved aside
  and the run resumes from the newest intact one (``on_damaged_checkpoint=
  'fall_back'``) or stops with an error naming it (``'error'``); a failed save
  ends the run with ``integrity.CheckpointSaveError``.
  ``stop_after`` (Python only) ends the run after that many steps of this call,
  as an interruption would, saving a checkpoint. ``inference`` sets how the
  evaluation's hard deletion buckets its compacted lengths. Called again on a
  finished run, it trains nothing and reports the final evaluation again.
  """
  start_time = time.time()
  if on_damaged_checkpoint not in writer.ON_DAMAGED:
    raise ValueError(f"train.on_damaged_checkpoint must be one of {writer.ON_DAMAGED}, "
                     f"got {on_damaged_checkpoint!r}")
  model_dir = os.path.abspath(os.path.expanduser(model_dir))
  os.makedirs(model_dir, exist_ok=True)
  if jax.process_index() == 0:  # one writer when several processes share the model dir
    config_files.write_config(model_dir, model_config)
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
      f.write(gin.config_str())

  trainer = Trainer(model_config, optimizer=optimizer, objective=objective, controller=controller,
                    mesh=mesh, num_microbatches=num_microbatches, seed=seed,
                    enable_dropout=enable_dropout)
  lengths = data_lib.resolve_feature_lengths(train_dataset)
  num_hosts, host = jax.process_count(), jax.process_index()
  input_length = lengths["inputs"]
  target_length = lengths["targets"]
  shardings = trainer.state_shardings(input_length, target_length)

  mngr = writer.manager(model_dir, max_to_keep=keep_checkpoints,
                             async_save=async_checkpointing)
  latest = mngr.latest_step() if resume else None
  train_iter = data_lib.BatchIterator(train_dataset, process_index=host, process_count=num_hosts)
  if latest is not None:
    target = trainer.abstract_state(input_length, target_length)
    latest, state, data_state = writer.restore_newest(
        mngr, target, shardings, on_damaged=on_damaged_checkpoint, data_iterator=train_iter)
    state = jax.device_put(state, shardings)
    if data_state is None:  # a checkpoint without a data_iterator item
      train_iter.skip(int(state["step"]))
    logger.info("resumed from %s at step %d (data: %s)", config_files.checkpoint_dir(model_dir),
                latest, (data_state or {}).get("resumed_by", "replay"))
  else:
    init_params = None
    if init_checkpoint:
      init_params = readers.restore_params(init_checkpoint)
      logger.info("initialised from %s", init_checkpoint)
    state = trainer.init_state(input_length, target_length, init_params=init_params,
                               reinit_gate=reinit_gate)
  step = int(state["step"])

  summary_writer = summaries.SummaryWriter(model_dir, enabled=tensorboard and host == 0)
  evaluator = None
  final_profile = None
  if eval_dataset is not None and eval_every > 0:
    evaluator = evaluation.Evaluator(trainer.module, trainer.partitioner, objective, controller,
                                     inference)
    if trainer.module.shortening.shortens:
      final_profile = evaluation.DeletionProfile(model_config.vocab_size)

  # the controller's target, or the length reduction BP / CP set by themselves
  target_rate = trainer.module.shortening.target_rate(controller.target_deletion_rate)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state["params"]))
  logger.info("model %s params, mesh %s, batch %d x %d, steps %d -> %d", f"{n_params:,}",
              dict(trainer.partitioner.mesh.shape), train_dataset.batch_size, input_length,
              step, train_steps)

  metrics_host: dict = _read_summary(model_dir) if step >= train_steps else {}
  eval_metrics: dict = {}
  evaluated_at = None
  last_saved = step if latest is not None else None
  interrupted = False
  window_start, window_examples = time.time(), 0
  steps_this_call = 0
  history: list = []

  def run_eval(current_step):
    nonlocal evaluated_at
    profile = final_profile if current_step >= train_steps else None
    results = evaluator.evaluate_dataset(
        state["params"], state["flax_mutables"][controller_lib.COLLECTION], eval_dataset,
        eval_steps, profile)
    for mode, values in results.items():
      summary_writer.scalars(f"eval_{mode}", current_step, values)
      logger.info("eval %s @%d: %s", mode, current_step, summaries.eval_line(values))
    evaluated_at = current_step
    return results

  def save(current_step):
    nonlocal last_saved
    if last_saved == current_step:
      return
    writer.save(mngr, current_step, state, train_iter)
    last_saved = current_step

  with _StopFlag() as stop:
    try:
      while step < train_steps:
        try:
          batch = next(train_iter)
        except StopIteration:
          logger.warning("train dataset exhausted at step %d", step)
          break
        state, metrics = trainer.train_step(state, batch)
        step += 1
        steps_this_call += 1
        window_examples += train_dataset.batch_size
        if step % log_every == 0 or step == train_steps:
          metrics_host = _to_host(metrics)
          elapsed = max(time.time() - window_start, 1e-9)
          rate = window_examples / elapsed
          metrics_host["examples_per_second"] = rate
          metrics_host["step"] = step
          history.append(metrics_host)
          logger.info(summaries.progress_line(step, train_steps, metrics_host, rate,
                                              _shown_target(trainer, controller, step)))
          summary_writer.scalars("train", step, metrics_host)
          window_start, window_examples = time.time(), 0
        if evaluator is not None and (step % eval_every == 0 or step == train_steps):
          eval_metrics = run_eval(step)
        if step % checkpoint_every == 0:
          save(step)
        if stop.stop or (stop_after is not None and steps_this_call >= stop_after):
          interrupted = stop.stop or step < train_steps
          break
      if (evaluator is not None and not interrupted and step >= train_steps
          and evaluated_at != step):
        eval_metrics = run_eval(step)
    except KeyboardInterrupt:
      interrupted = True
      logger.warning("interrupted at step %d; saving a checkpoint", step)
    finally:
      try:
        save(step)
        mngr.wait_until_finished()
      finally:
        mngr.close()
        summary_writer.close()

  if not metrics_host and steps_this_call:
    metrics_host = _to_host(metrics)
  finished = step >= train_steps and not interrupted
  if finished and steps_this_call and host == 0:
    _write_summary(model_dir, metrics_host)
  profile = final_profile.as_dict() if final_profile is not None and finished else {}
  ckpt = os.path.join(config_files.checkpoint_dir(model_dir), str(step))
  return TrainResult(model_dir=model_dir, checkpoint_dir=ckpt, step=step, metrics=metrics_host,
                     eval_metrics=eval_metrics, target_deletion_rate=target_rate,
                     wall_seconds=time.time() - start_time, interrupted=interrupted,
                     history=history, deletion_profile=profile)
