"""One table from JAX parameter paths to Hugging Face state-dict names, both ways.

JAX params (flax ``params`` collection, t5x names, Dense kernels 2-D
(in, out)) and the HF T5 / published MrT5 state dict hold the same numbers:
every kernel is the transpose of its ``nn.Linear.weight``, the relative
position tables (H, 32) are transposes of ``relative_attention_bias.weight``,
layer-norm scales and the gate bias are equal. Arrays are NumPy in and out
(torch tensors are accepted on input), so JAX code can use this without torch.
The table names unscanned layers (``layers_{i}``); scanned trees
(``MrT5Config.scan_layers``) are unstacked before mapping and stacked after
(``layer_stacking``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from mrt5_jax.model import layer_stacking
from mrt5_jax.maths import trees
from mrt5_jax.model.config import MrT5Config
from mrt5_jax.model.shortening.registry import shortening_for
from mrt5_jax.conversion.configs import check_convertible

ATTENTION_NAMES = (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o"))
MLP_NAMES = ("wi_0", "wi_1", "wo")
# HF names that may appear in a state dict but carry no parameter of their own:
# the tied copies of the shared embedding, and a table HF never uses.
TIED_EMBEDDINGS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
IGNORED_HF_NAMES = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One parameter: JAX path, HF name, JAX shape, whether HF stores the transpose."""
  jax_path: tuple[str, ...]
  hf_name: str
  jax_shape: tuple[int, ...]
  transpose: bool

  @property
  def hf_shape(self) -> tuple[int, ...]:
    return tuple(reversed(self.jax_shape)) if self.transpose else self.jax_shape

  @property
  def jax_name(self) -> str:
    return "/".join(self.jax_path)


def parameter_table(config: MrT5Config) -> list[Entry]:
  """Every parameter of the network for ``config``, in a fixed order."""
  cfg = config
  entries: list[Entry] = []

  def add(jax_path, hf_name, shape, transpose=True):
    entries.append(Entry(tuple(jax_path), hf_name, tuple(shape), transpose))

  def norm(jax_path, hf_name):
    add(jax_path + ("scale",), hf_name, (cfg.d_model,), transpose=False)

  def attention(jax_prefix, hf_prefix):
    for jax_name, hf_name in ATTENTION_NAMES:
      shape = (cfg.inner_dim, cfg.d_model) if jax_name == "out" else (cfg.d_model, cfg.inner_dim)
      add(jax_prefix + (jax_name, "kernel"), f"{hf_prefix}.{hf_name}.weight", shape)

  def mlp(jax_prefix, hf_prefix):
    for name in MLP_NAMES:
      shape = (cfg.d_ff, cfg.d_model) if name == "wo" else (cfg.d_model, cfg.d_ff)
      add(jax_prefix + ("mlp", name, "kernel"), f"{hf_prefix}.DenseReluDense.{name}.weight", shape)

  def relpos(stack):
    add((stack, "relpos_bias", "rel_embedding"),
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        (cfg.num_heads, cfg.relative_attention_num_buckets))

  add(("token_embedder", "embedding"), "shared.weight", (cfg.vocab_size, cfg.d_model),
      transpose=False)
  relpos("encoder")
  for i in range(cfg.num_encoder_layers):
    layer, hf = ("encoder", f"layers_{i}"), f"encoder.block.{i}.layer"
    norm(layer + ("pre_attention_layer_norm",), f"{hf}.0.layer_norm.weight")
    attention(layer + ("attention",), f"{hf}.0.SelfAttention")
    norm(layer + ("pre_mlp_layer_norm",), f"{hf}.1.layer_norm.weight")
    mlp(layer, f"{hf}.1")
  norm(("encoder", "encoder_norm"), "encoder.final_layer_norm.weight")
  if shortening_for(cfg).learned_gate:
    gate, hf = ("encoder", "delete_gate"), f"encoder.block.{cfg.delete_gate_layer}.delete_gate"
    if cfg.shortening.gate_layer_norm:
      norm(gate + ("layer_norm",), f"{hf}.layer_norm.weight")
    add(gate + ("dense", "kernel"), f"{hf}.feed_forward.weight", (cfg.d_model, 1))
    add(gate + ("dense", "bias"), f"{hf}.feed_forward.bias", (1,), transpose=False)
  relpos("decoder")
  for i in range(cfg.num_decoder_layers):
    layer, hf = ("decoder", f"layers_{i}"), f"decoder.block.{i}.layer"
    norm(layer + ("pre_self_attention_layer_norm",), f"{hf}.0.layer_norm.weight")
    attention(layer + ("self_attention",), f"{hf}.0.SelfAttention")
    norm(layer + ("pre_cross_attention_layer_norm",), f"{hf}.1.layer_norm.weight")
    attention(layer + ("encoder_decoder_attention",), f"{hf}.1.EncDecAttention")
    norm(layer + ("pre_mlp_layer_norm",), f"{hf}.2.layer_norm.weight")
    mlp(layer, f"{hf}.2")
  norm(("decoder", "decoder_norm"), "decoder.final_layer_norm.weight")
  add(("decoder", "logits_dense", "kernel"), "lm_head.weight", (cfg.d_model, cfg.vocab_size))
  return entries


