"""T5.1.1 building blocks with t5x parameter names and logical axis names.

Dense kernels are stored 2-D, (in_features, out_features), as t5x's
``examples/t5/layers.py`` stores them, so t5x checkpoints restore unchanged.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import flax.linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
import jax.numpy as jnp


param_with_axes = nn_partitioning.param_with_axes
variable_with_axes = nn_partitioning.variable_with_axes
with_sharding_constraint = nn_partitioning.with_sharding_constraint

Initializer = Callable[..., jax.Array]

attention_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
mlp_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
embedding_init = nn.initializers.normal(stddev=1.0)
relpos_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction; statistics in float32."""
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = (x32 * jax.lax.rsqrt(variance + self.epsilon)).astype(self.dtype)
    scale = param_with_axes("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32,
                            axes=("embed",))
    return y * scale.astype(self.dtype)


class Dense(nn.Module):
  """y = x @ kernel (+ bias), kernel stored (in, out) with logical axes."""
  features: int
  kernel_axes: Sequence[Optional[str]]
  kernel_init: Initializer = mlp_kernel_init
  use_bias: bool = False
  bias_init: Initializer = nn.initializers.zeros
  bias_axes: Sequence[Optional[str]] = ()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = param_with_axes("kernel", self.kernel_init, (x.shape[-1], self.features),
                             jnp.float32, axes=tuple(self.kernel_axes))
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = param_with_axes("bias", self.bias_init, (self.features,), jnp.float32,
                             axes=tuple(self.bias_axes))
      y = y + bias.astype(self.dtype)
    return y


class Embed(nn.Module):
  """Token embedding, shared by encoder and decoder inputs."""
  num_embeddings: int
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    embedding = param_with_axes("embedding", embedding_init,
                                (self.num_embeddings, self.features), jnp.float32,
                                axes=("vocab", "embed"))
    return jnp.take(embedding, tokens, axis=0).astype(self.dtype)


class MlpBlock(nn.Module):
  """Gated GELU feed-forward: wo(gelu(wi_0 x) * wi_1 x)."""
  d_ff: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    dense = functools.partial(Dense, kernel_init=mlp_kernel_init, dtype=self.dtype)
    gate = nn.gelu(dense(self.d_ff, ("embed", "mlp"), name="wi_0")(x), approximate=True)
    linear = dense(self.d_ff, ("embed", "mlp"), name="wi_1")(x)
    h = gate * linear
    h = nn.Dropout(rate=self.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
    h = with_sharding_constraint(h, ("batch", "length", "mlp"))
    return dense(x.shape[-1], ("mlp", "embed"), name="wo")(h)
