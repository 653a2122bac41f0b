"""Reverse-mode automatic differentiation over NumPy arrays.

Where it sits: the bottom of the stack. `ops` writes every IR op's math against the functions
here, `nn` builds layers, losses and optimizers on them, and the reference interpreter runs the
same functions on constants, so training and inference share one definition of each op.

What it promises:
- `Tensor` wraps an ndarray. Python numbers and lists become float32; float64 arrays stay
  float64, and no op upcasts a float32 computation.
- Operations run inside `with Tape() as tape:` on tracked tensors (a `Variable`, or anything
  passed to `tape.watch`) are recorded in execution order; `tape.gradient(target, sources)`
  walks that record backwards, *adding* each contribution, so a value used twice gets both.
- Every primitive broadcasts like NumPy and sums its gradients back to each operand's shape.
- Ties get an even split: `maximum(x, y)` and `max` share the gradient between equal entries,
  which is what a central difference measures; `relu` gives 0 at 0, as the usual frameworks do.
- Outside a tape nothing is recorded and each op costs one NumPy call plus a small wrapper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "Tensor", "Variable", "Tape", "constant",
    "add", "sub", "mul", "div", "neg", "pow", "matmul", "affine", "exp", "log", "tanh", "maximum",
    "minimum", "where", "sum", "mean", "max", "reshape", "transpose", "concatenate", "take",
    "scatter", "cast",
    "sigmoid", "relu", "leaky_relu", "softmax", "log_softmax", "unary",
    "softmax_cross_entropy", "sigmoid_cross_entropy", "mean_squared_error",
    "half_sum_squared_error",
    "numerical_gradient", "check_gradients",
]

# Active recording contexts, innermost last. Recording goes to every active tape.
_tapes: list[Tape] = []


def _as_array(value: Any, dtype: Any = None) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.data
    if dtype is not None:
        return np.asarray(value, dtype=dtype)
    if isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        if arr.dtype.kind == "f" and arr.dtype.itemsize < 4:
            arr = arr.astype(np.float32)
        return arr
    arr = np.asarray(value)
    # Python numbers and lists default to float32; bools and explicit ints are left alone only
    # when they come as NumPy arrays (labels, indices).
    return arr.astype(np.float32) if arr.dtype.kind in "fiub" else arr


class Tensor:
    """An ndarray that operations can be recorded on. `requires_grad` marks it as tracked."""

    __slots__ = ("data", "requires_grad")
    __array_priority__ = 100  # `ndarray + Tensor` uses Tensor.__radd__

    def __init__(self, data: Any, dtype: Any = None):
        self.data = _as_array(data, dtype)
        self.requires_grad = False

    # -- plain array facts
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)
    T = property(lambda self: transpose(self))

    def numpy(self) -> np.ndarray:
        return self.data

    def __array__(self, dtype=None, copy=None):
        return self.data if dtype is None else self.data.astype(dtype)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        kind = type(self).__name__
        body = np.array2string(self.data, precision=4, threshold=20)
        return f"{kind}({body}, dtype={self.dtype})"

    __hash__ = object.__hash__

    # -- arithmetic
    def __add__(self, o): return add(self, o)
    def __radd__(self, o): return add(o, self)
    def __sub__(self, o): return sub(self, o)
    def __rsub__(self, o): return sub(o, self)
    def __mul__(self, o): return mul(self, o)
    def __rmul__(self, o): return mul(o, self)
    def __truediv__(self, o): return div(self, o)
    def __rtruediv__(self, o): return div(o, self)
    def __pow__(self, o): return pow(self, o)
    def __rpow__(self, o): return pow(o, self)
    def __matmul__(self, o): return matmul(self, o)
    def __rmatmul__(self, o): return matmul(o, self)
    def __neg__(self): return neg(self)
    def __getitem__(self, index): return _getitem(self, index)

    # Comparisons are not differentiable: they give plain boolean arrays, ready for `where`.
    def __lt__(self, o): return self.data < _as_array(o)
    def __le__(self, o): return self.data <= _as_array(o)
    def __gt__(self, o): return self.data > _as_array(o)
    def __ge__(self, o): return self.data >= _as_array(o)

    def sum(self, axis=None, keepdims=False): return sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return max(self, axis, keepdims)
    def reshape(self, *shape): return reshape(self, shape[0] if len(shape) == 1 else shape)
    def transpose(self, *axes): return transpose(self, axes or None)


class Variable(Tensor):
    """A named, mutable tensor: a model parameter. Always tracked by an active tape."""

    __slots__ = ("name", "trainable")

    def __init__(self, value: Any, name: str | None = None, trainable: bool = True,
                 dtype: Any = None):
        super().__init__(np.array(_as_array(value, dtype)), None)  # own copy
        self.name = name
        self.trainable = trainable
        self.requires_grad = trainable

    def assign(self, value: Any) -> None:
        value = _as_array(value)
        if value.shape != self.data.shape:
            raise ValueError(f"cannot assign shape {value.shape} to variable {self.name!r} "
                             f"of shape {self.data.shape}")
        self.data[...] = value

    def assign_add(self, delta: Any) -> None:
        self.data += _as_array(delta)

    def assign_sub(self, delta: Any) -> None:
        self.data -= _as_array(delta)


def constant(value: Any, dtype: Any = None) -> Tensor:
    return Tensor(value, dtype)


def _lift(x: Any, like: Tensor | None = None) -> Tensor:
    if isinstance(x, Tensor):
        return x
    t = Tensor.__new__(Tensor)
    if like is not None and not isinstance(x, np.ndarray):
        t.data = np.asarray(x, dtype=like.data.dtype)  # a Python scalar takes the tensor's dtype
    else:
        t.data = _as_array(x)
    t.requires_grad = False
    return t


def _wrap(data: np.ndarray) -> Tensor:
    """A Tensor around an array the caller owns, without `Tensor.__init__`'s conversions."""
    t = Tensor.__new__(Tensor)
    t.data = data
    t.requires_grad = False
    return t