def to_numpy(value: Any) -> np.ndarray:
  """A NumPy view of a numpy/jax array or a torch tensor (bfloat16 stays bfloat16)."""
  if hasattr(value, "detach"):  # a torch.Tensor; torch is imported only then
    import torch
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
      import ml_dtypes
      return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return value.numpy()
  return np.asarray(value)


def _check_shape(name: str, shape: tuple[int, ...], expected: tuple[int, ...], source: str):
  if tuple(shape) != tuple(expected):
    raise ValueError(f"{source} tensor {name!r} has shape {tuple(shape)}, but the model config "
                     f"expects {tuple(expected)}")


def jax_to_hf_state_dict(params: Mapping, config: MrT5Config,
                         dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """JAX ``params`` (nested, t5x names) -> HF state dict {name: array of ``dtype``}.

  Refuses (ValueError naming the parameter) a missing parameter, an extra one
  (e.g. a gate the config does not have) and a shape that does not match.
  A scanned tree is unstacked first.
  """
  check_convertible(config, params)
  flat = trees.flatten(layer_stacking.unstack_layers(params))
  table = parameter_table(config)
  known = {entry.jax_path for entry in table}
  extra = sorted("/".join(path) for path in flat if path not in known)
  if extra:
    raise ValueError(f"JAX parameters not part of a model with this config "
                     f"(deletion_type={config.deletion_type!r}): {extra}")
  state_dict = {}
  for entry in table:
    if entry.jax_path not in flat:
      raise ValueError(f"JAX parameter {entry.jax_name!r} is missing (needed for "
                       f"{entry.hf_name!r}; deletion_type={config.deletion_type!r})")
    value = to_numpy(flat[entry.jax_path])
    _check_shape(entry.jax_name, value.shape, entry.jax_shape, "JAX")
    value = value.T if entry.transpose else value
    state_dict[entry.hf_name] = np.ascontiguousarray(value.astype(dtype))
  return state_dict


def hf_state_dict_to_jax(state_dict: Mapping[str, Any], config: MrT5Config) -> dict:
  """HF state dict (numpy arrays or torch tensors) -> nested JAX params, float32,
  in the layout ``config.scan_layers`` asks for.

  Tied embedding copies must equal ``shared.weight``; any other unknown
  tensor, a missing one (e.g. the gate of a gated config) or a wrong shape is
  refused with a ValueError naming the tensor.
  """
  table = parameter_table(config)
  known = {entry.hf_name for entry in table}
  tolerated = known | set(TIED_EMBEDDINGS) | set(IGNORED_HF_NAMES)
  extra = sorted(name for name in state_dict if name not in tolerated)
  if extra:
    raise ValueError(f"state-dict tensors not part of a model with this config "
                     f"(deletion_type={config.deletion_type!r}): {extra}")
  flat = {}
  for entry in table:
    if entry.hf_name not in state_dict:
      raise ValueError(f"state-dict tensor {entry.hf_name!r} is missing (deletion_type="
                       f"{config.deletion_type!r}, delete_gate_layer={config.delete_gate_layer})")
    value = to_numpy(state_dict[entry.hf_name])
    _check_shape(entry.hf_name, value.shape, entry.hf_shape, "state-dict")
    value = value.T if entry.transpose else value
    flat[entry.jax_path] = np.ascontiguousarray(value.astype(np.float32))
  shared = flat[("token_embedder", "embedding")]
  for name in TIED_EMBEDDINGS:
    tied = to_numpy(state_dict[name]).astype(np.float32) if name in state_dict else shared
    if not np.array_equal(tied, shared):
      raise ValueError(f"state-dict tensor {name!r} differs from 'shared.weight'; the network "
                       "shares one embedding between encoder and decoder")
  return layer_stacking.to_layout(trees.unflatten(flat), config)
