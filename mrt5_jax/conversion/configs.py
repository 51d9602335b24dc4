"""Config mapping: ``MrT5Config`` <-> Hugging Face ``config.json``, and sizes from params.

A gated model becomes ``model_type`` "mrt5" with the published MrT5 keys; a
gate-less softmax model becomes a plain "t5" config that transformers loads
without custom code. No torch needed.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from mrt5_jax.model.config import SIZE_FIELDS, MrT5Config, size_of
from mrt5_jax.model.shortening.registry import DELETION_TYPES, SHORTENINGS, shortening_for
from mrt5_jax.model.shortening.settings import DeleteGateConfig, shortens
from mrt5_jax.model import layer_stacking
from mrt5_jax.maths import trees

# Gate settings that change what a gated network computes; a config that lacks
# any of them is refused rather than completed with a default.
REQUIRED_GATE_KEYS = ("delete_gate_layer", "sigmoid_mask_scale", "use_softmax1")
GATE_KEYS = ("delete_gate_layer", "sigmoid_mask_scale", "deletion_threshold", "use_softmax1",
             "gate_layer_norm", "deletion_type", "random_deletion_probability",
             "fixed_deletion_amount", "use_gumbel_noise")
HF_DTYPES = {"float32": "float32", "bfloat16": "bfloat16"}


# The shortenings without a PyTorch counterpart (the pooling baselines), by the
# parameter subtree each owns.
NOT_CONVERTIBLE = {cls.module_name: cls for cls in SHORTENINGS.values() if not cls.converts}
POOLING_SUBTREES = tuple(NOT_CONVERTIBLE)


class NotConvertibleError(ValueError):
  """A model the PyTorch side cannot express (the BP and CP baselines)."""


def check_convertible(config: Optional[MrT5Config] = None, params: Optional[Mapping] = None
                      ) -> None:
  """Refuse the pooling baselines: neither the published code nor this project's
  PyTorch class loads BP (boundary predictor) or CP (convolutional pooling)
  checkpoints, so converting one would write a folder nothing can read."""
  kind = None
  if config is not None and not shortening_for(config).converts:
    kind = type(shortening_for(config))
  encoder = (params or {}).get("encoder", {}) if params is not None else {}
  found = [name for name in POOLING_SUBTREES if name in encoder]
  if kind is None and found:
    kind = NOT_CONVERTIBLE[found[0]]
  if kind is not None:
    raise NotConvertibleError(
        f"this is a {kind.title} checkpoint (deletion_type={kind.name!r}); the pooling baselines do not "
        "convert to PyTorch: neither the published MrT5 code nor mrt5_jax.pytorch has these "
        "models. Evaluate it with mrt5-eval instead.")


def is_plain_t5(config: MrT5Config) -> bool:
  """True when plain T5ForConditionalGeneration computes the same function."""
  return not shortening_for(config).shortens and not config.use_softmax1


def to_hf_config(config: MrT5Config, dtype: str = "float32") -> dict[str, Any]:
  """The ``config.json`` contents of a converted folder."""
  check_convertible(config)
  if dtype not in HF_DTYPES:
    raise ValueError(f"dtype must be one of {sorted(HF_DTYPES)}, got {dtype!r}")
  plain = is_plain_t5(config)
  values = {
      "architectures": ["T5ForConditionalGeneration" if plain else "MrT5ForConditionalGeneration"],
      "model_type": "t5" if plain else "mrt5",
      "vocab_size": config.vocab_size,
      "d_model": config.d_model,
      "d_kv": config.head_dim,
      "d_ff": config.d_ff,
      "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
      "num_heads": config.num_heads,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "dropout_rate": config.dropout_rate,
      "layer_norm_epsilon": config.layer_norm_epsilon,
      "initializer_factor": 1.0,
      "feed_forward_proj": "gated-gelu",
      "is_encoder_decoder": True,
      "tie_word_embeddings": False,
      "use_cache": True,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "decoder_start_token_id": 0,
      "dtype": HF_DTYPES[dtype],
  }
  if not plain:
    values["has_absolute_position_embeddings"] = False
    values.update(hf_gate_settings(config))
  return values


def hf_gate_settings(config: MrT5Config) -> dict[str, Any]:
  """The flat gate keys of an "mrt5" ``config.json`` (the published names); a
  gate-less softmax1 model writes the default gate's, which it never reads."""
  gate = config.shortening
  if not isinstance(gate, DeleteGateConfig):
    gate = DeleteGateConfig().resolved("scaled_sigmoid")
  values = dataclasses.asdict(gate)
  return {key: values[key] if key in values else getattr(config, key) for key in GATE_KEYS}


