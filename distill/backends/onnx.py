"""ONNX import: an ONNX model (as torch.onnx.export and other exporters write them) becomes a
distill IR model.

Where it sits: beside the Keras importer. `distill import`, `export`, `verify`, `inspect` and
`predict` call `load_onnx(path)`; `import_onnx(proto)` converts a `ModelProto` in memory.

The layout scheme. ONNX models are channels first (NCHW); the IR is channels last. Every ONNX
tensor the model computes is an IR value plus a permutation `perm` of its sample axes (the
batch axis is the IR's implicit one): onnx_value == ir_value.transpose(perm) per sample.
Inputs start as the identity, so the imported model takes exactly the ONNX input's layout.
- Conv, ConvTranspose, pooling and BatchNormalization-like consumers get their input channels
  last, a `transpose` node inserted where its perm does not say so already; their outputs are
  channels last with a perm recording NCHW.
- An ONNX Transpose only composes perms (no node), so the Transpose pairs around each conv that
  distill's own ONNX exporter writes vanish; elementwise ops keep the perm (a broadcast
  constant is permuted to match); Concat, Softmax and reductions map their axis through it.
- Flatten, Reshape, Squeeze, Unsqueeze, MatMul, Gemm, LayerNormalization and the graph outputs
  read the ONNX layout, so a transpose is inserted where the perm is not the identity, except
  that a Flatten read only by Gemm or MatMul keeps the IR's order and permutes the dense
  kernel's rows instead (as onnx2keras does).
- Recurrent layers are time first in ONNX: a Value also records the ONNX axis of its batch
  (`batch_axis`). PyTorch's Transpose (time <-> batch) before RNN, GRU and LSTM moves it to
  axis 1; their outputs Y (T, D, N, U) and Y_h (D, N, U) have it on axes 2 and 1; Transpose,
  Squeeze, Reshape, Gather (one index), Slice, Concat, Shape, MatMul, merges and activations
  follow it, any other op refuses such a tensor. An input read only as recurrent layers' X
  (PyTorch's batch_first=False) is time first: the IR takes it batch first, (T, F) per
  sample, and an output whose batch is not first (h_n, a time-first sequence) comes batch
  first, (N, D, U) and (N, T, U); the onnxruntime check moves the axes to compare.
- Chains that stand for one IR op are fused before conversion (`_fuse`, PATTERNS): GELU's
  erf and tanh forms as PyTorch writes nn.GELU below opset 20, and distill's own exports of
  clipped_relu and embedding (Greater / Less / And / Where / Cast / Gather), so every IR op
  round-trips through distill's ONNX export.

What it promises:
- Every node whose inputs are all constants (initializers, Constant nodes, the Shape of a
  tensor, whose shape is static) is evaluated at import time by onnx's reference evaluator:
  PyTorch's Shape -> Gather -> Unsqueeze -> Concat -> Reshape chains become one reshape.
- The first dimension of every input is the batch (symbolic, or a fixed size), the second
  for a time-first recurrent input; any other symbolic dimension is an error naming the
  input and the dimension.
- A BatchNormalization, or an Add of a constant bias, folds into the conv or dense before it
  when nothing else reads that node (as the Keras importer folds its normalizations).
- Every unsupported op or option is listed at once, in one error.
- Every import ends by comparing onnxruntime's outputs with `ir.run`'s on seeded random
  inputs; a mismatch is an error.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from .. import ir, ops
from ..errors import DistillError, ModelFormatError
from . import registrar
from .keras import ABS_TOL, REL_TOL, Unsupported, _fold_normalizations

ONNX_SUFFIXES = (".onnx",)
NEEDS = "reading ONNX files needs onnx and onnxruntime (pip install 'distill[onnx]')"
# Ops that must not be evaluated at import time even on constant inputs.
RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
          "Multinomial", "Bernoulli"}
# The domain of the nodes that `_fuse` writes in place of a pattern no ONNX op names.
FUSED = "distill.fused"
RECURRENT = {"RNN": "simple_rnn", "GRU": "gru", "LSTM": "lstm"}

# A converter takes the importer, the node, its attributes (strings decoded) and its inputs
# (a `Value`, a constant numpy array, or None for an omitted optional input), and returns its
# outputs in the same terms. It raises Unsupported for an option distill cannot represent.
CONVERTERS: dict[str, Callable[[_Graph, Any, dict[str, Any], list], list]] = {}


converter = registrar(CONVERTERS)


@dataclass(frozen=True)
class Value:
    """An ONNX tensor the IR computes: `name` (an IR node or input) of per-sample IR `shape`,
    with onnx_value == ir_value.transpose(perm) per sample, the batch on ONNX axis
    `batch_axis` (0, or further in for the time-major tensors of recurrent layers). A flatten
    that only dense layers read keeps the IR's element order instead: then
    onnx_value == ir_value[rows]."""
    name: str
    shape: tuple[int, ...]
    perm: tuple[int, ...]
    rows: np.ndarray | None = None
    batch_axis: int = 0

    @property
    def onnx_shape(self) -> tuple[int, ...]:
        """The ONNX shape without the batch axis."""
        return tuple(self.shape[p] for p in self.perm)

    def full_shape(self, batch: int) -> list[int]:
        """The ONNX shape, batch axis included."""
        shape = list(self.onnx_shape)
        shape.insert(self.batch_axis, batch)
        return shape


def _identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def _channels_last(rank: int) -> tuple[int, ...]:
    """The perm of a sample (C, *spatial) held channels last, (*spatial, C)."""
    return (rank - 1, *range(rank - 1))


class _Graph:
    """The ONNX graph being read: every tensor's value, the IR specs made so far (as
    ir.make_model takes them, each with its wiring), and the problems found."""

    def __init__(self, opset: int, batch: int, readers: dict[str, list]):
        self.opset = opset
        self.batch = batch  # the batch size that Shape reports: the input's, or 1 if symbolic
        self.readers = readers  # tensor name -> the nodes that read it ("" for a graph output)
        self.values: dict[str, Value | np.ndarray] = {}
        self.specs: list[tuple] = []
        self.problems: list[str] = []
        self.taken: set[str] = set()
        self.layouts: dict[tuple, Value] = {}
        # reshape and reverse nodes -> what they read, for a later reshape or recurrent layer
        # to read through
        self.reshaped: dict[str, Value] = {}
        self.reversed: dict[str, Value] = {}

    def unique(self, raw: str) -> str:
        name = ir.sanitize_name(raw, self.taken)
        self.taken.add(name)
        return name

    def add(self, base: str, op: str, attrs: dict, weights: dict, inputs: list[Value],
            perm: tuple[int, ...] | None = None, batch_axis: int | None = None) -> Value:
        """A new IR node reading `inputs`; its output's perm and batch axis are `perm` and
        `batch_axis` (default: the first input's)."""
        shape = ops.output_shape(ops.OPS[op], [v.shape for v in inputs], attrs,
                                 {k: np.asarray(w, np.float32) for k, w in weights.items()})
        name = self.unique(base)
        self.specs.append((name, op, attrs, weights, [v.name for v in inputs]))
        return Value(name, shape, perm if perm is not None else inputs[0].perm,
                     batch_axis=inputs[0].batch_axis if batch_axis is None else batch_axis)

    def reshape(self, base: str, v: Value, shape, perm: tuple[int, ...],
                batch_axis: int | None = None) -> Value:
        """`v`'s IR value reshaped to per-sample `shape`: a reshape of a reshape reads the
        first one's input instead, and is that input where the shapes agree."""
        source = self.reshaped.get(v.name, v)
        batch_axis = v.batch_axis if batch_axis is None else batch_axis
        if tuple(shape) == source.shape:
            return Value(source.name, source.shape, tuple(perm), batch_axis=batch_axis)
        y = self.add(base, "reshape", {"shape": list(shape)}, {}, [source], tuple(perm),
                     batch_axis)
        self.reshaped[y.name] = source
        return y

    def layout(self, v: Value, perm: tuple[int, ...]) -> Value:
        """`v` held so that onnx_value == ir_value.transpose(perm): a transpose node where its
        layout differs (a reshape where only axes of size 1 move)."""
        if v.perm == tuple(perm):
            return v
        key = (v.name, tuple(perm))
        if key not in self.layouts:
            q = [0] * len(perm)
            for k, p in enumerate(perm):
                q[p] = v.perm[k]
            moved = [a for a in q if v.shape[a] != 1]
            shape = [v.shape[a] for a in q]
            if moved == sorted(moved):
                self.layouts[key] = self.reshape(f"{v.name}_reshape", v, shape, tuple(perm))
            else:
                self.layouts[key] = self.add(f"{v.name}_transpose", "transpose", {"perm": q}, {},
                                             [v], tuple(perm))
        return replace(self.layouts[key], batch_axis=v.batch_axis)

    def onnx_layout(self, v: Value) -> Value:
        return self.layout(v, _identity(len(v.shape)))

    def convert(self, node) -> None:
        where = f"node {_node_name(node)!r} {node.op_type}"
        if node.domain not in ("", "ai.onnx", FUSED):
            self.problems.append(f"node {_node_name(node)!r} {node.domain}.{node.op_type} is "
                                 "not supported")
            return
        inputs = [self.values.get(name) if name else None for name in node.input]
        if any(name and name not in self.values for name in node.input):
            if node.op_type not in CONVERTERS:  # reported even where its inputs are unknown
                self.problems.append(f"{where} is not supported")
            return  # an input is unknown: an earlier node's problem, reported already
        foldable = node.op_type not in RANDOM and node.domain != FUSED and all(
            v is None or isinstance(v, np.ndarray) for v in inputs)
        try:
            if foldable:
                outputs = _evaluate(node, inputs, self.opset)
            elif node.op_type in CONVERTERS:
                attrs = {a.name: _attribute(a) for a in node.attribute}
                outputs = CONVERTERS[node.op_type](self, node, attrs, inputs)
            else:
                self.problems.append(f"{where} is not supported")
                return
        except Unsupported as e:
            self.problems.append(f"{where}: {e} is not supported")
            return
        except ValueError as e:  # a shape the IR op refuses
            self.problems.append(f"{where}: {e}")
            return
        except (KeyError, IndexError):
            self.problems.append(f"{where}: a required attribute or input is missing")
            return
        for name, value in zip(node.output, outputs):
            if name:
                self.values[name] = value

    def output(self, name: str) -> str | None:
        """The IR name of graph output `name`, in its ONNX layout."""
        v = self.values.get(name)
        if isinstance(v, np.ndarray):
            self.problems.append(f"graph output {name!r} is a constant")
        if not isinstance(v, Value):
            return None
        return self.onnx_layout(v).name


def _node_name(node) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def _attribute(a) -> Any:
    from onnx import helper
    value = helper.get_attribute_value(a)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
    return value


def _evaluate(node, inputs: list, opset: int) -> list[np.ndarray]:
    """The outputs of a node whose inputs are all constants, by onnx's reference evaluator."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator
    names = [f"in{k}" if v is not None else "" for k, v in enumerate(inputs)]
    outs = [f"out{k}" if o else "" for k, o in enumerate(node.output)]
    single = helper.make_node(node.op_type, names, outs, domain=node.domain)
    single.attribute.extend(node.attribute)
    try:
        results = ReferenceEvaluator(single, opsets={"": opset}).run(
            None, {n: v for n, v in zip(names, inputs) if n})
    except Exception as e:  # the evaluator raises anything for a node it cannot run
        raise Unsupported(f"evaluating it on its constant inputs ({_first_line(e)})") from None
    results = iter(results)
    return [np.asarray(next(results)) if o else None for o in outs]


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:200]


# ------------------------------------------------------------------------------ the converters

def _value(v: Any, what: str = "its input", moved: bool = False) -> Value:
    """`v` as a computed tensor; `moved`: also one whose batch axis is not first."""
    if not isinstance(v, Value):
        raise Unsupported(f"{what} being a constant")
    if v.batch_axis and not moved:
        raise Unsupported(f"{what} having its batch on axis {v.batch_axis} (time first, as "
                          "recurrent layers read and write it)")
    return v


def _constant(v: Any, what: str) -> np.ndarray:
    if not isinstance(v, np.ndarray):
        raise Unsupported(f"{what} being computed (only a constant {what} is)")
    return v


def _float32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, np.float64).astype(np.float32))


def _axis(axis: int, v: Value) -> int:
    """ONNX axis `axis` of `v` as a sample axis (0 is the first but the batch)."""
    rank = len(v.shape) + 1
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank or axis == v.batch_axis:
        raise Unsupported(f"axis {axis} (the batch axis, or none of the tensor's)")
    return axis - (axis > v.batch_axis)


def _int_list(v: Any, what: str) -> list[int]:
    return [int(a) for a in np.asarray(_constant(v, what)).reshape(-1)]


def _broadcast(c: np.ndarray, v: Value) -> np.ndarray:
    """Constant `c`, as it broadcasts against ONNX tensor `v`, in v's IR layout."""
    rank = len(v.shape)
    if c.ndim > rank + 1:
        raise Unsupported(f"a constant of shape {c.shape} that broadcasts the tensor")
    c = np.moveaxis(c.reshape((1,) * (rank + 1 - c.ndim) + c.shape), v.batch_axis, 0)
    if c.shape[0] != 1:
        raise Unsupported(f"a constant of shape {c.shape} with a batch dimension")
    c = c[0].transpose(np.argsort(v.perm))
    if not all(a in (1, d) for a, d in zip(c.shape, v.shape)):
        raise Unsupported(f"a constant of shape {c.shape} that broadcasts the tensor")
    return c


def _normalize(g: _Graph, node, v: Value, mean: np.ndarray, std: np.ndarray) -> Value:
    """(v - mean) / std, the constants (ONNX layout) in v's IR layout, leading ones dropped."""
    def shaped(c: np.ndarray) -> np.ndarray:
        c = _broadcast(np.asarray(c, np.float64), v)
        while c.ndim > 1 and c.shape[0] == 1:
            c = c[0]
        return _float32(c.reshape(c.shape or (1,)))
    mean, std = shaped(mean), shaped(std)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()) or (std == 0).any():
        raise Unsupported("a constant that is not finite or is zero")
    return g.add(_node_name(node), "normalize", {}, {"mean": mean, "std": std}, [v])


