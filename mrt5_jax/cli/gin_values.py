"""How a ``--gin.NAME=VALUE`` flag's VALUE becomes gin text (standard library only).

One convention for ``mrt5-train``, ``mrt5-eval`` and the launchers in
``launch/``: a value that gin would read as a Python literal (numbers, quoted
strings, lists, dicts, tuples), a reference (``@fn()``, ``%MACRO``), ``None``,
``True`` or ``False`` passes unchanged; anything else is a bare string and is
quoted: ``/tmp/run`` -> ``'/tmp/run'``, ``'/tmp/run'`` stays as it is.
"""
from __future__ import annotations

import ast

_KEEP = ("None", "True", "False")


def gin_value(value: str) -> str:
  """The gin text of one flag value (see the module docstring)."""
  text = value.strip()
  if not text or text[0] in "@%[({" or text in _KEEP:
    return text
  try:
    ast.literal_eval(text)
    return text
  except (ValueError, SyntaxError):
    return repr(text)


def gin_binding(name: str, value: str) -> str:
  """``NAME = <gin text of value>``."""
  return f"{name.strip()} = {gin_value(value)}"
