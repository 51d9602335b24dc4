"""Memory and long-input measurements: ``mrt5-bench memory`` and ``mrt5-bench attention``.

Memory figures come from XLA's analysis of the compiled program
(``jax.jit(f).lower(...).compile().memory_analysis()``), so a train step of a
model far larger than this machine's memory is measured by compiling it, never
running it. ``peak`` is XLA's live-buffer estimate: arguments + outputs -
outputs aliased to (donated) arguments + temporaries. Times are medians of
runs alternated between the two variants in one process, reported as ratios.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mrt5_jax import benchmarking
from mrt5_jax.config import MrT5Config, preset

MIB = 1024.0 ** 2
# 'attention' on a CPU: the 2-core machine times dense attention up to 8192
# positions with this width (heads x 64 as ByT5); 'base' is ByT5-base itself.
CPU_ATTENTION_SIZE = dict(d_model=256, d_ff=512, num_heads=4, head_dim=64, num_encoder_layers=4,
                          num_decoder_layers=1, delete_gate_layer=2)


@dataclasses.dataclass
class MemoryStats:
  """Bytes of one compiled program (XLA's memory analysis)."""
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int

  @property
  def peak_bytes(self) -> int:
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

  def as_dict(self) -> dict:
    return {**dataclasses.asdict(self), "peak_bytes": self.peak_bytes}


def memory_stats(lowered) -> MemoryStats:
  """Compile a lowered jax program and read its memory analysis."""
  analysis = lowered.compile().memory_analysis()
  if analysis is None:
    raise RuntimeError(f"XLA gives no memory analysis on {jax.devices()[0].platform}")
  return MemoryStats(int(analysis.argument_size_in_bytes), int(analysis.output_size_in_bytes),
                     int(analysis.alias_size_in_bytes), int(analysis.temp_size_in_bytes))


def _batch_shapes(batch: int, input_length: int, target_length: int) -> dict:
  enc = jax.ShapeDtypeStruct((batch, input_length), jnp.int32)
  dec = jax.ShapeDtypeStruct((batch, target_length), jnp.int32)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
          "decoder_target_tokens": dec}


def train_step_memory(config: MrT5Config, batch: int, input_length: int,
                      target_length: int) -> tuple[MemoryStats, float]:
  """(memory of one compiled ``mrt5-train`` step: AdamW, state donated; compile seconds)."""
  from mrt5_jax import optimizers
  from mrt5_jax.trainer import Trainer
  trainer = Trainer(config, optimizer=optimizers.OptimizerConfig(name="adamw"),
                    enable_dropout=False)
  step = trainer.compiled_step(input_length, target_length)
  start = time.perf_counter()
  lowered = step.lower(trainer.abstract_state(input_length, target_length),
                       _batch_shapes(batch, input_length, target_length))
  stats = memory_stats(lowered)
  return stats, time.perf_counter() - start


def target_length_for(input_length: int) -> int:
  """Span-corruption targets for ``input_length`` input bytes (189 for 1024, ByT5's ratio)."""
  return max(8, round(input_length * 189 / 1024))


def run_memory_benchmark(size: str = "base", lengths: Sequence[int] = (1024, 2048),
                         policies: Sequence[str] = ("none", "minimal", "full"),
                         batch: int = 1, scan_layers: bool = True, dtype: str = "bfloat16",
                         attention_impl: str = "dense",
                         log: Callable[[str], None] = print) -> dict:
  """Peak memory of one train step of MrT5 ``size`` per input length and remat policy."""
  rows = []
  log(f"platform={jax.devices()[0].platform} size={size} batch={batch} dtype={dtype} "
      f"scan_layers={scan_layers} attention={attention_impl} (compiled, not run)")
  for length in lengths:
    target = target_length_for(length)
    baseline = None
    for policy in policies:
      config = preset(size, dtype=dtype, remat_policy=policy, scan_layers=scan_layers,
                      attention_impl=attention_impl, use_softmax1=True)
      stats, seconds = train_step_memory(config, batch, length, target)
      baseline = baseline or stats.peak_bytes
      row = {"input_length": length, "target_length": target, "remat_policy": policy,
             **stats.as_dict(), "peak_vs_no_remat": stats.peak_bytes / baseline,
             "compile_seconds": seconds}
      rows.append(row)
      log(f"L={length} targets={target} remat={policy:8s} peak {stats.peak_bytes / MIB:9.0f} MiB "
          f"(temp {stats.temp_bytes / MIB:9.0f} MiB, arguments {stats.argument_bytes / MIB:6.0f}"
          f" MiB) = {row['peak_vs_no_remat']:.2f} x no remat; compiled in {seconds:.0f} s")
  return {"benchmark": "memory", "platform": jax.devices()[0].platform,
          "device": jax.devices()[0].device_kind, "size": size, "batch": batch, "dtype": dtype,
          "scan_layers": scan_layers, "attention_impl": attention_impl, "optimizer": "adamw",
          "rows": rows}


# ----------------------------------------------------------------------------- attention


def attention_config(name: str, impl: str, block_size: int) -> MrT5Config:
  """``cpu`` (CPU_ATTENTION_SIZE) or a ByT5 size name, with the given attention."""
  sizes = CPU_ATTENTION_SIZE if name == "cpu" else {}
  return preset("tiny" if name == "cpu" else name, **sizes, attention_impl=impl,
                attention_block_size=block_size, use_softmax1=True)


