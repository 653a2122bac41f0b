"""Layers, losses, metrics, callbacks and `Sequential`: a Keras-style API on the autodiff core.

Where it sits: above `autodiff` and `ops` (each layer's math is the op registry's), below the
training backend and the command line. `Sequential.to_ir()` turns a trained model into the IR,
keeping layer names and activation parameters exactly.

Conventions follow Keras where a user would expect them to: Dense kernels are `(in, out)` and
`y = x @ kernel + bias`; layers get names like `dense`, `dense_1`; `fit` returns a `History`
whose `.history` maps each metric to one value per epoch; the string activation "leaky_relu"
has slope 0.2 while the `LeakyReLU` layer defaults to 0.3, as in Keras.

Determinism: a model owns one `numpy.random.Generator` seeded by `Sequential(seed=...)`; weight
initialization, shuffling and dropout draw from it in a fixed order, so the same seed gives the
same weights bit for bit, and a checkpoint holding its state resumes the exact same run.
"""

from __future__ import annotations

import copy
import math
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from . import autodiff as ad
from . import ir, ops, optim
from .autodiff import Tape, Tensor, Variable

# --------------------------------------------------------------------------------- initializers


class Initializer:
    """Draws initial weights; with a `seed` it ignores the model's generator and uses its own."""

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def __call__(self, shape: tuple[int, ...], rng: np.random.Generator | None = None,
                 dtype: Any = np.float32) -> np.ndarray:
        if self.seed is not None or rng is None:
            rng = np.random.default_rng(self.seed)
        return np.asarray(self.sample(shape, rng), dtype=dtype)

    def sample(self, shape, rng):
        raise NotImplementedError


def _fans(shape) -> tuple[int, int]:
    if len(shape) < 2:
        return (shape[0], shape[0]) if shape else (1, 1)
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated_normal(shape, rng, std):
    # Keras's truncated normal: redraw beyond two standard deviations; the 0.8796 undoes the
    # variance the truncation removes.
    z = rng.standard_normal(shape)
    while (bad := np.abs(z) > 2).any():
        z[bad] = rng.standard_normal(int(bad.sum()))
    return z * (std / 0.87962566103423978)


class Zeros(Initializer):
    def sample(self, shape, rng):
        return np.zeros(shape)


class Ones(Initializer):
    def sample(self, shape, rng):
        return np.ones(shape)


class RandomNormal(Initializer):
    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: int | None = None):
        super().__init__(seed)
        self.mean, self.stddev = mean, stddev

    def sample(self, shape, rng):
        return rng.normal(self.mean, self.stddev, shape)


class RandomUniform(Initializer):
    def __init__(self, minval: float = -0.05, maxval: float = 0.05, seed: int | None = None):
        super().__init__(seed)
        self.minval, self.maxval = minval, maxval

    def sample(self, shape, rng):
        return rng.uniform(self.minval, self.maxval, shape)


class GlorotUniform(Initializer):
    def sample(self, shape, rng):
        fan_in, fan_out = _fans(shape)
        limit = math.sqrt(6 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, shape)


class GlorotNormal(Initializer):
    def sample(self, shape, rng):
        fan_in, fan_out = _fans(shape)
        return _truncated_normal(shape, rng, math.sqrt(2 / (fan_in + fan_out)))


class HeNormal(Initializer):
    def sample(self, shape, rng):
        return _truncated_normal(shape, rng, math.sqrt(2 / _fans(shape)[0]))


class HeUniform(Initializer):
    def sample(self, shape, rng):
        limit = math.sqrt(6 / _fans(shape)[0])
        return rng.uniform(-limit, limit, shape)


class Orthogonal(Initializer):
    """Keras's: the Q of a QR factorization of a normal matrix (rows: all axes but the last),
    signs fixed by R's diagonal, times `gain`."""

    def __init__(self, gain: float = 1.0, seed: int | None = None):
        super().__init__(seed)
        self.gain = gain

    def sample(self, shape, rng):
        rows, cols = math.prod(shape[:-1]), shape[-1]
        a = rng.standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))
        q = q.T if rows < cols else q
        return self.gain * q.reshape(shape)


INITIALIZERS = {"zeros": Zeros, "ones": Ones, "random_normal": RandomNormal,
                "random_uniform": RandomUniform, "glorot_uniform": GlorotUniform,
                "glorot_normal": GlorotNormal, "he_normal": HeNormal, "he_uniform": HeUniform,
                "orthogonal": Orthogonal}


def get_initializer(spec: Any) -> Initializer | Callable:
    if isinstance(spec, str):
        if spec not in INITIALIZERS:
            raise ValueError(f"unknown initializer {spec!r}; expected one of "
                             f"{', '.join(INITIALIZERS)}")
        return INITIALIZERS[spec]()
    if callable(spec):
        return spec
    raise TypeError(f"an initializer must be a name or a callable, got {spec!r}")


# --------------------------------------------------------------------------------------- layers


class Layer:
    """A named step of a Sequential model. Subclasses set `kind` (the name prefix) and may
    override `build`, `call` and `ir_nodes`."""

    kind = "layer"

    def __init__(self, name: str | None = None):
        self.name = name
        self.built = False
        self.input_shape: tuple[int, ...] | None = None
        self.output_shape: tuple[int, ...] | None = None
        self.variables: list[Variable] = []

    def build(self, input_shape: tuple[int, ...], rng: np.random.Generator) -> None:
        self.input_shape = tuple(input_shape)
        self.output_shape = self.compute_output_shape(self.input_shape)
        self.built = True

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return input_shape

    def __call__(self, x: Tensor, training: bool = False,
                 rng: np.random.Generator | None = None) -> Tensor:
        return self.call(x, training, rng)

    def call(self, x: Tensor, training: bool, rng: np.random.Generator | None) -> Tensor:
        raise NotImplementedError

    @property
    def trainable_variables(self) -> list[Variable]:
        return [v for v in self.variables if v.trainable]

    def get_weights(self) -> list[np.ndarray]:
        return [v.data.copy() for v in self.variables]

    def set_weights(self, weights: Sequence[Any]) -> None:
        if len(weights) != len(self.variables):
            raise ValueError(f"layer {self.name!r} has {len(self.variables)} weights, "
                             f"got {len(weights)}")
        for v, w in zip(self.variables, weights):
            v.assign(np.asarray(w, dtype=v.data.dtype))

    def ir_nodes(self) -> list[tuple[str, str, dict, dict]]:
        """(name, op, attrs, weights) for each IR node this layer becomes, in order."""
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


class Activation(Layer):
    """An activation as a layer: one of ops.ACTIVATIONS; leaky_relu and elu take alpha."""

    kind = "activation"
    ALPHA = {"leaky_relu": 0.2, "elu": 1.0}  # the defaults of Keras's string activations

    def __init__(self, activation: str = "linear", alpha: float | None = None,
                 name: str | None = None):
        super().__init__(name)
        if activation not in ops.ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of "
                             f"{', '.join(ops.ACTIVATIONS)}")
        if alpha is not None and activation not in self.ALPHA:
            raise ValueError(f"activation {activation!r} takes no alpha")
        self.activation = activation
        # Kept as the float32 it will be in the IR, so training and export use the same slope.
        default = self.ALPHA.get(activation)
        self.attrs = ({"alpha": float(np.float32(default if alpha is None else alpha))}
                      if default is not None else {})

    def call(self, x, training, rng):
        return ops.OPS[self.activation].forward(x, self.attrs, {})

    def ir_nodes(self):
        return [(self.name, self.activation, dict(self.attrs), {})]

    def describe(self):
        extra = f", alpha={self.attrs['alpha']:g}" if self.attrs else ""
        return f"Activation({self.activation}{extra})"


