"""The one mapping from ``MrT5Config.deletion_type`` to its ``Shortening``.

Nothing else in the project compares ``deletion_type``: the network, the
objective, evaluation, inference, the benchmarks and the t5x adapter ask the
object ``shortening_for(config)`` returns (``Transformer.shortening``). A new
method is a ``base.Shortening`` subclass added to ``SHORTENINGS``, with its
entry in ``settings.SETTINGS_FOR_KIND`` (its settings class, or None).
"""
from __future__ import annotations

from typing import Any

from mrt5_jax.model.shortening import base
from mrt5_jax.model.shortening import boundary
from mrt5_jax.model.shortening import conv
from mrt5_jax.model.shortening import delete_gate
from mrt5_jax.model.shortening import settings

SHORTENINGS: dict[str, type[base.Shortening]] = {
    cls.name: cls for cls in (
        delete_gate.ScaledSigmoidGate, delete_gate.LogSigmoidDeleteGate,
        delete_gate.RandomDeletion, delete_gate.FixedDeletion,
        boundary.BoundaryPooling, conv.ConvPooling, base.Shortening)
}
# The values ``deletion_type`` may take ('none': plain ByT5), each with its settings class.
DELETION_TYPES = settings.DELETION_TYPES
if set(SHORTENINGS) != set(DELETION_TYPES):
  raise ImportError(f"shortening implementations {sorted(SHORTENINGS)} and settings "
                    f"{sorted(DELETION_TYPES)} name different kinds")


def shortening_class(deletion_type: str) -> type[base.Shortening]:
  """The ``Shortening`` subclass registered as ``deletion_type``."""
  try:
    return SHORTENINGS[deletion_type]
  except KeyError:
    raise ValueError(f"deletion_type must be one of {tuple(SHORTENINGS)}, "
                     f"got {deletion_type!r}") from None


def shortening_for(config: Any) -> base.Shortening:
  """The shortening of a ``MrT5Config`` (its ``deletion_type``)."""
  return shortening_class(config.deletion_type)(config)
