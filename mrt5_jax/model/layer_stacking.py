"""Scanned and unscanned parameter trees, and the conversion between them.

Unscanned (t5x's names, ``MrT5Config.scan_layers = False``):
``encoder/layers_{i}/...`` and ``decoder/layers_{i}/...``. Scanned
(``scan_layers = True``, one ``nn.scan`` per stack, each leaf with a leading
'layers' axis): ``encoder/stage_one_layers/...`` (layers [0, gate)),
``encoder/stage_two_layers/...`` (layers [gate, N)) and ``decoder/layers/...``.
Everything else (embedding, relative position tables, norms, the gate, the
output projection) is the same in both. The conversion to Hugging Face, the
init-from-checkpoint merge and evaluation use these functions, so either tree
reads anywhere. NumPy in and out.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from mrt5_jax.maths import trees
from mrt5_jax.model.config import MrT5Config

STAGE_ONE = ("encoder", "stage_one_layers")
STAGE_TWO = ("encoder", "stage_two_layers")
DECODER = ("decoder", "layers")
STACKS = (STAGE_ONE, STAGE_TWO, DECODER)
_LAYER = re.compile(r"^layers_(\d+)$")


def is_scanned(params: Mapping) -> bool:
  """True when ``params`` holds scanned stacks (and no ``layers_{i}`` entries)."""
  flat = trees.flatten(params)
  scanned = any(path[:2] in STACKS for path in flat)
  if scanned and any(len(path) > 1 and _LAYER.match(path[1]) for path in flat):
    raise ValueError("parameter tree mixes scanned stacks (stage_one_layers, stage_two_layers, "
                     "decoder/layers) with layers_{i} entries")
  return scanned


def _stack_length(flat: Mapping, stack: tuple[str, str]) -> int:
  lengths = {np.shape(value)[0] for path, value in flat.items() if path[:2] == stack}
  if len(lengths) > 1:
    raise ValueError(f"scanned stack {'/'.join(stack)} has leaves with different layer "
                     f"counts {sorted(lengths)}")
  return lengths.pop() if lengths else 0


def scanned_gate_layer(params: Mapping) -> int:
  """The number of encoder layers in stage one of a scanned tree (the gate's layer)."""
  return _stack_length(trees.flatten(params), STAGE_ONE)


def unstack_layers(params: Mapping) -> dict:
  """A scanned tree -> the unscanned one (``layers_{i}``); an unscanned tree as it is."""
  if not is_scanned(params):
    return trees.unflatten(trees.flatten(params))
  flat = trees.flatten(params)
  offsets = {STAGE_ONE: 0, STAGE_TWO: _stack_length(flat, STAGE_ONE), DECODER: 0}
  out = {}
  for path, value in flat.items():
    stack = path[:2]
    if stack not in offsets:
      out[path] = value
      continue
    value = np.asarray(value)
    for i in range(value.shape[0]):
      out[(stack[0], f"layers_{offsets[stack] + i}") + path[2:]] = value[i]
  return trees.unflatten(out)


def _layers_of(flat: Mapping, stack_name: str) -> dict[int, dict]:
  """{i: {sub-path: leaf}} of the ``layers_{i}`` entries under ``stack_name``."""
  found: dict[int, dict] = {}
  for path, value in flat.items():
    match = _LAYER.match(path[1]) if path[0] == stack_name and len(path) > 1 else None
    if match:
      found.setdefault(int(match.group(1)), {})[path[2:]] = value
  if sorted(found) != list(range(len(found))):
    raise ValueError(f"{stack_name} layers are not numbered 0..n-1: {sorted(found)}")
  return found


def _stack(layers: list[dict], name: str) -> dict:
  names = set(layers[0])
  for i, layer in enumerate(layers):
    if set(layer) != names:
      raise ValueError(f"cannot stack {name}: layer {i} has parameters "
                       f"{sorted('/'.join(p) for p in set(layer) ^ names)} that others lack")
  return {sub: np.stack([np.asarray(layer[sub]) for layer in layers]) for sub in sorted(names)}


def stack_layers(params: Mapping, gate_layer: int) -> dict:
  """An unscanned tree -> the scanned one, encoder stages split at ``gate_layer``
  (``MrT5Config.gate_layer``: the encoder's length for a gate-less model)."""
  if is_scanned(params):
    params = unstack_layers(params)
  flat = trees.flatten(params)
  encoder, decoder = _layers_of(flat, "encoder"), _layers_of(flat, "decoder")
  if not 0 <= gate_layer <= len(encoder):
    raise ValueError(f"gate layer {gate_layer} outside the {len(encoder)} encoder layers")
  out = {path: value for path, value in flat.items()
         if not (len(path) > 1 and path[0] in ("encoder", "decoder") and _LAYER.match(path[1]))}
  groups = ((STAGE_ONE, [encoder[i] for i in range(gate_layer)]),
            (STAGE_TWO, [encoder[i] for i in range(gate_layer, len(encoder))]),
            (DECODER, [decoder[i] for i in range(len(decoder))]))
  for stack, layers in groups:
    if layers:
      for sub, value in _stack(layers, "/".join(stack)).items():
        out[stack + sub] = value
  return trees.unflatten(out)


def to_layout(params: Mapping, config: MrT5Config) -> Any:
  """``params`` in the layout ``config.scan_layers`` asks for (unchanged when it has it)."""
  scanned = is_scanned(params)
  if scanned == config.scan_layers and (not scanned
                                        or scanned_gate_layer(params) == config.gate_layer):
    return params
  if config.scan_layers:
    return stack_layers(params, config.gate_layer)
  return unstack_layers(params)


def like(params: Mapping, reference: Mapping) -> Any:
  """``params`` in the layout of ``reference`` (a tree of the model being built)."""
  if is_scanned(reference):
    return stack_layers(params, scanned_gate_layer(reference))
  return unstack_layers(params) if is_scanned(params) else params