def ReLU(name: str | None = None) -> Activation:
    return Activation("relu", name=name)


def LeakyReLU(alpha: float = 0.3, name: str | None = None) -> Activation:
    """Keras's layer default slope is 0.3 (the string activation's is 0.2)."""
    return Activation("leaky_relu", alpha=alpha, name=name)


def Softmax(name: str | None = None) -> Activation:
    return Activation("softmax", name=name)


def _activation(spec: Any) -> Activation | None:
    if spec is None:
        return None
    if isinstance(spec, Activation):
        return spec
    if isinstance(spec, str):
        return Activation(spec)
    if isinstance(spec, Mapping):
        spec = dict(spec)
        return Activation(spec.pop("name", "linear"), **spec)
    raise TypeError(f"an activation must be a name, a dict or an Activation, got {spec!r}")


def _with_activation(node: tuple, activation: Activation | None) -> list[tuple]:
    """A layer's IR node, then its fused activation's node (named `<layer>_<activation>`)."""
    if activation is None:
        return [node]
    return [node, (f"{node[0]}_{activation.activation}", activation.activation,
                   dict(activation.attrs), {})]


class Dense(Layer):
    """y = activation(x @ kernel + bias), kernel `(in, units)`."""

    kind = "dense"

    def __init__(self, units: int, activation: Any = None, use_bias: bool = True,
                 kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
                 name: str | None = None, input_shape: Sequence[int] | None = None):
        super().__init__(name)
        if not isinstance(units, int) or units <= 0:
            raise ValueError(f"Dense units must be a positive integer, got {units!r}")
        self.units = units
        self.activation = _activation(activation)
        self.use_bias = use_bias
        self.kernel_initializer = get_initializer(kernel_initializer)
        self.bias_initializer = get_initializer(bias_initializer)
        self.declared_input_shape = tuple(input_shape) if input_shape else None

    def compute_output_shape(self, input_shape):
        return input_shape[:-1] + (self.units,)

    def build(self, input_shape, rng):
        super().build(input_shape, rng)
        fan_in = input_shape[-1]
        self.kernel = Variable(self.kernel_initializer((fan_in, self.units), rng),
                               name=f"{self.name}/kernel")
        self.variables = [self.kernel]
        if self.use_bias:
            self.bias = Variable(self.bias_initializer((self.units,), rng),
                                 name=f"{self.name}/bias")
            self.variables.append(self.bias)

    def _weights(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "bias": self.bias} if self.use_bias else {
            "kernel": self.kernel}

    def call(self, x, training, rng):
        y = ops.dense(x, {}, self._weights())
        return self.activation.call(y, training, rng) if self.activation else y

    def ir_nodes(self):
        return _with_activation((self.name, "dense", {},
                                 {k: v.data for k, v in self._weights().items()}),
                                self.activation)

    def describe(self):
        act = f", {self.activation.describe()[11:-1]}" if self.activation else ""
        return f"Dense({self.units}{act})"