MERGES = {"Add": "add", "Sub": "subtract", "Mul": "multiply", "Sum": "add", "Max": "maximum",
          "Min": "minimum", "Mean": "average"}


def _merge(g: _Graph, node, op_type: str, xs: list) -> Value:
    values = [_value(x, "an input", moved=True) for x in xs]
    if len(values) == 1:
        return values[0]
    first = values[0]
    values = [first] + [g.layout(x, first.perm) for x in values[1:]]
    if any(x.shape != first.shape or x.batch_axis != first.batch_axis for x in values):
        raise Unsupported(f"inputs of shapes {[x.onnx_shape for x in values]} (a merge takes "
                          "tensors of one shape)")
    return g.add(_node_name(node), MERGES[op_type], {}, {}, values)


@converter("Add", "Sub", "Mul", "Div")
def _arithmetic(g: _Graph, node, attrs, xs) -> list:
    a, b = xs
    if isinstance(a, Value) and isinstance(b, Value):
        if node.op_type == "Div":
            raise Unsupported("dividing two tensors")
        return [_merge(g, node, node.op_type, [a, b])]
    x, c = (a, np.asarray(b, np.float64)) if isinstance(a, Value) else \
        (b, np.asarray(a, np.float64))
    if node.op_type == "Add":
        return [_normalize(g, node, x, -c, np.ones_like(c))]
    if node.op_type == "Sub":  # x - c, or c - x as (x - c) / -1
        return [_normalize(g, node, x, c, np.ones_like(c) if x is a else -np.ones_like(c))]
    if x is not a and node.op_type == "Div":
        raise Unsupported("dividing a constant by a tensor")
    with np.errstate(divide="ignore"):
        std = 1 / c if node.op_type == "Mul" else c
    return [_normalize(g, node, x, np.zeros_like(c), std)]


@converter("Sum", "Max", "Min", "Mean")
def _variadic(g: _Graph, node, attrs, xs) -> list:
    return [_merge(g, node, node.op_type, xs)]


ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softplus": "softplus",
               "Softsign": "softsign", "Exp": "exponential"}


@converter(*ACTIVATIONS)
def _activation(g: _Graph, node, attrs, xs) -> list:
    return [g.add(_node_name(node), ACTIVATIONS[node.op_type], {}, {},
                  [_value(xs[0], moved=True)])]


def _f32(value: float) -> float:
    return float(np.float32(value))


@converter("LeakyRelu")
def _leaky_relu(g: _Graph, node, attrs, xs) -> list:
    return [g.add(_node_name(node), "leaky_relu", {"alpha": _f32(attrs.get("alpha", 0.01))}, {},
                  [_value(xs[0])])]


@converter("Elu")
def _elu(g: _Graph, node, attrs, xs) -> list:
    return [g.add(_node_name(node), "elu", {"alpha": _f32(attrs.get("alpha", 1.0))}, {},
                  [_value(xs[0])])]


@converter("Selu")
def _selu(g: _Graph, node, attrs, xs) -> list:
    alpha, gamma = attrs.get("alpha", ops.SELU_ALPHA), attrs.get("gamma", ops.SELU_SCALE)
    if np.float32(alpha) != ops.SELU_ALPHA or np.float32(gamma) != ops.SELU_SCALE:
        raise Unsupported(f"alpha={alpha:g}, gamma={gamma:g} (only the standard constants)")
    return [g.add(_node_name(node), "selu", {}, {}, [_value(xs[0])])]


@converter("HardSigmoid")
def _hard_sigmoid(g: _Graph, node, attrs, xs) -> list:
    alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    if np.float32(alpha) != np.float32(1 / 6) or beta != 0.5:
        raise Unsupported(f"alpha={alpha:g}, beta={beta:g} (only alpha=1/6, beta=0.5, "
                          "relu6(x + 3) / 6)")
    return [g.add(_node_name(node), "hard_sigmoid", {}, {}, [_value(xs[0])])]


@converter("ThresholdedRelu")
def _thresholded_relu(g: _Graph, node, attrs, xs) -> list:
    return [g.add(_node_name(node), "clipped_relu", {
        "threshold": _f32(attrs.get("alpha", 1.0)), "negative_slope": 0.0}, {}, [_value(xs[0])])]


