"""Hard-deletion speed: ByT5 against MrT5 at forced deletion rates, side by side.

Deletion rates are forced through the gate bias (no training needed): the
first stage's gate logits are measured once and the bias is set so that the
row keeping the most positions keeps ``(1 - rate) * L`` of them. The pooling
baselines run at matched length reduction: BP (boundary predictor, bucketed
segment count) with its boundary bias forced the same way, CP (strided
convolution) at its one reduction ``1 - 1/cp_rate``, both against the same ByT5. Speedups are
ratios of median wall times measured alternately in the same process; the FLOP-count
ideal is the ratio of the two models' matmul FLOPs at the lengths actually run.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mrt5_jax.model.config import MrT5Config, preset
from mrt5_jax.inference.encode_path import InferenceConfig
from mrt5_jax.inference.runner import InferenceRunner
from mrt5_jax.model.network import Transformer
from mrt5_jax.model.shortening.registry import shortening_for
from mrt5_jax.model.flops import ideal_speedup
from mrt5_jax.evaluation.timing import paired_median_seconds

CPU_BENCH_SIZE = dict(d_model=256, d_ff=640, num_heads=4, head_dim=64, num_encoder_layers=12,
                      num_decoder_layers=4)
BENCH_INFERENCE = InferenceConfig(mode="bucketed", bucket_step=64, min_bucket_length=64)


def benchmark_config(name: str, gate_layer: int = 3) -> MrT5Config:
  """``cpu``: a 12-layer model a 2-core machine runs at length 1024; ``small``: ByT5-small."""
  sizes = CPU_BENCH_SIZE if name == "cpu" else {}
  base = "tiny" if name == "cpu" else name
  return preset(base, **sizes, delete_gate_layer=gate_layer)


def force_rate(runner: InferenceRunner, tokens: np.ndarray, rate: float):
  """Params whose gate bias deletes ``rate`` of the fullest row (others delete more)."""
  params = jax.tree_util.tree_map(lambda x: x, runner.params)
  params["encoder"]["delete_gate"]["dense"]["bias"] = jnp.zeros((1,), jnp.float32)
  reading, _ = runner.path.read_gate(params, tokens)
  logits = np.asarray(reading.gate_logits)
  cut = max(np.quantile(row, rate, method="lower") for row in logits)
  params["encoder"]["delete_gate"]["dense"]["bias"] = jnp.asarray([-float(cut) - 1e-4],
                                                                  jnp.float32)
  return params


@dataclasses.dataclass
class RateResult:
  rate: float
  byt5_encoder_seconds: float
  byt5_scoring_seconds: float
  measured_deletion_rate: float
  compacted_length: int
  encoder_seconds: float
  encoder_speedup: float
  encoder_ideal_speedup: float
  encoder_efficiency: float
  scoring_seconds: float
  scoring_speedup: float
  scoring_ideal_speedup: float
  scoring_efficiency: float


def force_boundary_rate(runner: InferenceRunner, tokens: np.ndarray, rate: float):
  """BP params whose boundary bias makes the fullest row end ``(1 - rate) * n``
  segments (n real positions), its always-kept last boundary included."""
  params = jax.tree_util.tree_map(lambda x: x, runner.params)
  score = params["encoder"]["boundary_predictor"]["score"]
  score["bias"] = jnp.zeros((1,), jnp.float32)
  reading, _ = runner.path.read_gate(params, tokens)
  logits = np.asarray(reading.gate_logits)
  cuts = []
  for row, real in zip(logits, tokens > 0):
    free = np.sort(row[real][:-1])[::-1]  # the last real position is always a boundary
    wanted = max(int(round((1.0 - rate) * real.sum())) - 1, 0)
    cuts.append(free[wanted] if wanted < len(free) else -np.inf)
  score["bias"] = jnp.asarray([-float(max(cuts)) - 1e-4], jnp.float32)
  return params


@dataclasses.dataclass
class BaselineResult:
  """A pooling baseline at one length reduction (``rate``), against the same ByT5."""
  method: str
  rate: float
  measured_length_reduction: float
  compacted_length: int
  byt5_encoder_seconds: float
  byt5_scoring_seconds: float
  encoder_seconds: float
  encoder_speedup: float
  scoring_seconds: float
  scoring_speedup: float


def _pooling_params(config: MrT5Config, params, seed: int, tokens, decoder_inputs, targets):
  """The benchmark's backbone ``params`` plus a fresh BP / CP module."""
  fresh = jax.jit(Transformer(config).init, static_argnames="enable_dropout")(
      jax.random.PRNGKey(seed), tokens[:, :8], decoder_inputs[:, :8], targets[:, :8],
      enable_dropout=False)["params"]
  out = dict(params)
  out["encoder"] = {k: v for k, v in params["encoder"].items() if k != "delete_gate"}
  name = shortening_for(config).module_name
  out["encoder"][name] = fresh["encoder"][name]
  return out


