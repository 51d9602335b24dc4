"""Hard-deletion speed: ByT5 against MrT5 at forced deletion rates, side by side.

Deletion rates are forced per row (no training needed): stage one runs for
real, and its gate values are replaced by ones that keep each row's highest
gate logits so that row ``b`` deletes its own rate, the batch's rate plus
N(0, ``row_rate_spread``) noise. Each hard-deletion mode (``MODES``: per-row
buckets as powers of two or multiples of 64, packed rows, a fixed capacity)
runs the whole stage one -> stage two path on those rows. The pooling
baselines run at matched length reduction: BP (boundary predictor, bucketed
segment count) with its boundary bias forced so its fullest row keeps
``(1 - rate) * L`` segments, CP (strided convolution) at its one reduction
``1 - 1/cp_rate``, both against the same ByT5. Speedups are ratios of median
wall times measured alternately in the same process; FLOP ideals are ratios
of matmul FLOPs (``model.flops``) of what ran, and of every row at its own
kept length (the exact ideal).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mrt5_jax.model.config import MrT5Config, preset
from mrt5_jax.inference.encode_path import InferenceConfig, capacity_length
from mrt5_jax.inference.runner import InferenceRunner
from mrt5_jax.model.network import Transformer
from mrt5_jax.model.shortening.registry import shortening_for
from mrt5_jax.model.flops import batch_encoder_flops, decoder_flops, encoder_flops
from mrt5_jax.evaluation.timing import paired_median_seconds

CPU_BENCH_SIZE = dict(d_model=256, d_ff=640, num_heads=4, head_dim=64, num_encoder_layers=12,
                      num_decoder_layers=4)
BENCH_INFERENCE = InferenceConfig(mode="bucketed", bucket_step=64, min_bucket_length=64)


def benchmark_config(name: str, gate_layer: int = 3, dtype: str = "float32") -> MrT5Config:
  """``cpu``: a 12-layer model a 2-core machine runs at length 1024; ``small``: ByT5-small.
  ``dtype``: the activations' (parameters stay float32)."""
  sizes = CPU_BENCH_SIZE if name == "cpu" else {}
  base = "tiny" if name == "cpu" else name
  return preset(base, **sizes, delete_gate_layer=gate_layer, dtype=dtype)


def row_rates(rate: float, spread: float, rows: int, seed: int) -> np.ndarray:
  """Each row's deletion rate: ``rate`` plus N(0, spread) noise (seeded), in [0, 0.98]."""
  noise = np.random.RandomState(seed + 1).randn(rows) if spread else np.zeros(rows)
  return np.clip(rate + spread * noise, 0.0, 0.98)


def forced_gate(logits: np.ndarray, tokens: np.ndarray, rates: np.ndarray,
                scale: float) -> tuple[np.ndarray, np.ndarray]:
  """G (B, L) keeping each row's highest gate logits so that row ``b`` deletes
  ``rates[b]`` of its real positions (at least one kept), and the kept counts (B,)."""
  real = tokens > 0
  gate = np.full(logits.shape, scale, np.float32)
  kept = np.zeros(len(rates), np.int32)
  for row, (row_logits, row_real, rate) in enumerate(zip(logits, real, rates)):
    positions = np.flatnonzero(row_real)
    keep = max(1, int(round((1.0 - rate) * len(positions))))
    chosen = positions[np.argsort(-row_logits[positions], kind="stable")[:keep]]
    gate[row, chosen] = 0.0
    kept[row] = keep
  return gate, kept


# Hard-deletion modes the benchmark compares: (label, InferenceConfig settings).
MODES = {
    "pow2": dict(mode="bucketed", bucket_step=0, min_bucket_length=8),
    "step": dict(mode="bucketed", bucket_step=64, min_bucket_length=64),
    "packed": dict(mode="packed", bucket_step=64, min_bucket_length=64),
    # packed rows no longer than the input (the default before packed_row_limit)
    "packed_within": dict(mode="packed", bucket_step=64, min_bucket_length=64,
                          packed_row_limit=1.0),
    "capacity": dict(mode="capacity", bucket_step=64, min_bucket_length=64),
}
DEFAULT_MODE = "packed"


@dataclasses.dataclass
class ModeResult:
  """One hard-deletion mode at one rate (see ``run_inference_benchmark``)."""
  mode: str
  compacted_length: int
  stage_two_rows: int
  stage_two_length: int
  dropped_share: float
  encoder_seconds: float
  encoder_speedup: float
  encoder_ideal_speedup: float
  exact_ideal_speedup: float
  scoring_seconds: float
  scoring_speedup: float
  scoring_ideal_speedup: float
  programs: int


