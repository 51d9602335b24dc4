"""gin flags: ``--gin_file=...`` (repeatable) and ``--gin.NAME=VALUE`` bindings.

gin files are looked up as ``mrt5_jax.jobs.gin_files`` says (the working
directory, the installed ``mrt5_jax.configs``, then any ``--gin_search_path``). Values of
``--gin.X`` follow ``mrt5_jax.cli.gin_values`` (shared with the launchers): bare
strings need no quotes (``--gin.MODEL_DIR=/tmp/run``), quoted ones stay as
they are.
"""
from __future__ import annotations

import re
from typing import Sequence


from mrt5_jax.cli import gin_values
from mrt5_jax.jobs import gin_files

_BINDING_FLAG = re.compile(r"^--gin\.([^=]+)=(.*)$", re.S)


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


def parse_argv(argv: Sequence[str]) -> list[str]:
  """Parse gin flags of ``argv``; return the arguments that are not gin flags."""
  files, bindings, paths, rest = split_flags(argv)
  if not files and not bindings:
    raise ValueError("no configuration: pass --gin_file=runs/local.gin (or another gin file) "
                     "and/or --gin.NAME=VALUE bindings")
  gin_files.parse(files, bindings, paths)
  return rest