class Dropout(Layer):
    """Zeroes a `rate` share of inputs in training and scales the rest by 1/(1-rate);
    the identity at inference, so it leaves no IR node."""

    kind = "dropout"

    def __init__(self, rate: float, name: str | None = None):
        super().__init__(name)
        if not 0 <= rate < 1:
            raise ValueError(f"Dropout rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)

    def call(self, x, training, rng):
        if not training or self.rate == 0:
            return x
        keep = (rng.random(x.shape) >= self.rate).astype(x.dtype)
        return x * (keep / np.asarray(1 - self.rate, x.dtype))

    def ir_nodes(self):
        return []

    def describe(self):
        return f"Dropout({self.rate:g})"


class Flatten(Layer):
    kind = "flatten"

    def compute_output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def call(self, x, training, rng):
        return ops.flatten(x, {}, {})

    def ir_nodes(self):
        return [(self.name, "flatten", {}, {})]


class Reshape(Layer):
    kind = "reshape"

    def __init__(self, target_shape: Sequence[int], name: str | None = None):
        super().__init__(name)
        self.target_shape = [int(d) for d in target_shape]

    def compute_output_shape(self, input_shape):
        return ops.OPS["reshape"].out_shape(input_shape, {"shape": self.target_shape}, {})

    def call(self, x, training, rng):
        return ops.reshape(x, {"shape": self.target_shape}, {})

    def ir_nodes(self):
        return [(self.name, "reshape", {"shape": list(self.target_shape)}, {})]


def _spatial(value: Any, rank: int, what: str, low: int = 1) -> list[int]:
    """Keras's int-or-tuple window arguments as `rank` integers of at least `low`."""
    values = [value] * rank if isinstance(value, int) else list(value)
    if len(values) != rank or not all(isinstance(v, int) and not isinstance(v, bool)
                                      and v >= low for v in values):
        kind = "a positive integer" if low == 1 else f"an integer of at least {low}"
        raise ValueError(f"{what} must be {kind} or {rank} of them, got {value!r}")
    return values


PADDINGS = ("valid", "same", "causal")


def _check_rank(layer: Layer, input_shape) -> None:
    """A windowed layer's input: its spatial axes, then channels."""
    if len(input_shape) != layer.rank + 1:
        raise ValueError(f"{type(layer).__name__} takes inputs of {layer.rank} spatial axes "
                         f"and channels, got shape {tuple(input_shape)}")


def _padding(padding: str, rank: int) -> str:
    if padding not in PADDINGS[:2 + (rank == 1)]:
        raise ValueError(f"padding must be one of {', '.join(PADDINGS[:2 + (rank == 1)])}, "
                         f"got {padding!r}")
    return padding


class Conv(Layer):
    """Keras's Conv1D/Conv2D, channels last: kernel `(*kernel_size, channels / groups,
    filters)`, "valid", "same" (or, in 1-D, "causal") padding, strides, dilation, groups."""

    rank, op = 0, "conv"

    def __init__(self, filters: int, kernel_size: Any, strides: Any = 1, padding: str = "valid",
                 dilation_rate: Any = 1, groups: int = 1, activation: Any = None,
                 use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
                 bias_initializer: Any = "zeros", name: str | None = None,
                 input_shape: Sequence[int] | None = None):
        super().__init__(name)
        if not isinstance(filters, int) or filters <= 0:
            raise ValueError(f"filters must be a positive integer, got {filters!r}")
        if not isinstance(groups, int) or groups <= 0 or filters % groups:
            raise ValueError(f"groups must be a positive integer dividing filters ({filters}), "
                             f"got {groups!r}")
        self.filters, self.groups, self.use_bias = filters, groups, use_bias
        self.kernel_size = _spatial(kernel_size, self.rank, "kernel_size")
        self.strides = _spatial(strides, self.rank, "strides")
        self.dilation = _spatial(dilation_rate, self.rank, "dilation_rate")
        self.padding = _padding(padding, self.rank)
        self.activation = _activation(activation)
        self.kernel_initializer = get_initializer(kernel_initializer)
        self.bias_initializer = get_initializer(bias_initializer)
        self.declared_input_shape = tuple(input_shape) if input_shape else None

    def _attrs(self, input_shape) -> dict[str, Any]:
        attrs = {"strides": list(self.strides),
                 "pads": ops.same_pads(self.padding, input_shape[:-1], self.kernel_size,
                                       self.strides, self.dilation),
                 "groups": self.groups}
        if any(d > 1 for d in self.dilation):
            attrs["dilation"] = list(self.dilation)
        return attrs

    def _kernel_shape(self, input_shape) -> tuple[int, ...]:
        _check_rank(self, input_shape)
        if input_shape[-1] % self.groups:
            raise ValueError(f"{input_shape[-1]} input channels do not split into "
                             f"{self.groups} groups")
        return (*self.kernel_size, input_shape[-1] // self.groups, self.filters)

    def compute_output_shape(self, input_shape):
        # A stand-in of the kernel's shape that holds no memory.
        kernel = np.broadcast_to(np.float32(0), self._kernel_shape(input_shape))
        return ops.OPS[self.op].out_shape(tuple(input_shape), self._attrs(input_shape),
                                          {"kernel": kernel})

    def build(self, input_shape, rng):
        super().build(input_shape, rng)
        self.attrs = self._attrs(self.input_shape)
        self.kernel = Variable(self.kernel_initializer(self._kernel_shape(input_shape), rng),
                               name=f"{self.name}/kernel")
        self.variables = [self.kernel]
        if self.use_bias:
            self.bias = Variable(self.bias_initializer((self.filters,), rng),
                                 name=f"{self.name}/bias")
            self.variables.append(self.bias)

    def _weights(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "bias": self.bias} if self.use_bias else {
            "kernel": self.kernel}

    def call(self, x, training, rng):
        y = ops.OPS[self.op].forward(x, self.attrs, self._weights())
        return self.activation.call(y, training, rng) if self.activation else y

    def ir_nodes(self):
        return _with_activation((self.name, self.op, dict(self.attrs),
                                 {k: v.data for k, v in self._weights().items()}),
                                self.activation)

    def describe(self):
        act = f", {self.activation.describe()[11:-1]}" if self.activation else ""
        size = "x".join(map(str, self.kernel_size))
        return f"{type(self).__name__}({self.filters}, {size}{act})"


class Conv1D(Conv):
    kind, rank = "conv1d", 1


class Conv2D(Conv):
    kind, rank = "conv2d", 2


class ConvTranspose(Conv):
    """Keras's Conv1DTranspose/Conv2DTranspose: the transpose of a convolution, "valid" or
    "same" padding, strides, dilation, optional `output_padding`. The kernel is kept as the
    IR holds it, `(*kernel_size, channels, filters)`; Keras's is `(*kernel_size, filters,
    channels)`."""

    op = "conv_transpose"

    def __init__(self, filters: int, kernel_size: Any, strides: Any = 1, padding: str = "valid",
                 output_padding: Any = None, dilation_rate: Any = 1, activation: Any = None,
                 use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
                 bias_initializer: Any = "zeros", name: str | None = None,
                 input_shape: Sequence[int] | None = None):
        super().__init__(filters, kernel_size, strides, padding, dilation_rate, 1, activation,
                         use_bias, kernel_initializer, bias_initializer, name, input_shape)
        if padding == "causal":
            raise ValueError("padding must be one of valid, same, got 'causal'")
        self.output_padding = None if output_padding is None else \
            _spatial(output_padding, self.rank, "output_padding", low=0)

    def _attrs(self, input_shape) -> dict[str, Any]:
        pads, extra = ops.transposed_pads(self.padding, input_shape[:-1], self.kernel_size,
                                          self.strides, self.dilation, self.output_padding)
        attrs = {"strides": list(self.strides), "pads": pads}
        if any(d > 1 for d in self.dilation):
            attrs["dilation"] = list(self.dilation)
        if any(extra):
            attrs["output_padding"] = extra
        return attrs

    def _kernel_shape(self, input_shape) -> tuple[int, ...]:
        _check_rank(self, input_shape)
        return (*self.kernel_size, input_shape[-1], self.filters)


class Conv1DTranspose(ConvTranspose):
    kind, rank = "conv1d_transpose", 1


class Conv2DTranspose(ConvTranspose):
    kind, rank = "conv2d_transpose", 2


class Pooling(Layer):
    """Keras's MaxPooling/AveragePooling 1D and 2D: `pool_size`, `strides` (default: the
    pool), "valid" or "same" padding (padding never wins a max nor counts in a mean)."""

    rank, op = 0, ""

    def __init__(self, pool_size: Any = 2, strides: Any = None, padding: str = "valid",
                 name: str | None = None):
        super().__init__(name)
        self.pool = _spatial(pool_size, self.rank, "pool_size")
        self.strides = _spatial(self.pool if strides is None else strides, self.rank, "strides")
        if padding not in PADDINGS[:2]:
            raise ValueError(f"padding must be valid or same, got {padding!r}")
        self.padding = padding

    def _attrs(self, input_shape) -> dict[str, Any]:
        _check_rank(self, input_shape)
        return {"pool": list(self.pool), "strides": list(self.strides),
                "pads": ops.same_pads(self.padding, input_shape[:-1], self.pool, self.strides,
                                      [1] * self.rank)}

    def compute_output_shape(self, input_shape):
        return ops.OPS[self.op].out_shape(tuple(input_shape), self._attrs(input_shape), {})

    def build(self, input_shape, rng):
        super().build(input_shape, rng)
        self.attrs = self._attrs(self.input_shape)

    def call(self, x, training, rng):
        return ops.OPS[self.op].forward(x, self.attrs, {})

    def ir_nodes(self):
        return [(self.name, self.op, dict(self.attrs), {})]

    def describe(self):
        return f"{type(self).__name__}({'x'.join(map(str, self.pool))})"


class MaxPooling1D(Pooling):
    kind, rank, op = "max_pooling1d", 1, "max_pool"


class MaxPooling2D(Pooling):
    kind, rank, op = "max_pooling2d", 2, "max_pool"


class AveragePooling1D(Pooling):
    kind, rank, op = "average_pooling1d", 1, "avg_pool"


class AveragePooling2D(Pooling):
    kind, rank, op = "average_pooling2d", 2, "avg_pool"


class GlobalPooling(Layer):
    """Keras's GlobalAveragePooling/GlobalMaxPooling 1D and 2D: one value per channel."""

    rank, op = 0, ""

    def compute_output_shape(self, input_shape):
        _check_rank(self, input_shape)
        return (input_shape[-1],)

    def call(self, x, training, rng):
        return ops.OPS[self.op].forward(x, {}, {})

    def ir_nodes(self):
        return [(self.name, self.op, {}, {})]


class GlobalAveragePooling1D(GlobalPooling):
    kind, rank, op = "global_average_pooling1d", 1, "global_avg_pool"


class GlobalAveragePooling2D(GlobalPooling):
    kind, rank, op = "global_average_pooling2d", 2, "global_avg_pool"


class GlobalMaxPooling1D(GlobalPooling):
    kind, rank, op = "global_max_pooling1d", 1, "global_max_pool"


class GlobalMaxPooling2D(GlobalPooling):
    kind, rank, op = "global_max_pooling2d", 2, "global_max_pool"


class Embedding(Layer):
    """Keras's Embedding: each input value an id, replaced by that row of a trained table of
    `input_dim` rows of `output_dim` (ids outside it give zeros); Keras's uniform
    [-0.05, 0.05) start."""

    kind = "embedding"

    def __init__(self, input_dim: int, output_dim: int,
                 embeddings_initializer: Any = "random_uniform", name: str | None = None,
                 input_shape: Sequence[int] | None = None):
        super().__init__(name)
        for key, value in (("input_dim", input_dim), ("output_dim", output_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        self.input_dim, self.output_dim = input_dim, output_dim
        self.initializer = get_initializer(embeddings_initializer)
        self.declared_input_shape = tuple(input_shape) if input_shape else None

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.output_dim)

    def build(self, input_shape, rng):
        super().build(input_shape, rng)
        self.embeddings = Variable(self.initializer((self.input_dim, self.output_dim), rng),
                                   name=f"{self.name}/embeddings")
        self.variables = [self.embeddings]

    def call(self, x, training, rng):
        return ops.embedding(x, {}, {"embeddings": self.embeddings})

    def ir_nodes(self):
        return [(self.name, "embedding", {}, {"embeddings": self.embeddings.data})]

    def describe(self):
        return f"Embedding({self.input_dim}, {self.output_dim})"


class Recurrent(Layer):
    """Keras's SimpleRNN, GRU and LSTM over inputs (steps, features): the registry's
    simple_rnn/gru/lstm ops, so the NumPy core trains them through time. Keras's defaults:
    glorot_uniform kernels, orthogonal recurrent kernels, zero biases (an LSTM's forget gate
    starts at one, `unit_forget_bias`), tanh and sigmoid, GRU reset_after."""

    op = ""

    def __init__(self, units: int, activation: str = "tanh",
                 recurrent_activation: str = "sigmoid", use_bias: bool = True,
                 return_sequences: bool = False, go_backwards: bool = False,
                 reset_after: bool = True, unit_forget_bias: bool = True,
                 kernel_initializer: Any = "glorot_uniform",
                 recurrent_initializer: Any = "orthogonal", bias_initializer: Any = "zeros",
                 name: str | None = None, input_shape: Sequence[int] | None = None):
        super().__init__(name)
        if not isinstance(units, int) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"units must be a positive integer, got {units!r}")
        for key, value in (("activation", activation),
                           ("recurrent_activation", recurrent_activation)):
            if value not in ops.STEP_ACTIVATIONS:
                raise ValueError(f"{key} must be one of {', '.join(ops.STEP_ACTIVATIONS)}, "
                                 f"got {value!r}")
        self.units, self.use_bias, self.unit_forget_bias = units, use_bias, unit_forget_bias
        self.attrs: dict[str, Any] = {"return_sequences": bool(return_sequences),
                                      "activation": activation}
        if self.op != "simple_rnn":
            self.attrs["recurrent_activation"] = recurrent_activation
        if go_backwards:
            self.attrs["go_backwards"] = True
        if self.op == "gru":
            self.attrs["reset_after"] = bool(reset_after)
        self.initializers = [get_initializer(i) for i in (kernel_initializer,
                                                          recurrent_initializer,
                                                          bias_initializer)]
        self.declared_input_shape = tuple(input_shape) if input_shape else None

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"{type(self).__name__} takes inputs of (steps, features), got "
                             f"shape {tuple(input_shape)}")
        return (input_shape[0], self.units) if self.attrs["return_sequences"] else (self.units,)

    def build(self, input_shape, rng):
        super().build(input_shape, rng)
        size = ops.GATES[self.op] * self.units
        kernel, recurrent, bias = self.initializers
        self.kernel = Variable(kernel((input_shape[-1], size), rng), name=f"{self.name}/kernel")
        self.recurrent_kernel = Variable(recurrent((self.units, size), rng),
                                         name=f"{self.name}/recurrent_kernel")
        self.variables = [self.kernel, self.recurrent_kernel]
        if self.use_bias:
            shape = (2, size) if self.attrs.get("reset_after") else (size,)
            values = bias(shape, rng)
            if self.op == "lstm" and self.unit_forget_bias:
                values[self.units:2 * self.units] = 1
            self.bias = Variable(values, name=f"{self.name}/bias")
            self.variables.append(self.bias)

    def _weights(self) -> dict[str, Any]:
        w = {"kernel": self.kernel, "recurrent_kernel": self.recurrent_kernel}
        if self.use_bias:
            w["bias"] = self.bias
        return w

    def call(self, x, training, rng):
        return ops.OPS[self.op].forward(x, self.attrs, self._weights())

    def ir_nodes(self):
        return [(self.name, self.op, dict(self.attrs),
                 {k: v.data for k, v in self._weights().items()})]

    def describe(self):
        return f"{type(self).__name__}({self.units})"


class SimpleRNN(Recurrent):
    kind, op = "simple_rnn", "simple_rnn"


class GRU(Recurrent):
    kind, op = "gru", "gru"


class LSTM(Recurrent):
    kind, op = "lstm", "lstm"


RECURRENT = {c.kind: c for c in (SimpleRNN, GRU, LSTM)}
BIDIRECTIONAL_MERGES = {"concat": "concatenate", "sum": "add", "mul": "multiply",
                        "ave": "average"}  # Keras's merge_mode -> the merge op


def bidirectional_nodes(name: str, forward: tuple, backward: tuple,
                        merge_mode: str) -> list[tuple]:
    """A Bidirectional's IR nodes from its two recurrent nodes (name, op, attrs, weights):
    NAME_forward and NAME_backward read the layer's input (""); with return_sequences the
    backward steps are put back in time order (NAME_backward_in_time_order); then the merge
    NAME. The NumPy core and the Keras importer both build them here."""
    nodes = [(f"{name}_forward", *forward[1:4], [""]),
             (f"{name}_backward", *backward[1:4], [""])]
    last, sequences = f"{name}_backward", forward[2]["return_sequences"]
    if sequences:
        nodes.append((f"{name}_backward_in_time_order", "reverse", {}, {}, [last]))
        last = nodes[-1][0]
    op = BIDIRECTIONAL_MERGES[merge_mode]
    attrs = {"axis": 1 if sequences else 0} if op == "concatenate" else {}
    return [*nodes, (name, op, attrs, {}, [f"{name}_forward", last])]


class Bidirectional(Layer):
    """Keras's Bidirectional: `layer` and a copy of it reading the steps the other way, on the
    same input, merged by `merge_mode` (concat, sum, mul, ave). With return_sequences the
    backward copy's steps are put back in time order first. In the IR that is the two
    recurrent nodes NAME_forward and NAME_backward, a reverse node and the merge NAME, as
    Keras's Bidirectional imports."""

    kind = "bidirectional"

    def __init__(self, layer: Recurrent, merge_mode: str = "concat", name: str | None = None):
        if not isinstance(layer, Recurrent):
            raise TypeError(f"Bidirectional takes a recurrent layer, got {type(layer).__name__}")
        if merge_mode not in BIDIRECTIONAL_MERGES:
            raise ValueError(f"merge_mode must be one of {', '.join(BIDIRECTIONAL_MERGES)}, "
                             f"got {merge_mode!r}")
        super().__init__(name)
        self.merge_mode, self.merge = merge_mode, BIDIRECTIONAL_MERGES[merge_mode]
        self.forward = layer
        self.backward = copy.deepcopy(layer)
        self.backward.attrs["go_backwards"] = not layer.attrs.get("go_backwards", False)
        if not self.backward.attrs["go_backwards"]:
            del self.backward.attrs["go_backwards"]
        self.sequences = layer.attrs["return_sequences"]
        self.declared_input_shape = layer.declared_input_shape

    def compute_output_shape(self, input_shape):
        shape = self.forward.compute_output_shape(input_shape)
        return (*shape[:-1], 2 * shape[-1]) if self.merge == "concatenate" else shape

    def build(self, input_shape, rng):
        self.forward.name, self.backward.name = f"{self.name}_forward", f"{self.name}_backward"
        self.forward.build(input_shape, rng)
        self.backward.build(input_shape, rng)
        super().build(input_shape, rng)
        self.variables = self.forward.variables + self.backward.variables

    def _merged(self, forward, backward, run: Callable) -> Any:
        if self.sequences:
            backward = run("reverse", backward, {})
        attrs = {"axis": 1 if self.sequences else 0} if self.merge == "concatenate" else {}
        return run(self.merge, [forward, backward], attrs)

    def call(self, x, training, rng):
        return self._merged(self.forward.call(x, training, rng),
                            self.backward.call(x, training, rng),
                            lambda op, xs, attrs: ops.OPS[op].forward(xs, attrs, {}))

    def ir_nodes(self):
        return bidirectional_nodes(self.name, self.forward.ir_nodes()[0],
                                   self.backward.ir_nodes()[0], self.merge_mode)

    def describe(self):
        return f"Bidirectional({self.forward.describe()}, {self.merge_mode})"


WINDOWED = {c.kind: c for c in (Conv1D, Conv2D, Conv1DTranspose, Conv2DTranspose, MaxPooling1D,
                                MaxPooling2D, AveragePooling1D, AveragePooling2D,
                                GlobalAveragePooling1D, GlobalAveragePooling2D,
                                GlobalMaxPooling1D, GlobalMaxPooling2D)}


class Normalization(Layer):
    """y = (x - mean) / std with fixed statistics (not trained): standardization that travels
    with the model, so exported code takes raw features."""

    kind = "normalization"

    def __init__(self, mean: Any, std: Any, name: str | None = None):
        super().__init__(name)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        if (self.std == 0).any() or not np.isfinite(self.std).all():
            raise ValueError("Normalization std must be finite and non-zero")

    def call(self, x, training, rng):
        return ops.normalize(x, {}, {"mean": self.mean, "std": self.std})

    def get_weights(self):
        return [self.mean.copy(), self.std.copy()]

    def set_weights(self, weights):
        self.mean, self.std = (np.asarray(w, dtype=np.float32) for w in weights)

    def ir_nodes(self):
        return [(self.name, "normalize", {}, {"mean": self.mean, "std": self.std})]


# ------------------------------------------------------------------------------------- losses


class Loss:
    """A loss: `loss(y_true, y_pred)` is a scalar Tensor, the mean over the batch.

    `fuses` names the final activation whose input (the logits) the loss can take directly
    through `from_logits_loss`: the fused form is exact, stable for logits of any size, and
    one op instead of three.
    """

    name = "loss"
    fuses: str | None = None

    def __init__(self, from_logits: bool = False):
        self.from_logits = from_logits

    def __call__(self, y_true: Any, y_pred: Tensor) -> Tensor:
        raise NotImplementedError

    def from_logits_loss(self, y_true: Any, logits: Tensor) -> Tensor:
        raise NotImplementedError


class MeanSquaredError(Loss):
    """mean over outputs and batch of (y_pred - y_true)^2."""

    name = "mean_squared_error"

    def __call__(self, y_true, y_pred):
        return ad.mean_squared_error(y_pred, y_true)


class HalfSumSquaredError(Loss):
    """0.5 * sum over outputs of (y_pred - y_true)^2, averaged over the batch."""

    name = "half_sum_squared_error"

    def __call__(self, y_true, y_pred):
        return ad.half_sum_squared_error(y_pred, y_true)


class MeanAbsoluteError(Loss):
    name = "mean_absolute_error"

    def __call__(self, y_true, y_pred):
        d = y_pred - y_true
        return ad.mean(ad.maximum(d, -d))


class BinaryCrossentropy(Loss):
    name = "binary_crossentropy"
    fuses = "sigmoid"

    def __call__(self, y_true, y_pred):
        if self.from_logits:
            return self.from_logits_loss(y_true, y_pred)
        # Probabilities in: clip as Keras does so log never sees 0.
        eps = 1e-7
        p = ad.maximum(-ad.maximum(-y_pred, -(1 - eps)), eps)
        t = np.asarray(y_true, dtype=p.dtype)
        return -ad.mean(ad.log(p) * t + ad.log(1 - p) * (1 - t))

    def from_logits_loss(self, y_true, logits):
        return ad.mean(ad.sigmoid_cross_entropy(logits, y_true))


class CategoricalCrossentropy(Loss):
    name = "categorical_crossentropy"
    fuses = "softmax"

    def __call__(self, y_true, y_pred):
        if self.from_logits:
            return self.from_logits_loss(y_true, y_pred)
        eps = 1e-7
        p = ad.maximum(y_pred, eps)
        p = p / ad.sum(p, axis=-1, keepdims=True)
        return -ad.mean(ad.sum(ad.log(p) * np.asarray(y_true, dtype=p.dtype), axis=-1))

    def from_logits_loss(self, y_true, logits):
        return ad.softmax_cross_entropy(logits, y_true, reduction="mean")


class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    name = "sparse_categorical_crossentropy"

    @staticmethod
    def _one_hot(y_true, pred):
        idx = np.asarray(y_true).astype(np.int64).reshape(-1)
        return np.eye(pred.shape[-1], dtype=pred.dtype)[idx]

    def __call__(self, y_true, y_pred):
        return super().__call__(self._one_hot(y_true, y_pred), y_pred)

    def from_logits_loss(self, y_true, logits):
        return super().from_logits_loss(self._one_hot(y_true, logits), logits)


LOSSES = {c.name: c for c in (MeanSquaredError, HalfSumSquaredError, MeanAbsoluteError,
                              BinaryCrossentropy, CategoricalCrossentropy,
                              SparseCategoricalCrossentropy)}
LOSSES.update(mse=MeanSquaredError, mae=MeanAbsoluteError)


def get_loss(spec: Any) -> Loss:
    if isinstance(spec, Loss):
        return spec
    if isinstance(spec, str) and spec in LOSSES:
        return LOSSES[spec]()
    if isinstance(spec, Mapping):
        spec = dict(spec)
        name = spec.pop("name", None)
        if name in LOSSES:
            return LOSSES[name](**spec)
        spec = name
    raise ValueError(f"unknown loss {spec!r}; expected one of {', '.join(LOSSES)}")


# ------------------------------------------------------------------------------------ metrics


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of correct predictions, chosen like Keras's "accuracy": thresholded at 0.5 for one
    output, argmax against one-hot labels or against class indices otherwise."""
    y_true = np.asarray(y_true)
    if y_pred.ndim == 1 or y_pred.shape[-1] == 1:
        return float(np.mean((y_pred.reshape(-1) > 0.5) == (y_true.reshape(-1) > 0.5)))
    guess = np.argmax(y_pred, axis=-1)
    truth = np.argmax(y_true, axis=-1) if y_true.shape == y_pred.shape else y_true.reshape(-1)
    return float(np.mean(guess == truth))


def mean_absolute_error(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(y_pred - np.asarray(y_true, dtype=y_pred.dtype))))


def mean_squared_error(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean((y_pred - np.asarray(y_true, dtype=y_pred.dtype)) ** 2))


METRICS = {"accuracy": accuracy, "acc": accuracy, "mae": mean_absolute_error,
           "mean_absolute_error": mean_absolute_error, "mse": mean_squared_error,
           "mean_squared_error": mean_squared_error}


# ----------------------------------------------------------------------------------- callbacks


class Callback:
    """Hooks called by `fit`. `self.model` is set before `on_train_begin`."""

    model: Sequential

    def on_train_begin(self, logs=None): ...
    def on_epoch_begin(self, epoch, logs=None): ...
    def on_train_batch_end(self, step, logs=None): ...
    def on_epoch_end(self, epoch, logs=None): ...
    def on_train_end(self, logs=None): ...


class History(Callback):
    """`history[metric]` holds one value per epoch; `steps` the loss of every step."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.steps: list[float] = []


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs."""

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False):
        self.monitor, self.patience, self.min_delta = monitor, patience, abs(min_delta)
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.sign = 1.0 if mode == "min" else -1.0
        self.restore_best_weights = restore_best_weights
        self.stopped_epoch: int | None = None

    def on_train_begin(self, logs=None):
        self.best, self.wait, self.best_weights = math.inf, 0, None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which fit does not "
                             f"report; available: {', '.join(logs or {})}")
        if self.sign * value < self.best - self.min_delta:
            self.best, self.wait = self.sign * value, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait > self.patience:
            self.model.stop_training = True
            self.stopped_epoch = epoch
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model as a `.distill` IR file every `save_freq` steps, or every epoch.

    `{epoch}` and `{step}` in the path are filled in; writes are atomic.
    """

    def __init__(self, filepath: str, save_freq: int | str = "epoch"):
        self.filepath, self.save_freq = str(filepath), save_freq

    def _save(self, epoch: int, step: int) -> None:
        ir.save(self.model.to_ir(), self.filepath.format(epoch=epoch + 1, step=step))

    def on_train_batch_end(self, step, logs=None):
        s = self.model._fit.global_step
        if isinstance(self.save_freq, int) and s % self.save_freq == 0:
            self._save(self.model._fit.epoch, s)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, self.model._fit.global_step)


