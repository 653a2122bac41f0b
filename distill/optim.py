"""Optimizers and learning-rate schedules for the NumPy trainer.

Where it sits: `nn.Sequential.fit` and hand-written training loops call
`optimizer.apply_gradients(zip(grads, variables))`. The update rules are Keras 3's, written
out in each class's docstring, so a model trained here and one trained with Keras from the same
start take the same steps. Updates run in place on the variables' arrays.

State (`iterations` and the per-variable slots) round-trips through `get_state`/`set_state`,
which is what lets a checkpointed run resume bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .autodiff import Tensor, Variable

# ------------------------------------------------------------------------------------ schedules

class Schedule:
    """A learning rate as a function of the step number (0 for the first update)."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"name": _snake(type(self).__name__), **vars(self)}


class ExponentialDecay(Schedule):
    """lr = initial * rate ** (step / decay_steps), the exponent floored when `staircase`."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float,
                 staircase: bool = False):
        if decay_steps <= 0:
            raise ValueError("decay_steps must be positive")
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_steps = int(decay_steps)
        self.decay_rate = float(decay_rate)
        self.staircase = bool(staircase)

    def __call__(self, step: int) -> float:
        p = step / self.decay_steps
        return self.initial_learning_rate * self.decay_rate ** (math.floor(p) if self.staircase
                                                                else p)


class StepDecay(Schedule):
    """lr = initial * factor ** floor(step / step_size): drop by `factor` every `step_size`."""

    def __init__(self, initial_learning_rate: float, step_size: int, factor: float = 0.1):
        if step_size <= 0:
            raise ValueError("step_size must be positive")
        self.initial_learning_rate = float(initial_learning_rate)
        self.step_size = int(step_size)
        self.factor = float(factor)

    def __call__(self, step: int) -> float:
        return self.initial_learning_rate * self.factor ** (step // self.step_size)


class PiecewiseConstantDecay(Schedule):
    """values[i] while step <= boundaries[i] (Keras's convention), the last value after."""

    def __init__(self, boundaries: list[int], values: list[float]):
        if len(values) != len(boundaries) + 1:
            raise ValueError("need one more value than boundaries")
        self.boundaries = [int(b) for b in boundaries]
        self.values = [float(v) for v in values]

    def __call__(self, step: int) -> float:
        for bound, value in zip(self.boundaries, self.values):
            if step <= bound:
                return value
        return self.values[-1]


SCHEDULES = {"exponential_decay": ExponentialDecay, "step_decay": StepDecay,
             "piecewise_constant_decay": PiecewiseConstantDecay}


# ----------------------------------------------------------------------------------- optimizers

class Optimizer:
    """Base class: keeps the step count and per-variable slots; subclasses write `_update`.

    When the variables of one `apply_gradients` call lie one after another in one buffer (as a
    built `Sequential`'s do), their gradients are copied next to each other and each step of
    the rule runs once over the whole buffer instead of once per variable: a small network's
    update costs a few NumPy calls rather than a few per weight array. The slots then live in
    matching buffers, and each variable's slots are views of them, so `get_state` and
    per-variable updates see the same numbers. Elementwise rules give the same bits either way.
    """

    slots: tuple[str, ...] = ()
    scratch = 1  # temporaries `_update` needs, each shaped like the variable

    def __init__(self, learning_rate: float | Schedule):
        self.learning_rate = learning_rate
        self.iterations = 0
        self._state: dict[int, dict[str, np.ndarray]] = {}
        self._order: list[Variable] = []  # variables in first-seen order, for get_state
        self._packed: _Packed | None = None
        self._packed_key: tuple[int, ...] | None = None

    @property
    def current_learning_rate(self) -> float:
        lr = self.learning_rate
        return float(lr(self.iterations) if callable(lr) else lr)

    def apply_gradients(self, grads_and_vars: Iterable[tuple[Any, Variable]]) -> None:
        """One update of every variable that has a gradient (None gradients are skipped)."""
        lr = self.current_learning_rate
        pairs = [(g, v) for g, v in grads_and_vars if g is not None]
        packed = self._packed_for(pairs)
        if packed is not None:
            for (grad, var), dest in zip(pairs, packed.grad_views):
                self._gather(dest, _grad_array(grad, var), lr)
            self._update(packed.params, packed.grads, packed.state, lr, packed.scratch)
        else:
            for grad, var in pairs:
                g = np.empty_like(var.data)
                self._gather(g, _grad_array(grad, var), lr)
                self._update(var.data, g, self._slots(var), lr,
                             [np.empty_like(var.data) for _ in range(self.scratch)])
        self.iterations += 1

    def _gather(self, dest: np.ndarray, g: np.ndarray, lr: float) -> None:
        """Put a gradient into `dest`, the optimizer's own buffer, in the variable's dtype. A
        rule whose first step is elementwise on the gradient alone does it here, so that a
        large model's update makes no pass over its weights for the copy alone."""
        np.copyto(dest, g)

    def _slots(self, var: Variable) -> dict[str, np.ndarray]:
        state = self._state.get(id(var))
        if state is None:
            state = self._state[id(var)] = {s: np.zeros_like(var.data) for s in self.slots}
            self._order.append(var)
        return state

    def _packed_for(self, pairs: list[tuple[Any, Variable]]) -> _Packed | None:
        """The buffer-wide view of these variables, if they share one; made once, kept while
        the same variables come back in the same order still living in that buffer."""
        key = tuple([id(v) for _, v in pairs])
        packed = self._packed
        if key == self._packed_key and (packed is None or packed.intact()):
            return packed
        self._packed_key = key
        variables = [v for _, v in pairs]
        params = _span([v.data for v in variables]) if variables else None
        # Slots move into the new buffers with their values, so whatever held them before
        # (another packed set, or per-variable arrays) is left with nothing the next step needs.
        self._packed = None if params is None else _Packed(self, variables, params)
        return self._packed

    def _update(self, w: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray],
                lr: float, tmp: list[np.ndarray]) -> None:
        """Update `w` and the slots in `state` in place. `g` is what `_gather` wrote, which
        the rule may overwrite, and `tmp` holds `scratch` more arrays shaped like `w`:
        computing in them, rather than in new arrays, keeps a large model's update within
        fewer buffers."""
        raise NotImplementedError

    def get_state(self, variables: list[Variable]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able facts, arrays) describing the optimizer's state for `variables`."""
        arrays = {f"{i}/{slot}": arr for i, v in enumerate(variables)
                  for slot, arr in self._state.get(id(v), {}).items()}
        return {"iterations": self.iterations, "config": self.config()}, arrays

    def set_state(self, variables: list[Variable], facts: Mapping[str, Any],
                  arrays: Mapping[str, np.ndarray]) -> None:
        self.iterations = int(facts["iterations"])
        self._state, self._order = {}, []
        self._packed = self._packed_key = None  # rebuilt from the restored slots next step
        for i, v in enumerate(variables):
            slots = {s: np.array(arrays[f"{i}/{s}"], dtype=v.data.dtype)
                     for s in self.slots if f"{i}/{s}" in arrays}
            if slots:
                self._state[id(v)] = slots
                self._order.append(v)

    def config(self) -> dict[str, Any]:
        lr = self.learning_rate
        return {"name": _snake(type(self).__name__),
                "learning_rate": lr.config() if isinstance(lr, Schedule) else lr,
                **{k: v for k, v in vars(self).items()
                   if not k.startswith("_") and k not in ("learning_rate", "iterations")}}


