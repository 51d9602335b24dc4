"""The project's own trainer (no t5x needed): a jitted, sharded train step and the loop.

Train state (a plain pytree, checkpointed as is):
  {'params': ..., 'opt_state': ..., 'flax_mutables': {'controller': {...}}, 'step': int32}

``Trainer`` owns the module, mesh, optimizer and compiled step; ``train`` (gin)
runs the loop: resume or initialise (optionally from another checkpoint with a
fresh gate), log, summarise, evaluate, checkpoint, and stop cleanly on
interruption.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from typing import Any, Mapping, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mrt5_jax import checkpoints
from mrt5_jax import controller as controller_lib
from mrt5_jax import data as data_lib
from mrt5_jax import layer_stacking
from mrt5_jax import objective as objective_lib
from mrt5_jax import optimizers
from mrt5_jax import partitioning
from mrt5_jax import summaries
from mrt5_jax import train_step
from mrt5_jax import trees
from mrt5_jax.config import MrT5Config
from mrt5_jax.hard_deletion import InferenceConfig
from mrt5_jax.network import Transformer

logger = logging.getLogger("mrt5_jax")

GATE_PATH = ("encoder", "delete_gate")


def merge_init_params(fresh: Any, loaded: Any, *, reinit_gate: bool = True) -> tuple[Any, list]:
  """Parameters of ``fresh`` replaced by ``loaded`` wherever the path exists there.

  The delete gate keeps its fresh initialisation when ``reinit_gate`` or when
  the loaded tree has none (continued pre-training from ByT5). Any other
  parameter missing from ``loaded``, or of another shape, is an error.
  ``loaded`` may be scanned or not; it is brought into ``fresh``'s layout.
  Returns (params, the paths kept fresh).
  """
  loaded_flat = trees.flatten(layer_stacking.like(loaded, fresh))
  kept_fresh, problems = [], []

  def pick(key, leaf):
    is_gate = key[:2] == GATE_PATH
    if is_gate and (reinit_gate or key not in loaded_flat):
      kept_fresh.append("/".join(key))
      return leaf
    if key not in loaded_flat:
      problems.append(f"missing {'/'.join(key)}")
      return leaf
    value = np.asarray(loaded_flat[key])
    if value.shape != leaf.shape:
      problems.append(f"{'/'.join(key)}: checkpoint shape {value.shape}, model {leaf.shape}")
      return leaf
    return value.astype(leaf.dtype)

  merged = trees.map_with_path(pick, fresh)
  if problems:
    raise ValueError("init checkpoint does not fit the model config: " + "; ".join(problems[:10])
                     + (f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""))
  return merged, kept_fresh


RNG_STREAMS = ("dropout", "deletion", "gate_noise", "hard_delete")


def training_rngs(rng: jax.Array) -> dict[str, jax.Array]:
  """The flax rng streams of one training (micro-)batch, all derived from ``rng``
  (itself from the seed and the step, so a resumed run draws the same)."""
  return dict(zip(RNG_STREAMS, jax.random.split(rng, len(RNG_STREAMS))))


def _split_microbatches(batch: Mapping[str, jax.Array], num: int) -> dict[str, jax.Array]:
  """(B, ...) -> (num, B/num, ...); micro-batch m takes rows m, m+num, ... (spread over shards)."""
  def split(x):
    x = x.reshape((x.shape[0] // num, num) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return {k: split(v) for k, v in batch.items()}


class Trainer:
  """Compiled, sharded train step for one model/optimizer/objective."""

  def __init__(self, config: MrT5Config, *, optimizer: optimizers.OptimizerConfig,
               objective: objective_lib.ObjectiveConfig = objective_lib.ObjectiveConfig(),
               controller: controller_lib.ControllerConfig = controller_lib.ControllerConfig(),
               mesh: partitioning.MeshConfig = partitioning.MeshConfig(),
               num_microbatches: int = 1, seed: int = 0, enable_dropout: bool = True,
               devices=None):
    if num_microbatches < 1:
      raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
    self.config = config
    self.module = Transformer(config)
    self.optimizer_config = optimizer
    self.tx = optimizer.build()
    self.schedule = optimizer.schedule
    self.objective = objective
    self.controller = controller
    self.partitioner = partitioning.Partitioner(mesh, devices)
    self.num_microbatches = num_microbatches
    self.seed = seed
    self.enable_dropout = enable_dropout
    self._state_shardings = None
    self._step_fn = None

  # -------------------------------------------------------------------------- state

  def _init_variables(self, rng, input_length: int, target_length: int):
    enc = jnp.ones((1, input_length), jnp.int32)
    dec = jnp.ones((1, target_length), jnp.int32)
    return self.module.init(rng, enc, dec, dec, enable_dropout=False)

  def abstract_variables(self, input_length: int, target_length: int):
    return jax.eval_shape(lambda rng: self._init_variables(rng, input_length, target_length),
                          jax.random.PRNGKey(0))

  def state_shardings(self, input_length: int, target_length: int) -> dict:
    """Shardings of the train state, from the network's logical param axes."""
    if self._state_shardings is None:
      abstract = self.abstract_variables(input_length, target_length)
      param_sh = self.partitioner.param_shardings(abstract["params_axes"])
      rep = self.partitioner.replicated
      self._state_shardings = {
          "params": param_sh,
          "opt_state": self.partitioner.optimizer_shardings(self.tx, abstract["params"],
                                                            param_sh),
          "flax_mutables": {controller_lib.COLLECTION: jax.tree_util.tree_map(
              lambda _: rep, controller_lib.init_state(self.controller))},
          "step": rep,
      }
    return self._state_shardings

  def abstract_state(self, input_length: int, target_length: int) -> dict:
    """ShapeDtypeStructs of the train state (the restore target)."""
    def make():
      params = self._init_variables(jax.random.PRNGKey(0), input_length, target_length)["params"]
      return {"params": params, "opt_state": self.tx.init(params),
              "flax_mutables": {controller_lib.COLLECTION: controller_lib.init_state(
                  self.controller)},
              "step": jnp.zeros((), jnp.int32)}
    return jax.eval_shape(make)

  def init_state(self, input_length: int, target_length: int, *,
                 init_params: Optional[Any] = None, reinit_gate: bool = True) -> dict:
    """A fresh train state placed on the mesh (params from ``init_params`` if given)."""
    shardings = self.state_shardings(input_length, target_length)
    rng = jax.random.PRNGKey(self.seed)

    def make(rng):
      return self._init_variables(rng, input_length, target_length)["params"]

    with self.partitioner.context():
      params = jax.jit(make, out_shardings=shardings["params"])(rng)
    del make
    if init_params is not None:
      merged, fresh = merge_init_params(jax.device_get(params), init_params,
                                        reinit_gate=reinit_gate)
      if fresh:
        logger.info("freshly initialised: %s", ", ".join(fresh))
      params = jax.device_put(merged, shardings["params"])
    with self.partitioner.context():
      opt_state = jax.jit(self.tx.init, out_shardings=shardings["opt_state"])(params)
    state = {
        "params": params,
        "opt_state": opt_state,
        "flax_mutables": {controller_lib.COLLECTION: controller_lib.init_state(self.controller)},
        "step": jnp.zeros((), jnp.int32),
    }
    return jax.device_put(state, shardings)

  # -------------------------------------------------------------------------- step

  def _loss_and_grads(self, params, controller_state, batch, rng):
    """Gradients and metric sums of the whole batch, one micro-batch at a time,
    and the controller state after the step (``train_step.advance_controller``)."""
    num_micro = self.num_microbatches
    normalizers = train_step.loss_normalizers(batch, self.objective, whole_batch=batch)

    def loss(params, micro, micro_rng):
      return objective_lib.compute_loss(
          self.module, params, controller_state, micro, training_rngs(micro_rng),
          objective=self.objective, controller=self.controller,
          enable_dropout=self.enable_dropout, normalizers=normalizers,
          num_microbatches=num_micro)

    grad_fn = jax.value_and_grad(loss, has_aux=True)
    advance = lambda state, counts, sums: train_step.advance_controller(
        state, counts, sums, self.controller, num_micro)
    if num_micro == 1:
      (_, sums), grads = grad_fn(params, batch, rng)
      new_state, _ = advance(controller_state, train_step.initial_counts(), sums)
      return sums, grads, new_state
    micro = _split_microbatches(batch, num_micro)
    first = {k: v[0] for k, v in micro.items()}
    (_, sums0), grads0 = grad_fn(params, first, jax.random.fold_in(rng, 0))
    state0, counts0 = advance(controller_state, train_step.initial_counts(), sums0)

    def body(carry, index):
      sums, grads, state, counts = carry
      mb = {k: jax.lax.dynamic_index_in_dim(v, index, keepdims=False) for k, v in micro.items()}
      (_, s), g = grad_fn(params, mb, jax.random.fold_in(rng, index))
      state, counts = advance(state, counts, s)
      return (objective_lib.merge_metric_sums(sums, s),
              jax.tree_util.tree_map(jnp.add, grads, g), state, counts), None

    (sums, grads, new_state, _), _ = jax.lax.scan(
        body, (sums0, grads0, state0, counts0), jnp.arange(1, num_micro))
    return sums, grads, new_state

  def _train_step(self, state, batch):
    step = state["step"]
    rng = jax.random.fold_in(jax.random.PRNGKey(self.seed), step)
    controller_state = state["flax_mutables"][controller_lib.COLLECTION]
    sums, grads, new_controller = self._loss_and_grads(state["params"], controller_state,
                                                       batch, rng)
    updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    alpha = controller_lib.effective_alpha(controller_state, self.controller)
    metrics = train_step.finalize(train_step.step_metrics(sums, alpha))
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = jnp.asarray(self.schedule(step), jnp.float32)
    new_state = {"params": params, "opt_state": opt_state,
                 "flax_mutables": {controller_lib.COLLECTION: new_controller},
                 "step": step + 1}
    return new_state, metrics

  def compiled_step(self, input_length: int, target_length: int):
    """jax.jit of the train step with explicit in/out shardings (state donated)."""
    if self._step_fn is None:
      shardings = self.state_shardings(input_length, target_length)
      self._step_fn = jax.jit(
          self._train_step,
          in_shardings=(shardings, self.partitioner.data_sharding),
          out_shardings=(shardings, self.partitioner.replicated),
          donate_argnums=(0,))
    return self._step_fn

  def train_step(self, state: dict, batch: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """One optimisation step on a host batch; returns (new state, metrics as arrays)."""
    global_batch = self.partitioner.global_batch_rows(batch["encoder_input_tokens"].shape[0])
    if global_batch % (self.num_microbatches * self.partitioner.data_size):
      raise ValueError(f"batch size {global_batch} must be divisible by num_microbatches "
                       f"({self.num_microbatches}) x data-parallel size "
                       f"({self.partitioner.data_size})")
    step_fn = self.compiled_step(batch["encoder_input_tokens"].shape[1],
                                 batch["decoder_target_tokens"].shape[1])
    with self.partitioner.context():
      return step_fn(state, self.partitioner.shard_batch(batch))


# ------------------------------------------------------------------------------ the loop


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
  A damaged newest checkpoint (``checkpoints.restore_newest``) is moved aside
  and the run resumes from the newest intact one (``on_damaged_checkpoint=
  'fall_back'``) or stops with an error naming it (``'error'``); a failed save
  ends the run with ``checkpoints.CheckpointSaveError``.
  ``stop_after`` (Python only) ends the run after that many steps of this call,
  as an interruption would, saving a checkpoint. ``inference`` sets how the
  evaluation's hard deletion buckets its compacted lengths. Called again on a
  finished run, it trains nothing and reports the final evaluation again.
  """
  start_time = time.time()
  if on_damaged_checkpoint not in checkpoints.ON_DAMAGED:
    raise ValueError(f"train.on_damaged_checkpoint must be one of {checkpoints.ON_DAMAGED}, "
                     f"got {on_damaged_checkpoint!r}")
  model_dir = os.path.abspath(os.path.expanduser(model_dir))
  os.makedirs(model_dir, exist_ok=True)
  if jax.process_index() == 0:  # one writer when several processes share the model dir
    checkpoints.write_config(model_dir, model_config)
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

  mngr = checkpoints.manager(model_dir, max_to_keep=keep_checkpoints,
                             async_save=async_checkpointing)
  latest = mngr.latest_step() if resume else None
  train_iter = data_lib.BatchIterator(train_dataset, process_index=host, process_count=num_hosts)
  if latest is not None:
    target = trainer.abstract_state(input_length, target_length)
    latest, state, data_state = checkpoints.restore_newest(
        mngr, target, shardings, on_damaged=on_damaged_checkpoint, data_iterator=train_iter)
    state = jax.device_put(state, shardings)
    if data_state is None:  # a checkpoint without a data_iterator item
      train_iter.skip(int(state["step"]))
    logger.info("resumed from %s at step %d (data: %s)", checkpoints.checkpoint_dir(model_dir),
                latest, (data_state or {}).get("resumed_by", "replay"))
  else:
    init_params = None
    if init_checkpoint:
      init_params = checkpoints.restore_params(init_checkpoint)
      logger.info("initialised from %s", init_checkpoint)
    state = trainer.init_state(input_length, target_length, init_params=init_params,
                               reinit_gate=reinit_gate)
  step = int(state["step"])

  writer = summaries.SummaryWriter(model_dir, enabled=tensorboard and host == 0)
  evaluator = None
  final_profile = None
  if eval_dataset is not None and eval_every > 0:
    from mrt5_jax import evaluation
    evaluator = evaluation.Evaluator(trainer.module, trainer.partitioner, objective, controller,
                                     inference)
    if model_config.has_gate:
      final_profile = evaluation.DeletionProfile(model_config.vocab_size)

  target_rate = controller.target_deletion_rate if model_config.has_gate else None
  if model_config.is_pooling:  # no controller: the method sets its own length reduction
    target_rate = model_config.length_reduction_target
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
      writer.scalars(f"eval_{mode}", current_step, values)
      logger.info("eval %s @%d: %s", mode, current_step, summaries.eval_line(values))
    evaluated_at = current_step
    return results

  def save(current_step):
    nonlocal last_saved
    if last_saved == current_step:
      return
    checkpoints.save(mngr, current_step, state, train_iter)
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
                                              target_rate))
          writer.scalars("train", step, metrics_host)
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
        writer.close()

  if not metrics_host and steps_this_call:
    metrics_host = _to_host(metrics)
  finished = step >= train_steps and not interrupted
  if finished and steps_this_call and host == 0:
    _write_summary(model_dir, metrics_host)
  profile = final_profile.as_dict() if final_profile is not None and finished else {}
  ckpt = os.path.join(checkpoints.checkpoint_dir(model_dir), str(step))
  return TrainResult(model_dir=model_dir, checkpoint_dir=ckpt, step=step, metrics=metrics_host,
                     eval_metrics=eval_metrics, target_deletion_rate=target_rate,
                     wall_seconds=time.time() - start_time, interrupted=interrupted,
                     history=history, deletion_profile=profile)
