"""The random streams of MrT5: their names and how each is derived, for both
trainers and for inference.

Streams (flax rng collections the network and the objective draw from):

* ``dropout``: dropout (training only).
* ``deletion``: the random-deletion baseline's gate, and BP's boundary
  sampling outside training when ``BoundaryPoolingConfig.sample_at_inference``.
* ``gate_noise``: Gumbel noise on the gate logits and BP's relaxed-Bernoulli
  sample (training only).
* ``hard_delete``: whether a training batch runs with hard deletion
  (``ObjectiveConfig.hard_delete_train_prob``).

Derivation:

* training (project trainer and t5x alike): one key per (micro-)batch,
  ``training_streams(key)`` splits it into the four streams in
  ``TRAINING_STREAMS`` order. The project trainer's key is ``step_key(seed,
  step)`` (micro-batch ``m`` of several: ``fold_in(step key, m)``), so a
  resumed run draws the same numbers; t5x hands ``loss_fn`` its own
  per-step ``dropout_rng``.
* initialisation: ``init_streams(key)``: ``params`` is the key itself (so the
  parameters are those of ``module.init(key, ...)``), ``deletion`` a fold of it.
* inference (evaluation, prediction, encode paths): ``inference_streams(key)``
  gives only ``deletion``: the caller's key, or the fixed
  ``inference_key()`` when none is given, so that deterministic callers
  (t5x's scoring, the evaluator) see one fixed random deletion.
"""
from __future__ import annotations

from typing import Optional

import jax

PARAMS = "params"
DROPOUT = "dropout"
DELETION = "deletion"
GATE_NOISE = "gate_noise"
HARD_DELETE = "hard_delete"
# The order fixes the numbers: stream i is jax.random.split(key, 4)[i].
TRAINING_STREAMS = (DROPOUT, DELETION, GATE_NOISE, HARD_DELETE)
# The seed of the ``deletion`` stream when inference is given no key.
INFERENCE_SEED = 0
_INIT_DELETION_FOLD = 1


def seed_key(seed: int) -> jax.Array:
  """The project trainer's root key (its parameters are initialised from it)."""
  return jax.random.PRNGKey(seed)


def step_key(seed: int, step) -> jax.Array:
  """The project trainer's key of one optimizer step (``step`` may be traced)."""
  return jax.random.fold_in(seed_key(seed), step)


def microbatch_key(key: jax.Array, index, num_microbatches: int) -> jax.Array:
  """The key of micro-batch ``index`` of a step with key ``key`` (the step's
  key itself when the step is one batch)."""
  if num_microbatches == 1:
    return key
  return jax.random.fold_in(key, index)


def training_streams(key: jax.Array) -> dict[str, jax.Array]:
  """The flax rngs of one training (micro-)batch, all derived from ``key``."""
  return dict(zip(TRAINING_STREAMS, jax.random.split(key, len(TRAINING_STREAMS))))


def inference_key(key: Optional[jax.Array] = None) -> jax.Array:
  """``key``, or the fixed key of inference without one."""
  return jax.random.PRNGKey(INFERENCE_SEED) if key is None else key


def inference_streams(key: Optional[jax.Array] = None) -> dict[str, jax.Array]:
  """The flax rngs outside training: ``deletion`` only (``inference_key``)."""
  return {DELETION: inference_key(key)}


def init_streams(key: jax.Array) -> dict[str, jax.Array]:
  """The flax rngs of ``module.init``: ``params`` is ``key`` itself."""
  return {PARAMS: key, DELETION: jax.random.fold_in(key, _INIT_DELETION_FOLD)}
