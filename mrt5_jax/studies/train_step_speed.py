"""Train-step time of soft, per-row hard and packed hard deletion batches, side by side.

Three trainers of one model (``inference_speed.benchmark_config``) share their
initial parameters; their gate bias is set so that the batch deletes about
``rate`` of its positions (each row a little more or less, as its gate logits
fall). One runs soft batches only, one hard-deletion batches compacted per row
(``hard_delete_train_prob`` 1), one hard batches packed
(``hard_delete_train_packed_rows``). Their steps are timed in turn, repeatedly,
in one process (the learning rate is tiny, so the deletion rate stays put);
the recipe's average mixes soft and hard steps by its hard-batch probability.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mrt5_jax.maths import controller as controller_lib
from mrt5_jax.studies.inference_speed import benchmark_config
from mrt5_jax.training import objective as objective_lib
from mrt5_jax.training import optimizers
from mrt5_jax.training.trainer import Trainer

ARMS = ("soft", "hard", "packed")


def _batch(batch: int, length: int, target_length: int, seed: int) -> dict[str, np.ndarray]:
  rng = np.random.RandomState(seed)
  tokens = rng.randint(3, 259, size=(batch, length)).astype(np.int32)
  tokens[:, -1] = 1
  targets = rng.randint(3, 259, size=(batch, target_length)).astype(np.int32)
  targets[:, -1] = 1
  return {"encoder_input_tokens": tokens, "decoder_target_tokens": targets,
          "decoder_input_tokens": np.concatenate(
              [np.zeros((batch, 1), np.int32), targets[:, :-1]], 1)}


def _gate_bias_for(trainer: Trainer, params, tokens: np.ndarray, rate: float) -> float:
  """The gate bias under which ``rate`` of the batch's positions fall below the threshold."""
  module = trainer.module
  gate = params["encoder"]["delete_gate"]["dense"]
  zeroed = jax.tree_util.tree_map(lambda x: x, params)
  zeroed["encoder"]["delete_gate"]["dense"] = {**gate, "bias": jnp.zeros_like(gate["bias"])}
  reading = module.apply({"params": zeroed}, jnp.asarray(tokens), None, False,
                         method=module.encode_stage_one)
  return -float(np.quantile(np.asarray(reading.gate_logits), rate))


@dataclasses.dataclass
class ArmResult:
  arm: str
  step_seconds: float
  vs_soft: float
  deletion_rate: float
  hard_batches: float
  packed_batches: float


def run_train_step_benchmark(config_name: str = "cpu", length: int = 512,
                             target_length: int = 96, batch: int = 16, rate: float = 0.5,
                             packed_rows: float = 0.75, recipe_hard_prob: float = 0.5,
                             repeats: int = 5, seed: int = 0, dtype: str = "float32",
                             log: Callable[[str], None] = print) -> dict:
  """Median step seconds per arm (``ARMS``) and the recipe's average; a JSON-ready dict."""
  config = benchmark_config(config_name, dtype=dtype)
  data = _batch(batch, length, target_length, seed)
  objectives = {
      "soft": objective_lib.ObjectiveConfig(),
      "hard": objective_lib.ObjectiveConfig(hard_delete_train_prob=1.0),
      "packed": objective_lib.ObjectiveConfig(hard_delete_train_prob=1.0,
                                              hard_delete_train_packed_rows=packed_rows),
  }
  optimizer = optimizers.OptimizerConfig(name="adamw", learning_rate=1e-9)
  controller = controller_lib.ControllerConfig(initial_alpha=0.0)
  trainers = {arm: Trainer(config, optimizer=optimizer, objective=objective,
                           controller=controller, seed=seed)
              for arm, objective in objectives.items()}
  states, times, metrics = {}, {arm: [] for arm in ARMS}, {}
  bias = None
  for arm, trainer in trainers.items():
    state = trainer.init_state(length, target_length)
    params = jax.device_get(state["params"])
    if bias is None:
      bias = _gate_bias_for(trainer, params, data["encoder_input_tokens"], rate)
    params["encoder"]["delete_gate"]["dense"]["bias"] = np.full((1,), bias, np.float32)
    state = trainer.init_state(length, target_length, init_params=params, reinit_gate=False)
    state, step_metrics = trainer.train_step(state, data)  # compile
    jax.block_until_ready(state)
    states[arm] = state
  log(f"device={jax.devices()[0].device_kind} config={config_name} d_model={config.d_model} "
      f"layers={config.num_encoder_layers}/{config.num_decoder_layers} gate_layer="
      f"{config.delete_gate_layer} length={length} targets={target_length} batch={batch} "
      f"rate={rate} packed_rows={packed_rows} dtype={dtype}")
  for _ in range(repeats):
    for arm in ARMS:
      start = time.perf_counter()
      states[arm], step_metrics = trainers[arm].train_step(states[arm], data)
      jax.block_until_ready(states[arm])
      times[arm].append(time.perf_counter() - start)
      metrics[arm] = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
  soft = float(np.median(times["soft"]))
  rows = []
  for arm in ARMS:
    seconds = float(np.median(times[arm]))
    rows.append(ArmResult(arm=arm, step_seconds=seconds, vs_soft=seconds / soft,
                          deletion_rate=metrics[arm]["deletion_rate"],
                          hard_batches=metrics[arm].get("hard_deletion_batches", 0.0),
                          packed_batches=metrics[arm].get("packed_hard_batches", 0.0)))
    log(f"{arm:>7}: {seconds * 1e3:.0f} ms per step ({seconds / soft:.2f} x soft), deletion "
        f"{rows[-1].deletion_rate:.3f}, hard {rows[-1].hard_batches:.0f}, packed "
        f"{rows[-1].packed_batches:.0f}")
  by_arm = {r.arm: r.step_seconds for r in rows}
  recipe = {f"recipe_{arm}": (1 - recipe_hard_prob) * soft + recipe_hard_prob * by_arm[arm]
            for arm in ("hard", "packed")}
  log(f"recipe (hard-batch probability {recipe_hard_prob}): per-row "
      f"{recipe['recipe_hard'] / soft:.2f} x soft, packed {recipe['recipe_packed'] / soft:.2f}"
      " x soft")
  return {
      "device": jax.devices()[0].device_kind, "config": config_name, "dtype": dtype,
      "length": length,
      "target_length": target_length, "batch": batch, "rate": rate,
      "packed_rows": packed_rows, "repeats": repeats, "recipe_hard_prob": recipe_hard_prob,
      "arms": [dataclasses.asdict(r) for r in rows],
      "recipe_seconds": recipe,
      "recipe_vs_soft": {k: v / soft for k, v in recipe.items()},
  }
