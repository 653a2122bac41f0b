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
    attrs: Mapping[str, type] = field(default_factory=dict)  # allowed attributes and their types
    macs: Callable[[Shape, Shape], int] = lambda i, o: 0  # multiply-adds per sample
    doc: str = ""
    arity: int = 1  # inputs it takes: 1, 2, ... or MANY (two or more)


MANY = 0  # the arity of a merge that takes any number of inputs from two on


OPS: dict[str, OpDef] = {}


def op(name: str, *, shape: Callable | None = None, weights: tuple[str, ...] = (),
       optional_weights: tuple[str, ...] = (), attrs: Mapping[str, type] | None = None,
       macs: Callable[[Shape, Shape], int] | None = None, arity: int = 1) -> Callable:
    """Register `forward` as the op `name`. Without `shape` the op keeps its input's shape."""
    def register(forward: Callable) -> Callable:
        OPS[name] = OpDef(name=name, forward=forward,
                          out_shape=shape or (lambda s, a, w: s),
                          weights=weights, optional_weights=optional_weights,
                          attrs=dict(attrs or {}),
                          macs=macs or (lambda i, o: 0),
                          doc=(forward.__doc__ or "").strip(), arity=arity)
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


@op("softmax")
def softmax(x, attrs, w):
    """y = exp(x - max x) / sum(exp(x - max x)) over the last axis."""
    return ad.softmax(x, -1)


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

ACTIVATIONS = ("linear", "sigmoid", "tanh", "relu", "leaky_relu", "softmax")