def run_baselines(config: MrT5Config, params, rates: Sequence[float], tokens, decoder_inputs,
                  targets, byt5_encode_fn, byt5_score_fn, repeats: int, seed: int,
                  log: Callable[[str], None] = print) -> tuple[list[BaselineResult], int]:
  """BP at every rate and CP at ``1 - 1/cp_rate``; returns the rows and BP's
  compiled encoder programs."""
  real = tokens > 0
  results = []

  def measure(method, rate, runner):
    out = runner.encode(tokens)
    measured = 1.0 - float(np.asarray(out.mask).sum() / real.sum())
    byt5_encode, encode_s = paired_median_seconds(
        byt5_encode_fn, lambda: runner.encode(tokens).encoded, repeats)
    byt5_score, score_s = paired_median_seconds(
        byt5_score_fn, lambda: runner.score(tokens, decoder_inputs, targets), repeats)
    result = BaselineResult(method=method, rate=rate, measured_length_reduction=measured,
                            compacted_length=out.compacted_length,
                            byt5_encoder_seconds=byt5_encode, byt5_scoring_seconds=byt5_score,
                            encoder_seconds=encode_s, encoder_speedup=byt5_encode / encode_s,
                            scoring_seconds=score_s, scoring_speedup=byt5_score / score_s)
    results.append(result)
    log(f"{method} reduction {rate:.2f} (measured {measured:.3f}, length {out.compacted_length}):"
        f" ByT5 encoder {byt5_encode * 1e3:.0f} ms vs {method} {encode_s * 1e3:.0f} ms; "
        f"encoder {result.encoder_speedup:.2f}x | scoring {result.scoring_speedup:.2f}x")

  bp_config = config.replace(deletion_type="boundary")
  bp = InferenceRunner(bp_config, _pooling_params(bp_config, params, seed, tokens,
                                                  decoder_inputs, targets),
                       inference=BENCH_INFERENCE)
  for rate in rates:
    bp.params = force_boundary_rate(bp, tokens, rate)
    measure("BP", rate, bp)
  cp_config = config.replace(deletion_type="conv")
  cp = InferenceRunner(cp_config, _pooling_params(cp_config, params, seed, tokens,
                                                  decoder_inputs, targets))
  measure("CP", shortening_for(cp_config).length_reduction_target, cp)
  return results, bp.num_compiled_programs