def _record(data: np.ndarray, parents: tuple[Tensor, ...], vjp: Callable) -> Tensor:
    """Wrap an op's result; on an active tape with a tracked parent, remember how to go back.

    `vjp(g)` returns one gradient per parent, or None for a parent that needs none; it may
    test `parent.requires_grad` to skip work, and must not write into `g`, which other
    parents' gradients can share.
    """
    out = Tensor.__new__(Tensor)
    out.data = data
    out.requires_grad = False
    if _tapes:
        for p in parents:
            if p.requires_grad:
                out.requires_grad = True
                for tape in _tapes:
                    tape._ops.append((out, parents, vjp))
                break
    return out


def _unbroadcast(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum a broadcast gradient back to an operand's shape."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    if lead == 1 and g.shape[1:] == shape:  # a bias added to a batch: the usual case
        return g.sum(axis=0)
    # One reduction over the broadcast axes: the leading ones and those where `shape` has 1.
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape)
                                      if n == 1 and g.shape[lead + i] != 1)
    return g.sum(axis=axes).reshape(shape)


def _binary(a: Any, b: Any) -> tuple[Tensor, Tensor]:
    if isinstance(a, Tensor):
        return a, b if isinstance(b, Tensor) else _lift(b, a)
    b = _lift(b)
    return _lift(a, b), b


# ---------------------------------------------------------------------------------- primitives

def add(a: Any, b: Any) -> Tensor:
    a, b = _binary(a, b)
    return _record(a.data + b.data, (a, b),
                   lambda g: (_unbroadcast(g, a.data.shape) if a.requires_grad else None,
                              _unbroadcast(g, b.data.shape) if b.requires_grad else None))


def sub(a: Any, b: Any) -> Tensor:
    a, b = _binary(a, b)
    return _record(a.data - b.data, (a, b),
                   lambda g: (_unbroadcast(g, a.data.shape) if a.requires_grad else None,
                              _unbroadcast(-g, b.data.shape) if b.requires_grad else None))


def mul(a: Any, b: Any) -> Tensor:
    a, b = _binary(a, b)
    return _record(a.data * b.data, (a, b),
                   lambda g: (_unbroadcast(g * b.data, a.shape) if a.requires_grad else None,
                              _unbroadcast(g * a.data, b.shape) if b.requires_grad else None))