class ForcedDeletion:
  """Hard-deletion encoding of one batch with each row's kept set forced.

  Stage one runs for real; its gate values are replaced by ``forced_gate``'s
  before the mode's stage two, so every mode runs the whole path on the same
  kept positions.
  """

  def __init__(self, config: MrT5Config, params, mode: str, length: int):
    self.config = config
    inference = InferenceConfig(**MODES[mode])
    if mode == "capacity":
      inference = inference.replace(mode="bucketed")
    self.mode = mode
    self.runner = InferenceRunner(config, params, inference=inference)
    self.path = self.runner.path
    self.length = length
    self.capacity = length

  def set_rows(self, tokens, gate: np.ndarray, kept: np.ndarray, capacity_fraction: float):
    self.tokens = jnp.asarray(tokens)
    self.gate = jnp.asarray(gate)
    self.kept = kept
    self.capacity = capacity_length(self.path.inference.replace(
        capacity_fraction=capacity_fraction), self.length)

  def encode(self):
    params = self.runner.params
    reading, _ = self.path.read_gate(params, self.tokens)
    reading = reading.replace(gate=self.gate)
    if self.mode == "capacity":
      return self.path.finish(params, reading, self.tokens, length=self.capacity)
    length = self.path.compacted_length(self.kept, self.length)
    plan = (self.path.choose_packing(self.kept, self.length, length)
            if self.mode == "packed" else None)
    if plan is not None:
      return self.path.finish_packed(params, reading, self.tokens, None, plan, length)
    return self.path.finish(params, reading, self.tokens, length=length)

  def shape_run(self) -> tuple[int, int]:
    """(rows, length) stage two runs on for the current rows."""
    if self.mode == "capacity":
      return len(self.kept), self.capacity
    return self.path.stage_two_shape(self.kept, self.length,
                                     self.path.compacted_length(self.kept, self.length))


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


@dataclasses.dataclass
class RateResult:
  """The default mode (``DEFAULT_MODE``) at one rate, and every mode in ``modes``."""
  rate: float
  row_rate_spread: float
  byt5_encoder_seconds: float
  byt5_scoring_seconds: float
  measured_deletion_rate: float
  longest_kept: int
  compacted_length: int
  encoder_seconds: float
  encoder_speedup: float
  encoder_ideal_speedup: float
  encoder_efficiency: float
  scoring_seconds: float
  scoring_speedup: float
  scoring_ideal_speedup: float
  scoring_efficiency: float
  exact_ideal_speedup: float
  modes: list


def measure_mode(forced: ForcedDeletion, config: MrT5Config, tokens, decoder_inputs, targets,
                 byt5_encode_fn, byt5_score_fn, repeats: int) -> tuple[ModeResult, float, float]:
  """One mode on the forced rows: (its row, ByT5 encoder seconds, ByT5 scoring seconds)."""
  batch, length = tokens.shape
  target_length = targets.shape[1]
  out = forced.encode()
  unpacked = out.compacted_length
  rows, run_length = forced.shape_run()
  kept = forced.kept
  dropped = float(np.asarray(out.num_dropped).sum() / kept.sum())
  byt5_encode, encode_s = paired_median_seconds(
      byt5_encode_fn, lambda: forced.encode().encoded, repeats)
  score = lambda: forced.runner.score_from(forced.encode(), decoder_inputs, targets)
  byt5_score, score_s = paired_median_seconds(byt5_score_fn, score, repeats)
  byt5_flops = batch * encoder_flops(config, length)
  ran = batch_encoder_flops(config, batch, length, rows, run_length)
  exact = sum(encoder_flops(config, length, int(k)) for k in kept)
  byt5_decoder = batch * decoder_flops(config, target_length, length)
  ran_decoder = batch * decoder_flops(config, target_length, unpacked)
  result = ModeResult(
      mode=forced.mode, compacted_length=int(unpacked), stage_two_rows=int(rows),
      stage_two_length=int(run_length), dropped_share=dropped,
      encoder_seconds=encode_s, encoder_speedup=byt5_encode / encode_s,
      encoder_ideal_speedup=byt5_flops / ran, exact_ideal_speedup=byt5_flops / exact,
      scoring_seconds=score_s, scoring_speedup=byt5_score / score_s,
      scoring_ideal_speedup=(byt5_flops + byt5_decoder) / (ran + ran_decoder),
      programs=forced.runner.num_compiled_programs)
  return result, byt5_encode, byt5_score