@converter("ClippedRelu")
def _clipped_relu(g: _Graph, node, attrs, xs) -> list:
    """The node `_fuse` writes for distill's own export of Keras's ReLU with options."""
    step = {"threshold": _f32(attrs["threshold"]), "negative_slope": _f32(attrs["negative_slope"])}
    if "max_value" in attrs:
        step["max_value"] = _f32(attrs["max_value"])
    return [g.add(_node_name(node), "clipped_relu", step, {}, [_value(xs[0])])]


@converter("Gelu")
def _gelu(g: _Graph, node, attrs, xs) -> list:
    approximate = attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise Unsupported(f"approximate={approximate!r}")
    op = "gelu" if approximate == "none" else "gelu_tanh"
    return [g.add(_node_name(node), op, {}, {}, [_value(xs[0])])]


@converter("Clip")
def _clip(g: _Graph, node, attrs, xs) -> list:
    x = _value(xs[0])
    if g.opset < 11:
        low, high = attrs.get("min"), attrs.get("max")
    else:
        low, high = (None if v is None else float(_constant(v, "bound"))
                     for v in (xs + [None, None])[1:3])
    if low != 0:
        raise Unsupported(f"min={low} (only min=0: a relu, capped or not)")
    if high is None:
        return [g.add(_node_name(node), "relu", {}, {}, [x])]
    return [g.add(_node_name(node), "clipped_relu", {"threshold": 0.0, "negative_slope": 0.0,
                                                     "max_value": _f32(high)}, {}, [x])]


@converter("PRelu")
def _prelu(g: _Graph, node, attrs, xs) -> list:
    x = _value(xs[0])
    alpha = _float32(_broadcast(_constant(xs[1], "slope"), x))
    return [g.add(_node_name(node), "prelu", {}, {"alpha": alpha}, [x])]


@converter("Softmax")
def _softmax(g: _Graph, node, attrs, xs) -> list:
    x = _value(xs[0])
    rank = len(x.shape)
    axis = _axis(attrs.get("axis", -1 if g.opset >= 13 else 1), x)
    if g.opset >= 13 or axis == rank - 1:
        ir_axis = x.perm[axis]
        attrs_ir = {} if ir_axis == rank - 1 else {"axis": ir_axis}
        return [g.add(_node_name(node), "softmax", attrs_ir, {}, [x])]
    # before opset 13: one softmax over the axes from `axis` on, as one flattened axis
    x = g.onnx_layout(x)
    rows = g.add(f"{_node_name(node)}_rows", "reshape",
                 {"shape": [*x.shape[:axis], prod(x.shape[axis:])]}, {}, [x])
    y = g.add(_node_name(node), "softmax", {}, {}, [rows])
    return [g.add(f"{_node_name(node)}_back", "reshape", {"shape": list(x.shape)}, {}, [y])]


@converter("Identity", "Dropout")
def _identity_op(g: _Graph, node, attrs, xs) -> list:
    if node.op_type == "Dropout":
        training = xs[2] if len(xs) > 2 else attrs.get("is_test", 1) == 0
        if _used_outputs(g, node) or (training is not None and np.any(training)):
            raise Unsupported("training mode, or its mask output")
    return [xs[0]]


@converter("Cast")
def _cast(g: _Graph, node, attrs, xs) -> list:
    from onnx import TensorProto
    if attrs.get("to") not in (TensorProto.FLOAT, TensorProto.DOUBLE):
        raise Unsupported("a Cast to other than float")
    return [xs[0]]


@converter("Shape")
def _shape(g: _Graph, node, attrs, xs) -> list:
    shape = np.array(_value(xs[0], moved=True).full_shape(g.batch), np.int64)
    return [shape[attrs.get("start", 0):attrs.get("end", len(shape))]]


@converter("Transpose")
def _transpose(g: _Graph, node, attrs, xs) -> list:
    """Only the perm changes. One that swaps the batch and the next axis (as PyTorch writes
    around a recurrent layer, batch_first or not) moves the batch axis, and moves it back."""
    x = _value(xs[0], moved=True)
    perm = attrs.get("perm", list(range(len(x.shape), -1, -1)))
    b = x.batch_axis
    sample = [p - (p > b) for p in perm if p != b]
    return [Value(x.name, x.shape, tuple(x.perm[p] for p in sample), batch_axis=perm.index(b))]


def _dense_only(g: _Graph, name: str) -> bool:
    """Whether tensor `name` is read only as the data of a Gemm or MatMul by a constant."""
    readers = g.readers.get(name, [])
    return bool(readers) and all(
        r and r.op_type in ("Gemm", "MatMul") and r.input[0] == name and len(r.input) > 1
        and isinstance(g.values.get(r.input[1]), np.ndarray) and r.input[1] != name
        and not any(a.name == "transA" and a.i for a in r.attribute) for r in readers)


def _flatten(g: _Graph, node, x: Value) -> Value:
    """x flattened to one axis per sample: in the IR's order, its rows recorded, where only
    dense layers read it; else in the ONNX order."""
    if x.perm != _identity(len(x.shape)) and _dense_only(g, node.output[0]):
        rows = np.arange(prod(x.shape)).reshape(x.shape).transpose(x.perm).reshape(-1)
        y = g.add(_node_name(node), "flatten", {}, {}, [x], (0,))
        return Value(y.name, y.shape, y.perm, rows)
    if len(x.shape) == 1:
        return x
    return g.add(_node_name(node), "flatten", {}, {}, [g.onnx_layout(x)], (0,))


@converter("Flatten")
def _flatten_op(g: _Graph, node, attrs, xs) -> list:
    x = _value(xs[0])
    axis = attrs.get("axis", 1)
    axis = axis + len(x.shape) + 1 if axis < 0 else axis
    if axis == 0:
        raise Unsupported("axis=0, which flattens the batch axis")
    if axis == 1:
        return [_flatten(g, node, x)]
    shape = x.onnx_shape
    return [g.add(_node_name(node), "reshape", {"shape": [prod(shape[:axis - 1]),
                                                          prod(shape[axis - 1:])]}, {},
                  [g.onnx_layout(x)], (0, 1))]


def _reshaped(g: _Graph, node, x: Value, full: list[int], batch_axis: int = 0) -> Value:
    """x reshaped to the ONNX shape `full` (resolved), its batch on axis `batch_axis`."""
    if full[batch_axis] != g.batch or len(full) < 2:
        raise Unsupported(f"a target shape {full} that moves the batch axis")
    target = tuple(full[:batch_axis] + full[batch_axis + 1:])
    if target == x.onnx_shape:
        return replace(x, batch_axis=batch_axis)
    if len(target) == 1 and not batch_axis and not x.batch_axis:
        return _flatten(g, node, x)
    return g.reshape(_node_name(node), g.onnx_layout(x), target, _identity(len(target)),
                     batch_axis)


@converter("Reshape")
def _reshape(g: _Graph, node, attrs, xs) -> list:
    """A time-major tensor (batch on axis 1) keeps the axes up to its batch, as PyTorch's
    (T, N, 2, H) -> (T, N, 2H) of a bidirectional layer's outputs does."""
    x = _value(xs[0], moved=True)
    source = x.full_shape(g.batch)
    target = _int_list(xs[1], "shape") if g.opset >= 5 else list(attrs["shape"])
    if not attrs.get("allowzero"):
        target = [source[k] if d == 0 and k < len(source) else d for k, d in enumerate(target)]
    if target.count(-1) == 1:
        known = prod(d for d in target if d != -1)
        target[target.index(-1)] = prod(source) // known if known else 0
    if prod(target) != prod(source) or min(target) < 1:
        raise Unsupported(f"a target shape {target} for a tensor of {source}")
    b = x.batch_axis
    if target[:b] != source[:b]:
        raise Unsupported(f"a target shape {target} that moves the batch axis of {source}")
    return [_reshaped(g, node, x, target, b)]


def _axes(g: _Graph, attrs, xs, rank: int) -> list[int] | None:
    """The `axes` of Squeeze, Unsqueeze or a reduction (an attribute, or from opset 13 or 18
    an input), normalized for a tensor of `rank` axes; None where absent."""
    if "axes" in attrs:
        axes = list(attrs["axes"])
    elif len(xs) > 1 and xs[1] is not None:
        axes = _int_list(xs[1], "axes")
    else:
        return None
    return sorted(a + rank if a < 0 else a for a in axes)


@converter("Squeeze")
def _squeeze(g: _Graph, node, attrs, xs) -> list:
    """Also of a recurrent layer's outputs (the directions axis, PyTorch's Squeeze(Y, 1))."""
    x = _value(xs[0], moved=True)
    full, b = x.full_shape(g.batch), x.batch_axis
    axes = _axes(g, attrs, xs, len(full))
    if axes is None:
        axes = [k for k, d in enumerate(full) if d == 1 and k != b]
    if b in axes or any(full[a] != 1 for a in axes):
        raise Unsupported(f"axes={axes} on a tensor of {tuple(full)}")
    return [_reshaped(g, node, x, [d for k, d in enumerate(full) if k not in axes],
                      b - sum(a < b for a in axes))]