def div(a: Any, b: Any) -> Tensor:
    a, b = _binary(a, b)
    out = a.data / b.data

    def vjp(g):
        ga = _unbroadcast(g / b.data, a.shape) if a.requires_grad else None
        gb = _unbroadcast(-g * out / b.data, b.shape) if b.requires_grad else None
        return ga, gb
    return _record(out, (a, b), vjp)


def neg(a: Any) -> Tensor:
    a = _lift(a)
    return _record(-a.data, (a,), lambda g: (-g,))


def pow(a: Any, b: Any) -> Tensor:
    a, b = _binary(a, b)
    out = a.data ** b.data

    def vjp(g):
        ga = gb = None
        if a.requires_grad:
            ga = _unbroadcast(g * b.data * a.data ** (b.data - 1), a.shape)
        if b.requires_grad:
            with np.errstate(divide="ignore", invalid="ignore"):
                gb = _unbroadcast(g * out * np.log(a.data), b.shape)
        return ga, gb
    return _record(out, (a, b), vjp)


def matmul(a: Any, b: Any) -> Tensor:
    a, b = _binary(a, b)
    A, B = a.data, b.data
    if A.ndim == 2 and B.ndim == 2:  # the Dense layer's case, kept free of the general rule
        return _record(A @ B, (a, b),
                       lambda g: (g @ B.T if a.requires_grad else None,
                                  A.T @ g if b.requires_grad else None))

    def vjp(g):
        if A.ndim == 1 and B.ndim == 1:
            return g * B, g * A
        # Promote vectors to matrices as np.matmul does, then undo it on the gradients.
        A2 = A[None, :] if A.ndim == 1 else A
        B2 = B[:, None] if B.ndim == 1 else B
        g2 = g
        if A.ndim == 1:
            g2 = g2[..., None, :]
        if B.ndim == 1:
            g2 = g2[..., None]
        ga = gb = None
        if a.requires_grad:
            ga = g2 @ np.swapaxes(B2, -1, -2)
            ga = _unbroadcast(ga[..., 0, :] if A.ndim == 1 else ga, A.shape)
        if b.requires_grad:
            gb = np.swapaxes(A2, -1, -2) @ g2
            gb = _unbroadcast(gb[..., 0] if B.ndim == 1 else gb, B.shape)
        return ga, gb
    return _record(A @ B, (a, b), vjp)


def affine(x: Any, kernel: Any, bias: Any) -> Tensor:
    """x @ kernel + bias as one op: a dense layer's work, recorded once instead of twice."""
    x, kernel, bias = _lift(x), _lift(kernel), _lift(bias)
    X, K = x.data, kernel.data
    if X.ndim != 2 or K.ndim != 2 or bias.data.ndim != 1:
        return add(matmul(x, kernel), bias)
    out = X @ K
    out += bias.data  # in place: the same bits as `X @ K + bias`, one array fewer
    return _record(out, (x, kernel, bias),
                   lambda g: (g @ K.T if x.requires_grad else None,
                              X.T @ g if kernel.requires_grad else None,
                              g.sum(axis=0) if bias.requires_grad else None))


def exp(a: Any) -> Tensor:
    a = _lift(a)
    out = np.exp(a.data)
    return _record(out, (a,), lambda g: (g * out,))


def log(a: Any) -> Tensor:
    a = _lift(a)
    return _record(np.log(a.data), (a,), lambda g: (g / a.data,))


def tanh(a: Any) -> Tensor:
    a = _lift(a)
    out = np.tanh(a.data)
    return _record(out, (a,), lambda g: (g * (1 - out * out),))


def maximum(a: Any, b: Any) -> Tensor:
    a, b = _binary(a, b)
    A, B = a.data, b.data

    def vjp(g):
        # NOTE: ties split the gradient evenly, so maximum(x, x) has derivative 1.
        share = (A > B) + 0.5 * (A == B)
        return (_unbroadcast(g * share, a.shape), _unbroadcast(g * (1 - share), b.shape))
    return _record(np.maximum(A, B), (a, b), vjp)


def minimum(a: Any, b: Any) -> Tensor:
    a, b = _binary(a, b)
    A, B = a.data, b.data

    def vjp(g):
        share = (A < B) + 0.5 * (A == B)
        return (_unbroadcast(g * share, a.shape), _unbroadcast(g * (1 - share), b.shape))
    return _record(np.minimum(A, B), (a, b), vjp)


