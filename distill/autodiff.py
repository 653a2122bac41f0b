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

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "Tensor", "Variable", "Tape", "constant",
    "add", "sub", "mul", "div", "neg", "pow", "matmul", "exp", "log", "tanh", "maximum",
    "where", "sum", "mean", "max", "reshape", "transpose", "concatenate", "cast",
    "sigmoid", "relu", "leaky_relu", "softmax", "log_softmax",
    "softmax_cross_entropy", "sigmoid_cross_entropy",
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


def _record(data: np.ndarray, parents: tuple[Tensor, ...], vjp: Callable) -> Tensor:
    """Wrap an op's result; on an active tape with a tracked parent, remember how to go back."""
    out = Tensor.__new__(Tensor)
    out.data = data
    if _tapes:
        for p in parents:
            if p.requires_grad:
                out.requires_grad = True
                for tape in _tapes:
                    tape._ops.append((out, parents, vjp))
                return out
    out.requires_grad = False
    return out


def _unbroadcast(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum a broadcast gradient back to an operand's shape."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _binary(a: Any, b: Any) -> tuple[Tensor, Tensor]:
    if isinstance(a, Tensor):
        return a, _lift(b, a)
    b = _lift(b)
    return _lift(a, b), b


# ---------------------------------------------------------------------------------- primitives

def add(a: Any, b: Any) -> Tensor:
    a, b = _binary(a, b)
    return _record(a.data + b.data, (a, b),
                   lambda g: (_unbroadcast(g, a.shape), _unbroadcast(g, b.shape)))


def sub(a: Any, b: Any) -> Tensor:
    a, b = _binary(a, b)
    return _record(a.data - b.data, (a, b),
                   lambda g: (_unbroadcast(g, a.shape), _unbroadcast(-g, b.shape)))


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


def sum(a: Any, axis=None, keepdims: bool = False) -> Tensor:
    a = _lift(a)
    shape = a.shape
    axes = _axes(axis, a.ndim)

    def vjp(g):
        if not keepdims:
            g = np.expand_dims(g, axes)
        return (np.broadcast_to(g, shape),)
    return _record(np.sum(a.data, axis=axes, keepdims=keepdims), (a,), vjp)


def mean(a: Any, axis=None, keepdims: bool = False) -> Tensor:
    a = _lift(a)
    axes = _axes(axis, a.ndim)
    count = int(np.prod([a.shape[i] for i in axes]))
    return mul(sum(a, axes, keepdims), 1.0 / count)


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

def sigmoid(a: Any) -> Tensor:
    a = _lift(a)
    x = a.data
    e = np.exp(-np.abs(x))  # never overflows
    out = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
    return _record(out, (a,), lambda g: (g * out * (1 - out),))


def relu(a: Any) -> Tensor:
    a = _lift(a)
    x = a.data
    return _record(np.maximum(x, 0), (a,), lambda g: (g * (x > 0),))


def leaky_relu(a: Any, alpha: float = 0.2) -> Tensor:
    a = _lift(a)
    x = a.data
    slope = np.asarray(alpha, x.dtype)
    pos = x > 0
    return _record(np.where(pos, x, x * slope), (a,), lambda g: (np.where(pos, g, g * slope),))


def softmax(a: Any, axis: int = -1) -> Tensor:
    a = _lift(a)
    e = np.exp(a.data - np.max(a.data, axis=axis, keepdims=True))
    out = e / np.sum(e, axis=axis, keepdims=True)
    return _record(out, (a,),
                   lambda g: (out * (g - np.sum(g * out, axis=axis, keepdims=True)),))


def log_softmax(a: Any, axis: int = -1) -> Tensor:
    a = _lift(a)
    z = a.data - np.max(a.data, axis=axis, keepdims=True)
    out = z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))
    return _record(out, (a,),
                   lambda g: (g - np.exp(out) * np.sum(g, axis=axis, keepdims=True),))


def softmax_cross_entropy(logits: Any, labels: Any, axis: int = -1) -> Tensor:
    """Per-sample `-sum(labels * log_softmax(logits))`; finite for any finite logits."""
    a = _lift(logits)
    t = _as_array(labels).astype(a.dtype, copy=False)
    z = a.data - np.max(a.data, axis=axis, keepdims=True)
    logp = z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))

    def vjp(g):
        g = np.expand_dims(g, axis)
        return (g * (np.exp(logp) * np.sum(t, axis=axis, keepdims=True) - t),)
    return _record(-np.sum(t * logp, axis=axis), (a,), vjp)


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
        wanted = {id(t) for t in _flatten(sources)}
        grads: dict[int, np.ndarray] = {id(target): seed}
        for out, parents, vjp in reversed(self._ops):
            key = id(out)
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
            return Tensor(np.array(g, dtype=t.data.dtype) if not g.flags.writeable
                          or g.shape != t.shape else g)
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
