"""THE op registry: the math of every IR op, written once.

Where it sits: between the autodiff core and everything else. Training layers (`nn`) call these
functions on tracked tensors, and the reference interpreter (`ir.run`) calls the same functions
on constants, so there is one definition of what each op computes. Exporters emit code that
computes the same thing; the emitted code is verified against `ir.run`, i.e. against this file.

An op is registered with `@op(name, weights=..., attrs=...)` on its forward function
`forward(x, attrs, weights) -> Tensor`, plus a shape rule. An op that takes several inputs (a
merge) says `arity=` (2, or MANY for two or more) and gets a list of tensors and a list of
shapes instead. Adding a layer starts here: one function, then one template per text language
(`templates/<lang>/ops/<op>.j2`). `forward` and `output_shape` below are how everything else
calls an op, whatever its arity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np

from . import autodiff as ad

Shape = tuple[int, ...]


@dataclass(frozen=True)
class OpDef:
    name: str
    forward: Callable[[Any, Mapping[str, Any], Mapping[str, Any]], ad.Tensor]
    out_shape: Callable[[Shape, Mapping[str, Any], Mapping[str, Any]], Shape]
    weights: tuple[str, ...] = ()          # required weight names
    optional_weights: tuple[str, ...] = ()  # weights that may be absent (a dense without bias)
    attrs: Mapping[str, type] = field(default_factory=dict)  # required attributes and their types
    optional_attrs: Mapping[str, type] = field(default_factory=dict)  # those that may be absent
    # multiply-adds per sample, from the input and output shapes and the weights
    macs: Callable[[Shape, Shape, Mapping[str, Any]], int] = lambda i, o, w: 0
    doc: str = ""
    arity: int = 1  # inputs it takes: 1, 2, ... or MANY (two or more)


MANY = 0  # the arity of a merge that takes any number of inputs from two on


OPS: dict[str, OpDef] = {}


def op(name: str, *, shape: Callable | None = None, weights: tuple[str, ...] = (),
       optional_weights: tuple[str, ...] = (), attrs: Mapping[str, type] | None = None,
       macs: Callable[[Shape, Shape, Mapping[str, Any]], int] | None = None, arity: int = 1,
       optional_attrs: Mapping[str, type] | None = None) -> Callable:
    """Register `forward` as the op `name`. Without `shape` the op keeps its input's shape."""
    def register(forward: Callable) -> Callable:
        OPS[name] = OpDef(name=name, forward=forward,
                          out_shape=shape or (lambda s, a, w: s),
                          weights=weights, optional_weights=optional_weights,
                          attrs=dict(attrs or {}),
                          macs=macs or (lambda i, o, w: 0),
                          doc=(forward.__doc__ or "").strip(), arity=arity,
                          optional_attrs=dict(optional_attrs or {}))
        return forward
    return register


def takes(opdef: OpDef, count: int) -> bool:
    """Whether `opdef` takes `count` inputs."""
    return count >= 2 if opdef.arity == MANY else count == opdef.arity


def forward(opdef: OpDef, xs: list, attrs: Mapping[str, Any], weights: Mapping[str, Any]):
    """The op's output for its inputs `xs` (one tensor per input, in order)."""
    return opdef.forward(xs[0] if opdef.arity == 1 else list(xs), attrs, weights)


def output_shape(opdef: OpDef, shapes: list[Shape], attrs: Mapping[str, Any],
                 weights: Mapping[str, Any]) -> Shape:
    """The op's per-sample output shape for inputs of `shapes`; ValueError if they do not fit."""
    if not takes(opdef, len(shapes)):
        want = "two or more" if opdef.arity == MANY else str(opdef.arity)
        raise ValueError(f"takes {want} inputs, not {len(shapes)}")
    out = opdef.out_shape(shapes[0] if opdef.arity == 1 else list(shapes), attrs, weights)
    return tuple(int(d) for d in out)


# ------------------------------------------------------------------------------------ the ops

def _dense_shape(s: Shape, attrs, w) -> Shape:
    kernel = w["kernel"].shape
    if len(kernel) != 2 or not s or s[-1] != kernel[0]:
        raise ValueError(f"kernel of shape {kernel} does not fit an input of shape {s}")
    if "bias" in w and w["bias"].shape != (kernel[1],):
        raise ValueError(f"bias of shape {w['bias'].shape} does not fit kernel {kernel}")
    return s[:-1] + (kernel[1],)


@op("dense", shape=_dense_shape, weights=("kernel",), optional_weights=("bias",),
    macs=lambda i, o, w: prod(i[:-1]) * i[-1] * o[-1])
def dense(x, attrs, w):
    """y = x @ kernel + bias, kernel (inputs, units) as in Keras; acts on the last axis."""
    if "bias" in w:
        return ad.affine(x, w["kernel"], w["bias"])
    return ad.matmul(x, w["kernel"])


@op("normalize", weights=("mean", "std"))
def normalize(x, attrs, w):
    """y = (x - mean) / std, per feature: standardization learned from the training data."""
    return (x - w["mean"]) / w["std"]


@op("linear")
def linear(x, attrs, w):
    """y = x (an explicit identity activation)."""
    return x


@op("sigmoid")
def sigmoid(x, attrs, w):
    """y = 1 / (1 + exp(-x)), computed as e / (1 + e) with e = exp(-|x|) for x < 0."""
    return ad.sigmoid(x)


@op("tanh")
def tanh(x, attrs, w):
    """y = tanh(x)."""
    return ad.tanh(x)


@op("relu")
def relu(x, attrs, w):
    """y = max(x, 0)."""
    return ad.relu(x)