class BackupAndRestore(Callback):
    """Keep a resumable training state in `path` every `save_freq` steps (and at each epoch's
    end); when `fit` starts and the file exists, continue from it exactly where it was.

    The state holds the weights, the optimizer's slots and step, the model's random generator,
    the epoch's shuffled order and position, and the history so far, so a resumed run takes
    the same steps as one that was never stopped. Writes are atomic; the file is removed when
    training completes unless `keep=True`.
    """

    def __init__(self, path: str, save_freq: int = 100, keep: bool = False,
                 run: str | None = None):
        self.path, self.save_freq, self.keep = str(path), int(save_freq), keep
        self.run = run  # what the file belongs to (a config's fingerprint); None: anything
        self.restored_step: int | None = None

    def on_train_begin(self, logs=None):
        import os
        if os.path.exists(self.path):
            self.model._restore_training_state(self.path, self.run)
            self.restored_step = self.model._fit.global_step

    def on_train_batch_end(self, step, logs=None):
        if self.model._fit.global_step % self.save_freq == 0:
            self.model._save_training_state(self.path, self.run)

    def on_epoch_end(self, epoch, logs=None):
        self.model._save_training_state(self.path, self.run)

    def on_train_end(self, logs=None):
        import os
        if not self.keep and not self.model.stop_training and os.path.exists(self.path):
            os.remove(self.path)


