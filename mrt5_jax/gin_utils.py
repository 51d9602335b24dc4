"""gin flags: ``--gin_file=...`` (repeatable) and ``--gin.NAME=VALUE`` bindings.

gin files are looked up in the working directory, then in the installed
``mrt5_jax.configs`` package (so ``--gin_file=runs/local.gin`` works after a
plain ``pip install``), then in any ``--gin_search_path``. Values of
``--gin.X`` follow ``mrt5_jax.gin_values`` (shared with the launchers): bare
strings need no quotes (``--gin.MODEL_DIR=/tmp/run``), quoted ones stay as
they are.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Sequence

import gin

from mrt5_jax import gin_values

_BINDING_FLAG = re.compile(r"^--gin\.([^=]+)=(.*)$", re.S)


def configs_dir() -> str:
  """The directory of the installed gin files (``mrt5_jax/configs``)."""
  from mrt5_jax import configs
  return os.path.dirname(os.path.abspath(configs.__file__))


def search_paths(extra: Sequence[str] = ()) -> list[str]:
  return [os.getcwd(), configs_dir(), *extra]


def _register_modules() -> None:
  """Import every module that defines configurables, so bindings can name them."""
  import mrt5_jax.config  # noqa: F401
  import mrt5_jax.controller  # noqa: F401
  import mrt5_jax.data  # noqa: F401
  import mrt5_jax.distributed  # noqa: F401
  import mrt5_jax.hard_deletion  # noqa: F401
  import mrt5_jax.objective  # noqa: F401
  import mrt5_jax.optimizers  # noqa: F401
  import mrt5_jax.partitioning  # noqa: F401
  import mrt5_jax.tasks  # noqa: F401
  import mrt5_jax.trainer  # noqa: F401
  import mrt5_jax.evaluation  # noqa: F401  (registers evaluate with gin)
  import mrt5_jax.deletion_report  # noqa: F401  (registers inspect_deletion)


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


def binding_from_flag(name: str, value: str) -> str:
  return gin_values.gin_binding(name, value)


def split_flags(argv: Sequence[str]) -> tuple[list[str], list[str], list[str], list[str]]:
  """argv -> (gin files, gin bindings, search paths, the remaining arguments)."""
  files, bindings, paths, rest = [], [], [], []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    for flag, target in (("--gin_file", files), ("--gin_search_path", paths)):
      if arg == flag and i + 1 < len(args):
        target.append(args[i + 1])
        i += 1
        break
      if arg.startswith(flag + "="):
        target.append(arg.split("=", 1)[1])
        break
    else:
      match = _BINDING_FLAG.match(arg)
      if match:
        bindings.append(binding_from_flag(*match.groups()))
      elif arg.startswith("--gin_bindings="):
        bindings.append(arg.split("=", 1)[1])
      else:
        rest.append(arg)
    i += 1
  return files, bindings, paths, rest


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
          extra_paths: Sequence[str] = (), finalize: bool = True) -> None:
  """Parse gin files then bindings; an unknown name raises a ValueError naming it."""
  _register_modules()
  _quiet_gin_search()
  for path in search_paths(extra_paths):
    gin.add_config_file_search_path(path)
  resolved = [resolve_gin_file(f, extra_paths) for f in files]
  try:
    gin.parse_config_files_and_bindings(resolved, list(bindings), finalize_config=finalize,
                                        skip_unknown=False)
  except (ValueError, gin.config.ParseError if hasattr(gin.config, "ParseError") else ValueError,
          SyntaxError) as e:
    raise ValueError(f"gin configuration error: {e}") from None


def parse_argv(argv: Sequence[str]) -> list[str]:
  """Parse gin flags of ``argv``; return the arguments that are not gin flags."""
  files, bindings, paths, rest = split_flags(argv)
  if not files and not bindings:
    raise ValueError("no configuration: pass --gin_file=runs/local.gin (or another gin file) "
                     "and/or --gin.NAME=VALUE bindings")
  parse(files, bindings, paths)
  return rest
