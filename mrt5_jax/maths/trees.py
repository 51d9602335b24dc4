"""Nested parameter trees as flat ``{path tuple: leaf}`` dicts, and back.

One flattener for the trainer (init-checkpoint merging), the checkpoint
reader and the conversion table (NumPy only: jax is imported by
``map_with_path`` alone). Paths are tuples of strings
(``('encoder', 'layers_0', 'mlp', 'wi_0', 'kernel')``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def key_name(key: Any) -> str:
  """The string of one jax tree-path entry (dict key, attribute or index)."""
  for attribute in ("key", "name", "idx"):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def path_tuple(path: Any) -> tuple[str, ...]:
  """A jax key path -> tuple of strings."""
  return tuple(key_name(key) for key in path)


def flatten(tree: Any) -> dict[tuple[str, ...], Any]:
  """Nested mappings (dict, FrozenDict) -> {path tuple: leaf}.

  Anything that is not a mapping is a leaf, so orbax/tensorstore metadata
  objects and arrays alike stay whole.
  """
  flat: dict[tuple[str, ...], Any] = {}

  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, Mapping):
        walk(value, prefix + (str(key),))
      else:
        flat[prefix + (str(key),)] = value

  if not isinstance(tree, Mapping):
    raise TypeError(f"expected a nested mapping of parameters, got {type(tree).__name__}")
  walk(tree, ())
  return flat


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
  """{path tuple: leaf} -> nested plain dicts."""
  nested: dict = {}
  for path, leaf in flat.items():
    node = nested
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = leaf
  return nested


def map_with_path(fn, tree: Any) -> Any:
  """``jax.tree_util.tree_map_with_path`` with string-tuple paths."""
  import jax
  return jax.tree_util.tree_map_with_path(lambda path, leaf: fn(path_tuple(path), leaf), tree)