def from_hf_config(values: Mapping[str, Any], **overrides: Any) -> MrT5Config:
  """An HF T5 / MrT5 ``config.json`` dict -> ``MrT5Config`` (``overrides`` win).

  Refuses what the JAX network cannot express: non-gated MLPs (T5 1.0),
  tied output embeddings, absolute position embeddings, unknown gate types;
  and an "mrt5" config without ``REQUIRED_GATE_KEYS`` (the published
  MrT5Config class and this project disagree on their defaults).
  """
  model_type = values.get("model_type", "t5")
  if model_type not in ("t5", "mrt5"):
    raise ValueError(f"config.json has model_type={model_type!r}; expected 't5' or 'mrt5'")
  ffn = values.get("feed_forward_proj", "relu")
  if ffn != "gated-gelu":
    raise ValueError(f"config.json has feed_forward_proj={ffn!r}; only 'gated-gelu' "
                     "(T5.1.1 / ByT5 / MrT5) is supported")
  # transformers >= 5 always writes tie_word_embeddings true for T5 and records an
  # untied output projection as scale_decoder_outputs false.
  if "scale_decoder_outputs" in values:
    tied = bool(values["scale_decoder_outputs"])
  else:
    tied = values.get("tie_word_embeddings", True) is not False
  if tied:
    raise ValueError("config.json ties the output projection to the embedding "
                     "(tie_word_embeddings / scale_decoder_outputs); the network has a separate "
                     "one (ByT5 / MrT5 set tie_word_embeddings false)")
  if values.get("has_absolute_position_embeddings", False):
    raise ValueError("config.json has has_absolute_position_embeddings=true; not supported")
  fields = dict(
      vocab_size=values["vocab_size"], d_model=values["d_model"], d_ff=values["d_ff"],
      num_heads=values["num_heads"], head_dim=values["d_kv"],
      num_encoder_layers=values["num_layers"],
      num_decoder_layers=values.get("num_decoder_layers") or values["num_layers"],
      relative_attention_num_buckets=values.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=values.get("relative_attention_max_distance", 128),
      layer_norm_epsilon=values.get("layer_norm_epsilon", 1e-6),
      dropout_rate=values.get("dropout_rate", 0.0))
  if model_type == "t5":
    fields["deletion_type"] = "none"
  else:
    deletion_type = values.get("deletion_type") or "scaled_sigmoid"
    if deletion_type not in DELETION_TYPES:
      raise ValueError(f"config.json has deletion_type={deletion_type!r}; supported: "
                       f"{', '.join(DELETION_TYPES)}")
    fields["deletion_type"] = deletion_type
    for key in GATE_KEYS:
      if key != "deletion_type" and values.get(key) is not None:
        fields[key] = values[key]
  fields.update(overrides)
  _require_gate_settings(fields, "config.json")
  return _with_size_name(fields)


def _require_gate_settings(fields: Mapping[str, Any], where: str) -> None:
  if not shortens(fields.get("deletion_type", "scaled_sigmoid")):
    return
  missing = [key for key in REQUIRED_GATE_KEYS if fields.get(key) is None]
  if missing:
    raise ValueError(f"{where} describes a {fields.get('deletion_type')} delete gate but lacks "
                     f"{missing}; these are not guessed")


def _shape(flat, path: tuple[str, ...]) -> tuple[int, ...]:
  if path not in flat:
    raise ValueError(f"parameter {'/'.join(path)!r} is missing: not an MrT5 / ByT5 (T5.1.1) "
                     "parameter tree")
  return tuple(np.shape(flat[path]))