def run_inference_benchmark(config_name: str = "cpu", rates: Sequence[float] = (0.25, 0.5, 0.75),
                            length: int = 1024, target_length: int = 189, batch: int = 2,
                            repeats: int = 3, seed: int = 0, baselines: bool = True,
                            log: Callable[[str], None] = print) -> dict:
  """Measure ByT5 vs hard-deletion MrT5 (and with ``baselines`` BP and CP at
  matched length reduction); returns a JSON-ready dict."""
  config = benchmark_config(config_name)
  byt5_config = config.replace(deletion_type="none")
  rng = np.random.RandomState(seed)
  tokens = rng.randint(3, 259, size=(batch, length)).astype(np.int32)
  tokens[:, -1] = 1
  targets = rng.randint(3, 259, size=(batch, target_length)).astype(np.int32)
  targets[:, -1] = 1
  decoder_inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], 1)
  module = Transformer(config)
  params = jax.jit(module.init, static_argnames="enable_dropout")(
      jax.random.PRNGKey(seed), tokens[:, :8], decoder_inputs[:, :8], targets[:, :8],
      enable_dropout=False)["params"]
  byt5_params = dict(params)
  byt5_params["encoder"] = {k: v for k, v in params["encoder"].items() if k != "delete_gate"}

  log(f"device={jax.devices()[0].device_kind} config={config_name} d_model={config.d_model} "
      f"layers={config.num_encoder_layers}/{config.num_decoder_layers} gate_layer="
      f"{config.delete_gate_layer} length={length} targets={target_length} batch={batch}")
  byt5 = InferenceRunner(byt5_config, byt5_params, mode="soft")
  byt5_encode_fn = lambda: byt5.encode(tokens).encoded
  byt5_score_fn = lambda: byt5.score(tokens, decoder_inputs, targets)

  results = []
  mrt5 = InferenceRunner(config, params, inference=BENCH_INFERENCE)
  for rate in rates:
    mrt5.params = force_rate(mrt5, tokens, rate)
    out = mrt5.encode(tokens)
    kept = out.compacted_length
    real = tokens > 0
    measured = float(np.mean(np.asarray(out.gate)[real] < config.deletion_threshold))
    byt5_encode, encode_s = paired_median_seconds(
        byt5_encode_fn, lambda: mrt5.encode(tokens).encoded, repeats)
    byt5_score, score_s = paired_median_seconds(
        byt5_score_fn, lambda: mrt5.score(tokens, decoder_inputs, targets), repeats)
    enc_ideal = ideal_speedup(config, length, kept)
    score_ideal = ideal_speedup(config, length, kept, target_length)
    result = RateResult(
        rate=rate, byt5_encoder_seconds=byt5_encode, byt5_scoring_seconds=byt5_score,
        measured_deletion_rate=measured, compacted_length=kept,
        encoder_seconds=encode_s, encoder_speedup=byt5_encode / encode_s,
        encoder_ideal_speedup=enc_ideal, encoder_efficiency=byt5_encode / encode_s / enc_ideal,
        scoring_seconds=score_s, scoring_speedup=byt5_score / score_s,
        scoring_ideal_speedup=score_ideal,
        scoring_efficiency=byt5_score / score_s / score_ideal)
    results.append(result)
    log(f"rate {rate:.2f} (measured {measured:.3f}, compacted length {kept}): ByT5 encoder "
        f"{byt5_encode * 1e3:.0f} ms vs MrT5 {encode_s * 1e3:.0f} ms; "
        f"encoder {result.encoder_speedup:.2f}x of ideal {enc_ideal:.2f}x "
        f"-> {result.encoder_efficiency:.2f} | scoring {result.scoring_speedup:.2f}x of ideal "
        f"{score_ideal:.2f}x -> {result.scoring_efficiency:.2f}")
  baseline_rows, bp_programs = [], 0
  if baselines:
    baseline_rows, bp_programs = run_baselines(
        config, params, rates, tokens, decoder_inputs, targets, byt5_encode_fn, byt5_score_fn,
        repeats, seed, log)
  return {
      "device": jax.devices()[0].device_kind,
      "platform": jax.devices()[0].platform,
      "config": config_name,
      "model": {k: getattr(config, k) for k in ("d_model", "d_ff", "num_heads", "head_dim",
                                                "num_encoder_layers", "num_decoder_layers",
                                                "delete_gate_layer")},
      "bucket_step": BENCH_INFERENCE.bucket_step,
      "length": length, "target_length": target_length, "batch": batch, "repeats": repeats,
      "rates": [dataclasses.asdict(r) for r in results],
      "compiled_encoder_programs": mrt5.num_compiled_programs,
      "baselines": [dataclasses.asdict(r) for r in baseline_rows],
      "bp_compiled_encoder_programs": bp_programs,
  }


def write_json(result: dict, path: str) -> None:
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
