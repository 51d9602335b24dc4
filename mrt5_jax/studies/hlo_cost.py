"""Matmul FLOPs and collective bytes of a compiled XLA program, read from its HLO text.

XLA's own cost analysis (``compiled.cost_analysis()``) counts the body of a
``while`` loop once, whatever its trip count, so the train step with
micro-batches (a ``lax.scan``) or with scanned layers looks several times
cheaper than it is. This reads ``compiled.as_text()`` instead and walks the
call graph from the entry computation: a fusion or call counts its callee
once, a ``while`` counts its body ``known_trip_count`` times (XLA:CPU records
it in the op's backend config; for XLA:TPU, which does not, the bound N of the
condition's ``i < N``, JAX's loops counting from 0), a ``conditional`` counts
its most expensive branch (one runs per step).

Counted: ``dot`` ops (2 x result elements x contracted size: the matmuls,
which are all but a few percent of a transformer's FLOPs), ``convolution``
ops (XLA:TPU's form of a matmul: 2 x input features x every pair of output
position and window tap that meets a real input position) and the results of
the collective ops (``all-reduce``, ``all-gather``, ``reduce-scatter``,
``all-to-all``, ``collective-permute``, sync or async start), in bytes per
device.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Optional

import numpy as np

DTYPE_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
               "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
               "c64": 8, "c128": 16}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_HEADER = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s+([\w\-]+)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CALLEE_KEYS = re.compile(r"\b(calls|body|to_apply|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_WINDOW = re.compile(r"window=\{([^}]*)\}")
_DIM_LABELS = re.compile(r"dim_labels=([0-9a-z_]+->[0-9a-z]+)")
_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([0-9,]*)\}")


def _arrays(type_text: str) -> list[tuple[str, tuple[int, ...]]]:
  """(dtype, dims) of every array in an HLO type (a tuple type has several)."""
  return [(dtype, tuple(int(d) for d in dims.split(",") if d))
          for dtype, dims in _ARRAY.findall(type_text) if dtype in DTYPE_BYTES]


def _bytes(type_text: str) -> int:
  return sum(DTYPE_BYTES[dtype] * math.prod(dims) for dtype, dims in _arrays(type_text))


@dataclasses.dataclass
class _Instruction:
  name: str
  type_text: str
  op: str
  rest: str
  root: bool = False

  @property
  def operands(self) -> list[str]:
    """Names of the operands (compiled HLO prints them without types)."""
    return re.findall(r"%([\w.\-]+)", self.rest.split(")", 1)[0])


@dataclasses.dataclass
class _Computation:
  name: str
  instructions: list
  is_entry: bool = False


def parse(hlo_text: str) -> dict[str, _Computation]:
  """Computations of an HLO module's text, by name."""
  computations: dict[str, _Computation] = {}
  current: Optional[_Computation] = None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header:
      current = _Computation(header.group(1), [], line.startswith("ENTRY"))
      computations[current.name] = current
      continue
    if current is None:
      continue
    if line.strip() == "}":
      current = None
      continue
    instruction = _INSTRUCTION.match(line)
    if instruction:
      current.instructions.append(_Instruction(*instruction.groups(),
                                               root=line.lstrip().startswith("ROOT")))
  return computations


@dataclasses.dataclass(frozen=True)
class ProgramCost:
  """Per device, per run of the program.

  hbm_bytes: memory traffic, each top-level op (a fusion, a copy, an unfused
  op) reading its operands and writing its result once, loops at their trip
  counts; a slice read through ``dynamic-slice`` counts the slice, an in-place
  ``dynamic-update-slice`` the update (the layers of a scan, the micro-batches
  of a step).
  """
  matmul_flops: float
  collective_bytes: dict  # op kind -> bytes of its results
  unknown_trip_counts: tuple = ()  # while ops counted once: no trip count could be read
  hbm_bytes: float = 0.0

  @property
  def total_collective_bytes(self) -> float:
    return float(sum(self.collective_bytes.values()))