@op("leaky_relu", attrs={"alpha": float})
def leaky_relu(x, attrs, w):
    """y = x if x > 0 else alpha * x; alpha is kept exactly as trained (a float32)."""
    return ad.leaky_relu(x, attrs["alpha"])


def _softmax_shape(s: Shape, attrs, w) -> Shape:
    if not 0 <= attrs.get("axis", len(s) - 1) < len(s):
        raise ValueError(f"axis {attrs['axis']} is outside the input's {len(s)} axes")
    return s


@op("softmax", shape=_softmax_shape, optional_attrs={"axis": int})
def softmax(x, attrs, w):
    """y = exp(x - max x) / sum(exp(x - max x)) over per-sample axis `axis` (default: the last;
    0 is the first axis after the batch)."""
    return ad.softmax(x, attrs["axis"] + 1 if "axis" in attrs else -1)


# ------------------------------------------------------------------------ more activations
# Each is its float32 NumPy forward pass (which the NumPy module repeats operation for
# operation) and its derivative, for training. C and Go compute the transcendental parts in
# double and round once, so they agree with these within the export tolerance.

F = np.float32
SELU_ALPHA, SELU_SCALE = F(1.6732632423543772), F(1.0507009873554805)
INV_SQRT2, INV_SQRT_2PI, SQRT_2_OVER_PI = F(0.7071067811865476), F(0.3989422804014327), \
    F(0.7978845608028654)
GELU_CUBIC = F(0.044715)
_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray) -> np.ndarray:
    """erf in double (NumPy has none), rounded to the input's dtype."""
    return _erf(x.astype(np.float64)).astype(x.dtype)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return ad.sigmoid(ad.constant(x)).data


@op("elu", attrs={"alpha": float})
def elu(x, attrs, w):
    """y = x if x > 0 else alpha * (e^x - 1)."""
    a = F(attrs["alpha"])
    return ad.unary(x, lambda v: np.where(v > 0, v, a * np.expm1(v)),
                    lambda v, y: np.where(v > 0, F(1), y + a))


@op("selu")
def selu(x, attrs, w):
    """y = scale * (x if x > 0 else alpha * (e^x - 1)), Keras's constants as float32."""
    return ad.unary(x, lambda v: SELU_SCALE * np.where(v > 0, v, SELU_ALPHA * np.expm1(v)),
                    lambda v, y: np.where(v > 0, SELU_SCALE, y + SELU_SCALE * SELU_ALPHA))


@op("gelu")
def gelu(x, attrs, w):
    """y = x / 2 * (1 + erf(x / sqrt 2)), the exact GELU."""
    def forward(v):
        return F(0.5) * v * (F(1) + erf(v * INV_SQRT2))

    def derivative(v, y):
        return F(0.5) * (F(1) + erf(v * INV_SQRT2)) + v * np.exp(F(-0.5) * v * v) * INV_SQRT_2PI
    return ad.unary(x, forward, derivative)


@op("gelu_tanh")
def gelu_tanh(x, attrs, w):
    """y = x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3))), GELU's tanh form."""
    def forward(v):
        return F(0.5) * v * (F(1) + np.tanh(SQRT_2_OVER_PI * (v + GELU_CUBIC * v * v * v)))

    def derivative(v, y):
        t = np.tanh(SQRT_2_OVER_PI * (v + GELU_CUBIC * v * v * v))
        return F(0.5) * (F(1) + t) + F(0.5) * v * (F(1) - t * t) * SQRT_2_OVER_PI * (
            F(1) + F(3) * GELU_CUBIC * v * v)
    return ad.unary(x, forward, derivative)


@op("silu")
def silu(x, attrs, w):
    """y = x * sigmoid(x) (swish), with sigmoid as the sigmoid op computes it."""
    return ad.unary(x, lambda v: v * _sigmoid(v),
                    lambda v, y: _sigmoid(v) * (F(1) + v * (F(1) - _sigmoid(v))))


@op("softplus")
def softplus(x, attrs, w):
    """y = log(1 + e^x), as max(x, 0) + log1p(e^-|x|), which never overflows."""
    return ad.unary(x, lambda v: np.maximum(v, F(0)) + np.log1p(np.exp(-np.abs(v))),
                    lambda v, y: _sigmoid(v))


@op("softsign")
def softsign(x, attrs, w):
    """y = x / (1 + |x|)."""
    return ad.unary(x, lambda v: v / (F(1) + np.abs(v)),
                    lambda v, y: F(1) / np.square(F(1) + np.abs(v)))


@op("hard_sigmoid")
def hard_sigmoid(x, attrs, w):
    """y = min(max(x + 3, 0), 6) / 6, Keras 3's (relu6(x + 3) / 6)."""
    return ad.unary(x, lambda v: np.minimum(np.maximum(v + F(3), F(0)), F(6)) / F(6),
                    lambda v, y: np.where((v > -3) & (v < 3), F(1) / F(6), F(0)))


@op("exponential")
def exponential(x, attrs, w):
    """y = e^x."""
    return ad.exp(x)


@op("clipped_relu", attrs={"threshold": float, "negative_slope": float},
    optional_attrs={"max_value": float})
