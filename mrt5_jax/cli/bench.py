"""``mrt5-bench``: speed and memory measurements.

  mrt5-bench inference [--config cpu|small|base] [--length 1024] [--batch 2]
                       [--rates 0.25,0.5,0.75] [--row_rate_spread 0.1] [--repeats 3]
                       [--modes pow2,step,packed,packed_within,capacity] [--no_baselines]
                       [--dtype float32|bfloat16]
                       [--output results.json]
  mrt5-bench train_step [--config cpu|small|base] [--length 512] [--batch 16] [--rate 0.5]
                       [--packed_rows 0.75] [--recipe_hard_prob 0.5] [--repeats 5]
                       [--dtype float32|bfloat16] [--output F]
  mrt5-bench memory    [--size base] [--lengths 1024,2048] [--policies none,minimal,full]
                       [--batch 1] [--scan_layers] [--attention dense|blocked]
                       [--target auto|host|tpu] [--topology v4:2x2x1] [--output F]
  mrt5-bench attention [--config cpu|small|base] [--lengths 1024,2048,4096,8192]
                       [--batch 1] [--block_size 512] [--repeats 3] [--no_timing]
                       [--target auto|host|tpu] [--topology v4:2x2x1] [--output F]
  mrt5-bench deletion  [--tasks vowel_removal,contextual_vowel_removal,span_corruption]
                       [--recipes shipped,published,previous_demo] [--targets 0.3,0.5]
                       [--steps 1500] [--work_dir /tmp/mrt5_deletion] [--output rows.json]
                       [--gin BINDING ...]
  mrt5-bench shortening [--targets 0.5] [--seeds 0,1] [--pretrain_steps 800]
                       [--continue_steps 400] [--byt5_checkpoint DIR] [--cp_rate 4]
                       [--architectures byt5,mrt5,random,fixed,bp,cp]
                       [--run_file runs/byt5_to_mrt5.gin] [--work_dir /tmp/mrt5_shortening]
                       [--output F.json] [--gin BINDING ...]
  mrt5-bench compile   [--target tpu|host] [--topology v4:2x2x2] [--size small]
                       [--length 1024] [--batch 1024] [--partitions 1,2] [--microbatches 1,4]
                       [--remat none,full] [--attention dense] [--scan_layers]
                       [--optimizer adafactor] [--search] [--programs train,t5x,inference]
                       [--rate_spread 0.05] [--bucket_step 0] [--min_bucket_length 64]
                       [--output F]

``inference``: ByT5 against hard-deletion MrT5 at forced deletion rates (each
row its own around the batch's with ``--row_rate_spread``), in each
hard-deletion mode (power-of-two or step buckets, packed rows, capacity), and
the pooling baselines at matched length reduction (BP at every rate, CP at
its fixed 1 - 1/4; ``--no_baselines`` skips them);
``--config auto`` (the default) picks ``small`` (ByT5-small) on a GPU/TPU and
the 2-core-CPU model otherwise. ``train_step``: the train step's time with
soft, per-row hard and packed hard deletion batches, and the shipped
recipe's average. ``memory``: peak memory of one train step (XLA's memory analysis of the compiled step, never run) per input length and
remat policy. ``attention``: dense against blocked encoder attention per
length, encoder time and peak memory side by side; ``--config auto`` picks
``base`` on a GPU/TPU and a narrow 4-layer model on a CPU. Memory compiles for
``--target``: ``host``, or ``tpu`` (one chip of ``--topology``, compiled by
libtpu without a TPU); ``auto`` takes a TPU chip on a CPU host with libtpu
installed, else the host. ``deletion``: trains each recipe on each task and
reports eval deletion, soft and hard cross entropy (docs/deletion_control.md).
``shortening``: the paper's comparison: ByT5, MrT5, random and fixed deletion,
BP and CP continued from one ByT5 at matched reduction (the targets and CP's
1 - 1/cp_rate), per seed and language, each encoder timed against its seed's
ByT5 side by side; a table, the paired differences and a plot of CE against
reduction (PNG beside the JSON; docs/baselines.md).
``compile``: the real sharded train step (shipped deletion control, hard
batches included) compiled, never run, for every chip of a TPU slice (libtpu)
or this host's devices, over partitionings x micro-batches x remat x
attention: peak memory per chip and whether it fits, FLOPs and collective
bytes from the compiled HLO against a hand count, a roofline step time and
MFU; ``--search`` stops each family at its first fitting micro-batch count;
``--programs t5x`` compiles t5x's ``MrT5Model`` step the same way (run from
the t5x environment); ``--programs inference`` compiles the hard-deletion
encoder programs (full length, stage one, each bucket, packed) for the same
slice, with the speedup their counted FLOPs and roofline times imply
(docs/memory_and_long_inputs.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import jax

from mrt5_jax.cli import common
from mrt5_jax.inference.encode_path import InferenceConfig
from mrt5_jax.jobs import evaluate as evaluate_job
from mrt5_jax.jobs import stages
from mrt5_jax.jobs import train as train_job
from mrt5_jax.studies import compiled
from mrt5_jax.studies import deletion_control
from mrt5_jax.studies import inference_compile
from mrt5_jax.studies import inference_speed
from mrt5_jax.studies import memory as memory_benchmarking
from mrt5_jax.studies import pod_compile
from mrt5_jax.studies import shortening_comparison
from mrt5_jax.studies import t5x_compile
from mrt5_jax.studies import train_step_speed
from mrt5_jax.model.config import REMAT_POLICIES, SIZES


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="mrt5-bench", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  inference = sub.add_parser("inference", help="ByT5 vs MrT5 hard deletion at forced rates")
  inference.add_argument("--config", default="auto", choices=["auto", "cpu", "small", "base"])
  inference.add_argument("--length", type=int, default=1024)
  inference.add_argument("--target_length", type=int, default=189)
  inference.add_argument("--batch", type=int, default=2)
  inference.add_argument("--rates", default="0.25,0.5,0.75")
  inference.add_argument("--repeats", type=int, default=3)
  inference.add_argument("--row_rate_spread", type=float, default=0.0,
                         help="each row's rate drawn around the batch's (sd, seeded)")
  inference.add_argument("--modes", default=",".join(inference_speed.MODES),
                         help="hard-deletion modes to compare (pow2, step, packed, "
                              "packed_within: packed rows of at most the input length, capacity)")
  inference.add_argument("--seed", type=int, default=0)
  inference.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                         help="activation dtype (parameters stay float32)")
  inference.add_argument("--no_baselines", action="store_true",
                         help="skip the BP and CP rows (pooling baselines)")
  inference.add_argument("--output", default=None, help="write the results as JSON here")

  train_step = sub.add_parser("train_step",
                              help="train-step time: soft, per-row hard and packed hard batches")
  train_step.add_argument("--config", default="auto", choices=["auto", "cpu", "small", "base"])
  train_step.add_argument("--length", type=int, default=512)
  train_step.add_argument("--target_length", type=int, default=96)
  train_step.add_argument("--batch", type=int, default=16)
  train_step.add_argument("--rate", type=float, default=0.5, help="deletion rate of the batch")
  train_step.add_argument("--packed_rows", type=float, default=0.75,
                          help="hard_delete_train_packed_rows of the packed arm")
  train_step.add_argument("--recipe_hard_prob", type=float, default=0.5,
                          help="the recipe's share of hard-deletion batches")
  train_step.add_argument("--repeats", type=int, default=5)
  train_step.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                          help="activation dtype (parameters stay float32)")
  train_step.add_argument("--output", default=None, help="write the results as JSON here")

  memory = sub.add_parser("memory", help="peak memory of one train step, with and without remat")
  memory.add_argument("--size", default="base", choices=sorted(SIZES))
  memory.add_argument("--lengths", default="1024,2048")
  memory.add_argument("--policies", default="none,minimal,full",
                      help=f"comma-separated remat policies from {REMAT_POLICIES}")
  memory.add_argument("--batch", type=int, default=1, help="examples per device")
  memory.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  memory.add_argument("--scan_layers", action="store_true", help="scanned layers")
  memory.add_argument("--attention", default="dense", choices=["dense", "blocked"])
  _target_flags(memory)
  memory.add_argument("--output", default=None, help="write the results as JSON here")

  attention = sub.add_parser("attention", help="dense vs blocked encoder attention per length")
  attention.add_argument("--config", default="auto", choices=["auto", "cpu", "small", "base"])
  attention.add_argument("--lengths", default="1024,2048,4096,8192")
  attention.add_argument("--batch", type=int, default=1)
  attention.add_argument("--block_size", type=int, default=512)
  attention.add_argument("--repeats", type=int, default=3)
  attention.add_argument("--no_timing", action="store_true", help="memory only")
  _target_flags(attention)
  attention.add_argument("--output", default=None, help="write the results as JSON here")

  deletion = sub.add_parser("deletion", help="deletion control: recipes x tasks, soft vs hard")
  deletion.add_argument("--tasks", default="vowel_removal,contextual_vowel_removal")
  deletion.add_argument("--recipes", default="shipped,published")
  deletion.add_argument("--targets", default="0.3,0.5")
  deletion.add_argument("--steps", type=int, default=1500, help="diagnostic tasks' steps")
  deletion.add_argument("--pretrain_steps", type=int, default=3000,
                        help="span corruption: ByT5-tiny steps before the gate is added")
  deletion.add_argument("--continue_steps", type=int, default=1000,
                        help="span corruption: steps of the continued MrT5 / ByT5")
  deletion.add_argument("--work_dir", default="/tmp/mrt5_deletion")
  deletion.add_argument("--gin", action="append", default=[],
                        help="an extra gin binding for every run (repeatable)")
  deletion.add_argument("--output", default=None, help="write the rows as JSON here")

  shortening = sub.add_parser(
      "shortening", help="ByT5, MrT5, random, fixed, BP, CP continued from one ByT5, compared")
  shortening.add_argument("--targets", default="0.5",
                          help="reduction targets (CP's 1 - 1/cp_rate is always added)")
  shortening.add_argument("--seeds", default="0,1", help="init and data-order seeds")
  shortening.add_argument("--pretrain_steps", type=int, default=800,
                          help="steps of the ByT5 every architecture continues")
  shortening.add_argument("--continue_steps", type=int, default=400)
  shortening.add_argument("--byt5_checkpoint", default=None,
                          help="continue this gate-less model instead of training one")
  shortening.add_argument("--cp_rate", type=int, default=4)
  shortening.add_argument(
      "--architectures", default=",".join(shortening_comparison.ARCHITECTURES),
      help="which to continue (ByT5 always runs: every other model is paired with it)")
  shortening.add_argument("--speed_repeats", type=int, default=3)
  shortening.add_argument("--run_file", default=shortening_comparison.DEFAULT_RUN_FILE,
                          help="model size, data, optimizer and deletion control of every run")
  shortening.add_argument("--work_dir", default="/tmp/mrt5_shortening")
  shortening.add_argument("--gin", action="append", default=[],
                          help="an extra gin binding for every run (repeatable)")
  shortening.add_argument("--output", default=None,
                          help="the JSON (default WORK_DIR/comparison.json; the plot beside it)")

  compile_ = sub.add_parser("compile", help="the sharded train step compiled for a TPU slice")
  compile_.add_argument("--target", default="tpu", choices=["tpu", "host"])
  compile_.add_argument("--topology", default="v4:2x2x2",
                        help="TPU slice, e.g. v4:2x2x2 (8 chips), v5e:4x4 (16 chips)")
  compile_.add_argument("--size", default="small", choices=sorted(SIZES))
  compile_.add_argument("--length", type=int, default=1024, help="input bytes per example")
  compile_.add_argument("--target_length", type=int, default=None,
                        help="target bytes (default: 189 per 1024 input bytes)")
  compile_.add_argument("--batch", type=int, default=1024, help="global batch (examples)")
  compile_.add_argument("--partitions", default="1", help="model-axis sizes to try")
  compile_.add_argument("--microbatches", default="1,2,4,8,16")
  compile_.add_argument("--remat", default="none,full",
                        help=f"comma-separated remat policies from {REMAT_POLICIES}")
  compile_.add_argument("--attention", default="dense", help="dense,blocked")
  compile_.add_argument("--scan_layers", action="store_true")
  compile_.add_argument("--optimizer", default="adafactor", choices=["adafactor", "adamw"])
  compile_.add_argument("--target_deletion_rate", type=float, default=0.5)
  compile_.add_argument("--search", action="store_true",
                        help="per family, micro-batch counts only until one fits")
  compile_.add_argument("--programs", default="train",
                        help="comma-separated: train (the project trainer's step), t5x (t5x's "
                        "MrT5Model step; needs t5x), inference (the hard-deletion encoder "
                        "programs: full length, stage one, each bucket, packed)")
  compile_.add_argument("--rate_spread", type=float, default=0.05,
                        help="inference: sd of the rows' deletion rates around "
                        "--target_deletion_rate (the packing plan's batch)")
  compile_.add_argument("--bucket_step", type=int, default=0,
                        help="inference: buckets are powers of two (0) or multiples of this")
  compile_.add_argument("--min_bucket_length", type=int, default=64,
                        help="inference: the smallest bucket")
  compile_.add_argument("--output", default=None, help="write the rows as JSON here")
  return parser


def _target_flags(parser) -> None:
  parser.add_argument("--target", default="auto", choices=compiled.TARGETS,
                      help="compile for this host or for a TPU chip (needs libtpu)")
  parser.add_argument("--topology", default=compiled.DEFAULT_TPU_TOPOLOGY,
                      help="TPU topology of --target tpu (one chip of it is measured)")


def _ints(text: str, flag: str, minimum: int = 1) -> list[int]:
  try:
    values = [int(v) for v in text.split(",") if v]
  except ValueError:
    raise SystemExit(f"{flag} must be comma-separated integers, got {text!r}") from None
  if not values or any(v < minimum for v in values):
    raise SystemExit(f"{flag} needs integers >= {minimum}, got {text!r}")
  return values


def _run_memory(args) -> dict:
  policies = [p for p in args.policies.split(",") if p]
  unknown = sorted(set(policies) - set(REMAT_POLICIES))
  if not policies or unknown:
    raise SystemExit(f"--policies must come from {REMAT_POLICIES}, got {args.policies!r}")
  if args.batch < 1:
    raise SystemExit("--batch must be at least 1")
  return memory_benchmarking.run_memory_benchmark(
      args.size, _ints(args.lengths, "--lengths", 16), policies, args.batch,
      args.scan_layers, args.dtype, args.attention, args.target, args.topology)


def _run_attention(args) -> dict:
  if args.batch < 1 or args.block_size < 1 or args.repeats < 1:
    raise SystemExit("--batch, --block_size and --repeats must be at least 1")
  config = args.config
  if config == "auto":
    config = "cpu" if jax.devices()[0].platform == "cpu" else "base"
  return memory_benchmarking.run_attention_benchmark(
      config, _ints(args.lengths, "--lengths", 16), args.batch, args.block_size, args.repeats,
      target=args.target, topology=args.topology, timing=not args.no_timing)


def _run_inference(args) -> dict:
  rates = [float(r) for r in args.rates.split(",") if r]
  if not rates or any(not 0.0 <= r < 1.0 for r in rates):
    raise SystemExit(f"--rates must be comma-separated values in [0, 1), got {args.rates!r}")
  if args.length < 64:
    raise SystemExit("--length must be at least 64")
  config = args.config
  if config == "auto":
    config = "cpu" if jax.devices()[0].platform == "cpu" else "small"
  if args.batch < 1 or args.repeats < 1 or not 0.0 <= args.row_rate_spread < 1.0:
    raise SystemExit("--batch and --repeats must be at least 1, --row_rate_spread in [0, 1)")
  modes = [m for m in args.modes.split(",") if m]
  unknown = sorted(set(modes) - set(inference_speed.MODES))
  if not modes or unknown:
    raise SystemExit(f"--modes must come from {list(inference_speed.MODES)}, got {args.modes!r}")
  return inference_speed.run_inference_benchmark(config, rates, args.length, args.target_length,
                                              args.batch, args.repeats, seed=args.seed,
                                              baselines=not args.no_baselines,
                                              row_rate_spread=args.row_rate_spread,
                                              modes=modes, dtype=args.dtype)


def _run_train_step(args) -> dict:
  if args.batch < 1 or args.repeats < 1 or args.length < 16 or args.target_length < 2:
    raise SystemExit("--batch and --repeats must be >= 1, --length >= 16, --target_length >= 2")
  for flag, value in (("--rate", args.rate), ("--recipe_hard_prob", args.recipe_hard_prob)):
    if not 0.0 <= value < 1.0 and not (flag == "--recipe_hard_prob" and value == 1.0):
      raise SystemExit(f"{flag} must lie in [0, 1), got {value}")
  if not 0.0 < args.packed_rows <= 1.0:
    raise SystemExit(f"--packed_rows must lie in (0, 1], got {args.packed_rows}")
  config = args.config
  if config == "auto":
    config = "cpu" if jax.devices()[0].platform == "cpu" else "small"
  return train_step_speed.run_train_step_benchmark(
      config, args.length, args.target_length, args.batch, args.rate, args.packed_rows,
      args.recipe_hard_prob, args.repeats, dtype=args.dtype)


def _run_deletion(args) -> dict:
  common.setup_logging()
  recipes = []
  for name in args.recipes.split(","):
    if name not in deletion_control.RECIPES:
      raise SystemExit(f"unknown recipe {name!r}; choose from {sorted(deletion_control.RECIPES)}")
    recipes.append(deletion_control.RECIPES[name])
  targets = [float(t) for t in args.targets.split(",") if t]
  rows = deletion_control.run_study(
      args.tasks.split(","), recipes, targets, work_dir=args.work_dir, steps=args.steps,
      pretrain_steps=args.pretrain_steps, continue_steps=args.continue_steps,
      extra_bindings=args.gin)
  print(deletion_control.markdown_table(rows))
  return {"rows": [dataclasses.asdict(row) for row in rows]}


def _run_compile(args) -> dict:
  policies = [p for p in args.remat.split(",") if p]
  attention = [a for a in args.attention.split(",") if a]
  if not policies or set(policies) - set(REMAT_POLICIES):
    raise SystemExit(f"--remat must come from {REMAT_POLICIES}, got {args.remat!r}")
  if not attention or set(attention) - {"dense", "blocked"}:
    raise SystemExit(f"--attention must come from dense,blocked, got {args.attention!r}")
  if args.length < 16 or args.batch < 1:
    raise SystemExit("--length must be >= 16 and --batch >= 1")
  target_length = args.target_length or memory_benchmarking.target_length_for(args.length)
  settings = pod_compile.grid(
      args.size, args.length, target_length, args.batch,
      partitions=_ints(args.partitions, "--partitions"),
      microbatches=_ints(args.microbatches, "--microbatches"), remat_policies=policies,
      attention=attention, scan_layers=args.scan_layers, optimizer=args.optimizer)
  programs = {p for p in args.programs.split(",") if p}
  if not programs or programs - {"train", "t5x", "inference"}:
    raise SystemExit(f"--programs must come from train,t5x,inference, got {args.programs!r}")
  result = pod_compile.run_compile_benchmark(
      settings if "train" in programs else [], target=args.target, topology=args.topology,
      search=args.search, target_deletion_rate=args.target_deletion_rate)
  if "t5x" in programs:
    result["t5x_rows"] = t5x_compile.run_t5x_compile(
        settings, target=args.target, topology=args.topology,
        target_deletion_rate=args.target_deletion_rate)
  if "inference" in programs:
    inference = InferenceConfig(bucket_step=args.bucket_step,
                                min_bucket_length=args.min_bucket_length)
    families = {(s.num_partitions, s.attention_impl): s for s in settings}
    result["inference"] = inference_compile.run_inference_compile(
        [inference_compile.InferenceSetting(s, args.target_deletion_rate, args.rate_spread,
                                            inference) for s in families.values()],
        target=args.target, topology=args.topology)
  return result


def _run_shortening(args) -> dict:
  common.setup_logging()
  try:
    targets = [float(t) for t in args.targets.split(",") if t]
  except ValueError:
    raise SystemExit(f"--targets must be comma-separated numbers, got {args.targets!r}") from None
  output = args.output or f"{args.work_dir.rstrip('/')}/comparison.json"
  jobs = stages.Jobs(train=train_job.train, evaluate=evaluate_job.evaluate)
  result = shortening_comparison.run_comparison(
      jobs, work_dir=args.work_dir, targets=targets, seeds=_ints(args.seeds, "--seeds", 0),
      pretrain_steps=args.pretrain_steps, continue_steps=args.continue_steps,
      byt5_checkpoint=args.byt5_checkpoint, run_file=args.run_file, cp_rate=args.cp_rate,
      architectures=[a for a in args.architectures.split(",") if a],
      speed_repeats=args.speed_repeats, extra_bindings=args.gin, output=output)
  if result["interrupted"]:
    print(f"stage {result['interrupted']} was interrupted after a checkpoint; run the same "
          "command again to resume it", flush=True)
    raise SystemExit(130)
  print(result["table"])
  print()
  print(result["language_table"])
  print()
  print("\n".join(shortening_comparison.difference_lines(result["differences"])))
  print(f"wrote {output} and {result['plot_path']} ({result['wall_seconds']:.0f} s)")
  return {}


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  run = {"inference": _run_inference, "memory": _run_memory, "attention": _run_attention,
         "deletion": _run_deletion, "train_step": _run_train_step,
         "shortening": _run_shortening, "compile": _run_compile}
  try:
    result = run[args.command](args)
  except ValueError as error:
    raise SystemExit(f"mrt5-bench: error: {error}") from None
  if args.output and args.command != "shortening":
    inference_speed.write_json(result, args.output)
    print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