@converter("Unsqueeze")
def _unsqueeze(g: _Graph, node, attrs, xs) -> list:
    x = _value(xs[0])
    full = x.full_shape(g.batch)
    count = len(attrs["axes"]) if "axes" in attrs else len(_int_list(xs[1], "axes"))
    axes = _axes(g, attrs, xs, len(full) + count)
    if 0 in axes:
        raise Unsupported(f"axes={axes} (a new axis before the batch)")
    for a in axes:
        full.insert(a, 1)
    return [_reshaped(g, node, x, full)]


@converter("Concat")
def _concat(g: _Graph, node, attrs, xs) -> list:
    values = [_value(x, "an input", moved=True) for x in xs]
    axis = _axis(attrs["axis"], values[0])
    first = values[0]
    values = [first] + [g.layout(x, first.perm) for x in values[1:]]
    if any(x.batch_axis != first.batch_axis for x in values):
        raise Unsupported("inputs with their batch on different axes")
    if len(values) == 1:
        return values
    return [g.add(_node_name(node), "concatenate", {"axis": first.perm[axis]}, {}, values)]


def _dense(g: _Graph, node, x: Value, kernel: np.ndarray, bias: np.ndarray | None) -> Value:
    if x.rows is not None:
        kernel = kernel[np.argsort(x.rows)]
    else:
        x = g.onnx_layout(x)
    weights = {"kernel": _float32(kernel)}
    if bias is not None:
        weights["bias"] = _float32(bias)
    return g.add(_node_name(node), "dense", {}, weights, [x], _identity(len(x.shape)),
                 x.batch_axis)


@converter("Gemm")
def _gemm(g: _Graph, node, attrs, xs) -> list:
    a = _value(xs[0], "input A")
    b = np.asarray(_constant(xs[1], "input B"), np.float64)
    if attrs.get("transA"):
        raise Unsupported("transA=1")
    if len(a.shape) != 1:
        raise Unsupported(f"an input A of {a.onnx_shape} per sample (Gemm takes 2-D)")
    kernel = (b.T if attrs.get("transB") else b) * attrs.get("alpha", 1.0)
    bias = None
    if len(xs) > 2 and xs[2] is not None:
        c = np.asarray(_constant(xs[2], "input C"), np.float64) * attrs.get("beta", 1.0)
        if c.ndim == 2 and c.shape[0] != 1:
            raise Unsupported(f"an input C of shape {c.shape} (one bias row)")
        bias = np.broadcast_to(c.reshape(-1) if c.ndim == 2 else c, kernel.shape[1:])
    return [_dense(g, node, a, kernel, bias)]


@converter("MatMul")
def _matmul(g: _Graph, node, attrs, xs) -> list:
    """Over the last axis, so also of a time-major tensor (PyTorch's Linear after a recurrent
    layer that is not batch_first)."""
    a = _value(xs[0], "input A", moved=True)
    b = _constant(xs[1], "input B")
    if b.ndim != 2:
        raise Unsupported(f"an input B of shape {b.shape} (a 2-D constant)")
    return [_dense(g, node, a, np.asarray(b, np.float64), None)]


def _auto_pads(attrs, spatial, window: list[int], strides: list[int],
               dilation: list[int]) -> list[int]:
    """A windowed op's pads (before each spatial axis, then after each), from auto_pad."""
    rank = len(window)
    auto = attrs.get("auto_pad", "NOTSET")
    if auto == "NOTSET":
        return list(attrs.get("pads", [0] * (2 * rank)))
    if auto == "VALID":
        return [0] * (2 * rank)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad={auto!r}")
    pads = ops.same_pads("same", spatial, window, strides, dilation)  # the odd zero after
    return pads if auto == "SAME_UPPER" else pads[rank:] + pads[:rank]


def _windowed(attrs, x: Value, window: list[int]) -> dict[str, Any]:
    rank = len(window)
    if rank not in (1, 2) or len(x.shape) != rank + 1:
        raise Unsupported(f"a {rank}-D window on a tensor of {x.onnx_shape} per sample (1-D "
                          "and 2-D, channels first)")
    strides = list(attrs.get("strides", [1] * rank))
    dilation = list(attrs.get("dilations", [1] * rank))
    pads = _auto_pads(attrs, x.onnx_shape[1:], window, strides, dilation)
    result = {"strides": strides, "pads": pads}
    if any(d != 1 for d in dilation):
        result["dilation"] = dilation
    return result


@converter("Conv")
def _conv(g: _Graph, node, attrs, xs) -> list:
    x = _value(xs[0])
    w = _constant(xs[1], "weight")
    rank = w.ndim - 2
    window_attrs = _windowed(attrs, x, list(w.shape[2:]))
    window_attrs["groups"] = int(attrs.get("group", 1))
    weights = {"kernel": _float32(w.transpose(*range(2, rank + 2), 1, 0))}
    if len(xs) > 2 and xs[2] is not None:
        weights["bias"] = _float32(_constant(xs[2], "bias"))
    perm = _channels_last(rank + 1)
    return [g.add(_node_name(node), "conv", window_attrs, weights, [g.layout(x, perm)], perm)]


