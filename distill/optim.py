"""Optimizers and learning-rate schedules for the NumPy trainer.

Where it sits: `nn.Sequential.fit` and hand-written training loops call
`optimizer.apply_gradients(zip(grads, variables))`. The update rules are Keras 3's, written
out in each class's docstring, so a model trained here and one trained with Keras from the same
start take the same steps. Updates run in place on the variables' arrays, without copies.

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
    """Base class: keeps the step count and per-variable slots; subclasses write `_update`."""

    slots: tuple[str, ...] = ()

    def __init__(self, learning_rate: float | Schedule):
        self.learning_rate = learning_rate
        self.iterations = 0
        self._state: dict[int, dict[str, np.ndarray]] = {}
        self._order: list[Variable] = []  # variables in first-seen order, for get_state

    @property
    def current_learning_rate(self) -> float:
        lr = self.learning_rate
        return float(lr(self.iterations) if callable(lr) else lr)

    def apply_gradients(self, grads_and_vars: Iterable[tuple[Any, Variable]]) -> None:
        """One update of every variable that has a gradient (None gradients are skipped)."""
        lr = self.current_learning_rate
        for grad, var in grads_and_vars:
            if grad is None:
                continue
            g = grad.data if isinstance(grad, Tensor) else np.asarray(grad)
            if g.shape != var.data.shape:
                raise ValueError(f"gradient of shape {g.shape} for variable {var.name!r} of "
                                 f"shape {var.data.shape}")
            state = self._state.get(id(var))
            if state is None:
                state = self._state[id(var)] = {s: np.zeros_like(var.data) for s in self.slots}
                self._order.append(var)
            self._update(var.data, g.astype(var.data.dtype, copy=False), state, lr)
        self.iterations += 1

    def _update(self, w: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray],
                lr: float) -> None:
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

    def _update(self, w, g, state, lr):
        if not self.momentum:
            w -= lr * g
            return
        m = state["momentum"]
        m *= self.momentum
        m -= lr * g
        if self.nesterov:
            w += self.momentum * m - lr * g
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

    def _update(self, w, g, state, lr):
        t = self.iterations + 1
        alpha = lr * math.sqrt(1 - self.beta_2 ** t) / (1 - self.beta_1 ** t)
        m, v = state["m"], state["v"]
        m += (g - m) * (1 - self.beta_1)
        v += (g * g - v) * (1 - self.beta_2)
        w -= (alpha * m) / (np.sqrt(v) + self.epsilon)


class RMSprop(Optimizer):
    """v = rho*v + (1-rho)*g*g; step = lr*g/sqrt(v+eps); with momentum m = momentum*m + step;
    w -= m, else w -= step."""

    def __init__(self, learning_rate: float | Schedule = 0.001, rho: float = 0.9,
                 momentum: float = 0.0, epsilon: float = 1e-7):
        super().__init__(learning_rate)
        self.rho, self.momentum, self.epsilon = float(rho), float(momentum), float(epsilon)
        self.slots = ("velocity", "momentum") if momentum else ("velocity",)

    def _update(self, w, g, state, lr):
        v = state["velocity"]
        v *= self.rho
        v += (1 - self.rho) * g * g
        step = lr * g / np.sqrt(v + self.epsilon)
        if self.momentum:
            m = state["momentum"]
            m *= self.momentum
            m += step
            w -= m
        else:
            w -= step


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
