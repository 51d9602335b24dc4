"""The MrT5 training objective as pure functions.

loss = CE (+ t5x z-loss, normalised as t5x's ``loss_normalizing_factor``)
       + alpha * L_G                  (L_G = mean gate value over real encoder positions)
       + score_coeff * L_scores       (optional attention-score regularizer)
       + L_B                          (BP only: the boundary prior, ``pooling.boundary_loss``)

Which of these terms a model has, and what its deletion statistics count, is
its shortening's business (``Transformer.shortening``:
``auxiliary_losses`` and ``metric_sums``); this module never asks which kind
it is. The pooling baselines (BP, CP) have no gate regularizer: their "gate"
is the slot markers of ``pooling.slot_markers``, which make the deletion
metrics read as sequence-length reduction.

``compute_loss`` is the one function the project's trainer, the evaluator and
the t5x model class call. It returns the differentiable loss and a dict of
*sums* so that micro-batches and batches add up exactly
(``merge_metric_sums``); ``training.metrics`` is the table of what each sum
means and how it merges, and turns sums into the logged values.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Optional, Union

import gin
import jax
import jax.numpy as jnp

from mrt5_jax.maths import controller as controller_lib
from mrt5_jax.maths import packing
from mrt5_jax.training import metrics as metrics_lib
from mrt5_jax.maths.gate_losses import (  # noqa: F401  (re-exported: the loss terms' maths)
    GATE_LOSSES, entropy_regularizer, gate_entropy, gate_regularizer)
from mrt5_jax.model.shortening.base import gate_sums  # noqa: F401  (re-exported)

NUM_REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"
NUM_TOTAL_TARGET_TOKENS = "NUM_TOTAL_TARGET_TOKENS"
AVERAGE_PER_SEQUENCE = "AVERAGE_PER_SEQUENCE"
SPECIAL_NORMALIZING_FACTORS = (NUM_REAL_TARGET_TOKENS, NUM_TOTAL_TARGET_TOKENS,
                               AVERAGE_PER_SEQUENCE)
SCORE_PENALTY = "score_penalty"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """Loss knobs (t5x names where t5x has them) and the published training options.

  loss_normalizing_factor: one of ``SPECIAL_NORMALIZING_FACTORS``, a positive
    constant, or None (plain sum over target tokens, as t5x).
  score_loss_coeff: weight of the attention-score regularizer (0 = off).
  score_loss_start: None: that weight applies from the first step; an int:
    from this many steps after the controller's regularizer delay (0 = when
    alpha starts), so the task is learned before the regularizer bounds the
    attention scores (``score_loss_weight``; on the diagnostics this measured
    worse than from the first step: docs/deletion_control.md).
  gate_loss: the regularizer L_G that alpha weighs (``GATE_LOSSES``):
    ``gate_mean`` (mean G over real positions), ``clamped_logits_mean`` (mean
    of the gate logits clamped below at twice the threshold), ``logits_mean``,
    ``gate_var`` (minus the variance of G over real positions).
  entropy_coeff_1, entropy_coeff_2: the published entropy regularizer
    ``c1 mean_i H(G_i) - c2 H(logsumexp_i G_i - log L)`` (not weighted by alpha).
  hard_delete_train_prob: chance that a training batch runs with hard
    deletion (drawn from the ``hard_delete`` rng, so a resumed run draws the
    same; the project trainer draws once per step on the host and compiles a
    soft and a hard step, t5x's step draws per micro-batch inside), compacted
    to ``hard_delete_train_fraction`` of the input length.
  hard_delete_train_start: None: that chance applies from the first step;
    an int: hard-deletion batches begin this many steps after the
    controller's regularizer delay (the gate first learns which bytes it can
    delete from soft batches), rising linearly to ``hard_delete_train_prob``
    over ``hard_delete_train_ramp`` steps (``hard_delete_probability``).
  hard_delete_train_packed_rows: 0: hard-deletion batches compact each row
    (above). Otherwise the share of the batch's rows that the kept positions
    of all rows are packed into (``mrt5_jax.maths.packing``; rows of the input
    length), so the layers after the gate run on fewer rows (cheaper than a
    soft batch on a CPU, dearer on an H200: docs/benchmarks.md); a batch whose kept
    positions do not fit runs per-row hard deletion (the same loss up to float
    round-off). t5x's step plans in the step, into that share of the rows;
    the project trainer plans on the host from a stage-one pass, into the
    rows the batch needs (eighths of the rows, at most that share;
    ``Trainer.packed_rows_for``).
  freeze_gate_before_delay: the learned gate's parameters get no gradient
    until the controller's regularizer delay has passed (``gate_frozen_until_delay``),
    so what the gate first deletes is learned from the soft loss and alpha
    together on a model that has learned the task, not from the cross
    entropy alone using G as an attention bias (the published code trains the
    gate from the first step; docs/deletion_control.md). The forward pass is
    unchanged; with weight decay the optimizer still decays the gate.
  """
  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  loss_normalizing_factor: Union[str, float, None] = NUM_REAL_TARGET_TOKENS
  score_loss_coeff: float = 0.0
  score_loss_start: Optional[int] = None
  gate_loss: str = "gate_mean"
  entropy_coeff_1: float = 0.0
  entropy_coeff_2: float = 0.0
  hard_delete_train_prob: float = 0.0
  hard_delete_train_fraction: float = 1.0
  hard_delete_train_start: Optional[int] = None
  hard_delete_train_ramp: int = 0
  hard_delete_train_packed_rows: float = 0.0
  freeze_gate_before_delay: bool = False

  def __post_init__(self):
    factor = self.loss_normalizing_factor
    if isinstance(factor, str):
      if factor not in SPECIAL_NORMALIZING_FACTORS:
        raise ValueError(f"loss_normalizing_factor must be one of {SPECIAL_NORMALIZING_FACTORS}, "
                         f"a positive number or None; got {factor!r}")
    elif factor is not None and not float(factor) > 0:
      raise ValueError(f"loss_normalizing_factor must be positive, got {factor!r}")
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
    if self.z_loss < 0 or self.score_loss_coeff < 0:
      raise ValueError("z_loss and score_loss_coeff must be >= 0")
    if self.gate_loss not in GATE_LOSSES:
      raise ValueError(f"gate_loss must be one of {GATE_LOSSES}, got {self.gate_loss!r}")
    if not 0.0 <= self.hard_delete_train_prob <= 1.0:
      raise ValueError(f"hard_delete_train_prob must be in [0, 1], got "
                       f"{self.hard_delete_train_prob}")
    if not 0.0 < self.hard_delete_train_fraction <= 1.0:
      raise ValueError(f"hard_delete_train_fraction must be in (0, 1], got "
                       f"{self.hard_delete_train_fraction}")
    for name in ("hard_delete_train_start", "score_loss_start"):
      start = getattr(self, name)
      if start is not None and (not isinstance(start, int) or start < 0):
        raise ValueError(f"{name} must be None or an int >= 0, got {start!r}")
    if not 0.0 <= self.hard_delete_train_packed_rows <= 1.0:
      raise ValueError(f"hard_delete_train_packed_rows must be in [0, 1], got "
                       f"{self.hard_delete_train_packed_rows}")
    if not isinstance(self.hard_delete_train_ramp, int) or self.hard_delete_train_ramp < 0:
      raise ValueError(f"hard_delete_train_ramp must be an int >= 0, got "
                       f"{self.hard_delete_train_ramp!r}")


# ----------------------------------------------------------------------------- cross entropy


def cross_entropy_with_logits(logits: jax.Array, soft_targets: jax.Array,
                              z_loss: float) -> tuple[jax.Array, jax.Array]:
  """t5x's CE with z-loss. logits, soft_targets (..., V) -> (loss, z_loss) each (...,).

  loss includes the z-loss term ``z_loss * log(Z)^2``.
  """
  log_z = jax.nn.logsumexp(logits, axis=-1)
  log_softmax = logits - log_z[..., None]
  loss = -jnp.sum(soft_targets * log_softmax, axis=-1)
  total_z_loss = z_loss * jnp.square(log_z)
  return loss + total_z_loss, total_z_loss


def token_cross_entropy(logits: jax.Array, targets: jax.Array, *, z_loss: float = 0.0,
                        label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Per-token CE (+ z-loss), minus the label-smoothing constant, as t5x.

  logits (B, T, V) float, targets (B, T) int -> (loss (B, T), z_loss (B, T)).
  """
  vocab_size = logits.shape[-1]
  logits = logits.astype(jnp.float32)
  confidence = 1.0 - label_smoothing
  low_confidence = label_smoothing / (vocab_size - 1)
  normalizing_constant = -(
      confidence * jnp.log(confidence)
      + (vocab_size - 1) * low_confidence * jnp.log(low_confidence + 1e-20))
  soft_targets = jax.nn.one_hot(targets, vocab_size) * (confidence - low_confidence) + low_confidence
  loss, z = cross_entropy_with_logits(logits, soft_targets, z_loss)
  return loss - normalizing_constant, z


