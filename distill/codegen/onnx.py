"""IR -> ONNX: each IR op lowered to ONNX nodes with `onnx.helper`, no converter in between.

Where it sits: an exporter beside the text-language code generators. It takes a validated
`ir.Model` and returns an `onnx.ModelProto` (`to_onnx`) or writes `NAME.onnx` (`export_onnx`);
what the file computes is checked against `ir.run` by running it in onnxruntime.

What it promises:
- The graph takes "input" of shape (N, *input_shape) float32, N a symbolic batch dimension,
  and gives "output" of shape (N, *output_shape). A model with several inputs takes each as
  its own graph input, named as in the IR; one with several outputs gives "output_0",
  "output_1", ... in the IR's order, each of its own shape (nothing is packed).
- Every weight is an initializer named `<node>_<weight>` (`dense_1_kernel`) holding the IR's
  float32 bits unchanged. Other tensor and node names derive from the IR node names; a clash
  (an IR node named `dense_kernel` beside a `dense` node's kernel) gets a `_2` suffix.
- Determinism: the same IR gives the same bytes (no timestamps, fixed order everywhere).
- An op with no lowering raises `DistillError` naming the node and op.

Opset 17 (ONNX 1.12, IR version 8): every op used here has had its present meaning since
opset 13 or 14 (Softmax over one axis rather than a flattened 2-D view came in 13; Reshape's
`allowzero` in 14), and 17 is read by every onnxruntime since 1.12 and by the other common
runtimes, so the newest opset is not needed and an old one would change Softmax. The IR version
is pinned to the one that opset needs, not to the installed onnx library's, so an older runtime
does not reject the file and the bytes do not change with the library.

Adding an op: one function `@lowering("op")` taking `(graph, node, x, y)`, which emits nodes
computing tensor `y` from tensor `x` (for an op with several inputs, `x` is a list of them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import __version__, ir
from ..errors import DistillError
from ..ops import GELU_CUBIC, INV_SQRT2, SELU_ALPHA, SELU_SCALE, SQRT_2_OVER_PI
from ..ops import MERGES as _MERGES

OPSET = 17
IR_VERSION = 8  # the ONNX IR version that opset 17 first appeared with (ONNX 1.12)
BATCH = "N"  # the symbolic batch dimension
OUTPUT = "output"

LOWERINGS: dict[str, Callable[[_Graph, ir.Node, str, str], None]] = {}


def lowering(op_name: str) -> Callable:
    """Register `fn(graph, node, x, y)` as the ONNX lowering of the IR op `op_name`."""
    def register(fn: Callable) -> Callable:
        LOWERINGS[op_name] = fn
        return fn
    return register


class _Graph:
    """The nodes and initializers of the graph being built, and its unique names."""

    def __init__(self, reserved: set[str], weight_names: dict[int, str]):
        self.tensors = set(reserved)
        self.weight_names = weight_names  # id(array) -> its initializer's name
        self.written: set[str] = set()
        self.node_names: set[str] = set()
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def tensor(self, base: str) -> str:
        """A tensor name not taken yet: `base`, else `base_2`, `base_3`, ..."""
        return _fresh(base, self.tensors)

    def weight(self, node: ir.Node, key: str) -> str:
        """The initializer holding `node.weights[key]`, bit for bit, named `<node>_<key>`."""
        name = self.weight_names[id(node.weights[key])]  # reserved up front
        if name not in self.written:  # a shared layer's arrays are stored once
            self.written.add(name)
            arr = np.ascontiguousarray(node.weights[key], dtype="<f4")
            self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def constant(self, base: str, value: np.ndarray) -> str:
        name = self.tensor(base)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def ints(self, node: ir.Node, tag: str, values: list[int]) -> str:
        """An int64 constant of `node`'s lowering (shapes, axes, indices), `<node>_<tag>`."""
        return self.constant(f"{node.name}_{tag}", np.array(values, np.int64))

    def add(self, op_type: str, inputs: list[str], output: str, name: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output],
                                           name=_fresh(name, self.node_names), **attrs))
        return output

    def step(self, node: ir.Node, tag: str, op_type: str, inputs: list[str], **attrs: Any) -> str:
        """An intermediate of `node`'s lowering: tensor and node both `<node>_<tag>`."""
        name = f"{node.name}_{tag}"
        return self.add(op_type, inputs, self.tensor(name), name, **attrs)


def _fresh(base: str, taken: set[str]) -> str:
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


# ------------------------------------------------------------------------------- the lowerings