def where(cond: Any, a: Any, b: Any) -> Tensor:
    c = _as_array(cond).astype(bool)
    a, b = _binary(a, b)
    return _record(np.where(c, a.data, b.data), (a, b),
                   lambda g: (_unbroadcast(np.where(c, g, 0), a.shape),
                              _unbroadcast(np.where(c, 0, g), b.shape)))


def _axes(axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axis = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(x % ndim for x in axis))


def _kept(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of a reduction over `axes` with keepdims: what its gradient reshapes to."""
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def _spread(g: np.ndarray, kept: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """A reduction's gradient `g` copied back over the reduced axes: `shape` from `kept`.
    (np.broadcast_to gives the same values, read only, at twice the cost on small arrays.)"""
    out = np.empty(shape, g.dtype)
    out[...] = g.reshape(kept)
    return out


def sum(a: Any, axis=None, keepdims: bool = False) -> Tensor:
    a = _lift(a)
    x = a.data
    axes = _axes(axis, x.ndim)
    kept = _kept(x.shape, axes)
    return _record(x.sum(axis=axes, keepdims=keepdims), (a,),
                   lambda g: (_spread(g, kept, x.shape),))


def mean(a: Any, axis=None, keepdims: bool = False) -> Tensor:
    """`sum(a) * (1 / count)`, rounded as that composition is, as one op."""
    a = _lift(a)
    x = a.data
    axes = _axes(axis, x.ndim)
    kept = _kept(x.shape, axes)
    total = x.sum(axis=axes, keepdims=keepdims)
    c = np.asarray(1.0 / math.prod(x.shape[i] for i in axes), total.dtype)
    return _record(total * c, (a,), lambda g: (_spread(g * c, kept, x.shape),))


def max(a: Any, axis=None, keepdims: bool = False) -> Tensor:
    a = _lift(a)
    axes = _axes(axis, a.ndim)
    top = np.max(a.data, axis=axes, keepdims=True)

    def vjp(g):
        if not keepdims:
            g = np.expand_dims(g, axes)
        hit = a.data == top
        return (g * hit / np.sum(hit, axis=axes, keepdims=True),)
    return _record(top if keepdims else np.squeeze(top, axes), (a,), vjp)


def reshape(a: Any, shape) -> Tensor:
    a = _lift(a)
    old = a.shape
    return _record(a.data.reshape(shape), (a,), lambda g: (g.reshape(old),))


def transpose(a: Any, axes=None) -> Tensor:
    a = _lift(a)
    back = None if axes is None else tuple(np.argsort(axes))
    return _record(np.transpose(a.data, axes), (a,), lambda g: (np.transpose(g, back),))


def _getitem(a: Tensor, index) -> Tensor:
    if isinstance(index, Tensor):
        index = index.data

    def vjp(g):
        full = np.zeros_like(a.data)
        np.add.at(full, index, g)  # add.at: repeated indices get every contribution
        return (full,)
    return _record(a.data[index], (a,), vjp)


def _by_column(index: np.ndarray) -> bool:
    """Whether every column of a 2-D index holds distinct positions (a window table does)."""
    return index.ndim == 2 and all(len(np.unique(c)) == len(c) for c in index.T)


def _add_at(full: np.ndarray, index: np.ndarray, values: np.ndarray, axis: int,
            by_column: bool) -> np.ndarray:
    """full[..., index, ...] += values along `axis`, every repeat counted: column by column
    with plain indexing where `by_column`, else with add.at (many times slower)."""
    lead = (slice(None),) * axis
    if by_column:
        for k in range(index.shape[1]):
            full[lead + (index[:, k],)] += values[lead + (slice(None), k)]
    else:
        np.add.at(full, lead + (index,), values)
    return full


def take(a: Any, index: Any, axis: int) -> Tensor:
    """a's entries at `index` along `axis`, as numpy.take; the gradient adds them back."""
    a, index = _lift(a), np.asarray(index)
    by_column = _by_column(index)
    return _record(np.take(a.data, index, axis=axis), (a,),
                   lambda g: (_add_at(np.zeros_like(a.data), index, g, axis, by_column),))


def scatter(a: Any, index: Any, size: int, axis: int) -> Tensor:
    """The transpose of `take`: an axis of `size` zeros, to which a's entries are added at
    `index` along `axis` (a's axes `axis`, `axis + 1`, ... match index's); the gradient
    takes them back."""
    a, index = _lift(a), np.asarray(index)
    shape = (*a.shape[:axis], size, *a.shape[axis + index.ndim:])
    out = _add_at(np.zeros(shape, a.dtype), index, a.data, axis, _by_column(index))
    return _record(out, (a,), lambda g: (np.take(g, index, axis=axis),))


def concatenate(tensors: Sequence[Any], axis: int = 0) -> Tensor:
    ts = tuple(_lift(t) for t in tensors)
    cuts = np.cumsum([t.shape[axis] for t in ts])[:-1]
    return _record(np.concatenate([t.data for t in ts], axis=axis), ts,
                   lambda g: tuple(np.split(g, cuts, axis=axis)))


def cast(a: Any, dtype: Any) -> Tensor:
    a = _lift(a)
    src = a.dtype
    return _record(a.data.astype(dtype), (a,), lambda g: (g.astype(src),))


# ------------------------------------------------------------------------ fused composite ops
# Each of these equals a composition of the primitives above (a test checks that, forward and
# backward); it is written as one op with its own gradient because small networks spend their
# time in per-op overhead, and because the fused forms are the numerically stable ones.

# NOTE: the forward results of sigmoid, relu, leaky_relu and softmax define what exported code
# must compute (the reference interpreter runs them), so any rewrite of their forward pass must
# stay bit for bit the same; a test holds them to that. Their gradients are free to change.

def sigmoid(a: Any) -> Tensor:
    a = _lift(a)
    x = a.data
    e = np.exp(-np.abs(x))  # never overflows
    # 1 / (1 + e) for x >= 0 and e / (1 + e) below, with one division. The numerator
    # max(sign(x), e) is 1 for x >= 0 (e <= 1 there) and e below, as np.where(x >= 0, 1, e)
    # would give, several times faster.
    out = np.maximum(np.sign(x), e)
    out /= 1 + e

    def vjp(g):
        d = 1 - out
        d *= out
        d *= g
        return (d,)
    return _record(out, (a,), vjp)


def relu(a: Any) -> Tensor:
    a = _lift(a)
    out = np.maximum(a.data, 0)
    # sign(out) is 1 where x > 0 and 0 elsewhere (at 0 too), and a float factor multiplies
    # faster than the boolean x > 0.
    return _record(out, (a,), lambda g: (g * np.sign(out),))


def leaky_relu(a: Any, alpha: float = 0.2) -> Tensor:
    a = _lift(a)
    x = a.data
    slope = np.asarray(alpha, x.dtype)
    # A factor that is 1 where x > 0 and slope elsewhere serves forward and backward alike;
    # x * 1 is exact, so x * scale equals where(x > 0, x, x * slope) bit for bit.
    if 0 < slope <= 1:
        scale = np.fmax(np.sign(x), slope)  # several times faster than np.where; fmax skips NaN
    else:
        scale = np.where(x > 0, np.asarray(1, x.dtype), slope)
    return _record(x * scale, (a,), lambda g: (g * scale,))


def unary(a: Any, forward: Callable[[np.ndarray], np.ndarray],
          derivative: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Tensor:
    """An elementwise op given by its NumPy forward pass and its derivative
    `derivative(x, y)` (dy/dx from the input and the output): the activations of `ops`."""
    a = _lift(a)
    x = a.data
    out = forward(x)
    return _record(out, (a,), lambda g: (g * derivative(x, out),))


def softmax(a: Any, axis: int = -1) -> Tensor:
    a = _lift(a)
    x = a.data
    out = np.exp(x - x.max(axis=axis, keepdims=True))
    out /= out.sum(axis=axis, keepdims=True)
    return _record(out, (a,),
                   lambda g: (out * (g - (g * out).sum(axis=axis, keepdims=True)),))


def log_softmax(a: Any, axis: int = -1) -> Tensor:
    a = _lift(a)
    z = a.data - np.max(a.data, axis=axis, keepdims=True)
    out = z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))
    return _record(out, (a,),
                   lambda g: (g - np.exp(out) * np.sum(g, axis=axis, keepdims=True),))


