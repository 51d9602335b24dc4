"""The t5x ``MrT5Model`` train step compiled for a slice: ``mrt5-bench compile --programs t5x``.

The model is the shipped t5x configuration (``configs/t5x/mrt5_{size}.gin``:
t5x's Adafactor with the project's factor rules, the shipped deletion control,
bfloat16) with the setting's micro-batches, remat, layer scan and attention;
the step is t5x's own (``t5x.trainer.train_with_lr``, micro-batched by t5x),
partitioned by t5x's ``PjitPartitioner`` with its standard logical-axis rules
on a data x model mesh of the slice's devices (the project trainer's device
order), its state shape and axes from ``t5x.utils.TrainStateInitializer``, as
``t5x/train.py`` builds them. Compiled, never run, and measured like the
project trainer's step (``pod_compile.measure_program``), so the two rows of a
setting compare the same model under the two trainers.

t5x is an optional dependency (``launch/t5x_env.py``); without it a t5x row is
refused with a clear message.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import gin
import jax
import jax.numpy as jnp

from mrt5_jax.jobs import gin_files
from mrt5_jax.parallel import partitioning
from mrt5_jax.studies import pod_compile
from mrt5_jax.studies.pod_compile import Setting

try:
  from t5x import partitioning as t5x_partitioning
  from t5x import trainer as t5x_trainer
  from t5x import utils as t5x_utils
except ImportError:  # t5x is not on the package index: only the t5x rows need it
  t5x_partitioning = t5x_trainer = t5x_utils = None
else:

  class SlicePartitioner(t5x_partitioning.PjitPartitioner):
    """t5x's partitioner on a given mesh (compile-only TPU devices need not be
    ``jax.devices()``, which t5x's own mesh is built from)."""

    def __init__(self, mesh, **kwargs):
      super().__init__(num_partitions=mesh.shape["model"], **kwargs)
      self._slice_mesh = mesh

    @property
    def mesh(self):
      return self._slice_mesh


def t5x_available() -> bool:
  return t5x_trainer is not None


def configured_model(setting: Setting, target_deletion_rate: float = 0.5):
  """The ``MrT5Model`` of ``t5x/mrt5_<size>.gin`` with the setting's knobs."""
  gin.clear_config()
  try:
    gin_files.parse([f"t5x/mrt5_{setting.size}.gin"], [
        "DROPOUT_RATE = 0.0",
        f"NUM_MICROBATCHES = {setting.num_microbatches if setting.num_microbatches > 1 else None}",
        f"REMAT_POLICY = '{setting.remat_policy}'", f"SCAN_LAYERS = {setting.scan_layers}",
        f"ATTENTION_IMPL = '{setting.attention_impl}'",
        f"TARGET_DELETION_RATE = {target_deletion_rate}"], finalize=False)
    return gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    gin.clear_config()


def batch_shapes(setting: Setting) -> dict[str, jax.ShapeDtypeStruct]:
  """The features t5x's EncDecFeatureConverter gives (unpacked)."""
  enc = jax.ShapeDtypeStruct((setting.global_batch, setting.input_length), jnp.int32)
  dec = jax.ShapeDtypeStruct((setting.global_batch, setting.target_length), jnp.int32)
  weights = jax.ShapeDtypeStruct(dec.shape, jnp.float32)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
          "decoder_target_tokens": dec, "decoder_loss_weights": weights}


def lower_t5x_step(setting: Setting, devices: Sequence, target_deletion_rate: float = 0.5):
  """(t5x's train step lowered for abstract state and a global batch, the model, the
  partitioner)."""
  if not t5x_available():
    raise ValueError("the t5x step needs t5x (not on the package index: build its environment "
                     "with launch/t5x_env.py)")
  mesh = partitioning.make_mesh(partitioning.MeshConfig(num_partitions=setting.num_partitions),
                                devices)
  data_size = mesh.shape["data"]
  if setting.global_batch % (data_size * setting.num_microbatches):
    raise ValueError(f"batch {setting.global_batch} is not divisible by data-parallel size "
                     f"{data_size} x {setting.num_microbatches} micro-batches")
  model = configured_model(setting, target_deletion_rate)
  partitioner = SlicePartitioner(mesh)
  shapes = batch_shapes(setting)
  initializer = t5x_utils.TrainStateInitializer(
      optimizer_def=model.optimizer_def, init_fn=model.get_initial_variables,
      input_shapes={k: v.shape for k, v in shapes.items()},
      input_types={k: v.dtype for k, v in shapes.items()}, partitioner=partitioner)
  axes = initializer.train_state_axes
  num_microbatches = setting.num_microbatches if setting.num_microbatches > 1 else None

  def train_step(train_state, batch):
    return t5x_trainer.train_with_lr(
        train_state, batch, learning_rate=jnp.float32(1e-3),
        dropout_rng=jax.random.fold_in(jax.random.PRNGKey(0), train_state.step), model=model,
        num_microbatches=num_microbatches, data_partition_spec=partitioner.data_partition_spec)

  step = partitioner.partition(train_step, in_axis_resources=(axes, partitioner.data_partition_spec),
                               out_axis_resources=(axes, None), donate_argnums=(0,))
  return step.lower(initializer.global_train_state_shape, shapes), model, partitioner


def compile_t5x_setting(setting: Setting, devices: Sequence, *, topology: str,
                        target_deletion_rate: float = 0.5) -> dict[str, Any]:
  """The row of t5x's step for ``setting`` (the fields of ``pod_compile.compile_setting``)."""
  lowered, model, partitioner = lower_t5x_step(setting, devices, target_deletion_rate)
  config = model.module.config
  hand = pod_compile.hand_flops(config, setting)
  measured, _ = pod_compile.measure_program(lowered, devices, hand)
  return {**dataclasses.asdict(setting), "trainer": "t5x", "topology": topology,
          "chips": len(devices), "device_kind": getattr(devices[0], "device_kind",
                                                        str(devices[0])),
          "num_data_partitions": partitioner.mesh.shape["data"],
          "hand_flops_per_step": hand, **measured}


def run_t5x_compile(settings: Sequence[Setting], *, target: str, topology: str,
                    target_deletion_rate: float = 0.5,
                    log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """``compile_t5x_setting`` for every setting; one that cannot compile is logged and
  skipped; without t5x a ValueError names what to install."""
  if not t5x_available():
    raise ValueError("--programs t5x needs t5x (not on the package index: build its "
                     "environment with launch/t5x_env.py and run mrt5-bench from it)")
  devices = pod_compile.slice_devices(target, topology)
  rows = []
  for setting in settings:
    try:
      row = compile_t5x_setting(setting, devices, topology=topology,
                                target_deletion_rate=target_deletion_rate)
    except ValueError as error:
      log(f"skipped t5x {setting}: {error}")
      continue
    log("t5x step: " + pod_compile.describe(row))
    rows.append(row)
  return rows