@lowering("dense")
def _dense(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    # MatMul + Add, not Gemm: Gemm takes only 2-D input, and dense acts on the last axis of any
    # rank, as MatMul does.
    kernel = g.weight(node, "kernel")
    if "bias" not in node.weights:
        g.add("MatMul", [x, kernel], y, node.name)
        return
    product = g.step(node, "matmul", "MatMul", [x, kernel])
    g.add("Add", [product, g.weight(node, "bias")], y, f"{node.name}_add")


@lowering("normalize")
def _normalize(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    centred = g.step(node, "sub", "Sub", [x, g.weight(node, "mean")])
    g.add("Div", [centred, g.weight(node, "std")], y, f"{node.name}_div")


@lowering("linear")
def _linear(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    g.add("Identity", [x], y, node.name)


def _elementwise(op_name: str, op_type: str) -> None:
    def lower(g: _Graph, node: ir.Node, x: str, y: str) -> None:
        g.add(op_type, [x], y, node.name)
    lowering(op_name)(lower)


for _op_name, _op_type in (("sigmoid", "Sigmoid"), ("tanh", "Tanh"), ("relu", "Relu")):
    _elementwise(_op_name, _op_type)


@lowering("leaky_relu")
def _leaky_relu(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    # The attribute is a float32, the slope ir.run multiplies by (np.asarray(alpha, float32)).
    g.add("LeakyRelu", [x], y, node.name, alpha=float(np.float32(node.attrs["alpha"])))


@lowering("softmax")
def _softmax(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    axis = node.attrs["axis"] + 1 if "axis" in node.attrs else -1
    g.add("Softmax", [x], y, node.name, axis=axis)


for _op_name, _op_type in (("softplus", "Softplus"), ("softsign", "Softsign"),
                           ("exponential", "Exp")):
    _elementwise(_op_name, _op_type)


def _scalar(g: _Graph, node: ir.Node, what: str, value: float) -> str:
    return g.constant(f"{node.name}_{what}", np.array(value, np.float32))


@lowering("elu")
def _elu(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    g.add("Elu", [x], y, node.name, alpha=float(np.float32(node.attrs["alpha"])))


@lowering("selu")
def _selu(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    g.add("Selu", [x], y, node.name, alpha=float(SELU_ALPHA), gamma=float(SELU_SCALE))


# Gelu is an ONNX op from opset 20 on; below it, both forms are written out: x / 2 * (1 + t),
# t = erf(x / sqrt 2) or tanh(sqrt(2 / pi) * (x + 0.044715 x^3)).
def _gelu_from(g: _Graph, node: ir.Node, x: str, t: str, y: str) -> None:
    plus = g.step(node, "plus", "Add", [t, _scalar(g, node, "one", 1.0)])
    half = g.step(node, "half", "Mul", [x, _scalar(g, node, "half", 0.5)])
    g.add("Mul", [half, plus], y, node.name)


@lowering("gelu")
def _gelu(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    scaled = g.step(node, "scaled", "Mul", [x, _scalar(g, node, "inv_sqrt2", INV_SQRT2)])
    _gelu_from(g, node, x, g.step(node, "erf", "Erf", [scaled]), y)


@lowering("gelu_tanh")
def _gelu_tanh(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    square = g.step(node, "square", "Mul", [x, x])
    cube = g.step(node, "cube", "Mul", [square, x])
    cubic = g.step(node, "cubic", "Mul", [cube, _scalar(g, node, "cubic", GELU_CUBIC)])
    inner = g.step(node, "inner", "Add", [x, cubic])
    scaled = g.step(node, "scaled", "Mul", [inner, _scalar(g, node, "scale", SQRT_2_OVER_PI)])
    _gelu_from(g, node, x, g.step(node, "tanh", "Tanh", [scaled]), y)


@lowering("silu")
def _silu(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    s = g.step(node, "sigmoid", "Sigmoid", [x])
    g.add("Mul", [x, s], y, node.name)


@lowering("hard_sigmoid")
def _hard_sigmoid(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    # ONNX's HardSigmoid is max(0, min(1, alpha * x + beta)): Keras 3's relu6(x + 3) / 6 with
    # alpha = 1/6 and beta = 1/2, to within a rounding.
    g.add("HardSigmoid", [x], y, node.name, alpha=float(np.float32(1 / 6)), beta=0.5)


@lowering("clipped_relu")
def _clipped_relu(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    a = node.attrs
    t = _scalar(g, node, "threshold", a["threshold"])
    zero = _scalar(g, node, "zero", 0.0)
    above = g.step(node, "above", "Greater", [x, t])
    pos = g.step(node, "pos", "Where", [above, x, zero])
    if "max_value" in a:
        pos = g.step(node, "capped", "Min", [pos, _scalar(g, node, "max_value", a["max_value"])])
    below = g.step(node, "below", "Sub", [t, x])
    below = g.step(node, "below_relu", "Relu", [below])
    neg = g.step(node, "neg", "Mul",
                 [below, _scalar(g, node, "negative_slope", a["negative_slope"])])
    g.add("Sub", [pos, neg], y, node.name)


@lowering("prelu")
def _prelu(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    g.add("PRelu", [x, g.weight(node, "alpha")], y, node.name)


@lowering("layer_norm")
def _layer_norm(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    # LayerNormalization (opset 17) needs a scale: ones where the IR has no gamma.
    shape = node.output_shape[node.attrs["axis"]:]
    scale = g.weight(node, "gamma") if "gamma" in node.weights else \
        g.constant(f"{node.name}_ones", np.ones(shape, np.float32))
    inputs = [x, scale] + ([g.weight(node, "beta")] if "beta" in node.weights else [])
    g.add("LayerNormalization", inputs, y, node.name, axis=node.attrs["axis"] + 1,
          epsilon=float(np.float32(node.attrs["epsilon"])))


@lowering("flatten")
def _flatten(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    g.add("Flatten", [x], y, node.name, axis=1)


@lowering("reshape")
def _reshape(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    # A leading 0 copies the batch dimension; the IR forbids 0 in the per-sample target, so no
    # other entry is read as "copy" (allowzero stays at its default 0).
    shape = np.array([0, *node.attrs["shape"]], dtype=np.int64)
    g.add("Reshape", [x, g.constant(f"{node.name}_shape", shape)], y, node.name)


def _channels_first(g: _Graph, node: ir.Node, x: str, op_type: str, inputs: list[str],
                    y: str, **attrs: Any) -> None:
    """`op_type` (an ONNX op on NCHW data) on channels-last `x`: transposed in and out."""
    rank = len(node.input_shape) - 1
    first = g.step(node, "nchw", "Transpose", [x], perm=[0, rank + 1, *range(1, rank + 1)])
    out = g.step(node, op_type.lower(), op_type, [first, *inputs], **attrs)
    g.add("Transpose", [out], y, node.name, perm=[0, *range(2, rank + 2), 1])


@lowering("conv")
def _conv(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    a, kernel = node.attrs, node.weights["kernel"]
    rank = kernel.ndim - 2
    # ONNX's kernel is (filters, channels / groups, *window): the IR's initializer, transposed
    w = g.step(node, "kernel_oihw", "Transpose", [g.weight(node, "kernel")],
               perm=[rank + 1, rank, *range(rank)])
    bias = [g.weight(node, "bias")] if "bias" in node.weights else []
    _channels_first(g, node, x, "Conv", [w, *bias], y, strides=list(a["strides"]),
                    pads=list(a["pads"]), dilations=list(a.get("dilation", [1] * rank)),
                    group=a["groups"], kernel_shape=list(kernel.shape[:-2]))


@lowering("conv_transpose")
def _conv_transpose(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    a, kernel = node.attrs, node.weights["kernel"]
    rank = kernel.ndim - 2
    # ONNX's kernel is (channels, filters, *window): the IR's initializer, transposed
    w = g.step(node, "kernel_iohw", "Transpose", [g.weight(node, "kernel")],
               perm=[rank, rank + 1, *range(rank)])
    bias = [g.weight(node, "bias")] if "bias" in node.weights else []
    _channels_first(g, node, x, "ConvTranspose", [w, *bias], y, strides=list(a["strides"]),
                    pads=list(a["pads"]), dilations=list(a.get("dilation", [1] * rank)),
                    output_padding=list(a.get("output_padding", [0] * rank)),
                    kernel_shape=list(kernel.shape[:-2]))


@lowering("embedding")
def _embedding(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    """Gather of trunc(x) where -1 < x < vocabulary, zeros elsewhere (ops.embedding_ids)."""
    vocab = node.weights["embeddings"].shape[0]
    def scalar(tag: str, value: float) -> str:
        return g.constant(f"{node.name}_{tag}", np.array([value], np.float32))
    above = g.step(node, "above", "Greater", [x, scalar("low", -1.0)])
    below = g.step(node, "below", "Less", [x, scalar("high", float(vocab))])
    valid = g.step(node, "valid", "And", [above, below])
    safe = g.step(node, "safe", "Where", [valid, x, scalar("zero", 0.0)])
    ids = g.step(node, "ids", "Cast", [safe], to=TensorProto.INT64)  # truncates toward zero
    rows = g.step(node, "rows", "Gather", [g.weight(node, "embeddings"), ids], axis=0)
    mask = g.step(node, "mask", "Unsqueeze", [valid, g.ints(node, "last_axis", [-1])])
    g.add("Where", [mask, rows, scalar("zeros", 0.0)], y, node.name)


@lowering("transpose")
def _transpose(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    g.add("Transpose", [x], y, node.name, perm=[0, *(p + 1 for p in node.attrs["perm"])])


@lowering("reverse")
def _reverse(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    steps = node.input_shape[0]
    g.add("Slice", _reversal(g, node, x, "", steps, 1), y, node.name)


def _reversal(g: _Graph, node: ir.Node, x: str, tag: str, steps: int, axis: int) -> list[str]:
    """A Slice's inputs that read `steps` entries of `axis` last to first."""
    return [x, g.ints(node, f"{tag}start", [-1]), g.ints(node, f"{tag}end", [-steps - 1]),
            g.ints(node, f"{tag}axis", [axis]), g.ints(node, f"{tag}step", [-1])]


ONNX_ACTIVATIONS = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu",
                    "hard_sigmoid": "HardSigmoid"}
# Keras's gate order, as indices into ONNX's: LSTM i, f, c, o -> i, o, f, c; GRU z, r, h as is
ONNX_GATES = {"simple_rnn": [0], "gru": [0, 1, 2], "lstm": [0, 3, 1, 2]}


def _recurrent(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    """ONNX's RNN, GRU and LSTM (one direction, time first); go_backwards reverses the steps
    first, so the outputs come in Keras's order (the order they were computed)."""
    a, steps = node.attrs, node.input_shape[0]
    units = node.weights["recurrent_kernel"].shape[0]
    gates = ONNX_GATES[node.op]

    def onnx_layout(key: str) -> str:
        """(features or units, gates * units) -> (1, gates * units, features or units), the
        gate blocks in ONNX's order."""
        w = g.weight(node, key)
        if len(gates) > 1:
            parts = [f"{node.name}_{key}_gate{k}" for k in range(len(gates))]
            for p in parts:
                g.tensor(p)
            sizes = g.ints(node, f"{key}_split", [units] * len(gates))
            g.nodes.append(helper.make_node("Split", [w, sizes], parts,
                                            name=f"{node.name}_{key}_split", axis=1))
            w = g.step(node, f"{key}_onnx_order", "Concat", [parts[k] for k in gates], axis=1)
        w = g.step(node, f"{key}_t", "Transpose", [w], perm=[1, 0])
        return g.step(node, f"{key}_onnx", "Unsqueeze", [w, g.ints(node, f"{key}_axis", [0])])

    inputs = [onnx_layout("kernel"), onnx_layout("recurrent_kernel")]
    if "bias" in node.weights:
        b = g.weight(node, "bias")
        size = len(gates) * units
        if a.get("reset_after"):  # the input's biases, then the recurrent ones
            shape = g.ints(node, "bias_shape", [1, 2 * size])
            inputs.append(g.step(node, "bias_onnx", "Reshape", [b, shape]))
        else:
            if len(gates) > 1:
                rows = g.ints(node, "bias_rows", [len(gates), units])
                b = g.step(node, "bias_2d", "Reshape", [b, rows])
                b = g.step(node, "bias_order", "Gather", [b, g.ints(node, "bias_gates", gates)],
                           axis=0)
                b = g.step(node, "bias_flat", "Reshape", [b, g.ints(node, "bias_flat_shape",
                                                                    [size])])
            zeros = g.constant(f"{node.name}_recurrent_bias", np.zeros(size, np.float32))
            b = g.step(node, "bias_both", "Concat", [b, zeros], axis=0)
            inputs.append(g.step(node, "bias_onnx", "Unsqueeze", [b, g.ints(node, "bias_axis",
                                                                            [0])]))
    seq = g.step(node, "time_first", "Transpose", [x], perm=[1, 0, 2])
    if a.get("go_backwards"):
        seq = g.step(node, "reversed", "Slice", _reversal(g, node, seq, "rev_", steps, 0))
    acts = [a.get("activation", "tanh")]
    if node.op != "simple_rnn":
        acts = [a.get("recurrent_activation", "sigmoid")] + acts * (2 if node.op == "lstm" else 1)
    extra: dict[str, Any] = {}
    if "hard_sigmoid" in acts:  # Keras 3's relu6(x + 3) / 6 as max(0, min(1, x / 6 + 0.5))
        extra = {"activation_alpha": [1 / 6 if n == "hard_sigmoid" else 0.0 for n in acts],
                 "activation_beta": [0.5 if n == "hard_sigmoid" else 0.0 for n in acts]}
    if node.op == "gru":
        extra["linear_before_reset"] = int(bool(a.get("reset_after")))
    op_type = {"simple_rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}[node.op]
    out = g.step(node, op_type.lower(), op_type, [seq, *inputs], hidden_size=units,
                 activations=[ONNX_ACTIVATIONS[n] for n in acts], **extra)
    out = g.step(node, "squeezed", "Squeeze", [out, g.ints(node, "dir_axis", [1])])  # (T, N, U)
    if a["return_sequences"]:
        g.add("Transpose", [out], y, node.name, perm=[1, 0, 2])
    else:
        out = g.step(node, "last", "Gather", [out, g.ints(node, "last_step", [steps - 1])],
                     axis=0)
        g.add("Squeeze", [out, g.ints(node, "step_axis", [0])], y, node.name)


for _name in ONNX_GATES:
    lowering(_name)(_recurrent)


def _pool(op_type: str, **extra: Any):
    def lower(g: _Graph, node: ir.Node, x: str, y: str) -> None:
        a = node.attrs
        _channels_first(g, node, x, op_type, [], y, kernel_shape=list(a["pool"]),
                        strides=list(a["strides"]), pads=list(a["pads"]), **extra)
    return lower


lowering("max_pool")(_pool("MaxPool"))
lowering("avg_pool")(_pool("AveragePool", count_include_pad=0))


def _global(op_type: str):
    def lower(g: _Graph, node: ir.Node, x: str, y: str) -> None:
        g.add(op_type, [x], y, node.name, axes=list(range(1, len(node.input_shape))),
              keepdims=0)
    return lower


lowering("global_avg_pool")(_global("ReduceMean"))
lowering("global_max_pool")(_global("ReduceMax"))


@lowering("zero_pad")
def _zero_pad(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    pads = node.attrs["pads"]
    rank = len(pads) // 2
    widths = np.array([0, *pads[:rank], 0, 0, *pads[rank:], 0], np.int64)
    g.add("Pad", [x, g.constant(f"{node.name}_pads", widths)], y, node.name)


@lowering("crop")
def _crop(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    crops, rank = node.attrs["crops"], len(node.input_shape) - 1
    starts = np.array(crops[:rank], np.int64)
    ends = np.array([c + n for c, n in zip(crops[:rank], node.output_shape[:-1])], np.int64)
    axes = np.arange(1, rank + 1, dtype=np.int64)
    g.add("Slice", [x, g.constant(f"{node.name}_starts", starts),
                    g.constant(f"{node.name}_ends", ends),
                    g.constant(f"{node.name}_axes", axes)], y, node.name)


@lowering("upsample")
def _upsample(g: _Graph, node: ir.Node, x: str, y: str) -> None:
    scales = np.array([1, *node.attrs["size"], 1], np.float32)
    inputs = [x, "", g.constant(f"{node.name}_scales", scales)]
    if node.attrs.get("interpolation", "nearest") == "linear":
        # half-pixel centres, clamped at the ends, as the reference's lerp_table
        g.add("Resize", inputs, y, node.name, mode="linear",
              coordinate_transformation_mode="half_pixel")
    else:  # nearest neighbour: output i reads input floor(i / size)
        g.add("Resize", inputs, y, node.name, mode="nearest",
              coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def _chain(op_type: str):
    """A merge as binary nodes left to right, ((x0 op x1) op x2) ..., the order of ir.run."""
    def lower(g: _Graph, node: ir.Node, xs: list[str], y: str) -> str:
        out = xs[0]
        for k, x in enumerate(xs[1:], 1):
            last = k == len(xs) - 1
            out = g.add(op_type, [out, x], y if last else g.tensor(f"{node.name}_{k}"),
                        node.name if last else f"{node.name}_{k}")
        return out
    return lower


for _op_name, _op_type in (("add", "Add"), ("subtract", "Sub"), ("multiply", "Mul"),
                           ("maximum", "Max"), ("minimum", "Min")):
    lowering(_op_name)(_chain(_op_type))


@lowering("average")
def _average(g: _Graph, node: ir.Node, xs: list[str], y: str) -> None:
    total = _chain("Add")(g, node, xs, g.tensor(f"{node.name}_sum"))
    count = g.constant(f"{node.name}_count", np.array(len(xs), np.float32))
    g.add("Div", [total, count], y, f"{node.name}_div")


@lowering("concatenate")
def _concatenate(g: _Graph, node: ir.Node, xs: list[str], y: str) -> None:
    g.add("Concat", xs, y, node.name, axis=node.attrs["axis"] + 1)


# ----------------------------------------------------------------------------------- the model

def to_onnx(model: ir.Model, name: str | None = None) -> onnx.ModelProto:
    """The ONNX model computing what `ir.run(model, x)` computes on a batch `x`.

    `name` (sanitized) replaces the model's name as the graph name and the "name" metadata.
    """
    ir.validate(model)
    name = ir.sanitize_name(name) if name is not None else model.name
    for node in model.nodes:
        if node.op not in LOWERINGS:
            raise DistillError(f"node {node.name!r}: op {node.op!r} has no ONNX lowering; "
                               f"supported: {', '.join(sorted(LOWERINGS))}")
    # Weight initializers keep their promised names, so they are reserved before anything else
    # (a shared array once, under its first node's name), then the graph's inputs and outputs;
    # node outputs come next (the IR node's own name where free), intermediates last.
    outputs = [OUTPUT] if len(model.outputs) == 1 else \
        [f"{OUTPUT}_{k}" for k in range(len(model.outputs))]
    weight_names: dict[int, str] = {}
    for n in model.nodes:
        for k in sorted(n.weights):
            weight_names.setdefault(id(n.weights[k]), f"{n.name}_{k}")
    g = _Graph({*model.input_names, *outputs, *weight_names.values()}, weight_names)
    tensors = {name: name for name in model.input_names}
    computed_into = {}  # node -> the graph output it is computed straight into
    for out, out_name in zip(model.outputs, outputs):
        if out not in tensors and out not in computed_into:
            computed_into[out] = out_name
    for node in model.nodes:
        tensors[node.name] = computed_into.get(node.name) or g.tensor(node.name)
    for node in model.nodes:
        xs = [tensors[i] for i in node.inputs]
        LOWERINGS[node.op](g, node, xs[0] if len(xs) == 1 and node.op not in _MERGES else xs,
                           tensors[node.name])
    for k, (out, out_name) in enumerate(zip(model.outputs, outputs)):
        if tensors[out] != out_name:  # an input, or a value output twice: copied
            g.add("Identity", [tensors[out]], out_name, "identity" if len(outputs) == 1
                  else f"identity_{k}")

    graph = helper.make_graph(
        g.nodes, name,
        [helper.make_tensor_value_info(inp, TensorProto.FLOAT, [BATCH, *shape])
         for inp, shape in model.inputs],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [BATCH, *shape])
         for out_name, shape in zip(outputs, model.output_shapes)],
        initializer=g.initializers)
    proto = helper.make_model(graph, ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="distill", producer_version=__version__,
                              doc_string=_describe(model, name))
    labels = json.dumps(list(model.labels)) if model.labels is not None else ""
    helper.set_model_props(proto, {
        "name": name,
        "ir_hash": ir.model_hash(model),
        "distill_version": __version__,
        "labels": labels,
        "input_shape": json.dumps(list(model.input_shape)),
        "output_shape": json.dumps(list(model.output_shape)),
    })
    return proto


def _describe(model: ir.Model, name: str) -> str:
    shape = ", ".join(["N", *map(str, model.input_shape)])
    out = ", ".join(["N", *map(str, model.output_shape)])
    text = (f"{name}: a distill model, input ({shape}) float32 -> output ({out}) float32, "
            f"{len(model.nodes)} layers")
    if model.labels is not None:
        text += f"; labels: {', '.join(model.labels)}"
    return text + "."


def export_onnx(model: ir.Model, out_dir: str | os.PathLike, name: str | None = None
                ) -> list[Path]:
    """Write `out_dir/NAME.onnx` (NAME: `name` sanitized, or the model's) after the ONNX checker
    has passed it; returns the paths written."""
    proto = to_onnx(model, name)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        # A bug in a lowering, not bad input: say which model exposed it.
        raise RuntimeError(f"ONNX checker rejected the export of {model.name!r}: {e}") from e
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{proto.graph.name}.onnx"
    ir.atomic_write(path, proto.SerializeToString(deterministic=True))
    return [path]