def softmax_cross_entropy(logits: Any, labels: Any, axis: int = -1,
                          reduction: str = "none") -> Tensor:
    """Per-sample `-sum(labels * log_softmax(logits))`, or with `reduction="mean"` its mean
    over the samples as one op (what a loss takes); finite for any finite logits."""
    if reduction not in ("none", "mean"):
        raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")
    a = _lift(logits)
    x = a.data
    t = _as_array(labels).astype(x.dtype, copy=False)
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=axis, keepdims=True)
    logp = z - np.log(total)
    if reduction == "mean":
        # One sum over every entry: NumPy reduces short rows (a few classes) slowly.
        c = np.asarray(1.0 / math.prod(total.shape), x.dtype)
        out, per_sample = -(t * logp).sum() * c, lambda g: g * c
    else:
        out, per_sample = -(t * logp).sum(axis=axis), lambda g: g.reshape(total.shape)

    def vjp(g):
        # softmax * sum(labels) - labels: the labels need not sum to 1.
        d = e / total
        d *= t.sum(axis=axis, keepdims=True)
        d -= t
        d *= per_sample(g)  # each sample's share of the incoming gradient
        return (d,)
    return _record(out, (a,), vjp)


def _sum_of_squares(pred: Any, target: Any, per_entry: bool) -> Tensor:
    """c * sum(d * d) with d = pred - target and c = 1 / d.size (`per_entry`) or
    0.5 / batch, as one op. `target` is data, like the cross-entropies' labels: it gets no
    gradient and takes pred's dtype."""
    a = _lift(pred)
    d = a.data - _as_array(target).astype(a.data.dtype, copy=False)
    c = np.asarray(1.0 / d.size if per_entry else 0.5 / a.data.shape[0], d.dtype)
    # Rounded as the composition `sum(d * d) * c` is; its gradient, (g*c)*d once for each
    # factor of d * d, is d * (2 * (g*c)) exactly, since doubling is exact.
    return _record((d * d).sum() * c, (a,),
                   lambda g: (_unbroadcast(d * (2 * (g * c)), a.data.shape),))


