"""The project's own trainer (no t5x needed): a jitted, sharded train step and the loop.

Train state (a plain pytree, checkpointed as is):
  {'params': ..., 'opt_state': ..., 'flax_mutables': {'controller': {...}}, 'step': int32}

``Trainer`` owns the module, mesh, optimizer and compiled step; the loop that
resumes, logs, evaluates and checkpoints is the job ``mrt5_jax.jobs.train``.
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mrt5_jax.maths import controller as controller_lib
from mrt5_jax.maths import packing
from mrt5_jax.maths import rng as rng_lib
from mrt5_jax.model import layer_stacking
from mrt5_jax.training import objective as objective_lib
from mrt5_jax.training import optimizers
from mrt5_jax.parallel import partitioning
from mrt5_jax.training import train_step
from mrt5_jax.maths import trees
from mrt5_jax.model.config import MrT5Config
from mrt5_jax.model.network import Transformer
from mrt5_jax.model.shortening import registry

logger = logging.getLogger("mrt5_jax")

# Where each shortening keeps its own parameters (the delete gate, BP's boundary
# predictor, CP's convolution): fresh when a model continues a ByT5.
SHORTENING_PATHS = frozenset(("encoder", cls.module_name)
                             for cls in registry.SHORTENINGS.values() if cls.module_name)


def merge_init_params(fresh: Any, loaded: Any, *, reinit_gate: bool = True) -> tuple[Any, list]:
  """Parameters of ``fresh`` replaced by ``loaded`` wherever the path exists there.

  The shortening's own module (the delete gate, BP's boundary predictor, CP's
  convolution) keeps its fresh initialisation when ``reinit_gate`` or when the
  loaded tree has no such parameter (continued pre-training from ByT5). Any other
  parameter missing from ``loaded``, or of another shape, is an error.
  ``loaded`` may be scanned or not; it is brought into ``fresh``'s layout.
  Returns (params, the paths kept fresh).
  """
  loaded_flat = trees.flatten(layer_stacking.like(loaded, fresh))
  kept_fresh, problems = [], []

  def pick(key, leaf):
    is_gate = key[:2] in SHORTENING_PATHS
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


# The rng streams and their derivation live in ``maths.rng`` (shared with t5x
# and inference).
RNG_STREAMS = rng_lib.TRAINING_STREAMS
training_rngs = rng_lib.training_streams


def _host_int(value) -> int:
  """A replicated scalar as a Python int (read from this process's own copy)."""
  if isinstance(value, jax.Array):
    value = value.addressable_data(0)
  return int(np.asarray(value))


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
    self._step_fns = {}
    self._kept_fn = None

  # -------------------------------------------------------------------------- state

  def _init_variables(self, rng, input_length: int, target_length: int):
    enc = jnp.ones((1, input_length), jnp.int32)
    dec = jnp.ones((1, target_length), jnp.int32)
    return self.module.init(rng_lib.init_streams(rng), enc, dec, dec, enable_dropout=False)

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
    rng = rng_lib.seed_key(self.seed)

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

  def _loss_and_grads(self, params, controller_state, batch, rng, hard: Optional[bool] = None,
                      packed_rows: Optional[int] = None):
    """Gradients and metric sums of the whole batch, one micro-batch at a time,
    and the controller state after the step (``train_step.advance_controller``).
    ``hard``: the step's hard-deletion coin drawn on the host (``hard_delete_draw``),
    or None to draw it per micro-batch in the graph; ``packed_rows``: with
    ``hard``, the packed rows per group chosen on the host (``packed_rows_for``)."""
    num_micro = self.num_microbatches
    normalizers = train_step.loss_normalizers(batch, self.objective, whole_batch=batch)

    def loss(params, micro, micro_rng):
      return objective_lib.compute_loss(
          self.module, params, controller_state, micro, training_rngs(micro_rng),
          objective=self.objective, controller=self.controller,
          enable_dropout=self.enable_dropout, normalizers=normalizers,
          num_microbatches=num_micro, num_groups=self.partitioner.data_size, hard_coin=hard,
          packed_rows_per_group=packed_rows)

    grad_fn = jax.value_and_grad(loss, has_aux=True)
    advance = lambda state, counts, sums: train_step.advance_controller(
        state, counts, sums, self.controller, num_micro,
        steers=self.module.shortening.learned_gate)
    micro_rng = lambda index: rng_lib.microbatch_key(rng, index, num_micro)
    if num_micro == 1:
      (_, sums), grads = grad_fn(params, batch, micro_rng(0))
      new_state, _ = advance(controller_state, train_step.initial_counts(), sums)
      return sums, grads, new_state
    micro = _split_microbatches(batch, num_micro)
    first = {k: v[0] for k, v in micro.items()}
    (_, sums0), grads0 = grad_fn(params, first, micro_rng(0))
    state0, counts0 = advance(controller_state, train_step.initial_counts(), sums0)

    def body(carry, index):
      sums, grads, state, counts = carry
      mb = {k: jax.lax.dynamic_index_in_dim(v, index, keepdims=False) for k, v in micro.items()}
      (_, s), g = grad_fn(params, mb, micro_rng(index))
      state, counts = advance(state, counts, s)
      return (objective_lib.merge_metric_sums(sums, s),
              jax.tree_util.tree_map(jnp.add, grads, g), state, counts), None

    (sums, grads, new_state, _), _ = jax.lax.scan(
        body, (sums0, grads0, state0, counts0), jnp.arange(1, num_micro))
    return sums, grads, new_state

  def _train_step(self, state, batch, hard: Optional[bool] = None,
                  packed_rows: Optional[int] = None):
    step = state["step"]
    rng = rng_lib.step_key(self.seed, step)
    controller_state = state["flax_mutables"][controller_lib.COLLECTION]
    sums, grads, new_controller = self._loss_and_grads(state["params"], controller_state,
                                                       batch, rng, hard, packed_rows)
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

  def compiled_step(self, input_length: int, target_length: int, hard: Optional[bool] = None,
                    packed_rows: Optional[int] = None):
    """jax.jit of the train step with explicit in/out shardings (state donated).

    ``hard``: None compiles the step that draws soft or hard deletion per
    micro-batch inside (a ``lax.cond``, as t5x's step does); True / False the
    step of a batch drawn hard / soft on the host, which carries only its own
    branch (what ``train_step`` runs when the objective has hard batches).
    ``packed_rows``: a hard step's packed rows per data-parallel group (0:
    per row; None: ``hard_delete_train_packed_rows``'s share).
    """
    key = (hard, packed_rows)
    if key not in self._step_fns:
      shardings = self.state_shardings(input_length, target_length)
      self._step_fns[key] = jax.jit(
          functools.partial(self._train_step, hard=hard, packed_rows=packed_rows),
          in_shardings=(shardings, self.partitioner.data_sharding),
          out_shardings=(shardings, self.partitioner.replicated),
          donate_argnums=(0,))
    return self._step_fns[key]

  @property
  def packs_hard_batches(self) -> bool:
    """Whether hard batches may pack (``hard_delete_train_packed_rows`` > 0)."""
    return bool(self.draws_hard_batches and self.objective.hard_delete_train_packed_rows
                and self.module.shortening.packs)

  def _kept_counts(self, params, batch, step):
    """(micro-batches, rows) positions each row's gate keeps in the step's
    forward pass (stage one with the step's own rngs, as ``compute_loss``
    runs it)."""
    num_micro = self.num_microbatches
    rng = rng_lib.step_key(self.seed, step)
    micro = _split_microbatches(batch, num_micro) if num_micro > 1 else {
        k: v[None] for k, v in batch.items()}
    counts = []
    for index in range(num_micro):
      _, kept = objective_lib.stage_one_and_kept(
          self.module, params, {k: v[index] for k, v in micro.items()},
          training_rngs(rng_lib.microbatch_key(rng, index, num_micro)), self.enable_dropout)
      counts.append(kept)
    return jnp.stack(counts)

  def packed_rows_for(self, state: dict, batch: Mapping[str, np.ndarray]) -> int:
    """The packed rows per data-parallel group for a hard batch (0: per row).

    Stage one runs first (``_kept_counts``, forward only), the host plans
    (first-fit decreasing per group of every micro-batch) and buckets the rows
    it needs to eighths of the group; the batch packs where that is at most
    ``hard_delete_train_packed_rows`` of the rows and fewer than all, and runs
    per row otherwise, so a batch that deletes too little is never cut.
    """
    if not self.packs_hard_batches:
      return 0
    if self._kept_fn is None:
      self._kept_fn = jax.jit(self._kept_counts,
                              in_shardings=(self.state_shardings(
                                  batch["encoder_input_tokens"].shape[1],
                                  batch["decoder_target_tokens"].shape[1])["params"],
                                  self.partitioner.data_sharding, self.partitioner.replicated),
                              out_shardings=self.partitioner.replicated)
    with self.partitioner.context():
      kept = self._kept_fn(state["params"], self.partitioner.shard_batch(batch), state["step"])
    kept = np.asarray(kept.addressable_data(0))
    groups = self.partitioner.data_size
    if kept.shape[1] % groups:
      return 0
    length = batch["encoder_input_tokens"].shape[1]
    per_group = kept.shape[1] // groups
    needed = max(packing.first_fit_decreasing(group, length)[1]
                 for group in kept.reshape(-1, per_group))
    rows = packing.rows_bucket(needed, per_group, 8)
    limit = math.ceil(self.objective.hard_delete_train_packed_rows * per_group)
    return rows if rows <= limit and rows < per_group else 0

  @property
  def draws_hard_batches(self) -> bool:
    """Whether some training batches run with hard deletion (drawn on the host)."""
    return (self.objective.hard_delete_train_prob > 0 and self.enable_dropout
            and self.module.shortening.trains_hard)

  def hard_delete_draw(self, state: dict) -> Optional[bool]:
    """Whether the next step of ``state`` runs with hard deletion (None: never).

    The draw ``compute_loss`` would make in the graph for the step's first
    micro-batch (its ``hard_delete`` key, the controller's step), made on the
    host so that the step compiles one branch; it applies to every micro-batch
    of the step. Every process draws the same (the key is the seed's).
    """
    if not self.draws_hard_batches:
      return None
    step = _host_int(state["step"])
    controller_step = _host_int(state["flax_mutables"][controller_lib.COLLECTION]["step"])
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
      key = rng_lib.microbatch_key(rng_lib.step_key(self.seed, step), 0, self.num_microbatches)
      stream = rng_lib.training_streams(key)["hard_delete"]
      return objective_lib.hard_delete_draw(self.objective, self.controller, controller_step,
                                            stream)

  def train_step(self, state: dict, batch: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """One optimisation step on a host batch; returns (new state, metrics as arrays)."""
    global_batch = self.partitioner.global_batch_rows(batch["encoder_input_tokens"].shape[0])
    if global_batch % (self.num_microbatches * self.partitioner.data_size):
      raise ValueError(f"batch size {global_batch} must be divisible by num_microbatches "
                       f"({self.num_microbatches}) x data-parallel size "
                       f"({self.partitioner.data_size})")
    hard = self.hard_delete_draw(state)
    packed_rows = self.packed_rows_for(state, batch) if hard and self.packs_hard_batches else None
    step_fn = self.compiled_step(batch["encoder_input_tokens"].shape[1],
                                 batch["decoder_target_tokens"].shape[1],
                                 hard=hard, packed_rows=packed_rows)
    with self.partitioner.context():
      return step_fn(state, self.partitioner.shard_batch(batch))


# ------------------------------------------------------------------------------ the loop