def gate_settings_in_tree(params: Mapping) -> dict[str, Any]:
  """The gate settings a parameter tree fixes by itself: a scanned, gated tree's
  stage one holds exactly the layers before the gate."""
  if layer_stacking.is_scanned(params) and "delete_gate" in params.get("encoder", {}):
    return {"delete_gate_layer": layer_stacking.scanned_gate_layer(params)}
  return {}


def infer_config(params: Mapping, **knobs: Any) -> MrT5Config:
  """Sizes from parameter shapes (for checkpoints without ``model_config.json``).

  Heads and buckets come from the encoder relpos table, head_dim from the
  query kernel, layer counts from the ``layers_{i}`` names, the gate's
  presence and layer norm from ``encoder/delete_gate``. The gate's layer,
  scale and attention variant are not in the tree: ``knobs`` must supply
  ``REQUIRED_GATE_KEYS`` for a gated model (``run_config.resolve`` finds them
  in a run's files); the threshold defaults to scale / 2. A
  scanned tree (``layer_stacking``) gives the gate layer (its stage one's
  length) and ``scan_layers=True``.
  """
  in_tree = gate_settings_in_tree(params)
  scanned = layer_stacking.is_scanned(params)
  if scanned:
    params = layer_stacking.unstack_layers(params)
  flat = trees.flatten(params)
  vocab, d_model = _shape(flat, ("token_embedder", "embedding"))
  heads, buckets = _shape(flat, ("encoder", "relpos_bias", "rel_embedding"))
  inner = _shape(flat, ("encoder", "layers_0", "attention", "query", "kernel"))[1]
  if inner % heads:
    raise ValueError(f"query kernel width {inner} is not a multiple of {heads} heads")
  if ("encoder", "layers_0", "mlp", "wi", "kernel") in flat:
    raise ValueError("parameter 'encoder/layers_0/mlp/wi/kernel' found: a T5 1.0 (ReLU MLP) "
                     "checkpoint; only gated-GELU (T5.1.1 / ByT5) models are supported")
  d_ff = _shape(flat, ("encoder", "layers_0", "mlp", "wi_0", "kernel"))[1]

  def count(stack):
    return len({path[1] for path in flat if path[0] == stack and path[1].startswith("layers_")})

  has_gate = any(path[:2] == ("encoder", "delete_gate") for path in flat)
  fields = dict(vocab_size=vocab, d_model=d_model, d_ff=d_ff, num_heads=heads,
                head_dim=inner // heads, num_encoder_layers=count("encoder"),
                num_decoder_layers=count("decoder"), relative_attention_num_buckets=buckets)
  if has_gate:
    asked = knobs.get("deletion_type")
    learned = asked in SHORTENINGS and SHORTENINGS[asked].learned_gate
    fields["deletion_type"] = asked if learned else "scaled_sigmoid"
    fields["gate_layer_norm"] = ("encoder", "delete_gate", "layer_norm", "scale") in flat
  else:
    fields["deletion_type"] = knobs.pop("deletion_type", None) or "none"
  for key in ("deletion_type", "gate_layer_norm"):
    if key in fields and knobs.get(key) is not None and knobs[key] != fields[key]:
      raise ValueError(f"{key}={knobs[key]!r} contradicts the parameter tree, which implies "
                       f"{key}={fields[key]!r}")
    knobs.pop(key, None)
  if scanned:
    fields["scan_layers"] = True
  if "delete_gate_layer" in in_tree:
    stage_one = in_tree["delete_gate_layer"]
    given = knobs.get("delete_gate_layer")
    if given is not None and given != stage_one:
      raise ValueError(f"delete_gate_layer={given} contradicts the scanned tree, whose stage "
                       f"one holds {stage_one} layers")
    fields["delete_gate_layer"] = stage_one
  fields.update({key: value for key, value in knobs.items() if value is not None})
  _require_gate_settings(fields, "the gate settings given")
  return _with_size_name(fields)


def _with_size_name(fields: dict) -> MrT5Config:
  """``MrT5Config`` of explicit fields, naming the ByT5 size when the shapes are one."""
  config = MrT5Config.from_dict(dict(fields, size=None))
  return config.replace(size=size_of(config), **{k: getattr(config, k) for k in SIZE_FIELDS})