def mean_squared_error(pred: Any, target: Any) -> Tensor:
    """mean((pred - target)^2) over every entry: `mean(d * d)` as one op."""
    return _sum_of_squares(pred, target, per_entry=True)


def half_sum_squared_error(pred: Any, target: Any) -> Tensor:
    """0.5 * sum((pred - target)^2) / batch, the batch being pred's first axis, as one op."""
    return _sum_of_squares(pred, target, per_entry=False)


def sigmoid_cross_entropy(logits: Any, labels: Any) -> Tensor:
    """Elementwise binary cross-entropy of `sigmoid(logits)` against `labels`, stably."""
    a = _lift(logits)
    x = a.data
    z = _as_array(labels).astype(x.dtype, copy=False)
    out = np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x)))
    e = np.exp(-np.abs(x))
    sig = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
    return _record(out.astype(x.dtype, copy=False), (a,),
                   lambda g: (_unbroadcast(g * (sig - z), a.shape),))


# ---------------------------------------------------------------------------------------- tape

class Tape:
    """Records operations on tracked tensors; `gradient` replays them backwards.

    >>> w = Variable([2.0]); x = constant([3.0])
    >>> with Tape() as tape:
    ...     y = w * x * x
    >>> tape.gradient(y, w).numpy()
    array([9.], dtype=float32)
    """

    def __init__(self, persistent: bool = False):
        self.persistent = persistent
        self._ops: list[tuple[Tensor, tuple[Tensor, ...], Callable]] = []
        self._spent = False

    def __enter__(self) -> Tape:
        _tapes.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _tapes.remove(self)

    def watch(self, *tensors: Any) -> None:
        for t in _flatten(tensors):
            t.requires_grad = True

    def gradient(self, target: Tensor, sources: Any, output_gradients: Any = None) -> Any:
        """Gradients of `target` (summed if not a scalar) with the structure of `sources`.

        A source the target does not depend on gets None, as in TensorFlow.
        """
        if self._spent:
            raise RuntimeError("this Tape's gradient was already taken; "
                               "use Tape(persistent=True) to take several")
        self._spent = not self.persistent
        seed = (np.ones_like(target.data) if output_gradients is None
                else _as_array(output_gradients, target.dtype))
        plain = type(sources) is list and all(isinstance(t, Tensor) for t in sources)
        wanted = {id(t) for t in (sources if plain else _flatten(sources))}
        grads: dict[int, np.ndarray] = {id(target): seed}
        for out, parents, vjp in reversed(self._ops):
            key = id(out)
            # An op's output gradient is complete once reached (the tape is in execution
            # order), so drop it, unless it is asked for.
            g = grads.get(key) if key in wanted else grads.pop(key, None)
            if g is None:
                continue
            for p, gp in zip(parents, vjp(g)):
                if gp is None or not p.requires_grad:
                    continue
                if gp.dtype != p.data.dtype:
                    gp = gp.astype(p.data.dtype)
                k = id(p)
                prev = grads.get(k)
                grads[k] = gp if prev is None else prev + gp
        if not self.persistent:
            self._ops = []

        def result(t: Tensor):
            g = grads.get(id(t))
            if g is None:
                return None
            # A read-only gradient (a view of something read-only) is copied, so the caller
            # gets arrays it can write to.
            if not g.flags.writeable or g.shape != t.data.shape:
                g = np.array(g, dtype=t.data.dtype)
            return _wrap(g)
        if plain:
            return [result(t) for t in sources]  # the usual case, without the recursion
        return _map_structure(result, sources)