def run_inference_benchmark(config_name: str = "cpu", rates: Sequence[float] = (0.25, 0.5, 0.75),
                            length: int = 1024, target_length: int = 189, batch: int = 2,
                            repeats: int = 3, seed: int = 0, baselines: bool = True,
                            row_rate_spread: float = 0.0, modes: Sequence[str] = tuple(MODES),
                            dtype: str = "float32", log: Callable[[str], None] = print) -> dict:
  """Measure ByT5 vs hard-deletion MrT5 in each of ``modes`` (and with
  ``baselines`` BP and CP at matched length reduction); returns a JSON-ready dict.

  Row ``b`` deletes its own rate, ``rate`` + N(0, ``row_rate_spread``)
  (``row_rates``), forced on a random-init model (``forced_gate``). Each mode's
  speedups are medians of ByT5 / MrT5 wall times timed alternately; its
  ``encoder_ideal_speedup`` is the FLOP ratio of what it ran, and
  ``exact_ideal_speedup`` that of every row at its own kept length.
  """
  unknown = sorted(set(modes) - set(MODES))
  if unknown or not modes:
    raise ValueError(f"modes must come from {sorted(MODES)}, got {list(modes)}")
  config = benchmark_config(config_name, dtype=dtype)
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
      f"{config.delete_gate_layer} length={length} targets={target_length} batch={batch} "
      f"row_rate_spread={row_rate_spread} dtype={dtype}")
  byt5 = InferenceRunner(byt5_config, byt5_params, mode="soft")
  byt5_encode_fn = lambda: byt5.encode(tokens).encoded
  byt5_score_fn = lambda: byt5.score(tokens, decoder_inputs, targets)

  forced = {mode: ForcedDeletion(config, params, mode, length) for mode in modes}
  reading, _ = next(iter(forced.values())).path.read_gate(params, jnp.asarray(tokens))
  logits = np.asarray(reading.gate_logits)
  results = []
  for rate in rates:
    per_row = row_rates(rate, row_rate_spread, batch, seed)
    gate, kept = forced_gate(logits, tokens, per_row, config.sigmoid_mask_scale)
    measured = 1.0 - float(kept.sum() / (tokens > 0).sum())
    capacity = min(1.0, 1.0 - rate + 2 * row_rate_spread)
    rows, byt5_times = [], []
    for mode in modes:
      forced[mode].set_rows(tokens, gate, kept, capacity)
      row, byt5_encode, byt5_score = measure_mode(
          forced[mode], config, tokens, decoder_inputs, targets, byt5_encode_fn, byt5_score_fn,
          repeats)
      rows.append(row)
      byt5_times.append((byt5_encode, byt5_score))
      log(f"rate {rate:.2f} spread {row_rate_spread:.2f} {mode:>8}: stage two on "
          f"{row.stage_two_rows} x {row.stage_two_length}; encoder "
          f"{row.encoder_speedup:.2f}x (ran ideal {row.encoder_ideal_speedup:.2f}x, exact "
          f"{row.exact_ideal_speedup:.2f}x) | scoring {row.scoring_speedup:.2f}x "
          f"(ideal {row.scoring_ideal_speedup:.2f}x); dropped {row.dropped_share:.3f}")
    main = next((r for r in rows if r.mode == DEFAULT_MODE), rows[0])
    byt5_encode, byt5_score = byt5_times[rows.index(main)]
    results.append(RateResult(
        rate=rate, row_rate_spread=row_rate_spread, byt5_encoder_seconds=byt5_encode,
        byt5_scoring_seconds=byt5_score, measured_deletion_rate=measured,
        longest_kept=int(kept.max()), compacted_length=main.compacted_length,
        encoder_seconds=main.encoder_seconds, encoder_speedup=main.encoder_speedup,
        encoder_ideal_speedup=main.encoder_ideal_speedup,
        encoder_efficiency=main.encoder_speedup / main.encoder_ideal_speedup,
        scoring_seconds=main.scoring_seconds, scoring_speedup=main.scoring_speedup,
        scoring_ideal_speedup=main.scoring_ideal_speedup,
        scoring_efficiency=main.scoring_speedup / main.scoring_ideal_speedup,
        exact_ideal_speedup=main.exact_ideal_speedup,
        modes=[dataclasses.asdict(r) for r in rows]))
  baseline_rows, bp_programs = [], 0
  if baselines:
    baseline_rows, bp_programs = run_baselines(
        config, params, rates, tokens, decoder_inputs, targets, byt5_encode_fn, byt5_score_fn,
        repeats, seed, log)
  default = forced.get(DEFAULT_MODE, next(iter(forced.values())))
  return {
      "device": jax.devices()[0].device_kind,
      "platform": jax.devices()[0].platform,
      "config": config_name,
      "dtype": dtype,
      "model": {k: getattr(config, k) for k in ("d_model", "d_ff", "num_heads", "head_dim",
                                                "num_encoder_layers", "num_decoder_layers",
                                                "delete_gate_layer")},
      "default_mode": default.mode,
      "bucket_step": default.path.inference.bucket_step,
      "length": length, "target_length": target_length, "batch": batch, "repeats": repeats,
      "row_rate_spread": row_rate_spread,
      "rates": [dataclasses.asdict(r) for r in results],
      "compiled_encoder_programs": default.runner.num_compiled_programs,
      "baselines": [dataclasses.asdict(r) for r in baseline_rows],
      "bp_compiled_encoder_programs": bp_programs,
  }


def write_json(result: dict, path: str) -> None:
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
