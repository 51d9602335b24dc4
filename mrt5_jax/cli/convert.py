"""mrt5-convert: checkpoints to Hugging Face PyTorch folders and back.

  mrt5-convert to-pytorch --checkpoint MODEL_DIR [--step N] --output HF_DIR [--dtype bfloat16]
  mrt5-convert from-pytorch --model HF_DIR --output MODEL_DIR

``to-pytorch`` reads this project's checkpoints (``MODEL_DIR/checkpoints/<step>``
with ``model_config.json``) or t5x's (``MODEL_DIR/checkpoint_<step>``; the gate
settings then come from the run's ``MODEL_DIR/config.gin``, which t5x writes).
Without either file a gated checkpoint needs the gate options below; options
that contradict the file are an error. ``from-pytorch`` writes
``MODEL_DIR/checkpoints/<step>`` and ``model_config.json`` for the trainer.
Outputs appear all at once or not at all.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence

from mrt5_jax.checkpointing.integrity import CheckpointSaveError
from mrt5_jax.cli import common
from mrt5_jax.conversion import convert
from mrt5_jax.model.shortening.registry import DELETION_TYPES


def _bool(text: str) -> bool:
  if text.lower() in ("1", "true", "yes"):
    return True
  if text.lower() in ("0", "false", "no"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="mrt5-convert", description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)

  to_pt = commands.add_parser("to-pytorch", help="checkpoint -> HF folder (config.json + "
                              "model.safetensors)")
  to_pt.add_argument("--checkpoint", required=True,
                     help="model dir, its checkpoints/ dir, or one step dir (project or t5x)")
  to_pt.add_argument("--step", type=int, default=None, help="step to convert (default: latest)")
  to_pt.add_argument("--output", required=True, help="HF folder to create")
  to_pt.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  to_pt.add_argument("--overwrite", action="store_true", help="replace an existing output")
  gate = to_pt.add_argument_group(
      "gate settings", "read from model_config.json or the run's config.gin when there is one "
      "(a flag must then agree with it); without either, a gated checkpoint needs "
      "--delete_gate_layer, --sigmoid_mask_scale and --use_softmax1")
  gate.add_argument("--delete_gate_layer", type=int, default=None,
                    help="encoder layer whose input the gate reads (0-based)")
  gate.add_argument("--sigmoid_mask_scale", type=float, default=None, help="k, e.g. -30")
  gate.add_argument("--deletion_threshold", type=float, default=None,
                    help="hard-deletion threshold (default k/2)")
  gate.add_argument("--use_softmax1", type=_bool, default=None, help="true or false")
  gate.add_argument("--deletion_type", choices=DELETION_TYPES,
                    default=None, help="default: scaled_sigmoid if the tree has a gate, else none")

  from_pt = commands.add_parser("from-pytorch", help="HF folder -> project checkpoint")
  from_pt.add_argument("--model", required=True, help="HF folder (config.json + weights)")
  from_pt.add_argument("--output", required=True, help="model dir to create")
  from_pt.add_argument("--step", type=int, default=0, help="step number to write (default 0)")
  from_pt.add_argument("--overwrite", action="store_true", help="replace an existing output")
  from_pt.add_argument("--scan_layers", type=_bool, default=False,
                       help="true: write stacked layers for MrT5Config.scan_layers=True "
                            "(default false: layers_{i}); mrt5-train reads either")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
  logging.getLogger("mrt5_jax").setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's notes on partial restores
  common.quiet_checkpoint_noise()
  try:
    if args.command == "to-pytorch":
      summary = convert.to_pytorch(
          args.checkpoint, args.output, step=args.step, dtype=args.dtype,
          overwrite=args.overwrite, delete_gate_layer=args.delete_gate_layer,
          sigmoid_mask_scale=args.sigmoid_mask_scale, deletion_threshold=args.deletion_threshold,
          use_softmax1=args.use_softmax1, deletion_type=args.deletion_type)
    else:
      summary = convert.from_pytorch(args.model, args.output, step=args.step,
                                     overwrite=args.overwrite, scan_layers=args.scan_layers)
  except (ValueError, CheckpointSaveError) as error:
    print(f"mrt5-convert: error: {error}", file=sys.stderr)
    return 2
  print(json.dumps(summary, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
