"""gin files: where they are found and how they are parsed.

gin files are looked up in the working directory, then in the installed
``mrt5_jax.configs`` package (so ``runs/local.gin`` works after a plain
``pip install``), then in any extra search path.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Sequence

import gin

from mrt5_jax import configs
from mrt5_jax.model.shortening.settings import FLAT_KEYS


def configs_dir() -> str:
  """The directory of the installed gin files (``mrt5_jax/configs``)."""
  return os.path.dirname(os.path.abspath(configs.__file__))


def search_paths(extra: Sequence[str] = ()) -> list[str]:
  return [os.getcwd(), configs_dir(), *extra]


def resolve_gin_file(name: str, extra_paths: Sequence[str] = ()) -> str:
  """Absolute path of a gin file, searched as the module docstring says."""
  candidates = [name] if os.path.isabs(name) else [os.path.join(p, name)
                                                   for p in search_paths(extra_paths)]
  if not name.endswith(".gin"):
    candidates += [c + ".gin" for c in candidates]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return os.path.abspath(candidate)
  raise ValueError(f"gin file {name!r} not found; looked in: "
                   + ", ".join(search_paths(extra_paths)))


class _QuietSearchFilter:
  """Drops gin's per-candidate "Path not found" log lines while it searches include paths."""

  def filter(self, record) -> bool:
    message = record.getMessage()
    return not (message.startswith("Path not found") or
                message.startswith("system_path_file_exists"))


def _quiet_gin_search() -> None:
  root = logging.getLogger()
  if not any(isinstance(f, _QuietSearchFilter) for f in root.filters):
    root.addFilter(_QuietSearchFilter())
  for handler in root.handlers:
    if not any(isinstance(f, _QuietSearchFilter) for f in handler.filters):
      handler.addFilter(_QuietSearchFilter())


def parse(files: Sequence[str], bindings: Sequence[str] = (),
          extra_paths: Sequence[str] = (), finalize: bool = True,
          skip_unknown: Sequence[str] = ()) -> None:
  """Parse gin files then bindings; an unknown name raises a ValueError naming it.

  The configurables the files name must be registered first: the command-line
  front ends import the jobs (``mrt5_jax.cli``). ``skip_unknown`` names
  configurables whose bindings are ignored when they are not registered (a
  study that only trains skips the run file's ``evaluate`` bindings).
  """
  _quiet_gin_search()
  for path in search_paths(extra_paths):
    gin.add_config_file_search_path(path)
  resolved = [resolve_gin_file(f, extra_paths) for f in files]
  try:
    gin.parse_config_files_and_bindings(resolved, list(bindings), finalize_config=finalize,
                                        skip_unknown=list(skip_unknown) or False)
  except (ValueError, gin.config.ParseError if hasattr(gin.config, "ParseError") else ValueError,
          SyntaxError) as e:
    raise ValueError(f"gin configuration error: {e}{_moved_setting_hint(str(e))}") from None


def _moved_setting_hint(message: str) -> str:
  """Where a shortening setting bound on ``MrT5Config`` (as older gin files did) lives now."""
  match = re.search(r"'MrT5Config' doesn't have a parameter named '(\w+)'", message)
  if not match or match.group(1) not in FLAT_KEYS:
    return ""
  cls, field = FLAT_KEYS[match.group(1)]
  return (f"\nThe shortening settings are nested now: bind {cls.__name__}.{field} "
          "(docs/architecture.md).")