def program_cost(hlo_text: str) -> ProgramCost:
  """Matmul FLOPs and collective bytes of one run of the module's entry computation."""
  computations = parse(hlo_text)
  entry = [c for c in computations.values() if c.is_entry]
  if len(entry) != 1:
    raise ValueError(f"expected one ENTRY computation in the HLO text, found {len(entry)}")

  @functools.lru_cache(maxsize=None)
  def cost(name: str) -> tuple[float, tuple, float]:
    """(matmul FLOPs, collective bytes by kind, HBM bytes of its top-level ops)."""
    computation = computations.get(name)
    if computation is None:
      return 0.0, (), 0.0
    shapes = {i.name: i.type_text for i in computation.instructions}
    flops, moved, traffic = 0.0, {}, 0.0

    def add(sub_flops, sub_moved, sub_traffic=0.0, times=1, with_traffic=True):
      nonlocal flops, traffic
      flops += times * sub_flops
      if with_traffic:
        traffic += times * sub_traffic
      for kind, value in sub_moved:
        moved[kind] = moved.get(kind, 0) + times * value

    for inst in computation.instructions:
      op = inst.op
      traffic += _traffic(inst, shapes, computations)
      if op == "dot":
        lhs = re.search(r"%([\w.\-]+)", inst.rest)
        contracting = _CONTRACTING.search(inst.rest)
        (_, out_dims), = _arrays(inst.type_text)[:1] or [("f32", ())]
        contracted = 1
        if lhs and contracting and lhs.group(1) in shapes:
          lhs_arrays = _arrays(shapes[lhs.group(1)])
          if lhs_arrays:
            dims = lhs_arrays[0][1]
            contracted = math.prod(dims[int(d)] for d in contracting.group(1).split(",") if d)
        flops += 2.0 * math.prod(out_dims) * contracted
        continue
      if op == "convolution":  # XLA:TPU writes matmuls as 1x1 convolutions
        flops += _convolution_flops(inst, shapes)
        continue
      kind = op[:-len("-start")] if op.endswith("-start") else op
      if kind in COLLECTIVES:
        # all-reduce-start returns its results; the other starts (operands, results, ...)
        async_pair = op.endswith("-start") and kind != "all-reduce"
        moved[kind] = moved.get(kind, 0) + _bytes(
            _async_result(inst.type_text) if async_pair else inst.type_text)
      if op == "while":
        body = re.search(r"\bbody=%([\w.\-]+)", inst.rest)
        condition = re.search(r"\bcondition=%([\w.\-]+)", inst.rest)
        trips = _TRIP_COUNT.search(inst.rest)
        count = (int(trips.group(1)) if trips else
                 _bound_of(condition.group(1)) if condition else None)
        if count is None:
          unknown.append(inst.name)
        if body:
          add(*cost(body.group(1)), times=1 if count is None else count)
        continue
      if op == "conditional":
        branches = _BRANCHES.search(inst.rest)
        names = ([b.strip().lstrip("%") for b in branches.group(1).split(",")] if branches else
                 [m.group(2) for m in _CALLEE_KEYS.finditer(inst.rest)])
        if names:
          add(*max((cost(n) for n in names), key=lambda c: c[0]))
        continue
      for match in _CALLEE_KEYS.finditer(inst.rest):
        if match.group(1) in ("calls", "to_apply"):
          # a fusion's or reducer's ops stay on chip; a called computation's are top level
          add(*cost(match.group(2)), with_traffic=op == "call")
    return flops, tuple(sorted(moved.items())), traffic

  def _bound_of(condition: str) -> Optional[int]:
    """The loop bound of a ``while`` condition ``i < N`` (JAX's loops count from 0):
    the one integer scalar constant of the condition computation and its fusions."""
    constants = []
    pending, seen = [condition], set()
    while pending:
      name = pending.pop()
      if name in seen or name not in computations:
        continue
      seen.add(name)
      for inst in computations[name].instructions:
        if inst.op == "constant" and re.match(r"[su](32|64)\[\]", inst.type_text):
          value = re.match(r"\s*(-?\d+)\)", inst.rest)
          if value:
            constants.append(int(value.group(1)))
        pending += [m.group(2) for m in _CALLEE_KEYS.finditer(inst.rest)]
    has_less_than = any("direction=LT" in inst.rest
                        for name in seen for inst in computations[name].instructions)
    return constants[0] if has_less_than and len(set(constants)) == 1 else None

  unknown: list[str] = []
  flops, moved, traffic = cost(entry[0].name)
  return ProgramCost(flops, dict(moved), tuple(unknown), traffic)


# Ops that move no data of their own (views, control flow whose bodies are counted,
# the second half of async pairs) or move it between chips (counted as collectives).
_NO_TRAFFIC = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "while",
               "conditional", "call", "after-all", "partition-id", "replica-id",
               "opt-barrier", "add-dependency"}


def _traffic(inst: _Instruction, shapes: dict[str, str],
             computations: dict[str, _Computation]) -> float:
  """HBM bytes of one top-level op: its operands read and its result written once."""
  op = inst.op
  kind = op[:-len("-start")] if op.endswith("-start") else op
  if op in _NO_TRAFFIC or op.endswith("-done") or kind in COLLECTIVES:
    return 0.0
  operand_bytes = [_bytes(shapes.get(o, "")) for o in inst.operands]
  if op == "copy-start":
    return 2.0 * sum(operand_bytes[:1])
  if op == "dynamic-slice":
    return 2.0 * _bytes(inst.type_text)
  if op == "dynamic-update-slice":
    return 2.0 * (operand_bytes[1] if len(operand_bytes) > 1 else 0)
  if op == "fusion":
    callee = re.search(r"\bcalls=%([\w.\-]+)", inst.rest)
    fused = computations.get(callee.group(1)) if callee else None
    if fused is not None:
      return _fusion_traffic(fused, inst, operand_bytes)
  return float(_bytes(inst.type_text) + sum(operand_bytes))


