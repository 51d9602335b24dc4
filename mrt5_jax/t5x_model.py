"""MrT5 as a t5x model (the only module of the library that imports t5x).

``MrT5Model`` is t5x's ``EncoderDecoderModel`` plus what MrT5 needs:

* ``loss_fn`` is ``mrt5_jax.objective.compute_loss`` (CE + z-loss + alpha * L_G
  [+ score regularizer]); it steps the controller and reports the deletion
  metrics (``deletion/rate``, ``deletion/alpha``, ``deletion/gate_mean``,
  ``deletion/compacted_length``, ...) as clu metrics, which t5x writes to
  TensorBoard.
* The controller state is the flax collection ``'controller'``; t5x carries it
  as ``flax_mutables`` (initialised by ``get_initial_variables``, advanced by
  ``loss_fn``), so t5x checkpoints hold it and restarts continue from it.
* ``score_batch`` and ``predict_batch_with_aux`` run hard deletion in the
  network's ``capacity`` mode (one compiled program, as t5x jits them whole);
  ``inference_deletion='soft'`` switches to soft deletion. The decoder's
  cross-attention mask is the compacted ``EncoderOutput.mask``.

All maths lives in the library (network, objective, controller); this module
only wires it into t5x's interfaces.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, MutableMapping, Optional, Tuple

from clu import metrics as clu_metrics
import flax
from flax.linen import partitioning as flax_partitioning
import jax
import jax.numpy as jnp
import seqio
from t5x import adafactor as t5x_adafactor
from t5x import decoding as t5x_decoding
from t5x import losses as t5x_losses
from t5x import metrics as t5x_metrics
from t5x import models as t5x_models

from mrt5_jax import controller as controller_lib
from mrt5_jax import gate as gate_lib
from mrt5_jax import network as network_lib
from mrt5_jax import objective as objective_lib
from mrt5_jax.config import MrT5Config

INFERENCE_DELETIONS = ("hard", "soft")
# Deletion counts of the micro-batches of the current step (t5x micro-batching).
MICROBATCH_COLLECTION = "controller_microbatches"
_FIXED_DELETION_RNG = 0


def adafactor_logical_factor_rules():
  """t5x's Adafactor factor rules plus unnamed axes (the gate's (embed, None)
  kernel and (None,) bias), which are never factored."""
  rules = dict(t5x_adafactor.standard_logical_factor_rules())
  rules[None] = t5x_adafactor.FactorDim.NONE
  return flax.core.freeze(rules)


def _normalizing_factor_name(factor):
  """t5x's ``SpecialLossNormalizingFactor`` enum -> the objective's string name."""
  if isinstance(factor, t5x_losses.SpecialLossNormalizingFactor):
    return factor.name
  return factor


def _scalar_axes(tree: Mapping[str, Any]) -> dict:
  """t5x-style axis metadata for a collection of scalars (replicated)."""
  return {k: flax_partitioning.AxisMetadata(names=()) for k in tree}


def _like(template, tree):
  """``tree`` frozen if ``template`` is a FrozenDict (t5x keeps mutables frozen)."""
  if isinstance(template, flax.core.FrozenDict):
    return flax.core.freeze(tree)
  return tree


class MrT5Model(t5x_models.EncoderDecoderModel):
  """t5x model for ``mrt5_jax.network.Transformer``.

  Extra arguments (all gin-bindable):
    controller: ``ControllerConfig`` (target deletion rate, gains, delay).
    score_loss_coeff: weight of the attention-score regularizer (0 = off).
    inference_deletion: 'hard' (default; capacity-mode compaction) or 'soft',
      used by ``score_batch`` and ``predict_batch_with_aux``.
    compacted_length: encoder length after hard deletion (default: the
      network config's capacity length).
    num_microbatches: bind to ``trainer.Trainer.num_microbatches`` (the gin
      files bind both to NUM_MICROBATCHES) so that the controller steps once
      per optimizer step, on the whole batch's deletion rate.
  t5x's own ``z_loss``, ``label_smoothing`` and ``loss_normalizing_factor``
  keep their t5x meaning and feed ``objective.ObjectiveConfig``.
  """

  def __init__(
      self,
      module: network_lib.Transformer,
      input_vocabulary: seqio.Vocabulary,
      output_vocabulary: seqio.Vocabulary,
      optimizer_def,
      decode_fn: t5x_models.DecodeFnCallable = t5x_decoding.beam_search,
      feature_converter_cls=None,
      label_smoothing: float = 0.0,
      z_loss: float = 0.0,
      loss_normalizing_factor=None,
      default_decoder_params: Optional[t5x_models.DecoderParams] = None,
      *,
      controller: Optional[controller_lib.ControllerConfig] = None,
      score_loss_coeff: float = 0.0,
      inference_deletion: str = "hard",
      compacted_length: Optional[int] = None,
      num_microbatches: Optional[int] = None,
  ):
    if not isinstance(getattr(module, "config", None), MrT5Config):
      raise ValueError("MrT5Model needs a mrt5_jax.network.Transformer (a module whose "
                       f"`config` is an MrT5Config), got {type(module).__name__}")
    if inference_deletion not in INFERENCE_DELETIONS:
      raise ValueError(f"inference_deletion must be one of {INFERENCE_DELETIONS}, "
                       f"got {inference_deletion!r}")
    if compacted_length is not None and compacted_length < 1:
      raise ValueError(f"compacted_length must be >= 1, got {compacted_length}")
    if num_microbatches is not None and num_microbatches < 0:
      raise ValueError(f"num_microbatches must be >= 0 or None, got {num_microbatches}")
    super().__init__(
        module=module,
        input_vocabulary=input_vocabulary,
        output_vocabulary=output_vocabulary,
        optimizer_def=optimizer_def,
        decode_fn=decode_fn,
        feature_converter_cls=feature_converter_cls,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        loss_normalizing_factor=loss_normalizing_factor,
        default_decoder_params=default_decoder_params,
    )
    self.objective = objective_lib.ObjectiveConfig(
        z_loss=z_loss, label_smoothing=label_smoothing,
        loss_normalizing_factor=_normalizing_factor_name(loss_normalizing_factor),
        score_loss_coeff=score_loss_coeff)
    self.controller = controller or controller_lib.ControllerConfig()
    self.inference_deletion = inference_deletion
    self.compacted_length = compacted_length
    self.num_microbatches = max(1, num_microbatches or 1)

  @property
  def config(self) -> MrT5Config:
    return self.module.config

  # --------------------------------------------------------------------------- state

  def initial_flax_mutables(self) -> dict:
    """The 'controller' collection at step 0 and empty micro-batch counters.

    The counters exist with or without micro-batching, so a checkpoint
    restores whatever NUM_MICROBATCHES the next run uses.
    """
    return {
        controller_lib.COLLECTION: controller_lib.init_state(self.controller),
        MICROBATCH_COLLECTION: {
            "num_deleted": jnp.zeros((), jnp.float32),
            "num_real": jnp.zeros((), jnp.float32),
            "count": jnp.zeros((), jnp.int32),
        },
    }

  def _rngs(self, rng: Optional[jax.Array], dropout: bool) -> Optional[dict]:
    """Flax rngs: dropout when training; the random-deletion baseline's stream."""
    rngs = {}
    if dropout and rng is not None:
      rngs["dropout"] = rng
    if self.config.deletion_type == "random":
      base = rng if rng is not None else jax.random.PRNGKey(_FIXED_DELETION_RNG)
      rngs["deletion"] = jax.random.fold_in(base, 1)
    return rngs or None

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    """t5x's initial variables plus the controller collection and its axes."""
    init_rngs = {"params": rng}
    if self.config.deletion_type == "random":
      init_rngs["deletion"] = jax.random.fold_in(rng, 1)
    variables = flax.core.unfreeze(
        super().get_initial_variables(init_rngs, input_shapes, input_types))
    variables.pop("intermediates", None)
    for name, collection in self.initial_flax_mutables().items():
      variables[name] = collection
      variables[name + "_axes"] = _scalar_axes(collection)
    return flax.core.freeze(variables)

  # --------------------------------------------------------------------------- loss

  def _loss_and_sums(self, params, batch, dropout_rng, controller_state):
    return objective_lib.compute_loss(
        self.module, params, controller_state, batch,
        self._rngs(dropout_rng, dropout=True), objective=self.objective,
        controller=self.controller, enable_dropout=dropout_rng is not None)

  def loss_fn(self, params, batch, dropout_rng, flax_mutables=None):
    """Training loss of one (micro-)batch; steps the controller.

    Returns (loss, metrics) without ``flax_mutables`` (the initial controller
    state is used), and (loss, (metrics, new flax_mutables)) with them, the
    two forms t5x's trainer expects.
    """
    mutables = flax_mutables if flax_mutables is not None else self.initial_flax_mutables()
    state = mutables[controller_lib.COLLECTION]
    loss, sums = self._loss_and_sums(params, batch, dropout_rng, state)
    metrics = self.metrics_from_sums(sums, state, batch)
    if flax_mutables is None:
      return loss, metrics
    return loss, (metrics, self._advance_controller(flax_mutables, sums))

  def eval_fn(self, params, batch, flax_mutables=None):
    """Loss and metrics without dropout; the controller is read, not stepped."""
    mutables = flax_mutables if flax_mutables is not None else self.initial_flax_mutables()
    state = mutables[controller_lib.COLLECTION]
    loss, sums = self._loss_and_sums(params, batch, None, state)
    return loss, self.metrics_from_sums(sums, state, batch)

  def _advance_controller(self, flax_mutables, sums):
    """New mutables: the controller stepped once per optimizer step.

    Deletion counts accumulate over the micro-batches of a step; the last one
    updates the controller with the whole batch's rate and clears them.
    """
    state = flax_mutables[controller_lib.COLLECTION]
    counts = flax_mutables[MICROBATCH_COLLECTION]
    counts = {
        "num_deleted": counts["num_deleted"] + sums["num_deleted"],
        "num_real": counts["num_real"] + sums["num_real"],
        "count": counts["count"] + 1,
    }
    complete = counts["count"] >= self.num_microbatches
    rate = jax.lax.stop_gradient(objective_lib.deletion_rate(counts))
    stepped = controller_lib.update(state, rate, self.controller)
    new = flax.core.unfreeze(flax_mutables)
    new[controller_lib.COLLECTION] = jax.tree_util.tree_map(
        lambda a, b: jnp.where(complete, a, b), stepped, dict(state))
    new[MICROBATCH_COLLECTION] = jax.tree_util.tree_map(
        lambda v: jnp.where(complete, jnp.zeros_like(v), v), counts)
    return _like(flax_mutables, new)

  def metrics_from_sums(self, sums: Mapping[str, jax.Array], controller_state,
                        batch: Mapping[str, jax.Array]) -> dict:
    """clu metrics (t5x merges them over micro-batches and steps) from the
    objective's metric sums."""
    encoder_tokens = batch["encoder_input_tokens"]
    num_examples = jnp.array(encoder_tokens.shape[0])
    num_target_tokens = jnp.array(batch["decoder_target_tokens"].size)
    num_devices = jax.device_count()
    alpha = controller_lib.effective_alpha(controller_state, self.controller)
    one = jnp.array(1, jnp.int32)
    metrics = {
        "loss": t5x_metrics.AveragePerStep(total=sums["loss"]),
        "cross_ent_loss": t5x_metrics.AveragePerStep(total=sums["ce_loss"]),
        "z_loss": t5x_metrics.AveragePerStep(total=sums["z_loss"]),
        "cross_ent_loss_per_nonpadding_target_token": clu_metrics.Average(
            total=sums["cross_entropy_sum"], count=sums["num_target_tokens"]),
        "accuracy": clu_metrics.Accuracy(total=sums["num_correct"],
                                         count=sums["num_target_tokens"]),
        "deletion/rate": clu_metrics.Average(total=sums["num_deleted"], count=sums["num_real"]),
        "deletion/gate_mean": clu_metrics.Average(total=sums["gate_sum"], count=sums["num_real"]),
        "deletion/gate_loss": t5x_metrics.AveragePerStep(total=sums["gate_loss"]),
        "deletion/alpha": clu_metrics.Average(total=alpha, count=one),
        "deletion/alpha_current": clu_metrics.LastValue(total=alpha, count=one),
        "deletion/compacted_length": clu_metrics.Average(total=sums["compacted_length"],
                                                         count=one),
        "deletion/kept_length": clu_metrics.Average(
            total=sums["num_real"] - sums["num_deleted"], count=sums["num_sequences"]),
        "deletion/real_length": clu_metrics.Average(total=sums["num_real"],
                                                    count=sums["num_sequences"]),
        "deletion/num_dropped": t5x_metrics.Sum(sums["num_dropped"]),
        "timing/seqs_per_second": t5x_metrics.TimeRate.from_model_output(
            numerator=num_examples),
        "timing/steps_per_second": t5x_metrics.StepsPerTime.from_model_output(),
        "timing/seconds": t5x_metrics.Time(),
        "timing/seqs": t5x_metrics.Sum(num_examples),
        "timing/seqs_per_second_per_core": t5x_metrics.TimeRate.from_model_output(
            numerator=num_examples / num_devices),
        "timing/target_tokens_per_second": t5x_metrics.TimeRate.from_model_output(
            numerator=num_target_tokens),
        "timing/encoder_tokens_per_second": t5x_metrics.TimeRate.from_model_output(
            numerator=jnp.array(encoder_tokens.size)),
    }
    if self.objective.score_loss_coeff > 0:
      metrics["deletion/score_penalty"] = t5x_metrics.AveragePerStep(total=sums["score_penalty"])
    return metrics

  # --------------------------------------------------------------------------- inference

  def _compute_logits(self, params, batch, dropout_rng=None, mutable=False,
                      other_variables=None):
    """Teacher-forced logits with ``inference_deletion`` (used by ``score_batch``)."""
    return self.module.apply(
        {"params": params, **(other_variables or {})},
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        batch["decoder_target_tokens"],
        encoder_segment_ids=batch.get("encoder_segment_ids", None),
        decoder_segment_ids=batch.get("decoder_segment_ids", None),
        encoder_positions=batch.get("encoder_positions", None),
        decoder_positions=batch.get("decoder_positions", None),
        decode=False,
        enable_dropout=dropout_rng is not None,
        deletion=self.inference_deletion,
        compacted_length=self.compacted_length,
        rngs=self._rngs(dropout_rng, dropout=True),
        mutable=mutable,
    )

  def encode(self, params, encoder_input_tokens, rng=None) -> network_lib.EncoderOutput:
    """The encoder output used for prediction (``inference_deletion``)."""
    return self.module.apply(
        {"params": params}, encoder_input_tokens, enable_dropout=False,
        deletion=self.inference_deletion, compacted_length=self.compacted_length,
        return_aux=True, rngs=self._rngs(rng, dropout=False), method=self.module.encode)

  def _compute_logits_from_slice(self, decoding_state, params, encoded_inputs, raw_inputs,
                                 max_decode_length, encoder_key_bias=None):
    """One decoding step; ``raw_inputs`` is the (compacted) encoder mask."""
    flat_ids = decoding_state.cur_token
    flat_logits, new_vars = self.module.apply(
        {"params": params, "cache": decoding_state.cache},
        encoded_inputs, raw_inputs, flat_ids, flat_ids,
        enable_dropout=False, decode=True, max_decode_length=max_decode_length,
        encoder_key_bias=encoder_key_bias, mutable=["cache"], method=self.module.decode)
    return jnp.squeeze(flat_logits, axis=1), new_vars["cache"]

  def _initial_cache(self, params, encoder_output, decoder_tokens):
    """Empty decoder KV cache for ``decoder_tokens``' shape."""
    ones = jnp.ones_like(decoder_tokens)
    _, variables = self.module.apply(
        {"params": params}, encoder_output.encoded, encoder_output.mask, ones, ones,
        enable_dropout=False, decode=True, max_decode_length=decoder_tokens.shape[1],
        mutable=["cache"], method=self.module.decode)
    return variables["cache"]

  def predict_batch_with_aux(
      self,
      params,
      batch: Mapping[str, jnp.ndarray],
      rng: Optional[jax.Array] = None,
      decoder_params: Optional[MutableMapping[str, Any]] = None,
      return_all_decodes: Optional[bool] = None,
      num_decodes: Optional[int] = None,
      prompt_with_targets: bool = False,
  ) -> Tuple[jnp.ndarray, Mapping[str, jnp.ndarray]]:
    """t5x decoding (``decode_fn``) against the hard- (or soft-) deleted encoder.

    Same arguments and outputs as t5x's ``EncoderDecoderModel``; the aux dict
    adds per-example ``deletion_rate``, ``kept_length`` and ``num_dropped``.
    """
    if return_all_decodes is None:
      return_all_decodes = self._default_decoder_params.return_all_decodes
    if num_decodes is None:
      num_decodes = self._default_decoder_params.num_decodes
    encoder_input_tokens = batch["encoder_input_tokens"]
    decoder_input_tokens = batch["decoder_input_tokens"]
    if prompt_with_targets:
      prompt = decoder_input_tokens * (decoder_input_tokens != self.output_vocabulary.eos_id)
    else:
      prompt = jnp.zeros_like(decoder_input_tokens)

    out = self.encode(params, encoder_input_tokens, rng)
    cache = self._initial_cache(params, out, prompt)
    expand = functools.partial(t5x_decoding.flat_batch_beam_expand, beam_size=num_decodes)
    tokens_to_logits = functools.partial(
        self._compute_logits_from_slice, params=params,
        encoded_inputs=expand(out.encoded), raw_inputs=expand(out.mask),
        max_decode_length=decoder_input_tokens.shape[1],
        encoder_key_bias=expand(out.key_bias))

    decoder_params = dict(decoder_params or {})
    if rng is not None:
      if decoder_params.get("decode_rng") is not None:
        raise ValueError("Got an RNG both from `rng` and from decoder_params['decode_rng']; "
                         "give one or the other.")
      decoder_params["decode_rng"] = rng
    decoder_params.setdefault("eos_id", self.output_vocabulary.eos_id or 1)
    decodes, scores = self._decode_fn(
        inputs=prompt, cache=cache, tokens_to_logits=tokens_to_logits,
        num_decodes=num_decodes, cache_offset=0, **decoder_params)

    aux = self._deletion_aux(out, encoder_input_tokens)
    if return_all_decodes:
      return decodes, {"scores": scores, **aux}
    return decodes[:, -1, :], {"scores": scores[:, -1], **aux}

  def _deletion_aux(self, out: network_lib.EncoderOutput, encoder_input_tokens) -> dict:
    """Per-example deletion figures of a prediction batch."""
    real = objective_lib.real_encoder_mask(encoder_input_tokens)
    batch = encoder_input_tokens.shape[0]
    if out.gate is None:
      num_deleted = jnp.zeros((batch,), jnp.float32)
    else:
      deleted = gate_lib.deletion_mask(out.gate, self.config.deletion_threshold) & real
      num_deleted = jnp.sum(deleted, axis=-1).astype(jnp.float32)
    num_real = jnp.sum(real, axis=-1).astype(jnp.float32)
    return {
        "deletion_rate": num_deleted / jnp.maximum(num_real, 1.0),
        "kept_length": num_real - num_deleted,
        "num_dropped": out.num_dropped,
    }
