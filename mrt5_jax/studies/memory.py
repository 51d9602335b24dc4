"""Memory and long-input measurements: ``mrt5-bench memory`` and ``mrt5-bench attention``.

Memory figures come from XLA's analysis of the compiled program
(``jax.jit(f).lower(...).compile().memory_analysis()``), so a train step of a
model far larger than this machine's memory is measured by compiling it, never
running it. ``peak`` is XLA's live-buffer estimate: arguments + outputs -
outputs aliased to (donated) arguments + temporaries. Times are medians of
runs alternated between the two variants in one process, reported as ratios.

Programs compile for a *target*: ``host`` (this machine's first device) or
``tpu`` (one chip of a TPU topology such as ``v4:2x2x1``, compiled by libtpu
on compile-only devices, so no TPU is needed; ``pip install libtpu==0.0.42.1``,
the version ``jax[tpu]`` 0.10.2 pins). XLA's CPU compiler drops the
rematerialisation barriers of unscanned layers (it merges the recomputation
with the forward pass), so remat shows on host figures only with scanned
layers; TPU figures are what a TPU would allocate, and a program that does not
fit the chip's memory is reported as such (XLA refuses to compile it).
"""
from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mrt5_jax.evaluation.timing import paired_median_seconds
from mrt5_jax.studies.compiled import (DEFAULT_TPU_TOPOLOGY, MIB, CompileTarget, MemoryStats,
                                       batch_shapes, compile_target, memory_stats)
from mrt5_jax.model.config import MrT5Config, preset
from mrt5_jax.model.network import Transformer
from mrt5_jax.training import optimizers
from mrt5_jax.training.trainer import Trainer

# 'attention' on a CPU: the 2-core machine times dense attention up to 8192
# positions with this width (heads x 64 as ByT5); 'base' is ByT5-base itself.
CPU_ATTENTION_SIZE = dict(d_model=256, d_ff=512, num_heads=4, head_dim=64, num_encoder_layers=4,
                          num_decoder_layers=1, delete_gate_layer=2)


def train_step_memory(config: MrT5Config, batch: int, input_length: int, target_length: int,
                      target: Optional[CompileTarget] = None) -> tuple[MemoryStats, float]:
  """(memory of one compiled ``mrt5-train`` step: AdamW, state donated; compile seconds)."""
  target = target or compile_target("host")
  trainer = Trainer(config, optimizer=optimizers.OptimizerConfig(name="adamw"),
                    enable_dropout=False, devices=[target.device])
  step = trainer.compiled_step(input_length, target_length)
  start = time.perf_counter()
  lowered = step.lower(trainer.abstract_state(input_length, target_length),
                       batch_shapes(batch, input_length, target_length))
  stats = memory_stats(lowered)
  return stats, time.perf_counter() - start


def target_length_for(input_length: int) -> int:
  """Span-corruption targets for ``input_length`` input bytes (189 for 1024, ByT5's ratio)."""
  return max(8, round(input_length * 189 / 1024))


def run_memory_benchmark(size: str = "base", lengths: Sequence[int] = (1024, 2048),
                         policies: Sequence[str] = ("none", "minimal", "full"),
                         batch: int = 1, scan_layers: bool = False, dtype: str = "bfloat16",
                         attention_impl: str = "dense", target: str = "auto",
                         topology: str = DEFAULT_TPU_TOPOLOGY,
                         log: Callable[[str], None] = print) -> dict:
  """Peak memory of one train step of MrT5 ``size`` per input length and remat policy."""
  rows = []
  compile_for = compile_target(target, topology)
  log(f"compiled for {compile_for.description}, not run: MrT5 {size}, batch {batch}, "
      f"{dtype} activations, scan_layers={scan_layers}, attention={attention_impl}, AdamW")
  for length in lengths:
    target_length = target_length_for(length)
    baseline = None
    for policy in policies:
      config = preset(size, dtype=dtype, remat_policy=policy, scan_layers=scan_layers,
                      attention_impl=attention_impl, use_softmax1=True)
      stats, seconds = train_step_memory(config, batch, length, target_length, compile_for)
      baseline = baseline or stats.peak_bytes or 1
      row = {"input_length": length, "target_length": target_length, "remat_policy": policy,
             **stats.as_dict(), "peak_vs_no_remat": stats.peak_bytes / baseline,
             "compile_seconds": seconds}
      rows.append(row)
      log(f"L={length} targets={target_length} remat={policy:8s} peak {stats.describe()} "
          f"(temp {stats.temp_bytes / MIB:6.0f} MiB, arguments {stats.argument_bytes / MIB:6.0f}"
          f" MiB) = {row['peak_vs_no_remat']:.2f} x no remat; compiled in {seconds:.0f} s")
  return {"benchmark": "memory", "compiled_for": compile_for.description,
          "target": compile_for.name, "size": size, "batch": batch, "dtype": dtype,
          "scan_layers": scan_layers, "attention_impl": attention_impl, "optimizer": "adamw",
          "rows": rows}


# ----------------------------------------------------------------------------- attention


def attention_config(name: str, impl: str, block_size: int) -> MrT5Config:
  """``cpu`` (CPU_ATTENTION_SIZE) or a ByT5 size name, with the given attention."""
  sizes = CPU_ATTENTION_SIZE if name == "cpu" else {}
  return preset("tiny" if name == "cpu" else name, **sizes, attention_impl=impl,
                attention_block_size=block_size, use_softmax1=True)


