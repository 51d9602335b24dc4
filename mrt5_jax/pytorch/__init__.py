"""PyTorch MrT5 for converted checkpoints (needs torch and transformers >= 5).

Importing this package registers ``model_type`` "mrt5" with transformers'
AutoConfig / AutoModelForSeq2SeqLM, so ``AutoModelForSeq2SeqLM.from_pretrained``
loads a folder written by ``mrt5-convert to-pytorch``.
"""
from transformers import AutoConfig, AutoModelForSeq2SeqLM

from mrt5_jax.pytorch.configuration import MrT5Config
from mrt5_jax.pytorch.modeling import (MrT5DeleteGate, MrT5EncoderOutput, MrT5EncoderStack,
                                       MrT5ForConditionalGeneration, softmax1)

AutoConfig.register(MrT5Config.model_type, MrT5Config, exist_ok=True)
AutoModelForSeq2SeqLM.register(MrT5Config, MrT5ForConditionalGeneration, exist_ok=True)

__all__ = ["MrT5Config", "MrT5DeleteGate", "MrT5EncoderOutput", "MrT5EncoderStack",
           "MrT5ForConditionalGeneration", "softmax1"]