def _per_segment_weight_sums(weights: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """For each token, the summed weight of its (row, segment). (B, T) -> (B, T)."""
  batch, length = weights.shape
  flat_ids = (jnp.arange(batch)[:, None] * (length + 1) + segment_ids).reshape(-1)
  sums = jax.ops.segment_sum(weights.reshape(-1), flat_ids, num_segments=batch * (length + 1))
  return sums[flat_ids].reshape(batch, length)


def loss_weights_and_normalizer(batch: Mapping[str, jax.Array],
                                loss_normalizing_factor: Union[str, float, None]
                                ) -> tuple[jax.Array, jax.Array]:
  """t5x's ``get_loss_normalizing_factor_and_weights``: (weights (B, T), factor scalar).

  Weights default to ``decoder_target_tokens > 0``. The factor divides the
  weighted sum of token losses (None: 1, i.e. a plain sum).
  """
  targets = batch["decoder_target_tokens"]
  weights = batch.get("decoder_loss_weights")
  if weights is None:
    weights = targets > 0
  weights = weights.astype(jnp.float32)
  factor = loss_normalizing_factor
  if factor is None:
    return weights, jnp.float32(1.0)
  if factor == NUM_REAL_TARGET_TOKENS:
    return weights, jnp.sum(weights)
  if factor == NUM_TOTAL_TARGET_TOKENS:
    return weights, jnp.float32(targets.size)
  if factor == AVERAGE_PER_SEQUENCE:
    segment_ids = batch.get("decoder_segment_ids")
    if segment_ids is None:
      per_token = jnp.broadcast_to(jnp.sum(weights, axis=-1, keepdims=True), weights.shape)
    else:
      per_token = _per_segment_weight_sums(weights, segment_ids)
    weights = jnp.where(per_token > 0, weights / jnp.maximum(per_token, 1e-9), 0.0)
    return weights, jnp.sum(weights)
  return weights, jnp.float32(factor)


# ----------------------------------------------------------------------------- gate terms


def real_encoder_mask(encoder_input_tokens: jax.Array,
                      encoder_segment_ids: Optional[jax.Array] = None) -> jax.Array:
  """(B, L) bool: real (non-pad) encoder positions; segment ids > 0 when packed."""
  if encoder_segment_ids is not None:
    return encoder_segment_ids > 0
  return encoder_input_tokens > 0


def score_regularizer(intermediates: Any) -> jax.Array:
  """Mean over layers of every ``score_penalty`` the attention layers sowed (0 if none).

  A layer sows a scalar; a scanned stack sows one (layers,) array, so every
  layer counts once in either layout.
  """
  values = []

  def collect(path, leaf):
    if any(getattr(key, "key", None) == SCORE_PENALTY for key in path):
      values.append(jnp.asarray(leaf, jnp.float32))

  jax.tree_util.tree_map_with_path(collect, intermediates)
  if not values:
    return jnp.float32(0.0)
  return jnp.mean(jnp.concatenate([jnp.ravel(v) for v in values]))


# ----------------------------------------------------------------------------- the loss


def batch_normalizers(batch: Mapping[str, jax.Array], objective: ObjectiveConfig
                      ) -> dict[str, jax.Array]:
  """The two denominators of the loss for a whole (global) batch.

  Pass them to ``compute_loss`` for every micro-batch of that batch and the
  micro-batch losses add up exactly to the full-batch loss.
  """
  _, ce_factor = loss_weights_and_normalizer(batch, objective.loss_normalizing_factor)
  real = real_encoder_mask(batch["encoder_input_tokens"], batch.get("encoder_segment_ids"))
  ce_factor = jnp.asarray(ce_factor, jnp.float32)
  return {"ce": jnp.where(ce_factor > 0, ce_factor, 1.0),  # an all-pad batch gives loss 0
          "num_real": jnp.sum(real).astype(jnp.float32)}


def _forward(module, params, batch, rngs, enable_dropout: bool, stage_one, want_scores: bool,
             deletion: str, compacted_length: Optional[int],
             packing_plan: Optional[packing.PackingPlan] = None) -> dict:
  """The network on one batch: logits, gate values and what the loss and metrics need,
  with shapes that do not depend on ``deletion`` (so soft and hard can share a cond)."""
  outputs = module.apply(
      {"params": params},
      batch["encoder_input_tokens"], batch["decoder_input_tokens"],
      batch["decoder_target_tokens"],
      encoder_segment_ids=batch.get("encoder_segment_ids"),
      decoder_segment_ids=batch.get("decoder_segment_ids"),
      encoder_positions=batch.get("encoder_positions"),
      decoder_positions=batch.get("decoder_positions"),
      enable_dropout=enable_dropout, deletion=deletion, compacted_length=compacted_length,
      return_aux=True, stage_one=stage_one, packing_plan=packing_plan,
      rngs=rngs, mutable=["intermediates"] if want_scores else False)
  if want_scores:
    (logits, aux), state = outputs
    score_penalty = score_regularizer(state.get("intermediates", {}))
  else:
    logits, aux = outputs
    score_penalty = jnp.float32(0.0)
  return {"logits": logits, "gate": aux.gate, "gate_logits": aux.gate_logits,
          "num_dropped": aux.num_dropped, "score_penalty": score_penalty,
          "boundaries": aux.boundaries,
          "compacted_length": jnp.float32(aux.compacted_length),
          "hard": jnp.float32(deletion == "hard"),
          "packed": jnp.float32(packing_plan is not None)}


def hard_delete_probability(objective: ObjectiveConfig, step: jax.Array,
                            regularizer_delay: int) -> jax.Array:
  """The chance that the training batch of controller ``step`` runs with hard deletion.

  ``hard_delete_train_prob`` from the first step, or, with
  ``hard_delete_train_start`` = s and ``hard_delete_train_ramp`` = r, 0 before
  step ``regularizer_delay + s`` and ``prob * min(1, (step - delay - s + 1) / r)``
  from there (``prob`` at once when r is 0). float32 scalar.
  """
  prob = jnp.float32(objective.hard_delete_train_prob)
  if objective.hard_delete_train_start is None:
    return prob
  begin = regularizer_delay + objective.hard_delete_train_start
  after = jnp.asarray(step, jnp.float32) - begin
  if objective.hard_delete_train_ramp == 0:
    return jnp.where(after >= 0, prob, jnp.float32(0.0))
  share = jnp.clip((after + 1) / objective.hard_delete_train_ramp, 0.0, 1.0)
  return prob * share


def score_loss_weight(objective: ObjectiveConfig, step: jax.Array,
                      regularizer_delay: int) -> jax.Array:
  """The weight of the attention-score regularizer at controller ``step``:
  ``score_loss_coeff``, or 0 before step ``regularizer_delay + score_loss_start``
  when that is set. float32 scalar."""
  coeff = jnp.float32(objective.score_loss_coeff)
  if objective.score_loss_start is None:
    return coeff
  begin = regularizer_delay + objective.score_loss_start
  return jnp.where(jnp.asarray(step) >= begin, coeff, jnp.float32(0.0))


def _hard_delete_coin(objective: ObjectiveConfig, controller: controller_lib.ControllerConfig,
                      controller_state, rngs, enable_dropout: bool, deletion: str,
                      module) -> Optional[jax.Array]:
  """The draw that sends a training batch through hard deletion, or None (never)."""
  if (objective.hard_delete_train_prob <= 0 or not enable_dropout or deletion != "soft"
      or not module.shortening.trains_hard or not rngs or "hard_delete" not in rngs):
    return None
  chance = hard_delete_probability(objective, controller_state["step"],
                                   controller.regularizer_delay)
  return jax.random.bernoulli(rngs["hard_delete"], chance)


def _packed_rows_per_group(objective: ObjectiveConfig, module, batch,
                           num_groups: int) -> int:
  """Packed rows per group of a hard training batch (0: no packing)."""
  share = objective.hard_delete_train_packed_rows
  rows = batch["encoder_input_tokens"].shape[0]
  if not share or not module.shortening.packs or rows % num_groups:
    return 0
  return max(1, math.ceil(share * rows / num_groups))


def hard_delete_draw(objective: ObjectiveConfig, controller: controller_lib.ControllerConfig,
                     controller_step: int, hard_delete_key: jax.Array) -> bool:
  """On the host: whether the training batch of ``controller_step`` runs with
  hard deletion; the same draw ``compute_loss`` makes in the graph from the
  ``hard_delete`` stream's key (threefry, so every backend draws alike)."""
  chance = hard_delete_probability(objective, jnp.int32(controller_step),
                                   controller.regularizer_delay)
  return bool(jax.random.bernoulli(hard_delete_key, chance))


def stage_one_and_kept(module, params, batch, rngs, enable_dropout: bool, stage_one=None):
  """The encoder up to the shortening's layer on ``batch`` (unless ``stage_one``
  is given) and the positions each row keeps, (B,) int32: what a packing plan reads."""
  tokens, segment_ids = batch["encoder_input_tokens"], batch.get("encoder_segment_ids")
  if stage_one is None:
    stage_one = module.apply({"params": params}, tokens, segment_ids, enable_dropout,
                             method=module.encode_stage_one, rngs=rngs or {})
  return stage_one, module.shortening.kept_counts(stage_one.gate, tokens, segment_ids)


def _run_drawn(run, module, params, batch, rngs, enable_dropout: bool, stage_one,
               hard: bool, hard_length: int, rows_per_group: int, num_groups: int,
               objective: ObjectiveConfig) -> dict:
  """The forward pass of a batch whose coin was drawn on the host (one branch)."""
  if not hard:
    return run("soft", None)
  if not rows_per_group:
    return run("hard", hard_length)
  stage_one, kept = stage_one_and_kept(module, params, batch, rngs, enable_dropout, stage_one)
  length = batch["encoder_input_tokens"].shape[1]
  plan, _ = packing.plan_in_graph_capped(kept, length, num_groups, rows_per_group)
  run = functools.partial(_forward, module, params, batch, rngs or {}, enable_dropout,
                          stage_one, objective.score_loss_coeff > 0)
  return run("hard", hard_length, plan)


def gate_frozen_until_delay(params: Any, module: Any, controller_state: Mapping[str, jax.Array],
                            controller: controller_lib.ControllerConfig) -> Any:
  """``params`` whose learned gate (``encoder/delete_gate``) is cut from the gradient
  while the controller's regularizer delay lasts; the same values, and the
  same gradient once the delay has passed. Other kinds: ``params`` unchanged."""
  shortening = module.shortening
  if not shortening.learned_gate:
    return params
  active = controller_lib.is_active(controller_state, controller)
  hold = lambda value: jnp.where(active, value, jax.lax.stop_gradient(value))
  encoder = dict(params["encoder"])
  encoder[shortening.module_name] = jax.tree_util.tree_map(hold, encoder[shortening.module_name])
  return {**params, "encoder": encoder}


def compute_loss(module: Any, params: Any, controller_state: Mapping[str, jax.Array],
                 batch: Mapping[str, jax.Array], rngs: Optional[Mapping[str, jax.Array]], *,
                 objective: ObjectiveConfig, controller: controller_lib.ControllerConfig,
                 enable_dropout: bool = True, deletion: str = "soft",
                 normalizers: Optional[Mapping[str, jax.Array]] = None,
                 num_microbatches: int = 1, compacted_length: Optional[int] = None,
                 stage_one: Any = None, num_groups: int = 1,
                 hard_coin: Optional[bool] = None,
                 packed_rows_per_group: Optional[int] = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total loss and metric sums of one (micro-)batch. Pure; differentiable in params.

  Args:
    module: a ``mrt5_jax.model.network.Transformer``.
    params: its 'params' collection.
    controller_state: the 'controller' collection (see ``controller.init_state``);
      alpha is read from it (0 before the regularizer delay), never changed here.
    batch: feature-converted arrays (encoder_input_tokens, decoder_input_tokens,
      decoder_target_tokens, optional *_segment_ids, *_positions, decoder_loss_weights).
    rngs: {'dropout', 'deletion', 'gate_noise', 'hard_delete': key} (None when nothing
      is random); ``hard_delete`` draws whether this training batch runs with
      hard deletion (``ObjectiveConfig.hard_delete_train_prob``).
    normalizers: from ``batch_normalizers`` of the whole batch (default: this batch).
    num_microbatches: divides the (mean-valued) score regularizer so micro-batches sum.
    deletion, compacted_length: 'soft' (training), or 'hard' with this static
      compacted length (default: the input length).
    stage_one: the network's ``encode_stage_one`` output for this batch when
      it was computed already (``hard_deletion.EncodePath.read_gate``); the
      encoder prefix then does not run again.
    num_groups: packed hard-deletion batches pack within this many groups of
      consecutive rows (the data-parallel shards, so packing stays on each
      device; ``ObjectiveConfig.hard_delete_train_packed_rows``).
    hard_coin: None: whether a training batch runs hard is drawn here, in the
      graph (``lax.cond`` between soft and hard; a packed batch that does not
      fit runs per row). True / False: drawn already, on the host
      (``hard_delete_draw``), so only that branch is traced: a packed batch
      that does not fit then caps its rows' kept positions
      (``packing.plan_in_graph_capped``: the longest rows drop their last
      ones, counted in ``num_dropped``) instead of carrying a fallback branch.
    packed_rows_per_group: with ``hard_coin``, the packed rows per group the
      host chose for this batch (0: per row); None: from
      ``hard_delete_train_packed_rows``.

  Returns:
    (loss scalar, metric sums: the keys of ``metrics.SUMS``).
  """
  if objective.freeze_gate_before_delay:
    params = gate_frozen_until_delay(params, module, controller_state, controller)
  if normalizers is None:
    normalizers = batch_normalizers(batch, objective)
  run = functools.partial(_forward, module, params, batch, rngs or {}, enable_dropout,
                          stage_one, objective.score_loss_coeff > 0)
  length = batch["encoder_input_tokens"].shape[1]
  coin = _hard_delete_coin(objective, controller, controller_state, rngs, enable_dropout,
                           deletion, module)
  hard_length = max(1, math.ceil(objective.hard_delete_train_fraction * length))
  rows_per_group = _packed_rows_per_group(objective, module, batch, num_groups)
  if hard_coin is not None and packed_rows_per_group is not None:
    rows_per_group = packed_rows_per_group
  if hard_coin is not None and coin is not None:
    out = _run_drawn(run, module, params, batch, rngs, enable_dropout, stage_one, hard_coin,
                     hard_length, rows_per_group, num_groups, objective)
  elif coin is None:
    out = run(deletion, compacted_length)
  elif not rows_per_group:
    out = jax.lax.cond(coin, lambda: run("hard", hard_length), lambda: run("soft", None))
  else:
    stage_one, kept = stage_one_and_kept(module, params, batch, rngs, enable_dropout, stage_one)
    plan, fits = packing.plan_in_graph(kept, length, num_groups, rows_per_group)
    run = functools.partial(_forward, module, params, batch, rngs or {}, enable_dropout,
                            stage_one, objective.score_loss_coeff > 0)
    branch = jnp.where(coin, jnp.where(fits, 2, 1), 0)
    out = jax.lax.switch(branch, [lambda: run("soft", None), lambda: run("hard", hard_length),
                                  lambda: run("hard", hard_length, plan)])
  logits, score_penalty = out["logits"], out["score_penalty"]

  weights, _ = loss_weights_and_normalizer(batch, objective.loss_normalizing_factor)
  token_loss, token_z = token_cross_entropy(
      logits, batch["decoder_target_tokens"], z_loss=objective.z_loss,
      label_smoothing=objective.label_smoothing)
  loss_sum = jnp.sum(token_loss * weights)
  z_sum = jnp.sum(token_z * weights)
  ce_loss = loss_sum / normalizers["ce"]

  real = real_encoder_mask(batch["encoder_input_tokens"], batch.get("encoder_segment_ids"))
  alpha = controller_lib.effective_alpha(controller_state, controller)
  shortening = module.shortening
  terms = shortening.auxiliary_losses(out, real, objective=objective,
                                      num_real=normalizers["num_real"],
                                      num_microbatches=num_microbatches)
  gate_loss, entropy_penalty = terms["gate_loss"], terms["entropy_penalty"]
  boundary_loss = terms["boundary_loss"]
  sums = shortening.metric_sums(out["gate"], real)
  score_weight = score_loss_weight(objective, controller_state["step"],
                                   controller.regularizer_delay)
  loss = (ce_loss + alpha * gate_loss + entropy_penalty + boundary_loss
          + score_weight * score_penalty / num_microbatches)

  targets = batch["decoder_target_tokens"]
  correct = (jnp.argmax(logits, axis=-1) == targets) & (targets > 0)
  metric_sums = {
      "loss": loss,
      "ce_loss": ce_loss - z_sum / normalizers["ce"],
      "z_loss": z_sum / normalizers["ce"],
      "gate_loss": gate_loss,
      "score_penalty": score_penalty / num_microbatches,
      "cross_entropy_sum": loss_sum - z_sum,
      "num_target_tokens": jnp.sum(targets > 0).astype(jnp.float32),
      "num_correct": jnp.sum(correct).astype(jnp.float32),
      "num_sequences": jnp.sum(jnp.any(real, axis=-1)).astype(jnp.float32),
      "entropy_penalty": entropy_penalty,
      "boundary_loss": boundary_loss,
      "hard_deletion_batches": out["hard"],
      "packed_hard_batches": out["packed"],
      "num_dropped": jnp.sum(out["num_dropped"]).astype(jnp.float32),
      "compacted_length": out["compacted_length"],
      **sums,
  }
  return loss, metric_sums


def merge_metric_sums(a: Mapping[str, jax.Array], b: Mapping[str, jax.Array]) -> dict:
  """Combine the metric sums of two micro-batches (each as ``metrics.SUMS`` says)."""
  return metrics_lib.merge_sums(a, b)
