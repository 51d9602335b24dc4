"""Where a checkpoint's model settings come from, so that conversion never guesses.

The gate's layer, scale and attention variant are not in the parameter tree.
They come, in this order, from ``model_config.json`` (written by ``mrt5-train``
and ``mrt5-convert from-pytorch``), from the run's ``config.gin`` (t5x writes
its whole gin configuration into the model dir; the ``MrT5Config`` bindings
and the macros they name are read with gin's own parser, so t5x need not be
installed), or from explicit settings (the ``mrt5-convert`` flags). A gated
checkpoint with none of these is refused with a message naming the missing
settings; an explicit setting that contradicts the file is an error.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping, Optional

from gin import config_parser

from mrt5_jax.checkpointing import config_files
from mrt5_jax.model.config import MrT5Config
from mrt5_jax.model.shortening.settings import SETTINGS_FOR_KIND, nest_flat_keys, shortens
import mrt5_jax.conversion.configs as configs

GIN_FILE = "config.gin"
CONFIGURABLE = "MrT5Config"
# The shortening settings classes a run may bind beside MrT5Config (``MrT5Config.shortening``).
SETTINGS_CONFIGURABLES = tuple(sorted({cls.__name__ for cls in SETTINGS_FOR_KIND.values()}))
# What a gated checkpoint needs from somewhere other than its parameter tree; the
# threshold, when not given, is sigmoid_mask_scale / 2 (MrT5Config's definition).
REQUIRED_GATE_SETTINGS = ("delete_gate_layer", "sigmoid_mask_scale", "use_softmax1")
SETTINGS = ("deletion_type", "delete_gate_layer", "sigmoid_mask_scale", "deletion_threshold",
            "use_softmax1", "gate_layer_norm")
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Reference:
  """A ``@name`` or ``%NAME`` inside a gin value."""
  kind: str
  name: str


class _Delegate(config_parser.ParserDelegate):
  """Keeps references as data: nothing is imported or called."""

  def configurable_reference(self, scoped_configurable_name, evaluate):
    return _Reference("@", scoped_configurable_name)

  def macro(self, macro_name):
    return _Reference("%", macro_name)


def _resolve(value: Any, macros: Mapping[str, Any], path: str, field: str, seen=()) -> Any:
  if not isinstance(value, _Reference):
    return value
  if value.kind == "%" and value.name in macros and value.name not in seen:
    return _resolve(macros[value.name], macros, path, field, seen + (value.name,))
  what = "an unbound or circular macro" if value.kind == "%" else "a configurable reference"
  raise ValueError(f"{path}: {field} is {what} ({value.kind}{value.name}); give the "
                   "setting explicitly")


def read_gin_bindings(path: str) -> Optional[dict]:
  """The ``MrT5Config`` fields a gin config file binds, macros resolved; None if it binds none.

  Reads files like the ``config.gin`` t5x writes (``gin.config_str()``):
  macro lines (``USE_SOFTMAX1 = True``) and parameter lines
  (``config.MrT5Config.use_softmax1 = %USE_SOFTMAX1``, any module prefix).
  The shortening settings classes' bindings (``DeleteGateConfig.sigmoid_mask_scale``)
  come back under ``shortening`` as a dict per class name; ``MrT5Config.shortening
  = @DeleteGateConfig()`` names the class whose bindings it takes.
  Scoped bindings of these classes are ambiguous and refused.
  """
  with open(path) as f:
    text = f.read()
  macros, scoped = {}, []
  bound = {name: {} for name in (CONFIGURABLE, *SETTINGS_CONFIGURABLES)}
  try:
    for statement in config_parser.ConfigParser(text, _Delegate()):
      if isinstance(statement, config_parser.IncludeStatement):
        raise ValueError(f"{path} includes {statement.filename!r}; expected a self-contained "
                         "gin config (the config.gin a run writes)")
      if not isinstance(statement, config_parser.BindingStatement):
        continue
      name = statement.selector.split(".")[-1]
      if not statement.arg_name and not statement.scope and "." not in statement.selector:
        macros[statement.selector] = statement.value
      elif name in bound and statement.arg_name:
        if statement.scope:
          scoped.append(f"{statement.scope}/{statement.selector}.{statement.arg_name}")
        else:
          bound[name][statement.arg_name] = statement.value
  except SyntaxError as error:
    raise ValueError(f"cannot parse {path}: {error}") from None
  if scoped:
    raise ValueError(f"{path} binds {', '.join(scoped)} under scopes; cannot tell which one "
                     "the model used: give the gate settings explicitly")
  fields = bound.pop(CONFIGURABLE)
  reference = fields.pop("shortening", None)
  if isinstance(reference, _Reference) and reference.kind == "@":
    name = reference.name.split(".")[-1].split("/")[-1]
    if name not in bound:
      raise ValueError(f"{path}: MrT5Config.shortening is @{reference.name}, not one of "
                       f"{list(SETTINGS_CONFIGURABLES)}")
  elif reference is not None:
    fields["shortening"] = reference
  if not fields and not any(bound.values()):
    return None
  resolved = {key: _resolve(value, macros, path, f"MrT5Config.{key}")
              for key, value in fields.items()}
  settings = {name: {key: _resolve(value, macros, path, f"{name}.{key}")
                     for key, value in values.items()}
              for name, values in bound.items() if values}
  if settings:
    resolved["shortening_bindings"] = settings
  return resolved


def config_from_gin(path: str) -> Optional[MrT5Config]:
  """The ``MrT5Config`` the run of ``path`` built (its bindings over the class defaults,
  its shortening settings from the bindings of the kind's settings class)."""
  fields = read_gin_bindings(path)
  if fields is None:
    return None
  bindings = fields.pop("shortening_bindings", {})
  fields = nest_flat_keys(fields)  # runs before the settings were nested bound them flat
  try:
    kind_class = SETTINGS_FOR_KIND.get(fields.get("deletion_type", "scaled_sigmoid"))
    if kind_class is not None and kind_class.__name__ in bindings:
      fields["shortening"] = {**(fields.get("shortening") or {}),
                              **bindings[kind_class.__name__]}
    return MrT5Config(**fields)
  except (TypeError, ValueError) as error:
    raise ValueError(f"{path}: its MrT5Config bindings do not make a valid config: "
                     f"{error}") from error


def _check_agreement(config: MrT5Config, settings: Mapping[str, Any], source: str) -> None:
  conflicts = [f"{key}={value!r} (the file has {config.flat_setting(key)!r})"
               for key, value in settings.items() if config.flat_setting(key) != value]
  if conflicts:
    raise ValueError(f"explicit gate settings contradict {source}: " + "; ".join(conflicts))


def resolve(params: Mapping, model_dir: Optional[str], **settings: Any
            ) -> tuple[MrT5Config, str]:
  """The model config of ``params`` and where its gate settings came from.

  ``settings`` (``SETTINGS``; None = not given) are the explicit ones. With
  ``model_config.json`` or a ``config.gin`` binding MrT5Config in
  ``model_dir`` they must agree with it; without, a gated tree needs
  ``REQUIRED_GATE_SETTINGS`` among them (a scanned tree gives its gate layer:
  the length of stage one).
  """
  unknown = sorted(set(settings) - set(SETTINGS))
  if unknown:
    raise ValueError(f"unknown gate settings {unknown}; known: {list(SETTINGS)}")
  settings = {key: value for key, value in settings.items() if value is not None}
  config = config_files.find_config(model_dir)
  if config is not None:
    source = os.path.join(model_dir, config_files.CONFIG_FILE)
  else:
    gin_path = os.path.join(model_dir, GIN_FILE) if model_dir else None
    if gin_path and os.path.isfile(gin_path):
      config = config_from_gin(gin_path)
      source = gin_path
  if config is not None:
    _check_agreement(config, settings, source)
    return config, source

  has_gate = "delete_gate" in params.get("encoder", {})
  deletion_type = settings.get("deletion_type") or ("scaled_sigmoid" if has_gate else "none")
  if shortens(deletion_type):
    in_tree = configs.gate_settings_in_tree(params)
    missing = [key for key in REQUIRED_GATE_SETTINGS if key not in settings and key not in in_tree]
    if missing:
      where = f"in {model_dir!r}" if model_dir else "beside the checkpoint"
      raise ValueError(
          f"the checkpoint has a delete gate ({deletion_type}) but no {config_files.CONFIG_FILE} "
          f"or {GIN_FILE} {where} says how it was configured; missing: "
          + ", ".join(missing) + ". Point --checkpoint at the run's model dir (t5x writes "
          f"{GIN_FILE} there) or give " + " ".join(f"--{key} ..." for key in missing))
  else:
    logger.warning("no %s or %s: converting a gate-less model as plain ByT5%s",
                   config_files.CONFIG_FILE, GIN_FILE,
                   "" if "use_softmax1" in settings else " with softmax attention")
  return configs.infer_config(params, **settings), "explicit settings"