def _flatten(x: Any) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, Mapping):
        return [t for v in x.values() for t in _flatten(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _flatten(v)]
    raise TypeError(f"expected a Tensor, or a list, tuple or dict of them, got {type(x).__name__}")


def _map_structure(fn: Callable, x: Any) -> Any:
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, Mapping):
        return {k: _map_structure(fn, v) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_map_structure(fn, v) for v in x)
    return [_map_structure(fn, v) for v in x]


# --------------------------------------------------------------------- numerical gradients

def numerical_gradient(f: Callable[..., Any], *arrays: Any, eps: float = 1e-6) -> list[np.ndarray]:
    """Central-difference gradient of `sum(f(*arrays))` w.r.t. each array, in float64."""
    xs = [np.array(a, dtype=np.float64) for a in arrays]

    def value() -> float:
        out = f(*[Tensor(x) for x in xs])
        return float(np.sum(out.data if isinstance(out, Tensor) else out))

    grads = []
    for x in xs:
        g = np.zeros_like(x)
        flat, gflat = x.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            keep = flat[i]
            flat[i] = keep + eps
            up = value()
            flat[i] = keep - eps
            down = value()
            flat[i] = keep
            gflat[i] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def check_gradients(f: Callable[..., Any], *arrays: Any, eps: float = 1e-6,
                    atol: float = 1e-6, rtol: float = 1e-5) -> float:
    """Compare the tape's gradient of `f` with central differences, in float64.

    `f` takes one Tensor per array and returns a Tensor; a non-scalar output is summed.
    Returns the largest absolute difference; raises AssertionError naming the argument and the
    worst entry when one is out of tolerance.
    """
    xs = [Tensor(np.array(a, dtype=np.float64)) for a in arrays]
    with Tape() as tape:
        tape.watch(xs)
        out = f(*xs)
    analytic = tape.gradient(out, xs)
    numeric = numerical_gradient(f, *arrays, eps=eps)
    worst = 0.0
    for i, (ga, gn) in enumerate(zip(analytic, numeric)):
        ga = np.zeros_like(gn) if ga is None else ga.data
        err = np.abs(ga - gn)
        bad = err > atol + rtol * np.abs(gn)
        if bad.any():
            j = np.unravel_index(np.argmax(err - atol - rtol * np.abs(gn)), gn.shape)
            raise AssertionError(f"gradient of argument {i} differs at {tuple(map(int, j))}: "
                                 f"tape {ga[j]:.8g}, numerical {gn[j]:.8g}")
        worst = np.maximum(worst, float(err.max(initial=0.0)))
    return float(worst)