def clipped_relu(x, attrs, w):
    """Keras's ReLU with options: y = min(x if x > threshold else 0, max_value)
    - negative_slope * max(threshold - x, 0); without max_value, no cap."""
    t, slope = F(attrs["threshold"]), F(attrs["negative_slope"])
    cap = F(attrs["max_value"]) if "max_value" in attrs else None

    def forward(v):
        pos = np.where(v > t, v, F(0))
        if cap is not None:
            pos = np.minimum(pos, cap)
        return pos - slope * np.maximum(t - v, F(0))

    def derivative(v, y):
        inside = (v > t) if cap is None else (v > t) & (v < cap)
        return np.where(inside, F(1), F(0)) + np.where(v < t, slope, F(0))
    return ad.unary(x, forward, derivative)


def _prelu_shape(s: Shape, attrs, w) -> Shape:
    alpha = w["alpha"].shape
    if len(alpha) != len(s) or not all(a in (1, d) for a, d in zip(alpha, s)):
        raise ValueError(f"alpha of shape {alpha} does not fit an input of shape {s} (one "
                         "value per input value, or 1 along shared axes)")
    return s


@op("prelu", shape=_prelu_shape, weights=("alpha",))
def prelu(x, attrs, w):
    """y = x if x > 0 else alpha * x, alpha learned per value (1 along shared axes)."""
    return ad.where(x.data > 0, x, ad.mul(w["alpha"], x))


def _layer_norm_shape(s: Shape, attrs, w) -> Shape:
    axis = attrs["axis"]
    if not 0 <= axis < len(s):
        raise ValueError(f"axis {axis} is outside the input's {len(s)} axes")
    for key in ("gamma", "beta"):
        if key in w and w[key].shape != tuple(s[axis:]):
            raise ValueError(f"{key} of shape {w[key].shape} does not fit the normalized "
                             f"axes {tuple(s[axis:])}")
    if not attrs["epsilon"] > 0:
        raise ValueError("epsilon must be above 0")
    return s


@op("layer_norm", shape=_layer_norm_shape, attrs={"axis": int, "epsilon": float},
    optional_weights=("gamma", "beta"))
def layer_norm(x, attrs, w):
    """y = (x - mean) * (1 / sqrt(variance + epsilon)) * gamma + beta, mean and variance over
    per-sample axes `axis` onwards, for each sample (and each index before `axis`)."""
    shape, axis = x.shape, attrs["axis"] + 1
    rows = ad.reshape(x, (shape[0], prod(shape[1:axis]), prod(shape[axis:])))
    centred = rows - ad.mean(rows, axis=-1, keepdims=True)
    variance = ad.mean(centred * centred, axis=-1, keepdims=True)
    inv = ad.div(ad.constant(F(1)), ad.pow(variance + F(attrs["epsilon"]), F(0.5)))
    y = ad.reshape(centred * inv, shape)
    if "gamma" in w:
        y = y * w["gamma"]
    if "beta" in w:
        y = y + w["beta"]
    return y


def _reshape_shape(s: Shape, attrs, w) -> Shape:
    target = list(attrs["shape"])
    # Only ints: 2.0 == 2 would pass every check below and then break numpy's reshape.
    for d in target:
        if not isinstance(d, int) or isinstance(d, bool):
            raise ValueError(f"target shape dims must be integers, not {type(d).__name__}")
    if target.count(-1) > 1 or any(d == 0 or d < -1 for d in target):
        raise ValueError(f"bad target shape {tuple(target)}")
    size, known = prod(s), prod(d for d in target if d != -1)
    if -1 in target:
        if known == 0 or size % known:
            raise ValueError(f"cannot reshape {s} into {tuple(target)}")
        target[target.index(-1)] = size // known
    if prod(target) != size:
        raise ValueError(f"cannot reshape {s} into {tuple(target)}")
    return tuple(target)


@op("reshape", shape=_reshape_shape, attrs={"shape": list})
def reshape(x, attrs, w):
    """Per-sample reshape, row-major (C order); moves no data in emitted code."""
    return ad.reshape(x, (x.shape[0], *_reshape_shape(x.shape[1:], attrs, w)))


@op("flatten", shape=lambda s, a, w: (prod(s),))
def flatten(x, attrs, w):
    """Per-sample flatten to one axis, row-major (C order)."""
    return ad.reshape(x, (x.shape[0], -1))


# ------------------------------------------------------------------------ convolutions, pooling
# Channels last, as Keras: a sample is (*spatial, channels), spatial of rank 1 or 2. Windows
# are gathered (im2col) into rows and multiplied by the kernel, so the autodiff core trains a
# convolution with the primitives it has. `pads` holds the zeros added before each spatial
# axis, then after each ("same" padding is resolved by the importer).

def _ints(attrs, key: str, rank: int, low: int) -> list[int]:
    values = attrs[key]
    if (len(values) != rank or not all(isinstance(v, int) and not isinstance(v, bool)
                                       and v >= low for v in values)):
        raise ValueError(f"{key} must be {rank} integers of at least {low}, not {values}")
    return list(values)


