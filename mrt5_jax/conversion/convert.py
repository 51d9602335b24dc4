"""The two conversions behind ``mrt5-convert``: checkpoint -> HF folder, HF folder -> checkpoint."""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import numpy as np

from mrt5_jax.checkpointing import integrity
from mrt5_jax.checkpointing import readers
from mrt5_jax.checkpointing import writer
from mrt5_jax.maths import trees
# the submodules themselves, not the package (whose __init__ re-exports for users)
import mrt5_jax.conversion.configs as configs
import mrt5_jax.conversion.folders as folders
import mrt5_jax.conversion.mapping as mapping
import mrt5_jax.conversion.run_config as run_config
from mrt5_jax.model.shortening.registry import shortening_for

BYTE_VOCAB_SIZE = 384  # 3 specials + 256 bytes + 125 sentinels: ByT5's tokenizer
TOKENIZER_CONFIG = {"tokenizer_class": "ByT5Tokenizer", "extra_ids": 125, "eos_token": "</s>",
                    "pad_token": "<pad>", "unk_token": "<unk>"}
DTYPES = ("float32", "bfloat16")
logger = logging.getLogger(__name__)


def _numpy_dtype(dtype: str):
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
  if dtype == "bfloat16":
    import ml_dtypes
    return ml_dtypes.bfloat16
  return np.float32


def to_pytorch(checkpoint_dir: str, output_dir: str, *, step: Optional[int] = None,
               dtype: str = "float32", overwrite: bool = False,
               **gate_settings: Any) -> dict[str, Any]:
  """Write the HF folder of a project or t5x checkpoint (latest step unless ``step``).

  The gate settings come from the run's ``model_config.json`` or t5x
  ``config.gin`` (``run_config.resolve``); ``gate_settings`` (delete_gate_layer,
  sigmoid_mask_scale, deletion_threshold, use_softmax1, deletion_type, None =
  not given) must agree with them, and are required for a gated checkpoint
  that has neither. The step is verified first (its integrity record, or for
  t5x and older steps a full read): a damaged step is an error naming the file
  and the newest intact step. Returns a summary (layout, step, model_type, where the
  gate settings came from, parameter count).
  """
  numpy_dtype = _numpy_dtype(dtype)
  folders.check_output(output_dir, overwrite)
  location = readers.locate(checkpoint_dir, step)
  try:
    checkpoint = readers.read_checkpoint(location.step_dir)
  except integrity.DamagedCheckpointError as error:
    raise error.suggesting("--step {step}") from None
  logger.info("read %s checkpoint %s (step %d)", checkpoint.layout, checkpoint.path,
              checkpoint.step)
  configs.check_convertible(params=checkpoint.params)
  config, source = run_config.resolve(checkpoint.params, location.model_dir, **gate_settings)
  configs.check_convertible(config)
  logger.info("model settings from %s: delete_gate_layer=%s, use_softmax1=%s, "
              "sigmoid_mask_scale=%s", source, config.delete_gate_layer if shortening_for(config).shortens
              else None, config.use_softmax1, config.sigmoid_mask_scale)
  state_dict = mapping.jax_to_hf_state_dict(checkpoint.params, config, numpy_dtype)
  hf_config = configs.to_hf_config(config, dtype)
  logger.info("writing %s folder (%s, %d tensors) to %s", hf_config["model_type"], dtype,
              len(state_dict), output_dir)
  with folders.atomic_directory(output_dir, overwrite) as staging:
    folders.write_hf_folder(staging, hf_config, state_dict)
    if config.vocab_size == BYTE_VOCAB_SIZE:
      with open(os.path.join(staging, "tokenizer_config.json"), "w") as f:
        json.dump(TOKENIZER_CONFIG, f, indent=2)
  return {"layout": checkpoint.layout, "step": checkpoint.step,
          "model_type": hf_config["model_type"], "dtype": dtype, "settings_from": source,
          "num_parameters": int(sum(value.size for value in state_dict.values())),
          "output": os.path.abspath(output_dir)}


def from_pytorch(model_dir: str, output_dir: str, *, step: int = 0,
                 overwrite: bool = False, scan_layers: bool = False) -> dict[str, Any]:
  """Write a project checkpoint (``checkpoints/<step>`` + model_config.json) of an HF folder.

  The folder may be a converted MrT5 / ByT5 folder or a published one
  (safetensors or pytorch_model.bin). Params are stored float32, with
  stacked layers when ``scan_layers`` (``MrT5Config.scan_layers``).
  """
  folders.check_output(output_dir, overwrite)
  config = configs.from_hf_config(folders.read_hf_config(model_dir), scan_layers=scan_layers)
  params = mapping.hf_state_dict_to_jax(folders.read_hf_state_dict(model_dir), config)
  logger.info("read %s (deletion_type=%s); writing step %d to %s", model_dir,
              config.deletion_type, step, output_dir)
  with folders.atomic_directory(output_dir, overwrite) as staging:
    writer.save_params_checkpoint(staging, params, config, step)
  return {"layout": "project", "step": step, "deletion_type": config.deletion_type,
          "num_parameters": int(sum(v.size for v in trees.flatten(params).values())),
          "output": os.path.abspath(output_dir)}
