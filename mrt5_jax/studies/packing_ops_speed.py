"""What a packed hard training step adds, op by op: ``python benchmarks/accelerator.py --parts packing_ops``.

On an H200 a packed hard batch cost 1.09 x a soft one where FLOPs alone
predict about 0.85 x (docs/benchmarks.md). Each op the packed step adds is
jitted alone here, forward and backward where the step differentiates it, at
the step's shapes (``batch`` rows of ``length``, ``packed_rows`` packed rows,
``num_heads`` heads, ``d_model`` features), and timed (median of ``repeats``):

  plan              the in-graph plan (``packing.plan_in_graph_capped``)
  gather_hidden     hidden states into the packed rows and the gradient back
                    (``packing.gather_packed``; a scatter-add under ``grad``)
  relpos_shared     the relative position bias of a soft step, one (1, H, L, L)
                    table for every row, and its gradient
  relpos_packed     one per packed row, (R, H, L, L), as the packed step reads
                    original positions (``relpos.bias_from_table``: a gather,
                    whose gradient is a scatter-add into 32 buckets)
  relpos_one_hot    the same bias as a one-hot contraction (``one_hot_bias``,
                    the formulation t5x uses on TPU), a candidate replacement

Numbers only mean something on an accelerator; on a CPU the scatter costs
what its additions cost.
"""
from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mrt5_jax.maths import packing
from mrt5_jax.maths import relpos

OPS = ("plan", "gather_hidden", "relpos_shared", "relpos_packed", "relpos_one_hot")


def one_hot_bias(table: jax.Array, query_positions: jax.Array, key_positions: jax.Array,
                 *, bidirectional: bool, max_distance: int = 128) -> jax.Array:
  """``relpos.bias_from_table`` as a contraction with one-hot buckets: (B|1, H, Q, K)."""
  relative = key_positions[:, None, :] - query_positions[:, :, None]
  bucket = relpos.relative_position_bucket(relative.astype(jnp.int32), bidirectional,
                                           table.shape[1], max_distance)
  one_hot = jax.nn.one_hot(bucket, table.shape[1], dtype=table.dtype)
  return jnp.einsum("bqkn,hn->bhqk", one_hot, table)


def _median_ms(fn: Callable, args: tuple, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3


def _bias_grad(formulation: Callable) -> Callable:
  def loss(table, positions, cotangent):
    bias = formulation(table, positions, positions, bidirectional=True)
    return jnp.sum(bias * cotangent)
  return jax.jit(jax.grad(loss))


def run_packing_ops_benchmark(batch: int = 32, length: int = 512, packed_rows: int = 20,
                              num_heads: int = 6, d_model: int = 1472, rate: float = 0.5,
                              repeats: int = 20, seed: int = 0,
                              log: Callable[[str], None] = print) -> dict:
  """Milliseconds per op (``OPS``) at one step's shapes; a JSON-ready dict."""
  rng = np.random.default_rng(seed)
  kept = np.clip(rng.normal(rate, 0.1, batch) * length, 1, length).astype(np.int32)
  plan_fn = jax.jit(packing.plan_in_graph_capped, static_argnums=(1, 2, 3))
  plan, _ = plan_fn(jnp.asarray(kept), length, 1, packed_rows)
  keep = jnp.asarray(np.arange(length)[None, :] < kept[:, None])
  packed = jax.jit(packing.pack)(keep, plan)
  hidden = jnp.asarray(rng.normal(size=(batch, length, d_model)), jnp.float32)
  gather_grad = jax.jit(jax.grad(
      lambda h, c: jnp.sum(packing.gather_packed(h, packed, 1) * c)))
  table = jnp.asarray(rng.normal(size=(num_heads, 32)), jnp.float32)
  shared_positions = jnp.arange(length, dtype=jnp.int32)[None, :]
  cotangents = {rows: jnp.asarray(rng.normal(size=(rows, num_heads, length, length)), jnp.float32)
                for rows in (1, packed_rows)}
  timed = {
      "plan": (plan_fn, (jnp.asarray(kept), length, 1, packed_rows)),
      "gather_hidden": (gather_grad, (hidden, jnp.asarray(
          rng.normal(size=(packed_rows, length, d_model)), jnp.float32))),
      "relpos_shared": (_bias_grad(relpos.bias_from_table),
                        (table, shared_positions, cotangents[1])),
      "relpos_packed": (_bias_grad(relpos.bias_from_table),
                        (table, packed.positions, cotangents[packed_rows])),
      "relpos_one_hot": (_bias_grad(one_hot_bias),
                         (table, packed.positions, cotangents[packed_rows])),
  }
  ms = {op: _median_ms(fn, args, repeats) for op, (fn, args) in timed.items()}
  device = jax.devices()[0].device_kind
  log(f"device={device} batch={batch} length={length} packed_rows={packed_rows} "
      f"heads={num_heads} d_model={d_model}")
  for op in OPS:
    log(f"{op:>15}: {ms[op]:8.3f} ms")
  return {"device": device, "batch": batch, "length": length, "packed_rows": packed_rows,
          "num_heads": num_heads, "d_model": d_model, "repeats": repeats, "ms": ms}