def _encoder_programs(config: MrT5Config, batch: int, length: int, params,
                      target: CompileTarget):
  """(encode fn for the host, lowered encode, lowered encode + backward for ``target``)
  of the soft-deletion encoder."""
  module = Transformer(config)

  def encode(params, tokens):
    return module.apply({"params": params}, tokens, enable_dropout=False, method=module.encode)

  def encode_loss(params, tokens):
    return jnp.mean(jnp.square(encode(params, tokens).astype(jnp.float32)))

  tokens = target.abstract(jax.ShapeDtypeStruct((batch, length), jnp.int32))
  abstract = target.abstract(params)
  return (jax.jit(encode), jax.jit(encode).lower(abstract, tokens),
          jax.jit(jax.grad(encode_loss)).lower(abstract, tokens))


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


def _ratio(numerator: int, denominator: int) -> Optional[float]:
  return numerator / denominator if numerator and denominator else None


def _mib(value: Optional[int]) -> str:
  return f"{value / MIB:.0f} MiB" if value else "n/a"


def run_attention_benchmark(config_name: str = "cpu",
                            lengths: Sequence[int] = (1024, 2048, 4096, 8192),
                            batch: int = 1, block_size: int = 512, repeats: int = 3,
                            seed: int = 0, target: str = "auto",
                            topology: str = DEFAULT_TPU_TOPOLOGY, timing: bool = True,
                            log: Callable[[str], None] = print) -> dict:
  """Dense against blocked encoder attention per length, side by side: encoder
  time (forward, run on this host) and peak memory (forward, and forward +
  backward, compiled for ``target``)."""
  dense_config = attention_config(config_name, "dense", block_size)
  blocked_config = dense_config.replace(attention_impl="blocked")
  compile_for = compile_target(target, topology)
  init_tokens = jnp.ones((1, 8), jnp.int32)
  params = jax.jit(lambda rng: Transformer(dense_config).init(
      rng, init_tokens, init_tokens, init_tokens, enable_dropout=False))(
          jax.random.PRNGKey(seed))["params"]
  log(f"times on {jax.devices()[0].device_kind} (this host), memory compiled for "
      f"{compile_for.description}: config={config_name} d_model={dense_config.d_model} "
      f"heads={dense_config.num_heads}x{dense_config.head_dim} encoder layers="
      f"{dense_config.num_encoder_layers} (gate at {dense_config.delete_gate_layer}, soft "
      f"deletion, softmax1, {dense_config.dtype}) batch={batch} block={block_size}")
  rng = np.random.RandomState(seed)
  rows = []
  for length in lengths:
    tokens = rng.randint(3, 259, size=(batch, length)).astype(np.int32)
    tokens[:, -1] = 1
    row = {"length": length}
    runs = {}
    for name, config in (("dense", dense_config), ("blocked", blocked_config)):
      forward, lowered, lowered_grad = _encoder_programs(config, batch, length, params,
                                                         compile_for)
      for kind, program in (("forward", lowered), ("train", lowered_grad)):
        stats = memory_stats(program)
        row[f"{name}_{kind}_peak_bytes"] = stats.peak_bytes
        row[f"{name}_{kind}_fits"] = stats.fits
      runs[name] = (lambda f=forward: f(params, tokens))
    if timing:
      dense_s, blocked_s = paired_median_seconds(runs["dense"], runs["blocked"],
                                                              repeats)
      row.update(dense_seconds=dense_s, blocked_seconds=blocked_s,
                 time_ratio=blocked_s / dense_s)
      out_dense = np.asarray(runs["dense"](), np.float32)
      out_blocked = np.asarray(runs["blocked"](), np.float32)
      row["max_abs_difference"] = float(np.max(np.abs(out_dense - out_blocked)))
    for kind in ("forward", "train"):
      row[f"{kind}_memory_ratio"] = _ratio(row[f"blocked_{kind}_peak_bytes"],
                                           row[f"dense_{kind}_peak_bytes"])
    rows.append(row)
    timed = (f"time dense {row['dense_seconds'] * 1e3:.0f} ms, blocked "
             f"{row['blocked_seconds'] * 1e3:.0f} ms (x{row['time_ratio']:.2f}, max diff "
             f"{row['max_abs_difference']:.1e})" if timing else "not timed")
    memory = "; ".join(
        f"{label} peak dense {_mib(row[f'dense_{kind}_peak_bytes'])}"
        f"{'' if row[f'dense_{kind}_fits'] else ' (does not fit)'}, blocked "
        f"{_mib(row[f'blocked_{kind}_peak_bytes'])}"
        f"{'' if row[f'blocked_{kind}_fits'] else ' (does not fit)'}"
        + (f" (x{row[f'{kind}_memory_ratio']:.3f})" if row[f"{kind}_memory_ratio"] else "")
        for kind, label in (("forward", "forward"), ("train", "fwd+bwd")))
    log(f"L={length}: {timed}; {memory}")
  platforms = dot_product_attention_platforms()
  log(f"jax.nn.dot_product_attention on this host: {platforms}")
  return {"benchmark": "attention", "host": jax.devices()[0].device_kind,
          "compiled_for": compile_for.description, "target": compile_for.name,
          "config": config_name,
          "model": {k: getattr(dense_config, k) for k in (
              "d_model", "d_ff", "num_heads", "head_dim", "num_encoder_layers",
              "delete_gate_layer", "dtype")},
          "batch": batch, "block_size": block_size, "repeats": repeats, "rows": rows,
          "jax_nn_dot_product_attention": platforms}