def _encoder_programs(config: MrT5Config, batch: int, length: int, params):
  """(encode fn, lowered encode, lowered encode + backward) of the soft-deletion encoder."""
  from mrt5_jax.network import Transformer
  module = Transformer(config)

  def encode(params, tokens):
    return module.apply({"params": params}, tokens, enable_dropout=False, method=module.encode)

  def encode_loss(params, tokens):
    return jnp.mean(jnp.square(encode(params, tokens).astype(jnp.float32)))

  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  forward = jax.jit(encode)
  backward = jax.jit(jax.grad(encode_loss))
  return forward, forward.lower(abstract, tokens), backward.lower(abstract, tokens)


def dot_product_attention_platforms() -> dict:
  """What ``jax.nn.dot_product_attention`` offers here: implementations that compile
  on this platform for a (1, 256, 4, 64) problem with a (1, 4, 256, 256) bias."""
  q = jnp.zeros((1, 256, 4, 64), jnp.bfloat16)
  bias = jnp.zeros((1, 4, 256, 256), jnp.bfloat16)
  found = {}
  for implementation in ("xla", "cudnn"):
    try:
      jax.jit(lambda q, b: jax.nn.dot_product_attention(
          q, q, q, bias=b, implementation=implementation)).lower(q, bias).compile()
      found[implementation] = "compiles"
    except Exception as error:  # the cudnn path raises on platforms without cuDNN
      found[implementation] = f"unavailable: {type(error).__name__}: {str(error)[:120]}"
  return found


def run_attention_benchmark(config_name: str = "cpu",
                            lengths: Sequence[int] = (1024, 2048, 4096, 8192),
                            batch: int = 1, block_size: int = 512, repeats: int = 3,
                            seed: int = 0, time_limit_bytes: Optional[int] = None,
                            log: Callable[[str], None] = print) -> dict:
  """Dense against blocked encoder attention per length: time (forward, run) and
  peak memory (forward and forward + backward, compiled), side by side.

  ``time_limit_bytes``: skip timing a variant whose forward peak exceeds it
  (its memory is still reported).
  """
  from mrt5_jax.network import Transformer
  dense_config = attention_config(config_name, "dense", block_size)
  blocked_config = dense_config.replace(attention_impl="blocked")
  init_tokens = jnp.ones((1, 8), jnp.int32)
  params = jax.jit(lambda rng: Transformer(dense_config).init(
      rng, init_tokens, init_tokens, init_tokens, enable_dropout=False))(
          jax.random.PRNGKey(seed))["params"]
  log(f"platform={jax.devices()[0].platform} config={config_name} d_model="
      f"{dense_config.d_model} heads={dense_config.num_heads}x{dense_config.head_dim} "
      f"encoder layers={dense_config.num_encoder_layers} (gate at "
      f"{dense_config.delete_gate_layer}, soft deletion) batch={batch} block={block_size}")
  rng = np.random.RandomState(seed)
  rows = []
  for length in lengths:
    tokens = rng.randint(3, 259, size=(batch, length)).astype(np.int32)
    tokens[:, -1] = 1
    row = {"length": length}
    runs = {}
    for name, config in (("dense", dense_config), ("blocked", blocked_config)):
      forward, lowered, lowered_grad = _encoder_programs(config, batch, length, params)
      fwd, train = memory_stats(lowered), memory_stats(lowered_grad)
      row[f"{name}_forward_peak_bytes"] = fwd.peak_bytes
      row[f"{name}_train_peak_bytes"] = train.peak_bytes
      if time_limit_bytes is None or fwd.peak_bytes <= time_limit_bytes:
        runs[name] = (lambda f=forward: f(params, tokens))
    if len(runs) == 2:
      dense_s, blocked_s = benchmarking.paired_median_seconds(runs["dense"], runs["blocked"],
                                                              repeats)
      row.update(dense_seconds=dense_s, blocked_seconds=blocked_s,
                 time_ratio=blocked_s / dense_s)
      out_dense = np.asarray(runs["dense"](), np.float32)
      out_blocked = np.asarray(runs["blocked"](), np.float32)
      row["max_abs_difference"] = float(np.max(np.abs(out_dense - out_blocked)))
    row["forward_memory_ratio"] = row["blocked_forward_peak_bytes"] / row["dense_forward_peak_bytes"]
    row["train_memory_ratio"] = row["blocked_train_peak_bytes"] / row["dense_train_peak_bytes"]
    rows.append(row)
    timing = (f"time dense {row['dense_seconds'] * 1e3:.0f} ms, blocked "
              f"{row['blocked_seconds'] * 1e3:.0f} ms (x{row['time_ratio']:.2f}, max diff "
              f"{row['max_abs_difference']:.1e})" if "time_ratio" in row else "not timed")
    log(f"L={length}: {timing}; forward peak dense "
        f"{row['dense_forward_peak_bytes'] / MIB:.0f} MiB, blocked "
        f"{row['blocked_forward_peak_bytes'] / MIB:.0f} MiB (x{row['forward_memory_ratio']:.3f});"
        f" fwd+bwd peak dense {row['dense_train_peak_bytes'] / MIB:.0f} MiB, blocked "
        f"{row['blocked_train_peak_bytes'] / MIB:.0f} MiB (x{row['train_memory_ratio']:.3f})")
  platforms = dot_product_attention_platforms()
  log(f"jax.nn.dot_product_attention here: {platforms}")
  return {"benchmark": "attention", "platform": jax.devices()[0].platform,
          "device": jax.devices()[0].device_kind, "config": config_name,
          "model": {k: getattr(dense_config, k) for k in (
              "d_model", "d_ff", "num_heads", "head_dim", "num_encoder_layers",
              "delete_gate_layer", "dtype")},
          "batch": batch, "block_size": block_size, "repeats": repeats, "rows": rows,
          "jax_nn_dot_product_attention": platforms}