@converter("ConvTranspose")
def _conv_transpose(g: _Graph, node, attrs, xs) -> list:
    x = _value(xs[0])
    w = _constant(xs[1], "weight")
    rank = w.ndim - 2
    window = list(w.shape[2:])
    if attrs.get("group", 1) != 1:
        raise Unsupported(f"group={attrs['group']}")
    window_attrs = _windowed({k: v for k, v in attrs.items() if k != "auto_pad"}, x, window)
    strides, dilation = window_attrs["strides"], window_attrs.get("dilation", [1] * rank)
    extra = list(attrs.get("output_padding", [0] * rank))
    auto = attrs.get("auto_pad", "NOTSET")
    if "output_shape" in attrs or auto in ("SAME_UPPER", "SAME_LOWER"):
        spatial = x.onnx_shape[1:]
        wanted = list(attrs.get("output_shape", [n * s for n, s in zip(spatial, strides)]))
        total = [st * (n - 1) + e + d * (k - 1) + 1 - o for n, st, e, d, k, o in
                 zip(spatial, strides, extra, dilation, window, wanted[-rank:])]
        if min(total) < 0:
            raise Unsupported(f"output_shape={wanted}, beyond what the windows reach")
        lower = [t // 2 for t in total]
        upper = [t - t // 2 for t in total]
        window_attrs["pads"] = lower + upper if auto == "SAME_UPPER" else upper + lower
    elif auto not in ("NOTSET", "VALID"):
        raise Unsupported(f"auto_pad={auto!r}")
    if any(extra):
        window_attrs["output_padding"] = extra
    weights = {"kernel": _float32(w.transpose(*range(2, rank + 2), 0, 1))}
    if len(xs) > 2 and xs[2] is not None:
        weights["bias"] = _float32(_constant(xs[2], "bias"))
    perm = _channels_last(rank + 1)
    return [g.add(_node_name(node), "conv_transpose", window_attrs, weights,
                  [g.layout(x, perm)], perm)]


def _used_outputs(g: _Graph, node) -> list[str]:
    return [o for o in node.output[1:] if o and g.readers.get(o)]


@converter("MaxPool", "AveragePool")
def _pool(g: _Graph, node, attrs, xs) -> list:
    x = _value(xs[0])
    pool = list(attrs["kernel_shape"])
    window_attrs = _windowed(attrs, x, pool)
    problems = [f"{key}={attrs[key]}" for key in ("ceil_mode",) if attrs.get(key)]
    if "dilation" in window_attrs:
        problems.append(f"dilations={window_attrs.pop('dilation')}")
    if _used_outputs(g, node):
        problems.append("its Indices output")
    if problems:
        raise Unsupported(", ".join(problems))
    perm = _channels_last(len(x.shape))
    x = g.layout(x, perm)
    name = _node_name(node)
    if node.op_type == "AveragePool" and attrs.get("count_include_pad") and \
            any(window_attrs["pads"]):  # the padding counted: zeros, then no padding
        x = g.add(f"{name}_pad", "zero_pad", {"pads": window_attrs["pads"]}, {}, [x])
        window_attrs["pads"] = [0] * len(window_attrs["pads"])
    op = "max_pool" if node.op_type == "MaxPool" else "avg_pool"
    return [g.add(name, op, {"pool": pool, **window_attrs}, {}, [x], perm)]


def _global(g: _Graph, node, op: str, x: Value, axis: int, keep: bool) -> Value:
    """Global pooling over every sample axis but ONNX sample axis `axis`."""
    rank = len(x.shape)
    if rank < 2:
        raise Unsupported(f"a tensor of {x.onnx_shape} per sample (spatial axes and channels)")
    if x.perm[axis] != rank - 1:
        others = iter(range(rank - 1))
        x = g.layout(x, tuple(rank - 1 if k == axis else next(others) for k in range(rank)))
    y = g.add(_node_name(node) + ("_pool" if keep else ""), op, {}, {}, [x], (0,))
    if not keep:
        return y
    shape = [x.onnx_shape[k] if k == axis else 1 for k in range(rank)]
    return g.add(_node_name(node), "reshape", {"shape": shape}, {}, [y], _identity(rank))


@converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(g: _Graph, node, attrs, xs) -> list:
    op = "global_avg_pool" if node.op_type == "GlobalAveragePool" else "global_max_pool"
    return [_global(g, node, op, _value(xs[0]), 0, True)]


@converter("ReduceMean", "ReduceMax")
def _reduce(g: _Graph, node, attrs, xs) -> list:
    x = _value(xs[0])
    rank = len(x.shape) + 1
    axes = _axes(g, attrs, xs, rank) or []
    kept = [a for a in range(1, rank) if a not in axes]
    if 0 in axes or not axes or len(kept) != 1:
        raise Unsupported(f"axes={axes or 'all'} (all axes after the batch but one)")
    op = "global_avg_pool" if node.op_type == "ReduceMean" else "global_max_pool"
    return [_global(g, node, op, x, kept[0] - 1, bool(attrs.get("keepdims", 1)))]


@converter("BatchNormalization")
def _batch_normalization(g: _Graph, node, attrs, xs) -> list:
    """gamma * (x - mean) / sqrt(variance + epsilon) + beta per channel is (x - m) / s with
    s = sqrt(variance + epsilon) / gamma and m = mean - beta * s, computed in double."""
    x = _value(xs[0])
    problems = [f"{key}={attrs[key]}" for key in ("training_mode",) if attrs.get(key)]
    if attrs.get("spatial", 1) != 1:
        problems.append(f"spatial={attrs['spatial']}")
    if _used_outputs(g, node):
        problems.append("its running statistics outputs")
    if problems:
        raise Unsupported(", ".join(problems))
    gamma, beta, mean, variance = (np.asarray(_constant(v, "statistic"), np.float64)
                                   for v in xs[1:5])
    if (gamma == 0).any():
        raise Unsupported("a zero scale")
    std = np.sqrt(variance + attrs.get("epsilon", 1e-5)) / gamma
    channels = (-1, *[1] * (len(x.shape) - 1))  # along ONNX axis 1
    return [_normalize(g, node, x, (mean - beta * std).reshape(channels), std.reshape(channels))]


@converter("LayerNormalization")
def _layer_normalization(g: _Graph, node, attrs, xs) -> list:
    x = g.onnx_layout(_value(xs[0]))
    axis = _axis(attrs.get("axis", -1), x)
    if _used_outputs(g, node):
        problems = "its Mean and InvStdDev outputs"
        raise Unsupported(problems)
    normalized = x.shape[axis:]
    weights = {"gamma": _float32(np.broadcast_to(_constant(xs[1], "scale"), normalized))}
    if len(xs) > 2 and xs[2] is not None:
        weights["beta"] = _float32(np.broadcast_to(_constant(xs[2], "bias"), normalized))
    return [g.add(_node_name(node), "layer_norm", {"axis": axis, "epsilon": _f32(
        attrs.get("epsilon", 1e-5))}, weights, [x])]


def _spatial(g: _Graph, x: Value, touched: list[bool]) -> Value:
    """x in a layout whose last IR axis is untouched (by padding, cropping or scaling), the
    channels: its own, or channels last."""
    rank = len(x.shape)
    if rank not in (2, 3):
        raise Unsupported(f"a tensor of {x.onnx_shape} per sample (1 or 2 spatial axes and "
                          "channels)")
    if not touched[x.perm.index(rank - 1)]:
        return x
    if touched[0]:
        raise Unsupported(f"changing every axis of a tensor of {x.onnx_shape} (one, the "
                          "channels, must stay)")
    return g.layout(x, _channels_last(rank))


def _per_ir_axis(x: Value, per_onnx: list) -> list:
    """Values given per ONNX sample axis, in the order of x's IR spatial axes."""
    return [per_onnx[x.perm.index(j)] for j in range(len(x.shape) - 1)]


def _pad_or_crop(g: _Graph, node, x: Value, before: list[int], after: list[int]) -> Value:
    """x with `before` and `after` values added (negative: removed) on each ONNX axis."""
    b = x.batch_axis
    if before[b] or after[b]:
        raise Unsupported("padding the batch axis")
    before, after = before[:b] + before[b + 1:], after[:b] + after[b + 1:]
    if not any(before) and not any(after):
        return x
    if min(before + after) < 0 < max(before + after):
        raise Unsupported(f"pads {before + after} both adding and cutting")
    x = _spatial(g, x, [bool(b or a) for b, a in zip(before, after)])
    widths = _per_ir_axis(x, before) + _per_ir_axis(x, after)
    if min(widths) < 0:
        return g.add(_node_name(node), "crop", {"crops": [-w for w in widths]}, {}, [x])
    return g.add(_node_name(node), "zero_pad", {"pads": widths}, {}, [x])


@converter("Pad")
def _pad(g: _Graph, node, attrs, xs) -> list:
    x = _value(xs[0])
    rank = len(x.shape) + 1
    mode = attrs.get("mode", "constant")
    if g.opset < 11:
        pads, value = list(attrs["pads"]), attrs.get("value", 0.0)
    else:
        pads = _int_list(xs[1], "pads")
        value = 0.0 if len(xs) < 3 or xs[2] is None else float(_constant(xs[2], "value"))
    if len(xs) > 3 and xs[3] is not None:  # axes (opset 18): pads for those axes only
        axes = [a + rank if a < 0 else a for a in _int_list(xs[3], "axes")]
        full = [0] * (2 * rank)
        for k, a in enumerate(axes):
            full[a], full[rank + a] = pads[k], pads[len(axes) + k]
        pads = full
    if mode != "constant" or value != 0:
        raise Unsupported(f"mode={mode!r}, value={value:g} (zeros only)")
    return [_pad_or_crop(g, node, x, pads[:rank], pads[rank:])]


@converter("Slice")
def _slice(g: _Graph, node, attrs, xs) -> list:
    """Cuts the axes; or, with step -1, reads the first axis but the batch last to first
    (distill's own export of go_backwards, time first)."""
    x = _value(xs[0], moved=True)
    full = x.full_shape(g.batch)
    if g.opset < 10:
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes = list(attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _int_list(xs[1], "starts"), _int_list(xs[2], "ends")
        axes = _int_list(xs[3], "axes") if len(xs) > 3 and xs[3] is not None else \
            list(range(len(starts)))
        steps = _int_list(xs[4], "steps") if len(xs) > 4 and xs[4] is not None else \
            [1] * len(starts)
    if steps == [-1] and len(axes) == 1:
        return [_reversal(g, node, x, axes[0], starts[0], ends[0])]
    if any(s != 1 for s in steps):
        raise Unsupported(f"steps={steps}")
    before, after = [0] * len(full), [0] * len(full)
    for a, start, end in zip(axes, starts, ends):
        a = a + len(full) if a < 0 else a
        n = full[a]
        start = min(max(start + n if start < 0 else start, 0), n)
        end = min(max(end + n if end < 0 else end, 0), n)
        if end <= start:
            raise Unsupported(f"an empty slice of axis {a}")
        before[a], after[a] = -start, end - n
    return [_pad_or_crop(g, node, x, before, after)]


def _reversal(g: _Graph, node, x: Value, axis: int, start: int, end: int) -> Value:
    """x read last to first along ONNX `axis` by a Slice of step -1 from `start` to `end`."""
    full = x.full_shape(g.batch)
    axis = axis + len(full) if axis < 0 else axis
    n = full[axis]
    whole = (start + n if start < 0 else start) >= n - 1 and end < -n
    if axis == x.batch_axis or axis - (axis > x.batch_axis) != 0 or not whole:
        raise Unsupported(f"steps=[-1] on axis {axis} from {start} to {end} (only all of the "
                          "first axis but the batch, reversed)")
    source = g.onnx_layout(x)
    y = g.add(_node_name(node), "reverse", {}, {}, [source])
    g.reversed[y.name] = source
    return y


def _nearest_index(n: int, k: int, mode: str, nearest: str) -> np.ndarray:
    """The input positions ONNX's nearest Resize reads for an axis of n scaled by k."""
    o = np.arange(n * k, dtype=np.float64)
    at = {"half_pixel": (o + 0.5) / k - 0.5, "pytorch_half_pixel": (o + 0.5) / k - 0.5,
          "asymmetric": o / k, "tf_half_pixel_for_nn": (o + 0.5) / k,
          "align_corners": o * (n - 1) / max(n * k - 1, 1)}[mode]
    index = {"floor": np.floor(at), "ceil": np.ceil(at),
             "round_prefer_floor": np.ceil(at - 0.5), "round_prefer_ceil": np.floor(at + 0.5)
             }[nearest]
    return np.clip(index, 0, n - 1).astype(np.int64)


@converter("Resize", "Upsample")
def _resize(g: _Graph, node, attrs, xs) -> list:
    x = _value(xs[0])
    full = [g.batch, *x.onnx_shape]
    if node.op_type == "Upsample" and g.opset < 9:
        scales = list(attrs["scales"])
    elif node.op_type == "Upsample" or g.opset < 11:
        scales = [float(s) for s in np.asarray(_constant(xs[1], "scales")).reshape(-1)]
    elif len(xs) > 3 and xs[3] is not None:
        sizes = _int_list(xs[3], "sizes")
        scales = [s / n for s, n in zip(sizes, full)]
    else:
        scales = [float(s) for s in np.asarray(_constant(xs[2], "scales")).reshape(-1)]
    mode = attrs.get("mode", "nearest")
    default = "half_pixel" if node.op_type == "Resize" and g.opset >= 11 else "asymmetric"
    transform = attrs.get("coordinate_transformation_mode", default)
    nearest = attrs.get("nearest_mode", "round_prefer_floor" if g.opset >= 11 else "floor")
    problems = [f"{key}={attrs[key]}" for key in ("axes", "antialias") if attrs.get(key)]
    if len(scales) != len(full) or scales[0] != 1 or any(
            s != int(s) or s < 1 for s in scales):
        problems.append(f"scales {scales} (whole factors, batch unscaled)")
    if mode not in ("nearest", "linear"):
        problems.append(f"mode={mode!r}")
    if problems:
        raise Unsupported(", ".join(problems))
    size = [int(s) for s in scales[1:]]
    for n, k in zip(x.onnx_shape, size):
        if k > 1 and (mode == "nearest" and transform not in (
                "half_pixel", "pytorch_half_pixel", "asymmetric", "tf_half_pixel_for_nn",
                "align_corners") or mode == "linear" and transform not in (
                "half_pixel", "pytorch_half_pixel")):
            raise Unsupported(f"coordinate_transformation_mode={transform!r} in mode {mode}")
        if mode == "nearest" and not np.array_equal(_nearest_index(n, k, transform, nearest),
                                                    np.arange(n * k) // k):
            raise Unsupported(f"coordinate_transformation_mode={transform!r} with "
                              f"nearest_mode={nearest!r} (each value repeated)")
    if all(k == 1 for k in size):
        return [x]
    x = _spatial(g, x, [k > 1 for k in size])
    up = {"size": _per_ir_axis(x, size)}
    if mode == "linear":
        up["interpolation"] = "linear"
    return [g.add(_node_name(node), "upsample", up, {}, [x])]


@converter("Gather")
def _gather(g: _Graph, node, attrs, xs) -> list:
    """Rows of a constant 2-D table: an embedding (PyTorch's nn.Embedding, and distill's own
    export of one, fused by `_fuse`). Or one index of an axis but the batch: PyTorch's
    x[:, -1] (a scalar index, the axis dropped) or [k] (kept), as on a recurrent layer's
    outputs."""
    data, ids = xs
    if isinstance(data, np.ndarray):
        if attrs.get("axis", 0) != 0 or data.ndim != 2:
            raise Unsupported("gathering other than rows of a constant 2-D table (an "
                              "embedding)")
        x = g.onnx_layout(_value(ids, "the indices"))
        return [g.add(_node_name(node), "embedding", {}, {"embeddings": _float32(data)}, [x],
                      _identity(len(x.shape) + 1))]
    x = _value(data, "the data", moved=True)
    index = np.asarray(_constant(ids, "index"))
    if index.size != 1:
        raise Unsupported(f"indices of shape {index.shape} (one index)")
    full = x.full_shape(g.batch)
    axis = attrs.get("axis", 0)
    axis = axis + len(full) if axis < 0 else axis
    if axis == x.batch_axis:
        raise Unsupported("gathering along the batch axis")
    n = full[axis]
    k = int(index.reshape(-1)[0])
    k = k + n if k < 0 else k
    before, after = [0] * len(full), [0] * len(full)
    before[axis], after[axis] = -k, k + 1 - n
    y = _pad_or_crop(g, node, x, before, after)
    if index.ndim:
        return [y]
    return [_reshaped(g, node, y, full[:axis] + full[axis + 1:],
                      x.batch_axis - (axis < x.batch_axis))]


# Each Keras gate's block in ONNX's order (LSTM: ONNX i, o, f, c, Keras i, f, c, o; GRU z, r,
# h in both): the inverse of codegen.onnx.ONNX_GATES.
KERAS_GATES = {"simple_rnn": [0], "gru": [0, 1, 2], "lstm": [0, 2, 3, 1]}
# ONNX's step activations (names case-insensitive) as the IR's
STEP_ACTIVATIONS = {"tanh": "tanh", "sigmoid": "sigmoid", "relu": "relu",
                    "hardsigmoid": "hard_sigmoid"}
DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"],
                       "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
DIRECTIONS = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}


def _step_activations(node, attrs, count: int) -> list[dict[str, str]]:
    """Each direction's IR activation attrs: ONNX's f (recurrent_activation, or RNN's
    activation), g (activation) and LSTM's h, which must be g; HardSigmoid only with
    alpha=1/6, beta=0.5 (relu6(x + 3) / 6)."""
    per = len(DEFAULT_ACTIVATIONS[node.op_type])
    names = list(attrs.get("activations", DEFAULT_ACTIVATIONS[node.op_type] * count))
    if len(names) == per:
        names *= count
    alphas, betas = attrs.get("activation_alpha", []), attrs.get("activation_beta", [])
    acts = []
    for k, name in enumerate(names):
        act = STEP_ACTIVATIONS.get(name.lower())
        if act is None:
            raise Unsupported(f"activation {name!r} (Tanh, Sigmoid, Relu, HardSigmoid)")
        if act == "hard_sigmoid" and not (
                k < len(alphas) and np.float32(alphas[k]) == np.float32(1 / 6)
                and k < len(betas) and betas[k] == 0.5):
            raise Unsupported("HardSigmoid other than alpha=1/6, beta=0.5")
        acts.append(act)
    result = []
    for d in range(count):
        f, *rest = acts[d * per:(d + 1) * per]
        if node.op_type == "RNN":
            result.append({} if f == "tanh" else {"activation": f})
            continue
        if node.op_type == "LSTM" and rest[0] != rest[1]:
            raise Unsupported(f"LSTM activations g={rest[0]}, h={rest[1]} (one for both)")
        step = {} if f == "sigmoid" else {"recurrent_activation": f}
        result.append(step if rest[0] == "tanh" else {**step, "activation": rest[0]})
    return result


def _keras_weights(op: str, w: np.ndarray, r: np.ndarray, b: np.ndarray | None,
                   reset_after: bool) -> dict[str, np.ndarray]:
    """One direction's ONNX W (G*U, F), R (G*U, U) and B (2*G*U: Wb, then Rb) as the IR's
    kernel (F, G*U), recurrent_kernel (U, G*U) and bias, gates in Keras's order: Wb + Rb, or
    both as (2, G*U) for a GRU that resets after the product (linear_before_reset=1)."""
    order = KERAS_GATES[op]
    gates, units = len(order), r.shape[-1]

    def keras(m: np.ndarray) -> np.ndarray:
        return _float32(m.reshape(gates, units, -1)[order].reshape(gates * units, -1).T)
    weights = {"kernel": keras(w), "recurrent_kernel": keras(r)}
    if b is not None:
        both = np.asarray(b, np.float64).reshape(2, gates, units)[:, order]
        both = both.reshape(2, gates * units)
        weights["bias"] = _float32(both if reset_after else both[0] + both[1])
    return weights


def _zero_state(v: Any, what: str) -> None:
    if v is None:
        return
    if not isinstance(v, np.ndarray):
        raise Unsupported(f"a computed {what}")
    if np.any(v):
        raise Unsupported(f"a nonzero {what}")


@converter(*RECURRENT)
def _recurrent(g: _Graph, node, attrs, xs) -> list:
    """PyTorch's nn.RNN, nn.GRU and nn.LSTM: X time first (T, N, F), behind a Transpose where
    batch_first (not layout=1, which onnxruntime does not run); the weights constants;
    initial_h and initial_c zeros (PyTorch's for no hx, folded); no sequence_lens or
    peepholes. Each direction is an IR layer (a reverse one with go_backwards; one that reads
    distill's own reversal of X reads X itself, the other way); Y (T, D, N, U) and Y_h
    (D, N, U) are their every-step and last-step outputs, the reverse direction's put back in
    time order, the directions concatenated. The Y_c output has no IR equivalent."""
    x = _value(xs[0], "X", moved=True)
    if x.batch_axis != 1:
        raise Unsupported(f"an X with its batch on axis {x.batch_axis} (X is time first)")
    problems = [f"{key}={attrs[key]}" for key in ("clip", "input_forget", "layout")
                if attrs.get(key)]
    if len(node.output) > 2 and g.readers.get(node.output[2]):
        problems.append("its Y_c output (the cell state)")
    if problems:
        raise Unsupported(", ".join(problems))
    x = g.onnx_layout(x)
    if len(x.shape) != 2:
        raise Unsupported(f"an X of {x.shape} per sample (steps, features)")
    steps = x.shape[0]
    w, r = (np.asarray(_constant(v, name), np.float64) for v, name in ((xs[1], "W"),
                                                                        (xs[2], "R")))
    b = _constant(xs[3], "B") if len(xs) > 3 and xs[3] is not None else None
    if len(xs) > 4 and xs[4] is not None and np.any(_constant(xs[4], "sequence_lens")
                                                    != steps):
        raise Unsupported("sequence_lens shorter than the sequence")
    for k, what in enumerate(("initial_h", "initial_c", "peephole P"), 5):
        _zero_state(xs[k] if len(xs) > k else None, what)
    op = RECURRENT[node.op_type]
    backwards = DIRECTIONS[attrs.get("direction", "forward")]
    acts = _step_activations(node, attrs, len(backwards))
    units = r.shape[-1]
    reset_after = bool(attrs.get("linear_before_reset", 0))
    source = g.reversed.get(x.name, x)
    want_y = bool(g.readers.get(node.output[0]))
    want_h = len(node.output) > 1 and bool(g.readers.get(node.output[1]))
    name = _node_name(node)
    seqs, lasts = [], []
    for d, backward in enumerate(backwards):
        step_attrs = {"return_sequences": want_y, **acts[d]}
        if backward != (source is not x):
            step_attrs["go_backwards"] = True
        if op == "gru":
            step_attrs["reset_after"] = reset_after
        weights = _keras_weights(op, w[d], r[d], None if b is None else b[d], reset_after)
        base = f"{name}_reverse" if len(backwards) > 1 and backward else \
            f"{name}_forward" if len(backwards) > 1 else name
        out = g.add(base, op, step_attrs, weights, [source], _identity(1 + want_y), 0)
        if not want_y:
            lasts.append(out)
            continue
        if want_h:  # the last step computed, (1, U)
            lasts.append(g.reshape(f"{base}_last", out, (1, units), (0, 1)) if steps == 1 else
                         g.add(f"{base}_last", "crop", {"crops": [steps - 1, 0]}, {}, [out]))
        seqs.append(g.add(f"{base}_in_time_order", "reverse", {}, {}, [out]) if backward
                    else out)

    def stacked(values: list[Value], axis: int, shape: tuple, batch_axis: int, tag: str):
        """The directions' outputs side by side along `axis`, as `shape` per sample."""
        both = values[0] if len(values) == 1 else g.add(
            f"{name}_{tag}", "concatenate", {"axis": axis}, {}, values)
        return g.reshape(f"{name}_{tag}_by_direction", both, shape, _identity(len(shape)),
                         batch_axis)
    count = len(backwards)
    y = stacked(seqs, 1, (steps, count, units), 2, "y") if want_y else None
    y_h = stacked(lasts, 0, (count, units), 1, "y_h") if want_h else None
    return [y, y_h]


# ----------------------------------------------------------------------------- the model

class _Patterns:
    """The graph's nodes, for `_fuse` to find the chains of elementwise ops that stand for one
    IR op: who computes and who reads each tensor, and the constants (initializers and
    Constant nodes)."""

    def __init__(self, nodes: list, constants: dict[str, np.ndarray], readers: dict[str, list]):
        self.readers = readers
        self.producers = {o: n for n in nodes for o in n.output if o}
        self.constants = dict(constants)
        for n in nodes:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                from onnx import numpy_helper
                self.constants[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)

    def node(self, name: str, op_type: str):
        """The node of `op_type` computing tensor `name`, or None."""
        n = self.producers.get(name)
        return n if n is not None and n.op_type == op_type and n.domain in ("", "ai.onnx") \
            else None

    def scalar(self, name: str) -> float | None:
        c = self.constants.get(name)
        return float(c.reshape(-1)[0]) if c is not None and c.size == 1 else None

    def is_scalar(self, name: str, value: float) -> bool:
        c = self.scalar(name)
        return c is not None and bool(np.isclose(c, value, rtol=1e-6, atol=0))

    def factors(self, name: str, used: list, top: bool = True) -> list[str]:
        """The factors of the product tree of Mul nodes at `name`, each inner one read only by
        the next."""
        n = self.node(name, "Mul")
        if n is None or not top and len(self.readers.get(name, [])) != 1:
            return [name]
        used.append(n)
        return [f for i in n.input for f in self.factors(i, used, False)]

    def product(self, name: str, used: list) -> tuple[float, list[str]]:
        """The product tree at `name` as (its constant factor, its other factors)."""
        factors = self.factors(name, used)
        scalars = [self.scalar(f) for f in factors]
        return (float(np.prod([c for c in scalars if c is not None])),
                sorted(f for f, c in zip(factors, scalars) if c is None))

    def add_of(self, name: str, used: list) -> list[str] | None:
        n = self.node(name, "Add")
        if n is None:
            return None
        used.append(n)
        return list(n.input)


def _gelu_pattern(p: _Patterns, root, used: list):
    """x * 0.5 * (1 + Erf(x / sqrt 2)) and x * 0.5 * (1 + Tanh(sqrt(2 / pi) * (x + 0.044715 *
    x^3))), the products in any order: PyTorch's nn.GELU below opset 20 (Div by sqrt 2 then
    Mul(Mul(x, 1 + erf), 0.5); the tanh form as x * x * x), and distill's own export."""
    if root.op_type != "Mul":
        return None
    half, factors = p.product(root.output[0], used)
    if not np.isclose(half, 0.5, rtol=1e-6) or len(factors) != 2:
        return None
    for x, plus in (factors, factors[::-1]):
        trial = list(used)
        approximate = _gelu_branch(p, x, plus, trial)
        if approximate is not None:
            used[:] = trial
            return _fused_node("Gelu", x, root, approximate=approximate)
    return None


def _gelu_branch(p: _Patterns, x: str, plus: str, used: list) -> str | None:
    """GELU's approximate attribute where `plus` is 1 + erf(x / sqrt 2) or its tanh form."""
    terms = p.add_of(plus, used)
    if terms is None or not any(p.is_scalar(t, 1.0) for t in terms):
        return None
    t = next(t for t in terms if not p.is_scalar(t, 1.0))
    erf, tanh = p.node(t, "Erf"), p.node(t, "Tanh")
    if erf is not None:
        used.append(erf)
        div = p.node(erf.input[0], "Div")
        if div is not None:
            used.append(div)
            exact = div.input[0] == x and p.is_scalar(div.input[1], 2 ** 0.5)
        else:
            scale, rest = p.product(erf.input[0], used)
            exact = rest == [x] and np.isclose(scale, 2 ** -0.5, rtol=1e-6)
        return "none" if exact else None
    if tanh is None:
        return None
    used.append(tanh)
    scale, rest = p.product(tanh.input[0], used)
    inner = p.add_of(rest[0], used) if len(rest) == 1 else None
    if not np.isclose(scale, np.sqrt(2 / np.pi), rtol=1e-6) or inner is None or x not in inner:
        return None
    cubic, cube = p.product(inner[1 - inner.index(x)], used)
    return "tanh" if cube == [x] * 3 and np.isclose(cubic, 0.044715, rtol=1e-6) else None


def _clipped_relu_pattern(p: _Patterns, root, used: list):
    """Keras's ReLU with options as distill's own export writes it: Where(Greater(x, t), x, 0),
    capped by a Min, minus Mul(Relu(Sub(t, x)), slope); without the Sub, also PyTorch's
    nn.Threshold(t, 0)."""
    slope = 0.0
    pos = root.output[0]
    sub = p.node(pos, "Sub")
    if sub is not None:
        pos, neg = sub.input
        mul = p.node(neg, "Mul")
        if mul is None:
            return None
        relu_in, slope_name = mul.input if p.scalar(mul.input[1]) is not None else \
            mul.input[::-1]
        relu = p.node(relu_in, "Relu")
        below = p.node(relu.input[0], "Sub") if relu is not None else None
        slope = p.scalar(slope_name)
        if below is None or slope is None:
            return None
        used += [sub, mul, relu, below]
    attrs = {}
    cap = p.node(pos, "Min")
    if cap is not None and p.scalar(cap.input[1]) is not None:
        attrs["max_value"] = p.scalar(cap.input[1])
        used.append(cap)
        pos = cap.input[0]
    where = p.node(pos, "Where")
    above = p.node(where.input[0], "Greater") if where is not None else None
    if above is None or where.input[1] != above.input[0] or not p.is_scalar(where.input[2], 0):
        return None
    x, t = above.input
    threshold = p.scalar(t)
    if threshold is None or sub is not None and (below.input[1] != x or
                                                 p.scalar(below.input[0]) != threshold):
        return None
    used += [where, above]
    return _fused_node("ClippedRelu", x, root, domain=FUSED, threshold=threshold,
                       negative_slope=slope, **attrs)


def _embedding_pattern(p: _Patterns, root, used: list):
    """distill's own export of an embedding: valid = And(Greater(x, -1), Less(x, vocabulary)),
    Where(Unsqueeze(valid, -1), Gather(table, Cast(Where(valid, x, 0), int64)), 0); becomes a
    Gather of the table by x, which the embedding reads as the IR does."""
    if root.op_type != "Where" or not p.is_scalar(root.input[2], 0):
        return None
    mask, gather = p.node(root.input[0], "Unsqueeze"), p.node(root.input[1], "Gather")
    cast = p.node(gather.input[1], "Cast") if gather is not None else None
    safe = p.node(cast.input[0], "Where") if cast is not None else None
    valid = p.node(safe.input[0], "And") if safe is not None else None
    if mask is None or valid is None or mask.input[0] != valid.output[0] or \
            len(mask.input) < 2 or not p.is_scalar(mask.input[1], -1):
        return None
    above, below = p.node(valid.input[0], "Greater"), p.node(valid.input[1], "Less")
    table = p.constants.get(gather.input[0])
    if above is None or below is None or table is None or table.ndim != 2:
        return None
    x = safe.input[1]
    if above.input[0] != x or below.input[0] != x or not p.is_scalar(above.input[1], -1) or \
            not p.is_scalar(below.input[1], table.shape[0]) or not p.is_scalar(safe.input[2], 0):
        return None
    used += [mask, gather, cast, safe, valid, above, below]
    return _fused_node("Gather", [gather.input[0], x], root, axis=0)


PATTERNS = (_gelu_pattern, _clipped_relu_pattern, _embedding_pattern)


def _fused_node(op_type: str, inputs, root, domain: str = "", **attrs):
    """A node computing `root`'s output from `inputs` (a name or a list), named as `root`."""
    from onnx import helper
    return helper.make_node(op_type, [inputs] if isinstance(inputs, str) else inputs,
                            [root.output[0]], name=root.name, domain=domain, **attrs)


def _fuse(nodes: list, constants: dict[str, np.ndarray], readers: dict[str, list]) -> list:
    """The nodes with each chain of PATTERNS replaced by one node at its last (from the end,
    so a longer chain wins over a shorter one inside it); a chain fuses only where nothing
    else reads its intermediate tensors."""
    p = _Patterns(nodes, constants, readers)
    fused, gone = {}, set()
    for root in reversed(nodes):
        if id(root) in gone:
            continue
        for pattern in PATTERNS:
            used = [root]
            found = pattern(p, root, used)
            inside = {id(n) for n in used}
            if found is not None and all(
                    r is not None and id(r) in inside
                    for n in used if n is not root for o in n.output for r in readers.get(o, [])):
                fused[id(root)] = found
                gone |= inside
                break
    return [fused.get(id(n), n) for n in nodes if id(n) in fused or id(n) not in gone]


def _readers(nodes: list, outputs: list[str]) -> dict[str, list]:
    """Tensor name -> the nodes that read it (None for a graph output)."""
    readers: dict[str, list] = {}
    for node in nodes:
        for src in node.input:
            readers.setdefault(src, []).append(node)
    for out in outputs:
        readers.setdefault(out, []).append(None)
    return readers


def _opset(proto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def _time_major(name: str, readers: dict[str, list]) -> bool:
    """Whether input `name` is the X of recurrent layers, time first (PyTorch's
    batch_first=False), read otherwise only by Shape: its batch is its axis 1."""
    found = [r for r in readers.get(name, []) if r is None or r.op_type != "Shape"]
    return bool(found) and all(
        r is not None and r.op_type in RECURRENT and r.input[0] == name for r in found)


def _inputs(graph, initializers: set[str], readers: dict[str, list]
            ) -> tuple[list[tuple[str, tuple, Any, int]], int | None]:
    """(name, per-sample shape, numpy dtype, batch axis) of each graph input, and the fixed
    batch size (None where the batch dimension is symbolic)."""
    from onnx import helper
    found, batches = [], set()
    for inp in graph.input:
        if inp.name in initializers:
            continue
        t = inp.type.tensor_type
        dims = list(t.shape.dim) if t.HasField("shape") else []
        if len(dims) < 2:
            raise DistillError(f"input {inp.name!r} has {len(dims)} dimensions; distill needs "
                               "a batch dimension and at least one more")
        b = int(_time_major(inp.name, readers))
        for k, d in enumerate(dims):
            if k != b and (not d.HasField("dim_value") or d.dim_value < 1):
                raise DistillError(f"input {inp.name!r} dimension {k} "
                                   f"({d.dim_param or 'unknown'!r}) is symbolic; distill needs "
                                   "fixed sizes but for the batch dimension")
        if dims[b].HasField("dim_value") and dims[b].dim_value > 0:
            batches.add(int(dims[b].dim_value))
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))
        shape = tuple(int(d.dim_value) for k, d in enumerate(dims) if k != b)
        found.append((inp.name, shape, dtype, b))
    if not found:
        raise DistillError("the ONNX model has no inputs")
    if len(batches) > 1:
        raise DistillError(f"the inputs have different fixed batch sizes {sorted(batches)}")
    return found, batches.pop() if batches else None


def _prune(specs: list[tuple], outputs: list[str]) -> list[tuple]:
    """The specs that some output needs (a layout made for a node that was then refused, a
    normalize folded away)."""
    needed = set(outputs)
    for spec in reversed(specs):
        if spec[0] in needed:
            needed.update(spec[4])
    return [spec for spec in specs if spec[0] in needed]


def import_onnx(proto, name: str | None = None, metadata: dict | None = None,
                check: bool = True) -> ir.Model:
    """Convert an ONNX `ModelProto` to the IR and check it against onnxruntime."""
    from onnx import numpy_helper
    graph = proto.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    names = [out.name for out in graph.output]
    nodes = _fuse(list(graph.node), constants, _readers(graph.node, names))
    readers = _readers(nodes, names)
    inputs, fixed = _inputs(graph, set(constants), readers)
    g = _Graph(_opset(proto), fixed or 1, readers)
    g.values.update(constants)
    shapes = {}
    for raw, shape, _, b in inputs:
        key = g.unique(raw)
        shapes[key] = shape
        g.values[raw] = Value(key, shape, _identity(len(shape)), batch_axis=b)
    for node in nodes:
        g.convert(node)
    outputs = [g.output(name) for name in names]
    if g.problems:
        public = sorted(set(CONVERTERS) - {"ClippedRelu"})  # not the fused pattern's op
        raise DistillError("cannot import the ONNX model: " + "; ".join(g.problems)
                           + f"; supported ops: {', '.join(public)}")
    specs, outputs = _fold_normalizations(_prune(g.specs, outputs), outputs)
    meta = {"source": {"framework": "onnx", "producer": proto.producer_name,
                       "producer_version": proto.producer_version, "opset": g.opset},
            **(metadata or {})}
    result = ir.make_model(name or graph.name or "onnx_model", shapes, specs,
                           metadata=meta, outputs=outputs)
    if check:
        out_axes = [g.values[name].batch_axis for name in names]
        compare_with_onnxruntime(proto, result, [dtype for _, _, dtype, _ in inputs], fixed,
                                 [b for *_, b in inputs], out_axes)
    return result


def compare_with_onnxruntime(proto, result: ir.Model, dtypes: list, fixed: int | None,
                             in_axes: list[int] | None = None, out_axes: list[int] | None = None,
                             samples: int = 64, seed: int = 0) -> float:
    """Max abs difference between onnxruntime and `ir.run` on seeded random inputs (ids of
    the table for an input that an embedding reads), in batches of the input's `fixed` batch
    size where it has one; raises on mismatch. `in_axes` and `out_axes`: the ONNX axis of
    each input's and output's batch (0 where not given), the IR's being first."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DistillError(NEEDS) from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    step = fixed or samples
    count = max(samples // step, 1) * step
    xs = []
    for name, shape in result.inputs:
        vocab = [n.weights["embeddings"].shape[0] for n in result.nodes
                 if n.op == "embedding" and name in n.inputs]
        xs.append(rng.integers(0, min(vocab), (count, *shape)) if vocab else
                  rng.normal(size=(count, *shape)))
    names = [i.name for i in session.get_inputs()]
    in_axes = in_axes or [0] * len(xs)
    out_axes = out_axes or [0] * len(result.outputs)
    parts = [session.run(None, {n: np.moveaxis(x[k:k + step], 0, b).astype(d)
                                for n, x, d, b in zip(names, xs, dtypes, in_axes)})
             for k in range(0, count, step)]
    want = [np.moveaxis(np.concatenate([np.asarray(p[k], np.float64) for p in parts], axis=b),
                        b, 0) for k, b in enumerate(out_axes)]
    got = ir.run(result, [x.astype(np.float32) for x in xs] if len(xs) > 1 else
                 xs[0].astype(np.float32), split=True)
    worst = 0.0
    for w, y in zip(want, got):
        if w.shape != y.shape:
            raise DistillError(f"the imported model gives an output of shape {y.shape[1:]}, "
                               f"onnxruntime {w.shape[1:]}")
        err = np.abs(y - w)
        if (err > ABS_TOL + REL_TOL * np.abs(w)).any() or not np.isfinite(y).all():
            raise DistillError(f"the imported model differs from onnxruntime's outputs by up "
                               f"to {float(np.nanmax(err)):.3g} on random inputs")
        worst = max(worst, float(err.max(initial=0.0)))
    return worst


def is_onnx_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in ONNX_SUFFIXES


def load_onnx(path: str | os.PathLike) -> ir.Model:
    """Read an `.onnx` file, import it and check it against onnxruntime."""
    path = Path(path)
    if path.is_dir():
        raise ModelFormatError(f"{path}: is a directory, not an ONNX file")
    if not path.is_file():
        what = "not a regular file" if path.exists() else "no such file"
        raise ModelFormatError(f"{path}: {what}")
    try:
        import onnx
        import onnxruntime  # noqa: F401  (the check needs it: say so before any work)
    except ImportError:
        raise DistillError(f"{path}: {NEEDS}") from None
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as e:  # protobuf and the checker raise many kinds for a damaged file
        raise ModelFormatError(f"{path}: not a readable ONNX model ({_first_line(e)})") from None
    if not proto.graph.node and not proto.graph.output:
        raise ModelFormatError(f"{path}: not an ONNX model (no graph)")
    try:
        return import_onnx(proto, name=path.stem, metadata={"source_file": path.name})
    except DistillError as e:
        raise type(e)(f"{path}: {e}") from None
