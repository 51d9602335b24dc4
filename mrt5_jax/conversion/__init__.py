"""Checkpoint conversion between this project (JAX / orbax / t5x) and Hugging Face PyTorch.

``mapping``: JAX param tree <-> HF state dict (one table, NumPy only).
``configs``: MrT5Config <-> HF config.json, sizes inferred from params.
``folders``: HF folders and all-or-nothing output directories.
``convert``: ``to_pytorch`` / ``from_pytorch`` behind ``mrt5-convert`` (checkpoints are
read by ``mrt5_jax.checkpointing.checkpoints``, which reads every layout).

Importing this package loads only ``mapping`` and ``configs`` (no orbax, no torch).
"""
from mrt5_jax.conversion.configs import from_hf_config, infer_config, to_hf_config
from mrt5_jax.conversion.mapping import (hf_state_dict_to_jax, jax_to_hf_state_dict,
                                         parameter_table)

__all__ = ["from_hf_config", "hf_state_dict_to_jax", "infer_config", "jax_to_hf_state_dict",
           "parameter_table", "to_hf_config"]