def _windows(s: Shape, window: list[int], attrs) -> tuple[Shape, list[int], list[int],
                                                             list[int]]:
    """The output's spatial shape, and the strides, dilation and pads, checked."""
    rank = len(s) - 1
    if rank not in (1, 2):
        raise ValueError(f"takes inputs of 1 or 2 spatial axes and channels, not {s}")
    strides = _ints(attrs, "strides", rank, 1)
    dilation = _ints(attrs, "dilation", rank, 1) if "dilation" in attrs else [1] * rank
    pads = _ints(attrs, "pads", 2 * rank, 0)
    out = []
    for n, k, st, d, before, after in zip(s[:-1], window, strides, dilation, pads[:rank],
                                          pads[rank:]):
        span = d * (k - 1) + 1
        if n + before + after < span:
            raise ValueError(f"a window of {span} does not fit an axis of {n} (padded: "
                             f"{n + before + after})")
        out.append((n + before + after - span) // st + 1)
    return tuple(out), strides, dilation, pads


def same_pads(padding: str, shape: Shape, window: list[int], strides: list[int],
              dilation: list[int]) -> list[int]:
    """`pads` for Keras's padding names: "valid" (none), "same" (the output has ceil(n / stride)
    positions; the odd zero goes after) or "causal" (all before, 1-D)."""
    rank = len(window)
    if padding == "valid":
        return [0] * (2 * rank)
    if padding == "causal":
        return [d * (k - 1) for k, d in zip(window, dilation)] + [0] * rank
    if padding != "same":
        raise ValueError(f"padding={padding!r}")
    before, after = [], []
    for n, k, st, d in zip(shape, window, strides, dilation):
        total = max((-(-n // st) - 1) * st + d * (k - 1) + 1 - n, 0)
        before.append(total // 2)
        after.append(total - total // 2)
    return before + after


def transposed_pads(padding: str, shape: Shape, window: list[int], strides: list[int],
                    dilation: list[int], output_padding: list[int] | None = None
                    ) -> tuple[list[int], list[int]]:
    """(`pads`, `output_padding`) of a transposed convolution with Keras's padding names.
    Keras sets the output length; TensorFlow's transposed convolution places it: "same" cuts
    half the overhang before (the lesser half), "valid" nothing; what the windows do not reach
    is output padding, after."""
    before, after, extra = [], [], []
    for i, (n, k, st, d) in enumerate(zip(shape, window, strides, dilation)):
        span = d * (k - 1) + 1
        full = (n - 1) * st + span
        if output_padding is None:
            length = n * st + max(span - st, 0) if padding == "valid" else n * st
        else:
            length = full - 2 * (span // 2 if padding == "same" else 0) + output_padding[i]
        if padding not in ("valid", "same"):
            raise ValueError(f"padding={padding!r}")
        cut = max(full - length, 0) // 2 if padding == "same" else 0
        before.append(cut)
        after.append(max(full - cut - length, 0))
        extra.append(max(length - (full - cut), 0))
    return before + after, extra


def window_index(s: Shape, window: list[int], attrs) -> np.ndarray:
    """(outputs, window) positions into the padded input's flattened spatial axes: row o
    holds the positions that output position o reads, in row-major window order."""
    out, strides, dilation, pads = _windows(s, window, attrs)
    rank = len(out)
    padded = [n + pads[i] + pads[rank + i] for i, n in enumerate(s[:-1])]
    grids = np.meshgrid(*[np.arange(o) * st for o, st in zip(out, strides)], indexing="ij")
    offsets = np.meshgrid(*[np.arange(k) * d for k, d in zip(window, dilation)], indexing="ij")
    index = np.zeros((prod(out), prod(window)), np.int64)
    for axis in range(rank):
        stride = prod(padded[axis + 1:])
        index += (grids[axis].reshape(-1, 1) + offsets[axis].reshape(1, -1)) * stride
    return index


def _pad(x, pads: list[int], value: float):
    rank = len(pads) // 2
    for axis in range(rank):
        for side, width in ((0, pads[axis]), (1, pads[rank + axis])):
            if width:
                shape = list(x.shape)
                shape[axis + 1] = width
                fill = ad.constant(np.full(shape, value, x.data.dtype))
                x = ad.concatenate([fill, x] if side == 0 else [x, fill], axis=axis + 1)
    return x


def _gather(x, window: list[int], attrs, value: float):
    """(N, outputs, window, channels): the windows of x, padded with `value`."""
    index = window_index(x.shape[1:], window, attrs)
    xp = _pad(x, list(attrs["pads"]), value)
    flat = ad.reshape(xp, (xp.shape[0], -1, xp.shape[-1]))
    return ad.take(flat, index, axis=1)


def _conv_shape(s: Shape, attrs, w) -> Shape:
    kernel = w["kernel"].shape
    groups = attrs["groups"]
    if len(kernel) != len(s) + 1 or groups < 1 or s[-1] != kernel[-2] * groups or \
            kernel[-1] % groups:
        raise ValueError(f"kernel of shape {kernel} with {groups} groups does not fit an input "
                         f"of shape {s} (kernel: *window, channels / groups, filters)")
    if "bias" in w and w["bias"].shape != (kernel[-1],):
        raise ValueError(f"bias of shape {w['bias'].shape} does not fit kernel {kernel}")
    out, *_ = _windows(s, list(kernel[:-2]), attrs)
    return (*out, kernel[-1])


@op("conv", shape=_conv_shape, weights=("kernel",), optional_weights=("bias",),
    attrs={"strides": list, "pads": list, "groups": int}, optional_attrs={"dilation": list},
    macs=lambda i, o, w: prod(o) * prod(w["kernel"].shape[:-1]))  # window x group channels
def conv(x, attrs, w):
    """y[o, f] = bias[f] + sum over the window and the group's channels of x * kernel; kernel
    (*window, channels / groups, filters) as in Keras; groups == channels is depthwise."""
    kernel = w["kernel"]
    window, cin, filters = list(kernel.shape[:-2]), kernel.shape[-2], kernel.shape[-1]
    out, *_ = _windows(x.shape[1:], window, attrs)
    cols = _gather(x, window, attrs, 0.0)  # (N, O, K, C)
    n, o, k = cols.shape[0], cols.shape[1], cols.shape[2]
    groups, per = attrs["groups"], filters // attrs["groups"]
    flat = kernel.reshape(-1, cin, filters)
    parts = []
    for g in range(groups):
        rows = ad.reshape(cols[:, :, :, g * cin:(g + 1) * cin], (n, o, k * cin))
        parts.append(ad.matmul(rows, flat[:, :, g * per:(g + 1) * per].reshape(k * cin, per)))
    y = parts[0] if groups == 1 else ad.concatenate(parts, axis=-1)
    if "bias" in w:
        y = y + w["bias"]
    return ad.reshape(y, (n, *out, filters))


def transposed_full(s: Shape, attrs, w) -> tuple[int, ...]:
    """A transposed convolution's spatial shape before its pads are cut: every position a
    window of the input reaches, (n - 1) * stride + dilation * (k - 1) + 1 per axis."""
    kernel = w["kernel"].shape
    rank = len(s) - 1
    if rank not in (1, 2) or len(kernel) != rank + 2 or s[-1] != kernel[-2]:
        raise ValueError(f"kernel of shape {kernel} does not fit an input of shape {s} "
                         "(kernel: *window, channels, filters)")
    strides = _ints(attrs, "strides", rank, 1)
    dilation = _ints(attrs, "dilation", rank, 1) if "dilation" in attrs else [1] * rank
    return tuple((n - 1) * st + d * (k - 1) + 1
                 for n, k, st, d in zip(s[:-1], kernel[:-2], strides, dilation))


def _conv_transpose_shape(s: Shape, attrs, w) -> Shape:
    full = transposed_full(s, attrs, w)
    rank = len(full)
    pads = _ints(attrs, "pads", 2 * rank, 0)
    extra = _ints(attrs, "output_padding", rank, 0) if "output_padding" in attrs else \
        [0] * rank
    strides = attrs["strides"]
    if any(e >= st for e, st in zip(extra, strides)):
        raise ValueError(f"output_padding {extra} must be less than the strides {strides}")
    if "bias" in w and w["bias"].shape != (w["kernel"].shape[-1],):
        raise ValueError(f"bias of shape {w['bias'].shape} does not fit kernel "
                         f"{w['kernel'].shape}")
    out = [n + e - pads[i] - pads[rank + i] for i, (n, e) in enumerate(zip(full, extra))]
    if min(out) < 1:
        raise ValueError(f"pads {pads} leave nothing of a transposed output of {full}")
    return (*out, w["kernel"].shape[-1])


@op("conv_transpose", shape=_conv_transpose_shape, weights=("kernel",),
    optional_weights=("bias",), attrs={"strides": list, "pads": list},
    optional_attrs={"dilation": list, "output_padding": list},
    macs=lambda i, o, w: prod(i[:-1]) * prod(w["kernel"].shape))
def conv_transpose(x, attrs, w):
    """The transpose (gradient) of a convolution: input position i adds x[i] * kernel[k] at
    output position i * stride + k * dilation - pads before, window offsets k in order;
    `output_padding` positions after the last window get the bias alone. Kernel (*window,
    channels, filters); Keras's (*window, filters, channels) is transposed by the importer."""
    kernel = w["kernel"]
    window, cin, filters = list(kernel.shape[:-2]), kernel.shape[-2], kernel.shape[-1]
    full = transposed_full(x.shape[1:], attrs, w)
    rank, k = len(full), prod(window)
    out = _conv_transpose_shape(x.shape[1:], attrs, w)
    # where input position i's window offsets land in the full output: a convolution's table
    table = window_index((*full, filters), window, {**attrs, "pads": [0] * (2 * rank)})
    n = x.shape[0]
    per_input = ad.transpose(ad.reshape(kernel, (k, cin, filters)), (1, 0, 2))
    cols = ad.matmul(ad.reshape(x, (n, -1, cin)), ad.reshape(per_input, (cin, k * filters)))
    y = ad.scatter(ad.reshape(cols, (n, -1, k, filters)), table, prod(full), axis=1)
    y = ad.reshape(y, (n, *full, filters))
    extra = list(attrs.get("output_padding", [0] * rank))
    if any(extra):
        y = _pad(y, [0] * rank + extra, 0.0)
    pads = attrs["pads"]
    y = y[(slice(None), *(slice(pads[i], pads[i] + out[i]) for i in range(rank)))]
    return y + w["bias"] if "bias" in w else y


def _pool_shape(s: Shape, attrs, w) -> Shape:
    out, *_ = _windows(s, _ints(attrs, "pool", len(s) - 1, 1), attrs)
    return (*out, s[-1])


@op("max_pool", shape=_pool_shape, attrs={"pool": list, "strides": list, "pads": list})
def max_pool(x, attrs, w):
    """The largest value of each window, per channel (padding never wins)."""
    return ad.max(_gather(x, list(attrs["pool"]), attrs, -np.inf), axis=2).reshape(
        (x.shape[0], *_pool_shape(x.shape[1:], attrs, w)))


def window_counts(s: Shape, window: list[int], attrs) -> np.ndarray:
    """How many real (not padding) values each output position's window holds, as float32."""
    real = np.pad(np.ones(s[:-1], np.float32), list(zip(attrs["pads"][:len(s) - 1],
                                                         attrs["pads"][len(s) - 1:])))
    return real.reshape(-1)[window_index(s, window, attrs)].sum(axis=1).astype(np.float32)


@op("avg_pool", shape=_pool_shape, attrs={"pool": list, "strides": list, "pads": list})
def avg_pool(x, attrs, w):
    """The mean of each window's values, per channel; padding is not counted (as Keras's
    "same" padding): the sum over the window divided by its number of real values."""
    window = list(attrs["pool"])
    counts = window_counts(x.shape[1:], window, attrs)
    total = ad.sum(_gather(x, window, attrs, 0.0), axis=2)
    return (total / counts.reshape(1, -1, 1)).reshape(
        (x.shape[0], *_pool_shape(x.shape[1:], attrs, w)))


def _global_shape(s: Shape, attrs, w) -> Shape:
    if len(s) < 2:
        raise ValueError(f"takes inputs of spatial axes and channels, not {s}")
    return (s[-1],)


@op("global_avg_pool", shape=_global_shape)
def global_avg_pool(x, attrs, w):
    """The mean over all spatial positions, per channel."""
    return ad.mean(ad.reshape(x, (x.shape[0], -1, x.shape[-1])), axis=1)


@op("global_max_pool", shape=_global_shape)
def global_max_pool(x, attrs, w):
    """The largest value over all spatial positions, per channel."""
    return ad.max(ad.reshape(x, (x.shape[0], -1, x.shape[-1])), axis=1)


def _zero_pad_shape(s: Shape, attrs, w) -> Shape:
    rank = len(s) - 1
    pads = _ints(attrs, "pads", 2 * rank, 0)
    return (*[n + pads[i] + pads[rank + i] for i, n in enumerate(s[:-1])], s[-1])


@op("zero_pad", shape=_zero_pad_shape, attrs={"pads": list})
def zero_pad(x, attrs, w):
    """Zeros around the spatial axes: pads before each axis, then after each."""
    return _pad(x, list(attrs["pads"]), 0.0)


def _crop_shape(s: Shape, attrs, w) -> Shape:
    rank = len(s) - 1
    crops = _ints(attrs, "crops", 2 * rank, 0)
    out = [n - crops[i] - crops[rank + i] for i, n in enumerate(s[:-1])]
    if rank not in (1, 2) or min(out) < 1:
        raise ValueError(f"crops {crops} leave nothing of an input of shape {s}")
    return (*out, s[-1])


@op("crop", shape=_crop_shape, attrs={"crops": list})
def crop(x, attrs, w):
    """The spatial axes cut: crops before each axis, then after each."""
    out = _crop_shape(x.shape[1:], attrs, w)
    crops, rank = list(attrs["crops"]), len(out) - 1
    return x[(slice(None), *(slice(crops[i], crops[i] + out[i]) for i in range(rank)))]


INTERPOLATIONS = ("nearest", "linear")


def _upsample_shape(s: Shape, attrs, w) -> Shape:
    rank = len(s) - 1
    if rank not in (1, 2):
        raise ValueError(f"takes inputs of 1 or 2 spatial axes and channels, not {s}")
    size = _ints(attrs, "size", rank, 1)
    if attrs.get("interpolation", "nearest") not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, not "
                         f"{attrs['interpolation']!r}")
    return (*[n * k for n, k in zip(s[:-1], size)], s[-1])


def lerp_table(n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For linear upsampling of an axis of n by k: each output position's two neighbours and
    the weight of the second, output o at input coordinate (o + 0.5) / k - 0.5 (half-pixel
    centres, as Keras and ONNX's half_pixel), clamped to the axis at both ends."""
    at = (np.arange(n * k) + 0.5) / k - 0.5
    below = np.floor(at)
    lo = np.clip(below, 0, n - 1).astype(np.int64)
    hi = np.clip(below + 1, 0, n - 1).astype(np.int64)
    return lo, hi, (at - below).astype(np.float32)


@op("upsample", shape=_upsample_shape, attrs={"size": list},
    optional_attrs={"interpolation": str})
def upsample(x, attrs, w):
    """Each value repeated `size` times along each spatial axis ("nearest", the default), or
    "linear" (bilinear in 2-D): along the last spatial axis first, then the one before, each
    output a + (b - a) * t between its two neighbours a and b (`lerp_table`)."""
    if attrs.get("interpolation", "nearest") == "nearest":
        for axis, k in enumerate(attrs["size"]):
            n = x.shape[axis + 1]
            x = x[(slice(None),) * (axis + 1) + (np.arange(n * k) // k,)]
        return x
    for axis in reversed(range(len(attrs["size"]))):
        lo, hi, t = lerp_table(x.shape[axis + 1], attrs["size"][axis])
        a = ad.take(x, lo, axis=axis + 1)
        along = [1] * len(x.shape)
        along[axis + 1] = len(t)
        x = a + (ad.take(x, hi, axis=axis + 1) - a) * t.reshape(along)
    return x


def _transpose_shape(s: Shape, attrs, w) -> Shape:
    perm = list(attrs["perm"])
    if sorted(perm) != list(range(len(s))):
        raise ValueError(f"perm {perm} is not an order of the {len(s)} axes after the batch")
    return tuple(s[p] for p in perm)


@op("transpose", shape=_transpose_shape, attrs={"perm": list})
def transpose(x, attrs, w):
    """The axes after the batch reordered: output axis k is input axis perm[k] (ONNX's perm
    less the batch), as [2, 0, 1] from channels last (H, W, C) to channels first (C, H, W)."""
    return ad.transpose(x, (0, *(p + 1 for p in attrs["perm"])))


@op("reverse")
def reverse(x, attrs, w):
    """The first axis after the batch read last to first (a backward recurrent layer's
    steps put back in time order)."""
    return x[:, ::-1]


# ---------------------------------------------------------------------------------- embedding

def _embedding_shape(s: Shape, attrs, w) -> Shape:
    table = w["embeddings"].shape
    if len(table) != 2 or table[0] < 1 or table[0] > 1 << 24:
        raise ValueError(f"embeddings of shape {table} are not (vocabulary of at most 2**24, "
                         "dimensions)")
    return (*s, table[1])


def embedding_ids(x: np.ndarray, vocabulary: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, valid) for each input value: a value v reads row trunc(v), as Keras casts ids to
    integers, where that row exists (-1 < v < vocabulary); any other value, NaN included,
    gives a row of zeros."""
    valid = (x > -1) & (x < vocabulary)
    return np.where(valid, x, 0).astype(np.int64), valid


@op("embedding", shape=_embedding_shape, weights=("embeddings",),
    macs=lambda i, o, w: 0)
def embedding(x, attrs, w):
    """y[..., :] = embeddings[trunc(x[...])]: Keras's Embedding, each input value an id;
    ids outside the table give zeros (embedding_ids)."""
    table = w["embeddings"]
    data = x.data if isinstance(x, ad.Tensor) else np.asarray(x)
    rows, valid = embedding_ids(data.reshape(-1), table.shape[0])
    y = ad.where(valid.reshape(-1, 1), ad.take(table, rows, axis=0), 0)
    return ad.reshape(y, (*data.shape, table.shape[1]))


# ---------------------------------------------------------------------------------- recurrent
# Keras's SimpleRNN, GRU and LSTM over inputs (steps, features), with Keras's weight layouts:
# kernel (features, gates * units), recurrent_kernel (units, gates * units), gates in Keras's
# order (GRU: z, r, h; LSTM: i, f, c, o). The state starts at zero. Each step's products are
# x_t @ kernel and h @ recurrent_kernel, one matrix product each, so the autodiff core trains
# through time (backpropagation through time) with the primitives it has.

GATES = {"simple_rnn": 1, "gru": 3, "lstm": 4}
STEP_ACTIVATIONS = ("tanh", "sigmoid", "relu", "hard_sigmoid")


def _recurrent_shape(s: Shape, attrs, w, op_name: str) -> Shape:
    if len(s) != 2:
        raise ValueError(f"takes inputs of (steps, features), not {s}")
    kernel, recurrent = w["kernel"].shape, w["recurrent_kernel"].shape
    units = recurrent[0] if recurrent else 0
    gates = GATES[op_name]
    if kernel != (s[1], gates * units) or recurrent != (units, gates * units):
        raise ValueError(f"kernel {kernel} and recurrent_kernel {recurrent} do not fit "
                         f"inputs of {s} ((features, {gates} * units), (units, {gates} * units))")
    bias = (2, gates * units) if attrs.get("reset_after") else (gates * units,)
    if "bias" in w and w["bias"].shape != bias:
        raise ValueError(f"bias of shape {w['bias'].shape} is not {bias}")
    for key in ("activation", "recurrent_activation"):
        if key in attrs and attrs[key] not in STEP_ACTIVATIONS:
            raise ValueError(f"{key} must be one of {', '.join(STEP_ACTIVATIONS)}, not "
                             f"{attrs[key]!r}")
    return (s[0], units) if attrs["return_sequences"] else (units,)


def _recurrent(op_name: str, cell: Callable, **extra_attrs: type) -> Callable:
    """Register a recurrent op whose `cell(zx, h, state, attrs, w)` gives the next (h, state)
    from zx = x_t @ kernel (+ bias where the cell adds it)."""
    optional = {"activation": str, "go_backwards": bool, **extra_attrs}
    if op_name != "simple_rnn":
        optional["recurrent_activation"] = str

    def forward(x, attrs, w):
        kernel, recurrent = w["kernel"], w["recurrent_kernel"]
        units = recurrent.shape[0]
        n, steps = x.shape[0], x.shape[1]
        h = ad.constant(np.zeros((n, units), x.dtype))
        state = h if op_name == "lstm" else None
        outs = []
        order = range(steps - 1, -1, -1) if attrs.get("go_backwards") else range(steps)
        for t in order:
            h, state = cell(ad.matmul(x[:, t], kernel), h, state, attrs, w)
            outs.append(h)
        if not attrs["return_sequences"]:
            return h
        return ad.concatenate([ad.reshape(o, (n, 1, units)) for o in outs], axis=1)

    forward.__doc__ = cell.__doc__
    forward.__name__ = op_name
    return op(op_name, shape=lambda s, a, w: _recurrent_shape(s, a, w, op_name),
              weights=("kernel", "recurrent_kernel"), optional_weights=("bias",),
              attrs={"return_sequences": bool}, optional_attrs=optional,
              macs=lambda i, o, w: i[0] * (w["kernel"].size + w["recurrent_kernel"].size))(
                  forward)


def step_activation(attrs, key: str, default: str) -> Callable:
    """The activation named by attrs[key], as the registry's forward pass."""
    opdef = OPS[attrs.get(key, default)]
    return lambda v: opdef.forward(v, {}, {})


def _simple_rnn_cell(zx, h, state, attrs, w):
    """h_t = activation(x_t @ kernel + bias + h @ recurrent_kernel), activation tanh by
    default; return_sequences gives every step's h, else the last; go_backwards reads the
    steps last to first (and returns them in that order)."""
    act = step_activation(attrs, "activation", "tanh")
    z = zx + w["bias"] if "bias" in w else zx
    return act(z + ad.matmul(h, w["recurrent_kernel"])), None


def _gru_cell(zx, h, state, attrs, w):
    """Keras's GRU: z = ra(xz + hz), r = ra(xr + hr), h~ = a(xh + r * hh) with reset_after
    (hh = (h @ recurrent_kernel)_h + its bias) or a(xh + (r * h) @ recurrent_kernel_h)
    without; h_t = z * h + (1 - z) * h~. a is tanh, ra sigmoid by default."""
    act = step_activation(attrs, "activation", "tanh")
    ract = step_activation(attrs, "recurrent_activation", "sigmoid")
    u = h.shape[1]
    recurrent, bias = w["recurrent_kernel"], w.get("bias")
    if attrs.get("reset_after"):
        if bias is not None:
            zx = zx + bias[0]
        zh = ad.matmul(h, recurrent)
        if bias is not None:
            zh = zh + bias[1]
        z = ract(zx[:, :u] + zh[:, :u])
        r = ract(zx[:, u:2 * u] + zh[:, u:2 * u])
        candidate = act(zx[:, 2 * u:] + r * zh[:, 2 * u:])
    else:
        if bias is not None:
            zx = zx + bias
        zh = ad.matmul(h, recurrent[:, :2 * u])
        z = ract(zx[:, :u] + zh[:, :u])
        r = ract(zx[:, u:2 * u] + zh[:, u:])
        candidate = act(zx[:, 2 * u:] + ad.matmul(r * h, recurrent[:, 2 * u:]))
    return z * h + (1 - z) * candidate, None


def _lstm_cell(zx, h, c, attrs, w):
    """Keras's LSTM: z = x_t @ kernel + h @ recurrent_kernel + bias, split into i, f, g, o;
    c_t = ra(f) * c + ra(i) * a(g), h_t = ra(o) * a(c_t). a is tanh, ra sigmoid by default."""
    act = step_activation(attrs, "activation", "tanh")
    ract = step_activation(attrs, "recurrent_activation", "sigmoid")
    u = h.shape[1]
    z = zx + ad.matmul(h, w["recurrent_kernel"])
    if "bias" in w:
        z = z + w["bias"]
    c = ract(z[:, u:2 * u]) * c + ract(z[:, :u]) * act(z[:, 2 * u:3 * u])
    return ract(z[:, 3 * u:]) * act(c), c


simple_rnn = _recurrent("simple_rnn", _simple_rnn_cell)
gru = _recurrent("gru", _gru_cell, reset_after=bool)
lstm = _recurrent("lstm", _lstm_cell)


# ------------------------------------------------------------------------------------- merges
# Keras's merge layers. Inputs are combined left to right, x0 op x1 op x2 ..., one rounding
# per operation, which is the order every target follows.

def _same_shapes(shapes: list[Shape], attrs, w) -> Shape:
    for s in shapes[1:]:
        if tuple(s) != tuple(shapes[0]):
            raise ValueError(f"inputs of shapes {', '.join(map(str, shapes))} differ; a merge "
                             "takes inputs of one shape")
    return tuple(shapes[0])


def _fold(xs: list, combine: Callable):
    out = xs[0]
    for x in xs[1:]:
        out = combine(out, x)
    return out


@op("add", shape=_same_shapes, arity=MANY)
def add(xs, attrs, w):
    """y = x0 + x1 + ..., left to right."""
    return _fold(xs, ad.add)


@op("subtract", shape=_same_shapes, arity=2)
def subtract(xs, attrs, w):
    """y = x0 - x1."""
    return ad.sub(xs[0], xs[1])


@op("multiply", shape=_same_shapes, arity=MANY)
def multiply(xs, attrs, w):
    """y = x0 * x1 * ..., left to right."""
    return _fold(xs, ad.mul)


@op("average", shape=_same_shapes, arity=MANY)
def average(xs, attrs, w):
    """y = (x0 + x1 + ...) / n: the sum left to right, then one division (as Keras does)."""
    return ad.div(_fold(xs, ad.add), ad.constant(np.float32(len(xs))))


@op("maximum", shape=_same_shapes, arity=MANY)
def maximum(xs, attrs, w):
    """y = max(max(x0, x1), x2) ...: NaN if any input is NaN; of equal values, the later."""
    return _fold(xs, ad.maximum)


@op("minimum", shape=_same_shapes, arity=MANY)
def minimum(xs, attrs, w):
    """y = min(min(x0, x1), x2) ...: NaN if any input is NaN; of equal values, the later."""
    return _fold(xs, ad.minimum)


def _concatenate_shape(shapes: list[Shape], attrs, w) -> Shape:
    axis, rank = attrs["axis"], len(shapes[0])
    if not 0 <= axis < rank:
        raise ValueError(f"axis {axis} is outside the inputs' {rank} axes (0 to {rank - 1}, "
                         "not counting the batch axis)")
    for s in shapes:
        if len(s) != rank or s[:axis] != shapes[0][:axis] or s[axis + 1:] != shapes[0][axis + 1:]:
            raise ValueError(f"inputs of shapes {', '.join(map(str, shapes))} differ on an "
                             f"axis other than {axis}")
    return (*shapes[0][:axis], sum(s[axis] for s in shapes), *shapes[0][axis + 1:])


@op("concatenate", shape=_concatenate_shape, attrs={"axis": int}, arity=MANY)
def concatenate(xs, attrs, w):
    """The inputs joined along per-sample axis `axis` (0 is the first axis after the batch)."""
    return ad.concatenate(xs, axis=attrs["axis"] + 1)


MERGES = ("add", "subtract", "multiply", "average", "maximum", "minimum", "concatenate")

# The activations a config may name (Keras's string activations): parameterless, or alpha.
ACTIVATIONS = ("linear", "sigmoid", "tanh", "relu", "leaky_relu", "softmax", "elu", "selu",
               "gelu", "silu", "softplus", "softsign", "hard_sigmoid", "exponential")
