"""Small shared pieces of the trainer tests (a tiny model, a short diagnostic stream)."""
import gin

import mrt5_jax.tasks  # noqa: F401  (registers the tasks and their gin knobs)

from mrt5_jax import config as config_lib
from mrt5_jax import controller as ctl
from mrt5_jax import data
from mrt5_jax import objective as obj
from mrt5_jax import optimizers
from mrt5_jax import trainer

SEQ = 24


def micro_config(**overrides):
  """Smaller than the tiny preset: 2+1 layers, d_model 32, gate at layer 1."""
  values = dict(d_model=32, d_ff=64, num_heads=2, head_dim=16, num_encoder_layers=2,
                num_decoder_layers=1, delete_gate_layer=1)
  values.update(overrides)
  return config_lib.MrT5Config(**values)


def diagnostic_dataset(task="copy", batch_size=4, seed=0, length=SEQ, split="train"):
  gin.clear_config()
  gin.bind_parameter("mrt5_jax.tasks.diagnostic_config.sequence_length", length)
  return data.DatasetConfig(mixture_or_task_name=f"mrt5.diagnostic.{task}",
                            task_feature_lengths={"inputs": length, "targets": length},
                            split=split, batch_size=batch_size, seed=seed,
                            shuffle=split == "train")


def run(model_dir, steps, *, dataset, config=None, controller=None, lr=3e-3, **kwargs):
  kwargs.setdefault("log_every", 1)
  kwargs.setdefault("checkpoint_every", 1000)
  kwargs.setdefault("async_checkpointing", False)
  kwargs.setdefault("tensorboard", False)
  return trainer.train(
      model_dir=str(model_dir), model_config=config or micro_config(), train_dataset=dataset,
      train_steps=steps,
      optimizer=optimizers.OptimizerConfig(learning_rate=optimizers.linear_decay(lr, max(steps, 1))),
      controller=controller or ctl.ControllerConfig(target_deletion_rate=0.5, k_p=0.5),
      objective=obj.ObjectiveConfig(), **kwargs)
