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
    macs: Callable[[Shape, Shape], int] = lambda i, o: 0  # multiply-adds per sample
    doc: str = ""
    arity: int = 1  # inputs it takes: 1, 2, ... or MANY (two or more)


MANY = 0  # the arity of a merge that takes any number of inputs from two on


OPS: dict[str, OpDef] = {}


def op(name: str, *, shape: Callable | None = None, weights: tuple[str, ...] = (),
       optional_weights: tuple[str, ...] = (), attrs: Mapping[str, type] | None = None,
       macs: Callable[[Shape, Shape], int] | None = None, arity: int = 1,
       optional_attrs: Mapping[str, type] | None = None) -> Callable:
    """Register `forward` as the op `name`. Without `shape` the op keeps its input's shape."""
    def register(forward: Callable) -> Callable:
        OPS[name] = OpDef(name=name, forward=forward,
                          out_shape=shape or (lambda s, a, w: s),
                          weights=weights, optional_weights=optional_weights,
                          attrs=dict(attrs or {}),
                          macs=macs or (lambda i, o: 0),
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
    macs=lambda i, o: prod(i[:-1]) * i[-1] * o[-1])
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
_erf = np.frompyfunc(__import__("math").erf, 1, 1)


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
