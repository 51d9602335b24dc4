"""Device mesh, logical-axis rules and shardings (a small t5x-style partitioner).

The mesh has two axes, ``data`` and ``model``; ``num_partitions`` devices form
the model axis and the rest the data axis. Parameters carry logical axis names
(the network's ``params_axes`` collection); the rules map them to mesh axes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
from flax.linen import partitioning as nn_partitioning
import gin
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
MODEL_AXIS = "model"

# t5x's standard rules for 1-D model parallelism (``standard_logical_axis_rules``).
DEFAULT_LOGICAL_AXIS_RULES = (
    ("batch", DATA_AXIS),
    ("vocab", MODEL_AXIS),
    ("embed", None),
    ("mlp", MODEL_AXIS),
    ("heads", MODEL_AXIS),
    ("kv", None),
    ("joined_kv", MODEL_AXIS),
    ("relpos_buckets", None),
    ("length", None),
    ("cache", None),
    ("layers", None),  # the stacked axis of scanned layers (MrT5Config.scan_layers)
)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """num_partitions: size of the model axis (1 = pure data parallelism).

  num_data_partitions: size of the data axis; None = all remaining devices.
  """
  num_partitions: int = 1
  num_data_partitions: Optional[int] = None
  logical_axis_rules: Sequence[tuple[str, Optional[str]]] = DEFAULT_LOGICAL_AXIS_RULES


def make_mesh(config: MeshConfig, devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A (data, model) mesh over ``devices`` (default: all devices)."""
  devices = list(jax.devices() if devices is None else devices)
  model = config.num_partitions
  if model < 1 or len(devices) % model:
    raise ValueError(f"MeshConfig.num_partitions={model} must divide the number of devices "
                     f"({len(devices)})")
  data = config.num_data_partitions or len(devices) // model
  if data * model > len(devices):
    raise ValueError(f"mesh {data} x {model} needs {data * model} devices, "
                     f"only {len(devices)} available")
  grid = np.asarray(devices[:data * model], dtype=object).reshape(data, model)
  return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def host_array(x) -> np.ndarray:
  """The whole of ``x`` as NumPy on this process, also when it spans several processes."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


class Partitioner:
  """Shardings of parameters, optimizer state and batches over one mesh."""

  def __init__(self, config: MeshConfig = MeshConfig(), devices=None):
    self.config = config
    self.mesh = make_mesh(config, devices)
    self.rules = tuple(tuple(rule) for rule in config.logical_axis_rules)

  @property
  def data_size(self) -> int:
    return self.mesh.shape[DATA_AXIS]

  @property
  def local_data_size(self) -> int:
    """Data-axis positions this process's devices occupy (its share of every batch)."""
    me = jax.process_index()
    rows = {index for index, row in enumerate(np.asarray(self.mesh.devices))
            if any(device.process_index == me for device in row)}
    return len(rows)

  def global_batch_rows(self, local_rows: int) -> int:
    """Rows of the global batch when this process feeds ``local_rows`` of it."""
    return local_rows * self.data_size // max(self.local_data_size, 1)

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def data_sharding(self) -> NamedSharding:
    """Batch arrays: leading (batch) dimension over the data axis."""
    return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

  @contextlib.contextmanager
  def context(self):
    """Mesh plus logical-axis rules, so the network's sharding constraints apply."""
    with warnings.catch_warnings():
      # flax's logical constraints read the legacy ``with mesh:`` context.
      warnings.filterwarnings("ignore", message=".*context manager has been deprecated.*")
      with self.mesh, nn_partitioning.axis_rules(self.rules):
        yield

  def logical_specs(self, params_axes: Mapping[str, Any]) -> Any:
    """The ``params_axes`` collection -> tree of logical PartitionSpecs."""
    from flax.core import unfreeze
    return unfreeze(nn_partitioning.get_axis_names(unfreeze(params_axes)))

  def param_shardings(self, params_axes: Mapping[str, Any]) -> Any:
    """Tree of NamedShardings for the 'params' collection."""
    return nn.logical_to_mesh_sharding(self.logical_specs(params_axes), self.mesh, self.rules)

  def optimizer_shardings(self, tx: optax.GradientTransformation, abstract_params: Any,
                          param_shardings: Any) -> Any:
    """Shardings of ``tx``'s state, derived from the parameter shardings.

    optax's ``tree_map_params`` finds the parameter-shaped parts of the state
    (Adam's mu and nu); a leaf there that has its parameter's shape is sharded
    like it, anything else (step counts, Adafactor's factored row/column
    statistics) is replicated.
    """
    abstract_state = jax.eval_shape(tx.init, abstract_params)
    replicated = self.replicated

    def like_param(leaf, param, sharding):
      return sharding if np.shape(leaf) == np.shape(param) else replicated

    return optax.tree_utils.tree_map_params(
        tx, like_param, abstract_state, abstract_params, param_shardings,
        transform_non_params=lambda _: replicated)

  def shard_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global arrays split over the data axis.

    With several processes each passes its own rows (``global_batch_rows``);
    the global batch is process 0's rows, then process 1's, and so on.
    """
    local = self.local_data_size
    for name, value in batch.items():
      if value.shape[0] % local:
        raise ValueError(f"batch feature {name!r} has {value.shape[0]} rows, not a multiple of "
                         f"this process's data-parallel size {local}")
    return {name: jax.make_array_from_process_local_data(self.data_sharding, np.asarray(value))
            for name, value in batch.items()}