class ProgressBar(Callback):
    """A tqdm bar for the running epoch, and a summary line for about twenty of the epochs
    (`fit(verbose=1)`), so long runs stay readable."""

    def __init__(self, file=None):
        self.file = file or sys.stderr

    def on_epoch_begin(self, epoch, logs=None):
        from tqdm import tqdm
        f = self.model._fit
        self.bar = tqdm(total=f.batches, initial=f.batch, file=self.file, leave=False,
                        desc=f"epoch {epoch + 1}/{f.epochs}", unit="step", dynamic_ncols=True,
                        disable=None)  # no bar when stderr is not a terminal

    def on_train_batch_end(self, step, logs=None):
        self.bar.update(1)
        if step % 10 == 0 or step == self.bar.total:
            self.bar.set_postfix(_fmt(logs), refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.close()
        total = self.model._fit.epochs
        every = max(1, total // 20)
        if (epoch + 1) % every == 0 or epoch + 1 == total or self.model.stop_training:
            values = "  ".join(f"{k} {v:.4g}" for k, v in (logs or {}).items())
            print(f"epoch {epoch + 1}/{total}  {values}", file=self.file, flush=True)


def _fmt(logs: Mapping[str, float] | None) -> dict[str, str]:
    return {k: f"{v:.4g}" for k, v in (logs or {}).items()}


# ---------------------------------------------------------------------------------- Sequential


class _FitState:
    """Where `fit` is: what a BackupAndRestore file holds besides weights and optimizer."""

    def __init__(self, epochs: int, batches: int, samples: int = 0):
        self.epochs, self.batches, self.samples = epochs, batches, samples
        self.epoch = 0
        self.batch = 0          # batches done in the current epoch
        self.global_step = 0
        self.order: np.ndarray | None = None
        self.sums: dict[str, float] = {}   # running sums of loss/metrics * samples this epoch
        self.seen = 0                      # samples seen this epoch
        self.history: dict[str, list[float]] = {}
        self.steps: list[float] = []


class Sequential:
    """A chain of layers with Keras's `compile` / `fit` / `evaluate` / `predict`."""

    def __init__(self, layers: Iterable[Layer] = (), name: str = "sequential",
                 input_shape: Sequence[int] | None = None, seed: int | None = None):
        self.name = name
        self.layers: list[Layer] = []
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.input_shape = tuple(input_shape) if input_shape else None
        self.loss: Loss | None = None
        self.optimizer: optim.Optimizer | None = None
        self.metrics: list[str] = []
        self.stop_training = False
        self._fit: _FitState | None = None
        for layer in layers:
            self.add(layer)

    # -- structure
    def add(self, layer: Layer) -> None:
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential takes layers, got {type(layer).__name__}")
        taken = {lay.name for lay in self.layers}
        if layer.name is None:
            i, name = 0, layer.kind
            while name in taken:
                i += 1
                name = f"{layer.kind}_{i}"
            layer.name = name
        elif layer.name in taken:
            raise ValueError(f"layer name {layer.name!r} is used twice in model {self.name!r}")
        if self.built:
            raise ValueError("cannot add layers to a model that is already built")
        if not self.layers and self.input_shape is None:
            self.input_shape = getattr(layer, "declared_input_shape", None)
        self.layers.append(layer)

    @property
    def built(self) -> bool:
        return bool(self.layers) and all(layer.built for layer in self.layers)

    def build(self, input_shape: Sequence[int] | None = None) -> None:
        """Create every layer's weights for samples of `input_shape` (without the batch axis)."""
        shape = tuple(input_shape or self.input_shape or ())
        if not shape:
            raise ValueError(f"model {self.name!r} needs an input shape: pass input_shape= or "
                             "call it on data")
        self.input_shape = shape
        for layer in self.layers:
            if not layer.built:
                layer.build(shape, self.rng)
            shape = layer.output_shape
        _pack(self.trainable_variables)  # one buffer: the optimizer updates it in one pass

    def get_layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r} in model {self.name!r}; layers: "
                       f"{', '.join(lay.name for lay in self.layers)}")

    @property
    def variables(self) -> list[Variable]:
        return [v for layer in self.layers for v in layer.variables]

    @property
    def trainable_variables(self) -> list[Variable]:
        return [v for layer in self.layers for v in layer.variables if v.trainable]

    def get_weights(self) -> list[np.ndarray]:
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights: Sequence[Any]) -> None:
        weights = list(weights)
        for layer in self.layers:
            n = len(layer.get_weights())
            layer.set_weights(weights[:n])
            weights = weights[n:]

    def count_params(self) -> int:
        return sum(int(w.size) for w in self.get_weights())

    def summary(self, print_fn: Callable[[str], None] | None = print) -> str:
        if not self.built:
            self.build()
        rows = [("layer", "type", "output shape", "params")]
        for layer in self.layers:
            rows.append((layer.name, layer.describe(), str((None, *layer.output_shape)),
                         str(sum(w.size for w in layer.get_weights()))))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [f'Model "{self.name}"']
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
            if i == 0:
                lines.append("-" * len(lines[-1]))
        lines.append(f"total parameters: {self.count_params()}")
        text = "\n".join(lines)
        if print_fn:
            print_fn(text)
        return text

    # -- running
    def __call__(self, x: Any, training: bool = False) -> Tensor:
        x = self._input(x)
        if not self.built:
            self.build(x.shape[1:])
        for layer in self.layers:
            x = layer(x, training, self.rng)
        return x

    def _input(self, x: Any) -> Tensor:
        if isinstance(x, Tensor):
            return x
        x = np.asarray(x)
        if x.dtype != np.float32:
            x = x.astype(np.float32)  # the model is float32; float64 data must not upcast it
        return Tensor(x)

    def compile(self, loss: Any, optimizer: Any = "sgd", metrics: Sequence[str] = ()) -> None:
        self.loss = get_loss(loss)
        self.optimizer = optim.get(optimizer)
        for m in metrics:
            if m not in METRICS:
                raise ValueError(f"unknown metric {m!r}; expected one of {', '.join(METRICS)}")
        self.metrics = list(metrics)

    def _fusable(self) -> bool:
        last = self.layers[-1] if self.layers else None
        act = last.activation if isinstance(last, Dense) else last
        return (isinstance(act, Activation) and not self.loss.from_logits
                and act.activation == self.loss.fuses)

    def _forward_loss(self, x: Tensor, y: Any, training: bool) -> tuple[Tensor, Tensor]:
        """(loss, predictions). A final softmax/sigmoid is fused into its cross-entropy.
        Labels of shape (N,) for one output per sample are taken as (N, 1), as Keras does,
        rather than broadcast against the predictions into an (N, N) loss."""
        y = np.asarray(y.data if isinstance(y, Tensor) else y)
        out = self.layers[-1].output_shape
        if (not isinstance(self.loss, SparseCategoricalCrossentropy) and out and out[-1] == 1
                and y.ndim == len(out)):
            y = y[..., None]
        if not self._fusable():
            pred = self(x, training)
            return self.loss(y, pred), pred
        *body, last = self.layers
        for layer in body:
            x = layer(x, training, self.rng)
        if isinstance(last, Dense):
            logits = ops.dense(x, {}, last._weights())
        else:
            logits = x
        return self.loss.from_logits_loss(y, logits), logits

    def _predictions(self, out: Tensor) -> np.ndarray:
        if self._fusable():  # `out` holds logits
            return ops.OPS[self.loss.fuses].forward(out, {}, {}).data
        return out.data

    def train_step(self, x: Any, y: Any) -> tuple[float, Tensor]:
        """One optimizer step on a batch; returns the batch loss and the model's output."""
        x = self._input(x)
        if not self.built:
            self.build(x.shape[1:])
        variables = self.trainable_variables
        with Tape() as tape:
            loss, out = self._forward_loss(x, y, training=True)
        grads = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return float(loss.data), out

    def fit(self, x: Any, y: Any, epochs: int = 1, batch_size: int = 32,
            validation_data: tuple[Any, Any] | None = None, shuffle: bool = True,
            callbacks: Sequence[Callback] = (), verbose: int = 0) -> History:
        """Train; returns a History with per-epoch loss and metrics (and `val_` ones)."""
        if self.loss is None:
            raise ValueError("call compile() before fit()")
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y)
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        if not self.built:
            self.build(x.shape[1:])
        n = len(x)
        batches = max(1, math.ceil(n / batch_size))
        history = History()
        cbs = [history, *callbacks] + ([ProgressBar()] if verbose else [])
        self.stop_training = False
        f = self._fit = _FitState(epochs, batches, n)
        for cb in cbs:
            cb.model = self
        for cb in cbs:
            cb.on_train_begin()
        while f.epoch < epochs and not self.stop_training:
            if f.batch == 0:
                f.order = self.rng.permutation(n) if shuffle else np.arange(n)
                f.sums, f.seen = {}, 0
            for cb in cbs:
                cb.on_epoch_begin(f.epoch)
            while f.batch < batches and not self.stop_training:
                idx = f.order[f.batch * batch_size:(f.batch + 1) * batch_size]
                yb = y[idx]
                loss, out = self.train_step(x[idx], yb)
                k = len(idx)
                f.sums["loss"] = f.sums.get("loss", 0.0) + loss * k
                if self.metrics:
                    pred = self._predictions(out)
                    for m in self.metrics:
                        f.sums[m] = f.sums.get(m, 0.0) + METRICS[m](yb, pred) * k
                f.seen += k
                f.batch += 1
                f.global_step += 1
                f.steps.append(loss)
                logs = {m: s / f.seen for m, s in f.sums.items()}
                for cb in cbs:
                    cb.on_train_batch_end(f.batch, logs)
            logs = {m: s / max(f.seen, 1) for m, s in f.sums.items()}
            if validation_data is not None:
                val = self.evaluate(*validation_data, batch_size=max(batch_size, 256))
                logs.update({f"val_{k}": v for k, v in val.items()})
            for k, v in logs.items():
                f.history.setdefault(k, []).append(v)
            f.epoch += 1
            f.batch = 0
            for cb in cbs:
                cb.on_epoch_end(f.epoch - 1, logs)
        for cb in cbs:
            cb.on_train_end()
        history.history = {k: list(v) for k, v in f.history.items()}
        history.epoch = list(range(len(next(iter(f.history.values()), []))))
        history.steps = list(f.steps)
        return history

    def evaluate(self, x: Any, y: Any, batch_size: int = 256) -> dict[str, float]:
        """Mean loss and metrics over (x, y), without training behaviour (no dropout)."""
        if self.loss is None:
            raise ValueError("call compile() before evaluate()")
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y)
        sums: dict[str, float] = {}
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            loss, out = self._forward_loss(self._input(xb), yb, training=False)
            pred = self._predictions(out)
            sums["loss"] = sums.get("loss", 0.0) + float(loss.data) * len(xb)
            for m in self.metrics:
                sums[m] = sums.get(m, 0.0) + METRICS[m](yb, pred) * len(xb)
        return {k: v / max(len(x), 1) for k, v in sums.items()}

    def predict(self, x: Any, batch_size: int = 256) -> np.ndarray:
        """Outputs for a batch `(N, ...)`, computed `batch_size` samples at a time."""
        x = np.asarray(x, dtype=np.float32)
        if not self.built:
            self.build(x.shape[1:])
        parts = [self(x[i:i + batch_size]).data for i in range(0, len(x), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, *self.layers[-1].output_shape),
                                                             np.float32)

    # -- IR and training state
    def to_ir(self, name: str | None = None, labels: Sequence[str] | None = None,
              metadata: Mapping[str, Any] | None = None) -> ir.Model:
        """The trained model as an IR `Model` (Dropout leaves no node)."""
        if not self.built:
            self.build()
        specs, last = [], ir.INPUT
        for layer in self.layers:
            for spec in layer.ir_nodes():
                if len(spec) > 4:  # "" among a node's inputs: its layer's input
                    spec = (*spec[:4], [last if s == "" else s for s in
                                        ([spec[4]] if isinstance(spec[4], str) else spec[4])])
                specs.append(spec)
            last = specs[-1][0] if specs else last
        return ir.make_model(name or self.name, self.input_shape, specs, labels, metadata)

    def _save_training_state(self, path: str, run: str | None = None) -> None:
        f = self._fit
        facts, slots = self.optimizer.get_state(self.trainable_variables)
        doc = {
            "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "run": run,
            "epoch": f.epoch, "batch": f.batch, "global_step": f.global_step,
            "sums": f.sums, "seen": f.seen, "history": f.history, "steps": f.steps,
            "rng": self.rng.bit_generator.state, "optimizer": facts,
            "weights": len(self.get_weights()),
        }
        arrays = {f"weights/{i}.npy": w for i, w in enumerate(self.get_weights())}
        arrays.update({f"optimizer/{k}.npy": v for k, v in slots.items()})
        if f.order is not None:
            arrays["order.npy"] = f.order
        ir.atomic_write(path, ir.archive_bytes(_jsonable(doc), arrays, "checkpoint.json"))

    def _restore_training_state(self, path: str, run: str | None = None) -> None:
        from .errors import ModelFormatError
        doc, z = ir.read_archive(path, "checkpoint.json", "distill checkpoint")
        with z:
            try:
                _check_checkpoint(doc, self._fit, len(self.get_weights()), run)

                def arr(name):
                    import io
                    return np.lib.format.read_array(io.BytesIO(z.read(name)),
                                                    allow_pickle=False)
                weights = [arr(f"weights/{i}.npy") for i in range(doc["weights"])]
                for w, v in zip(weights, self.get_weights()):
                    if w.shape != v.shape or not np.all(np.isfinite(w)):
                        raise ValueError(f"a weight of shape {w.shape} where {v.shape} is "
                                         "expected, or one that is not finite")
                self.set_weights(weights)
                slots = {n[len("optimizer/"):-4]: arr(n) for n in z.namelist()
                         if n.startswith("optimizer/")}
                variables = self.trainable_variables
                for key, slot in slots.items():
                    index = key.split("/")[0]
                    if not (index.isdigit() and int(index) < len(variables)
                            and slot.shape == variables[int(index)].data.shape
                            and np.all(np.isfinite(slot))):
                        raise ValueError(f"optimizer slot {key!r} does not fit its weight")
                self.optimizer.set_state(self.trainable_variables, doc["optimizer"], slots)
                self.rng.bit_generator.state = doc["rng"]
                f = self._fit
                order = arr("order.npy") if "order.npy" in z.namelist() else None
                if doc["batch"] and (order is None or order.dtype.kind not in "iu" or not
                                     np.array_equal(np.sort(order), np.arange(f.samples))):
                    raise ValueError("the epoch's order is not an order of the samples")
                f.epoch, f.batch, f.global_step = doc["epoch"], doc["batch"], doc["global_step"]
                f.sums, f.seen = doc["sums"], doc["seen"]
                f.history, f.steps = doc["history"], doc["steps"]
                f.order = order
            except (KeyError, ValueError, TypeError, OSError, AttributeError, EOFError,
                    ArithmeticError, zipfile.BadZipFile, zlib.error) as e:
                raise ModelFormatError(f"{path}: checkpoint is unusable ({e}); delete it to "
                                       "start over") from None


CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "distill-checkpoint", 1


def _check_checkpoint(doc: Any, f: _FitState, weights: int, run: str | None) -> None:
    """Raise ValueError unless `doc` is a checkpoint of this run, with sane positions."""
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise ValueError("not a distill checkpoint")
    if doc.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(f"format_version {doc.get('format_version')!r}; this distill reads "
                         f"{CHECKPOINT_VERSION}")
    # A checkpoint without "run" is from a distill that did not record it: taken as it is.
    if run is not None and "run" in doc and doc["run"] != run:
        raise ValueError("it was written by a run of another config or seed")

    def count(key: str, most: float = math.inf) -> int:
        value = doc.get(key)
        if type(value) is not int or not 0 <= value <= most:
            raise ValueError(f"{key} is {value!r}, expected a whole number from 0 to {most}")
        return value

    def numbers(value: Any, key: str, length: int) -> None:
        if (not isinstance(value, list) or len(value) != length
                or not all(type(v) in (int, float) and math.isfinite(v) for v in value)):
            raise ValueError(f"{key} is not a list of {length} finite numbers")

    count("weights", weights)
    if doc["weights"] != weights:
        raise ValueError(f"it holds {doc['weights']} weight arrays; the model has {weights}")
    # A save after an epoch's last step (before the epoch-end one) holds batch == batches.
    epoch, batch = count("epoch"), count("batch", f.batches)
    step = count("global_step")
    count("seen", f.samples)
    numbers(doc.get("steps"), "steps", step)
    history, sums = doc.get("history"), doc.get("sums")
    if not isinstance(history, dict) or not isinstance(sums, dict):
        raise ValueError("history and sums must be tables")
    for key, values in history.items():
        numbers(values, f"history[{key!r}]", epoch)
    numbers(list(sums.values()), "sums", len(sums))
    if not isinstance(doc.get("optimizer"), dict) or not isinstance(doc.get("rng"), dict):
        raise ValueError("optimizer and rng must be tables")
    iterations = doc["optimizer"].get("iterations")
    if type(iterations) is not int or iterations < 0:
        raise ValueError(f"the optimizer's iterations is {iterations!r}")
    # Every epoch takes `batches` steps (one stopped early by a callback takes fewer).
    if not batch <= step <= epoch * f.batches + batch:
        raise ValueError(f"global_step {step} does not fit epoch {epoch} of {f.batches} steps "
                         f"and batch {batch}")
    if epoch and len(history.get("loss", ())) != epoch:
        raise ValueError(f"history holds no loss for each of the {epoch} epochs done")


def _pack(variables: list[Variable]) -> None:
    """Move the variables' values into one buffer, each variable a view of its own stretch, in
    order: an optimizer then updates them all with one pass of its rule (see `optim`)."""
    if not variables or len({v.data.dtype for v in variables}) > 1:
        return
    buf = np.empty(sum(v.data.size for v in variables), variables[0].data.dtype)
    at = 0
    for v in variables:
        view = buf[at:at + v.data.size].reshape(v.data.shape)
        view[...] = v.data
        v.data = view
        at += view.size


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x