def _grad_array(grad: Any, var: Variable) -> np.ndarray:
    g = grad.data if isinstance(grad, Tensor) else np.asarray(grad)
    if g.shape != var.data.shape:
        raise ValueError(f"gradient of shape {g.shape} for variable {var.name!r} of "
                         f"shape {var.data.shape}")
    return g


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _span(arrays: list[np.ndarray]) -> np.ndarray | None:
    """The stretch of a 1-D buffer that `arrays` fill one after another, if they do."""
    base = arrays[0].base
    if base is None or base.ndim != 1 or not base.flags.c_contiguous:
        return None
    start = end = _address(arrays[0])
    for a in arrays:
        if (a.base is not base or a.dtype != base.dtype or not a.flags.c_contiguous
                or _address(a) != end):
            return None
        end += a.nbytes
    first = (start - _address(base)) // base.itemsize
    return base[first:first + (end - start) // base.itemsize]


class _Packed:
    """Variables living one after another in `params`, with a gradient buffer, the slots and
    the temporaries laid out the same way."""

    def __init__(self, opt: Optimizer, variables: list[Variable], params: np.ndarray):
        self.variables = variables
        self.views = [v.data for v in variables]
        self.params = params
        self.grads = np.empty_like(params)
        self.state = {s: np.zeros_like(params) for s in opt.slots}
        self.scratch = [np.empty_like(params) for _ in range(opt.scratch)]
        self.grad_views = []
        at = 0
        for v in variables:
            size, shape = v.data.size, v.data.shape
            self.grad_views.append(self.grads[at:at + size].reshape(shape))
            slots = {s: buf[at:at + size].reshape(shape) for s, buf in self.state.items()}
            for s, arr in opt._state.get(id(v), {}).items():
                slots[s][...] = arr
            if id(v) not in opt._state:
                opt._order.append(v)
            opt._state[id(v)] = slots
            at += size

    def intact(self) -> bool:
        """Whether every variable still holds its view of the buffer (nothing rebound it)."""
        return all(v.data is view for v, view in zip(self.variables, self.views))


class SGD(Optimizer):
    """Plain: w -= lr*g. Momentum: m = momentum*m - lr*g; w += m, or with nesterov
    w += momentum*m - lr*g."""

    def __init__(self, learning_rate: float | Schedule = 0.01, momentum: float = 0.0,
                 nesterov: bool = False):
        super().__init__(learning_rate)
        if not 0 <= momentum < 1:
            raise ValueError("momentum must be in [0, 1)")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.slots = ("momentum",) if momentum else ()

    def _gather(self, dest, g, lr):
        np.multiply(g, lr, out=dest, dtype=dest.dtype)  # lr*g, in the variable's dtype

    def _update(self, w, g, state, lr, tmp):  # g holds lr*g
        if not self.momentum:
            w -= g
            return
        m = state["momentum"]
        m *= self.momentum
        m -= g
        if self.nesterov:
            (u,) = tmp
            np.multiply(m, self.momentum, out=u)
            u -= g
            w += u
        else:
            w += m


class Adam(Optimizer):
    """t = step+1; a = lr*sqrt(1-b2^t)/(1-b1^t); m += (g-m)*(1-b1); v += (g*g-v)*(1-b2);
    w -= a*m/(sqrt(v)+eps)."""

    slots = ("m", "v")

    def __init__(self, learning_rate: float | Schedule = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7):
        super().__init__(learning_rate)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def _update(self, w, g, state, lr, tmp):
        t = self.iterations + 1
        alpha = lr * math.sqrt(1 - self.beta_2 ** t) / (1 - self.beta_1 ** t)
        m, v = state["m"], state["v"]
        (s,) = tmp
        np.subtract(g, m, out=s)  # m += (g - m) * (1 - b1)
        s *= 1 - self.beta_1
        m += s
        g *= g  # v += (g*g - v) * (1 - b2); g is not needed after this
        g -= v
        g *= 1 - self.beta_2
        v += g
        np.sqrt(v, out=g)  # w -= (a*m) / (sqrt(v) + eps)
        g += self.epsilon
        np.multiply(m, alpha, out=s)
        s /= g
        w -= s


class RMSprop(Optimizer):
    """v = rho*v + (1-rho)*g*g; step = lr*g/sqrt(v+eps); with momentum m = momentum*m + step;
    w -= m, else w -= step."""

    def __init__(self, learning_rate: float | Schedule = 0.001, rho: float = 0.9,
                 momentum: float = 0.0, epsilon: float = 1e-7):
        super().__init__(learning_rate)
        self.rho, self.momentum, self.epsilon = float(rho), float(momentum), float(epsilon)
        self.slots = ("velocity", "momentum") if momentum else ("velocity",)

    def _update(self, w, g, state, lr, tmp):
        v = state["velocity"]
        (s,) = tmp
        v *= self.rho  # v += (1 - rho)*g*g
        np.multiply(g, 1 - self.rho, out=s)
        s *= g
        v += s
        np.add(v, self.epsilon, out=s)  # step = lr*g / sqrt(v + eps), into g
        np.sqrt(s, out=s)
        g *= lr
        g /= s
        if self.momentum:
            m = state["momentum"]
            m *= self.momentum
            m += g
            w -= m
        else:
            w -= g


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop}


def get(spec: Any) -> Optimizer:
    """An optimizer from an instance, a name ("adam"), or a dict {"name": ..., options}."""
    if isinstance(spec, Optimizer):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, Mapping):
        options = dict(spec)
        name = str(options.pop("name", "")).lower()
        if name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r}; expected one of "
                             f"{', '.join(OPTIMIZERS)}")
        lr = options.get("learning_rate")
        if isinstance(lr, Mapping):
            lr = dict(lr)
            kind = str(lr.pop("name", "")).lower()
            if kind not in SCHEDULES:
                raise ValueError(f"unknown learning rate schedule {kind!r}; expected one of "
                                 f"{', '.join(SCHEDULES)}")
            options["learning_rate"] = SCHEDULES[kind](**lr)
        return OPTIMIZERS[name](**options)
    raise TypeError(f"cannot make an optimizer from {spec!r}")


def _snake(name: str) -> str:
    out = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return {"s_g_d": "sgd", "r_m_sprop": "rmsprop"}.get(out, out)