def _fusion_traffic(fused: _Computation, inst: _Instruction, operand_bytes: list[int]) -> float:
  """A fusion reads each operand once (only the slices of one it reads through
  ``dynamic-slice``) and writes its result (only the update of an in-place
  ``dynamic-update-slice`` root into one of its parameters)."""
  parameters = {}
  for i in fused.instructions:
    if i.op == "parameter":
      number = re.match(r"\s*(\d+)\)", i.rest)
      if number:
        parameters[i.name] = int(number.group(1))
  users: dict[str, list] = {name: [] for name in parameters}
  for i in fused.instructions:
    for position, operand in enumerate(i.operands):
      if operand in users:
        users[operand].append((i, position))
  inner = {i.name: i.type_text for i in fused.instructions}
  root = next((i for i in fused.instructions if i.root), None)
  written = float(_bytes(inst.type_text))
  in_place = None
  if root is not None and root.op == "dynamic-update-slice" and root.operands[:1] and \
      root.operands[0] in parameters:
    in_place = root.operands[0]
    written = float(_bytes(inner.get(root.operands[1], ""))) if len(root.operands) > 1 else 0.0
  read = 0.0
  for name, number in parameters.items():
    if name == in_place:
      continue
    uses = users[name]
    if uses and all(u.op == "dynamic-slice" and position == 0 for u, position in uses):
      read += sum(_bytes(u.type_text) for u, _ in uses)
    elif number < len(operand_bytes):
      read += operand_bytes[number]
  return read + written


def _real_taps(size: int, window: int, stride: int, pad_low: int, lhs_dilate: int,
               rhs_dilate: int, outputs: int) -> int:
  """Over all output positions of one spatial dimension, the window taps that land on a
  real (not padding, not dilation-hole) input position."""
  o = np.arange(outputs)[:, None]
  t = np.arange(window)[None, :]
  position = o * stride + t * rhs_dilate - pad_low
  real = (position >= 0) & (position <= (size - 1) * lhs_dilate) & (position % lhs_dilate == 0)
  return int(real.sum())


def _convolution_flops(inst: _Instruction, shapes: dict[str, str]) -> float:
  """2 x input features per group x every (output position, tap) that meets real input.

  XLA:TPU writes matmuls as convolutions, batched ones with batch or head
  dimensions made spatial (``lhs_dilate`` = window size, or padding around a
  window as wide as the dimension), so that each output position meets one
  real input position; counting window taps would overcount those.
  """
  operands = re.findall(r"%([\w.\-]+)", inst.rest.split(")", 1)[0])
  labels = _DIM_LABELS.search(inst.rest)
  outputs = _arrays(inst.type_text)
  if len(operands) < 2 or not labels or not outputs or not all(o in shapes for o in operands[:2]):
    return 0.0
  lhs_arrays, kernel_arrays = _arrays(shapes[operands[0]]), _arrays(shapes[operands[1]])
  if not lhs_arrays or not kernel_arrays:
    return 0.0
  lhs, kernel, out = lhs_arrays[0][1], kernel_arrays[0][1], outputs[0][1]
  lhs_labels, rest = labels.group(1).split("_", 1)
  kernel_labels, out_labels = rest.split("->")
  if (len(lhs_labels) != len(lhs) or len(kernel_labels) != len(kernel)
      or len(out_labels) != len(out) or "i" not in kernel_labels):
    return 0.0
  spatial = [c for c in out_labels if c.isdigit()]
  window = _WINDOW.search(inst.rest)
  fields = dict(re.findall(r"(\w+)=([0-9x_\-]+)", window.group(1))) if window else {}

  def per_dim(name, default):
    values = fields.get(name)
    return [int(v) for v in values.split("x")] if values else [default] * len(spatial)

  sizes, strides = per_dim("size", 1), per_dim("stride", 1)
  lhs_dilates, rhs_dilates = per_dim("lhs_dilate", 1), per_dim("rhs_dilate", 1)
  pads = ([int(p.split("_")[0]) for p in fields["pad"].split("x")] if "pad" in fields
          else [0] * len(spatial))
  pairs = 1
  for index, dim in enumerate(spatial):
    pairs *= _real_taps(lhs[lhs_labels.index(dim)], sizes[index], strides[index], pads[index],
                        lhs_dilates[index], rhs_dilates[index], out[out_labels.index(dim)])
  other = math.prod(n for label, n in zip(out_labels, out) if not label.isdigit())
  return 2.0 * other * pairs * kernel[kernel_labels.index("i")]


def _async_result(type_text: str) -> str:
  """An async collective's start op returns (operands, results[, context]): the results."""
  inner = type_text.strip()
  if not inner.startswith("("):
    return inner
  depth, parts, start = 0, [], 1
  for index, char in enumerate(inner):
    if char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
      if depth == 0:
        parts.append(inner[start:index])
    elif char == "," and depth == 1:
      parts.append(inner[start:index])
      start = index + 1
  return parts[1] if len(parts) >= 2 else inner
