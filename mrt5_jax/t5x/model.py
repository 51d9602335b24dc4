"""MrT5 as a t5x model (the only module of the library that imports t5x).

``MrT5Model`` is t5x's ``EncoderDecoderModel`` plus what MrT5 needs, each
taken from the library so that nothing is written twice:

* ``loss_fn`` is ``objective.compute_loss`` (CE + z-loss + alpha * L_G
  [+ score regularizer]); ``train_step.advance_controller`` steps the
  controller once per optimizer step, and the metrics table
  ``training.metrics`` defines the logged values and their t5x names (``deletion/rate``, ``deletion/alpha``,
  ``deletion/gate_mean``, ...), which become clu metrics here.
* The controller state is the flax collection ``'controller'`` and the
  micro-batch counts ``train_step.MICROBATCH_COLLECTION``; t5x carries both as
  ``flax_mutables``, so t5x checkpoints hold them and restarts continue.
* ``score_batch`` and ``predict_batch_with_aux`` run hard deletion with the
  compacted length of ``hard_deletion.InferenceConfig``'s capacity mode (one
  compiled program, as t5x jits them whole); ``inference_deletion='soft'``
  switches to soft deletion. Prediction is t5x's own code (cache set-up,
  prompt prefilling, beam expansion) run against the precomputed encoder
  output, whose compacted mask stands where t5x passes the input tokens.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, MutableMapping, Optional, Tuple

from clu import metrics as clu_metrics
import flax
from flax.linen import partitioning as flax_partitioning
import jax
import jax.numpy as jnp
import seqio
from t5x import adafactor as t5x_adafactor
from t5x import decoding as t5x_decoding
from t5x import metrics as t5x_metrics
from t5x import models as t5x_models

from mrt5_jax.maths import controller as controller_lib
from mrt5_jax.maths import rng as rng_lib
from mrt5_jax.model import network as network_lib
from mrt5_jax.training import metrics as metrics_lib
from mrt5_jax.training import objective as objective_lib
from mrt5_jax.training import train_step
from mrt5_jax.model.config import MrT5Config
from mrt5_jax.model.shortening.base import GATE_SCORE_AXIS
from mrt5_jax.inference.encode_path import InferenceConfig, capacity_length, deletion_figures
from mrt5_jax.model.shortening.conv import POOL_WINDOW_AXIS

INFERENCE_DELETIONS = ("hard", "soft")
MICROBATCH_COLLECTION = train_step.MICROBATCH_COLLECTION
# t5x's names for the library's metrics (the metrics table's ``t5x_name``).
T5X_METRIC_NAMES = {m.name: m.display_name_t5x for m in metrics_lib.METRICS}


def adafactor_logical_factor_rules():
  """t5x's Adafactor factor rules plus the gate's one-wide score axis (never
  factored) and CP's kernel-window axis (batch-like: each window's
  (embed, mlp) matrix is factored on its own)."""
  rules = dict(t5x_adafactor.standard_logical_factor_rules())
  rules[GATE_SCORE_AXIS] = t5x_adafactor.FactorDim.NONE
  rules[POOL_WINDOW_AXIS] = t5x_adafactor.FactorDim.BATCH
  return flax.core.freeze(rules)


@flax.struct.dataclass
class _Extreme(clu_metrics.Metric):
  """The minimum or maximum of a value over micro-batches and steps."""
  value: jnp.ndarray

  def merge(self, other):
    return type(self)(self._combine(self.value, other.value))

  def compute(self):
    return self.value


@flax.struct.dataclass
class Min(_Extreme):
  _combine = staticmethod(jnp.minimum)


@flax.struct.dataclass
class Max(_Extreme):
  _combine = staticmethod(jnp.maximum)


def clu_metric(metric: metrics_lib.Metric) -> clu_metrics.Metric:
  """The clu metric that merges like ``metric.kind`` says."""
  total = jnp.asarray(metric.total, jnp.float32)
  if metric.kind == "per_step":
    return t5x_metrics.AveragePerStep(total=total)
  if metric.kind == "ratio":
    return clu_metrics.Average(total=total, count=jnp.asarray(metric.count, jnp.float32))
  if metric.kind == "sum":
    return t5x_metrics.Sum(total)
  if metric.kind == "last":
    return clu_metrics.LastValue(total=total, count=jnp.array(1, jnp.int32))
  return Min(total) if metric.kind == "min" else Max(total)


def _scalar_axes(tree: Mapping[str, Any]) -> dict:
  """t5x-style axis metadata for a collection of scalars (replicated)."""
  return {k: flax_partitioning.AxisMetadata(names=()) for k in tree}


def _like(template, tree):
  """``tree`` frozen if ``template`` is a FrozenDict (t5x keeps mutables frozen)."""
  if isinstance(template, flax.core.FrozenDict):
    return flax.core.freeze(tree)
  return tree


class _AgainstEncoderOutput(network_lib.Transformer):
  """The network with its encoder output already computed.

  t5x's ``predict_batch_with_aux`` encodes the inputs and hands the decoder
  ``encoder_input_tokens`` as its padding mask. With hard deletion the encoder
  output is shorter than the inputs, so ``MrT5Model`` runs t5x's code with
  this module: ``encode`` returns the precomputed output, ``decode`` adds its
  key bias (beam-expanded like t5x expands the encoding), ``__call__`` (which
  t5x runs to shape the KV cache) decodes without re-encoding, and the
  compacted mask stands in for the tokens.
  """
  encoder_output: Any = None

  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
               *args, enable_dropout: bool = True, decode: bool = False, **kwargs):
    """Decoder logits against the precomputed encoder output (t5x's cache set-up)."""
    del encoder_input_tokens, args, kwargs
    return self.decode(self.encoder_output.encoded, self.encoder_output.mask,
                       decoder_input_tokens, decoder_target_tokens,
                       enable_dropout=enable_dropout, decode=decode)

  def encode(self, encoder_input_tokens, *args, **kwargs):
    del encoder_input_tokens, args, kwargs
    return self.encoder_output.encoded

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
             encoder_segment_ids=None, decoder_segment_ids=None, decoder_positions=None,
             enable_dropout: bool = True, decode: bool = False,
             max_decode_length: Optional[int] = None, *,
             encoder_key_bias: Optional[jax.Array] = None, prefill: bool = False,
             prefill_lengths: Optional[jax.Array] = None):
    key_bias = self.encoder_output.key_bias
    key_bias = jnp.repeat(key_bias, encoded.shape[0] // key_bias.shape[0], axis=0)
    return super().decode(encoded, encoder_input_tokens, decoder_input_tokens,
                          decoder_target_tokens, encoder_segment_ids, decoder_segment_ids,
                          decoder_positions, enable_dropout, decode, max_decode_length,
                          encoder_key_bias=key_bias, prefill=prefill,
                          prefill_lengths=prefill_lengths)


class MrT5Model(t5x_models.EncoderDecoderModel):
  """t5x model for ``mrt5_jax.model.network.Transformer``.

  Takes the project trainer's configs (all gin-bindable, the same bindings
  serve both trainers: ``configs/runs/deletion_*.gin``):
    objective: ``ObjectiveConfig`` (z-loss, label smoothing, loss normalizing
      factor, the gate regularizer and the published training options);
      its z_loss, label_smoothing and loss_normalizing_factor are also what
      t5x's ``EncoderDecoderModel`` gets.
    controller: ``ControllerConfig`` (target deletion rate, gains, delay).
    inference: ``InferenceConfig``; its ``capacity_fraction`` and buckets set
      the compacted length of hard deletion (default: capacity mode).
    inference_deletion: 'hard' (default; capacity-mode compaction) or 'soft',
      used by ``score_batch`` and ``predict_batch_with_aux``.
    num_microbatches: bind to ``trainer.Trainer.num_microbatches`` (the gin
      files bind both to NUM_MICROBATCHES) so that the controller steps once
      per optimizer step, on the whole batch's deletion rate.
  """

  def __init__(
      self,
      module: network_lib.Transformer,
      input_vocabulary: seqio.Vocabulary,
      output_vocabulary: seqio.Vocabulary,
      optimizer_def,
      decode_fn: t5x_models.DecodeFnCallable = t5x_decoding.beam_search,
      feature_converter_cls=None,
      default_decoder_params: Optional[t5x_models.DecoderParams] = None,
      *,
      objective: Optional[objective_lib.ObjectiveConfig] = None,
      controller: Optional[controller_lib.ControllerConfig] = None,
      inference: Optional[InferenceConfig] = None,
      inference_deletion: str = "hard",
      num_microbatches: Optional[int] = None,
  ):
    if not isinstance(getattr(module, "config", None), MrT5Config):
      raise ValueError("MrT5Model needs a mrt5_jax.model.network.Transformer (a module whose "
                       f"`config` is an MrT5Config), got {type(module).__name__}")
    if inference_deletion not in INFERENCE_DELETIONS:
      raise ValueError(f"inference_deletion must be one of {INFERENCE_DELETIONS}, "
                       f"got {inference_deletion!r}")
    if num_microbatches is not None and num_microbatches < 0:
      raise ValueError(f"num_microbatches must be >= 0 or None, got {num_microbatches}")
    objective = objective or objective_lib.ObjectiveConfig()
    super().__init__(
        module=module,
        input_vocabulary=input_vocabulary,
        output_vocabulary=output_vocabulary,
        optimizer_def=optimizer_def,
        decode_fn=decode_fn,
        feature_converter_cls=feature_converter_cls,
        label_smoothing=objective.label_smoothing,
        z_loss=objective.z_loss,
        loss_normalizing_factor=objective.loss_normalizing_factor,
        default_decoder_params=default_decoder_params,
    )
    self.objective = objective
    self.controller = controller or controller_lib.ControllerConfig()
    self.inference_deletion = inference_deletion
    self.inference = inference or InferenceConfig(mode="capacity")
    self.num_microbatches = max(1, num_microbatches or 1)

  @property
  def config(self) -> MrT5Config:
    return self.module.config

  def compacted_length(self, input_length: int) -> Optional[int]:
    """The encoder length after hard deletion (None with soft inference)."""
    if self.inference_deletion == "soft":
      return None
    return capacity_length(self.inference, input_length)

  # --------------------------------------------------------------------------- state

  def initial_flax_mutables(self) -> dict:
    """The 'controller' collection at step 0 and empty micro-batch counts.

    The counts exist with or without micro-batching, so a checkpoint
    restores whatever NUM_MICROBATCHES the next run uses.
    """
    return {controller_lib.COLLECTION: controller_lib.init_state(self.controller),
            MICROBATCH_COLLECTION: train_step.initial_counts()}

  def _rngs(self, rng: Optional[jax.Array], dropout: bool) -> Optional[dict]:
    """Flax rngs (``maths.rng``): when training, the four training streams of
    ``rng`` (as the project trainer derives them from its step key); outside
    training the ``deletion`` stream (the fixed inference key without ``rng``)
    when given a key or when the gate is the random-deletion baseline."""
    if dropout and rng is not None:
      return rng_lib.training_streams(rng)
    if rng is not None or self.module.shortening.needs_deletion_rng:
      return rng_lib.inference_streams(rng)
    return None

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    """t5x's initial variables plus the controller collections and their axes."""
    init_rngs = rng_lib.init_streams(rng)
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
        controller=self.controller, enable_dropout=dropout_rng is not None,
        normalizers=train_step.loss_normalizers(batch, self.objective,
                                                num_microbatches=self.num_microbatches),
        num_microbatches=self.num_microbatches)

  def loss_fn(self, params, batch, dropout_rng, flax_mutables=None):
    """Training loss of one (micro-)batch; steps the controller on the last one.

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
    new_state, counts = train_step.advance_controller(
        state, flax_mutables[MICROBATCH_COLLECTION], sums, self.controller,
        self.num_microbatches, steers=self.module.shortening.learned_gate)
    new = flax.core.unfreeze(flax_mutables)
    new[controller_lib.COLLECTION] = new_state
    new[MICROBATCH_COLLECTION] = counts
    return loss, (metrics, _like(flax_mutables, new))

  def eval_fn(self, params, batch, flax_mutables=None):
    """Loss and metrics without dropout; the controller is read, not stepped."""
    mutables = flax_mutables if flax_mutables is not None else self.initial_flax_mutables()
    state = mutables[controller_lib.COLLECTION]
    loss, sums = objective_lib.compute_loss(
        self.module, params, state, batch, self._rngs(None, dropout=False),
        objective=self.objective, controller=self.controller, enable_dropout=False)
    return loss, self.metrics_from_sums(sums, state, batch)

  def metrics_from_sums(self, sums: Mapping[str, jax.Array], controller_state,
                        batch: Mapping[str, jax.Array]) -> dict:
    """clu metrics (t5x merges them over micro-batches and steps): the metrics
    table's (``training.metrics``) values under their t5x names, those its
    ``shown`` rule keeps for this objective and model, plus t5x's timing metrics."""
    alpha = controller_lib.effective_alpha(controller_state, self.controller)
    values = metrics_lib.step_metrics(sums, alpha)
    metrics = {definition.display_name_t5x: clu_metric(values[definition.name])
               for definition in metrics_lib.shown_under_t5x(self.objective, self.module.shortening)}
    encoder_tokens = batch["encoder_input_tokens"]
    num_examples = jnp.array(encoder_tokens.shape[0])
    num_devices = jax.device_count()
    metrics.update({
        "timing/seqs_per_second": t5x_metrics.TimeRate.from_model_output(
            numerator=num_examples),
        "timing/steps_per_second": t5x_metrics.StepsPerTime.from_model_output(),
        "timing/seconds": t5x_metrics.Time(),
        "timing/seqs": t5x_metrics.Sum(num_examples),
        "timing/seqs_per_second_per_core": t5x_metrics.TimeRate.from_model_output(
            numerator=num_examples / num_devices),
        "timing/target_tokens_per_second": t5x_metrics.TimeRate.from_model_output(
            numerator=jnp.array(batch["decoder_target_tokens"].size)),
        "timing/encoder_tokens_per_second": t5x_metrics.TimeRate.from_model_output(
            numerator=jnp.array(encoder_tokens.size)),
    })
    return metrics

  # --------------------------------------------------------------------------- inference

  def _compute_logits(self, params, batch, dropout_rng=None, mutable=False,
                      other_variables=None):
    """Teacher-forced logits with ``inference_deletion`` (used by ``score_batch``)."""
    tokens = batch["encoder_input_tokens"]
    return self.module.apply(
        {"params": params, **(other_variables or {})},
        tokens,
        batch["decoder_input_tokens"],
        batch["decoder_target_tokens"],
        encoder_segment_ids=batch.get("encoder_segment_ids", None),
        decoder_segment_ids=batch.get("decoder_segment_ids", None),
        encoder_positions=batch.get("encoder_positions", None),
        decoder_positions=batch.get("decoder_positions", None),
        decode=False,
        enable_dropout=dropout_rng is not None,
        deletion=self.inference_deletion,
        compacted_length=self.compacted_length(tokens.shape[1]),
        rngs=self._rngs(dropout_rng, dropout=True),
        mutable=mutable,
    )

  def encode(self, params, encoder_input_tokens, rng=None) -> network_lib.EncoderOutput:
    """The encoder output used for prediction (``inference_deletion``)."""
    return self.module.apply(
        {"params": params}, encoder_input_tokens, enable_dropout=False,
        deletion=self.inference_deletion,
        compacted_length=self.compacted_length(encoder_input_tokens.shape[1]),
        return_aux=True, rngs=self._rngs(rng, dropout=False), method=self.module.encode)

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
    """t5x's decoding against the hard- (or soft-) deleted encoder output.

    Same arguments and outputs as t5x's ``EncoderDecoderModel`` (whose code
    runs: cache set-up, prompt prefilling, ``decode_fn``); the aux dict adds
    per-example ``deletion_rate``, ``kept_length``, ``input_length`` and
    ``num_dropped`` (what ``seqio_evaluator.DeletionMetricsEvaluator`` reports).
    """
    out = self.encode(params, batch["encoder_input_tokens"], rng)
    against = copy.copy(self)
    against.module = _AgainstEncoderOutput(self.config, encoder_output=out)
    decodes, aux = t5x_models.EncoderDecoderModel.predict_batch_with_aux(
        against, params, {**batch, "encoder_input_tokens": out.mask}, rng=rng,
        decoder_params=decoder_params, return_all_decodes=return_all_decodes,
        num_decodes=num_decodes, prompt_with_targets=prompt_with_targets)
    return decodes, {**aux, **self._deletion_aux(out, batch["encoder_input_tokens"])}

  def _deletion_aux(self, out: network_lib.EncoderOutput, encoder_input_tokens) -> dict:
    """Per-example deletion figures of a prediction batch (``hard_deletion.deletion_figures``)."""
    return deletion_figures(out, encoder_input_tokens, self.config.deletion_threshold)
