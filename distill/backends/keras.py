"""Keras import: a Keras 3 model (in memory, `.keras` or `.h5`) becomes a distill IR model.

Where it sits: beside the training backends. `distill import`, `export` and `verify` call
`load_keras(path)`; the TensorFlow backend calls `import_keras(model)` on what it trained.

What it promises:
- Layers are read from their objects and configs, never assumed: a Dense with a fused
  activation becomes dense + activation nodes; LeakyReLU's slope is read under either name
  (`negative_slope` in Keras 3, `alpha` in Keras 2 files); ReLU's options give a clipped relu;
  Softmax acts on any axis after the batch; Dropout-like layers and InputLayer are dropped;
  a BatchNormalization folds into the conv or dense before it where it can.
- Sequential and functional models import as graphs (several inputs and outputs, merges,
  shared layers, nested models inlined); a subclassed model whose `call` is a chain of layers
  imports by observing the order its layers run on a probe input.
- Every unsupported layer is listed at once, in one error.
- Every import ends by comparing the Keras model's own predictions with `ir.run`'s on random
  inputs; a mismatch is an error, not a warning.
- A file is checked before Keras reads it (`preflight`): a damaged archive, a zip bomb or a
  config declaring layers far larger than the file is one ModelFormatError, with no TensorFlow
  loaded and nothing allocated; Keras then loads in safe mode (no lambdas, no foreign modules).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import re
import select
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from .. import ir, nn, ops
from ..errors import DistillError, ModelFormatError
from . import registrar

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
# Agreement demanded between Keras and the IR on random inputs (looser than exporters':
# TensorFlow's matmul kernels sum in other orders and may use FMA).
ABS_TOL, REL_TOL = 1e-4, 1e-3

# (name, op, attrs, weights) as ir.make_model takes them, each reading the one before; or with
# a fifth item, the names of the earlier specs it reads ("" for the layer's input)
Spec = tuple

ACTIVATIONS = {"linear": None, "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh",
               "softmax": "softmax", "leaky_relu": "leaky_relu", "elu": "elu", "selu": "selu",
               "gelu": "gelu", "silu": "silu", "swish": "silu", "softplus": "softplus",
               "softsign": "softsign", "hard_sigmoid": "hard_sigmoid",
               "exponential": "exponential", "relu6": "clipped_relu"}
# The attributes of a string activation: Keras's defaults.
ACTIVATION_ATTRS = {"leaky_relu": {"alpha": float(np.float32(0.2))}, "elu": {"alpha": 1.0},
                    "clipped_relu": {"threshold": 0.0, "negative_slope": 0.0, "max_value": 6.0}}
DROPPED = {"InputLayer", "Dropout", "AlphaDropout", "GaussianDropout", "GaussianNoise",
           "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "ActivityRegularization"}
# A converter takes the layer and the per-sample shapes of the inputs of the call being
# converted (None where they are not known: a subclassed model's layers), and returns the
# layer's nodes as a chain: the first takes the call's inputs.
CONVERTERS: dict[str, Callable[[Any, list | None], list[Spec]]] = {}


converter = registrar(CONVERTERS)


class Unsupported(Exception):
    """One layer (or option) distill cannot represent; collected, then reported together."""


def _activation_name(name: Any) -> Any:
    """An activation's name as Keras stores it: a name, a serialized dict or a function."""
    if isinstance(name, dict):
        name = name.get("config", {}).get("name") or name.get("class_name")
    if callable(name):
        name = getattr(name, "__name__", str(name))
    return name


def _activation(name: Any, layer_name: str) -> list[Spec]:
    """The nodes for an activation given as Keras stores it (a name, or a serialized dict)."""
    name = _activation_name(name)
    if name not in ACTIVATIONS:
        raise Unsupported(f"activation {name!r} (supported: {', '.join(ACTIVATIONS)})")
    op = ACTIVATIONS[name]
    if op is None:
        return []
    return [(f"{layer_name}_{op}", op, dict(ACTIVATION_ATTRS.get(op, {})), {})]


@converter("Dense")
def _dense(layer, shapes) -> list[Spec]:
    config = layer.get_config()
    if getattr(layer, "lora_enabled", False):
        raise Unsupported("Dense with LoRA enabled (merge the LoRA weights first)")
    weights = {"kernel": np.asarray(layer.kernel)}
    if config.get("use_bias", True):
        weights["bias"] = np.asarray(layer.bias)
    return [(layer.name, "dense", {}, weights)] + _activation(config.get("activation"),
                                                              layer.name)


@converter("Activation")
def _activation_layer(layer, shapes) -> list[Spec]:
    specs = _activation(layer.get_config()["activation"], layer.name)
    return [(layer.name, op, attrs, w) for _, op, attrs, w in specs] or [
        (layer.name, "linear", {}, {})]


@converter("ReLU")
def _relu(layer, shapes) -> list[Spec]:
    config = layer.get_config()
    cap, threshold = config.get("max_value"), config.get("threshold", 0.0) or 0.0
    slope = config.get("negative_slope", 0.0) or 0.0
    if cap is not None or threshold:
        attrs = {"threshold": float(np.float32(threshold)),
                 "negative_slope": float(np.float32(slope))}
        if cap is not None:
            attrs["max_value"] = float(np.float32(cap))
        return [(layer.name, "clipped_relu", attrs, {})]
    if slope:
        return [(layer.name, "leaky_relu", {"alpha": float(np.float32(slope))}, {})]
    return [(layer.name, "relu", {}, {})]


@converter("ELU")
def _elu(layer, shapes) -> list[Spec]:
    return [(layer.name, "elu", {"alpha": float(np.float32(layer.get_config().get("alpha", 1.0)))},
             {})]


@converter("PReLU")
def _prelu(layer, shapes) -> list[Spec]:
    return [(layer.name, "prelu", {}, {"alpha": np.asarray(layer.alpha, np.float32)})]


@converter("LayerNormalization")
def _layer_normalization(layer, shapes) -> list[Spec]:
    config = layer.get_config()
    if config.get("rms_scaling"):
        raise Unsupported("LayerNormalization with rms_scaling=True")
    rank = len(shapes[0]) if shapes else len(layer.input.shape) - 1 if _has_input(layer) \
        else None
    axes = config.get("axis", -1)
    axes = sorted(int(a) for a in (axes if isinstance(axes, (list, tuple)) else [axes]))
    if rank is None:
        raise Unsupported("LayerNormalization of unknown input rank")
    axes = sorted(a - 1 if a > 0 else rank + a for a in axes)
    if not axes or axes != list(range(axes[0], rank)) or axes[0] < 0:
        raise Unsupported(f"LayerNormalization over axis {config.get('axis')} (only trailing "
                          "axes)")
    weights = {}
    if config.get("scale", True):
        weights["gamma"] = np.asarray(layer.gamma, np.float32)
    if config.get("center", True):
        weights["beta"] = np.asarray(layer.beta, np.float32)
    return [(layer.name, "layer_norm", {"axis": axes[0],
                                        "epsilon": float(np.float32(config.get("epsilon",
                                                                                1e-3)))},
             weights)]


@converter("LeakyReLU")
def _leaky_relu(layer, shapes) -> list[Spec]:
    config = layer.get_config()
    slope = config.get("negative_slope", config.get("alpha"))
    if slope is None:
        raise Unsupported("LeakyReLU without a negative_slope or alpha in its config")
    return [(layer.name, "leaky_relu", {"alpha": float(np.float32(slope))}, {})]


@converter("Softmax")
def _softmax(layer, shapes) -> list[Spec]:
    axis = layer.get_config().get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    rank = len(shapes[0]) if shapes else len(layer.input.shape) - 1 if _has_input(layer) \
        else None
    if axis == -1:
        return [(layer.name, "softmax", {}, {})]
    if not isinstance(axis, int) or rank is None or not (0 < axis <= rank or -rank <= axis < 0):
        raise Unsupported(f"Softmax over axis {axis} (one axis after the batch axis)")
    return [(layer.name, "softmax", {"axis": axis - 1 if axis > 0 else rank + axis}, {})]


@converter("Flatten")
def _flatten(layer, shapes) -> list[Spec]:
    if layer.get_config().get("data_format", "channels_last") == "channels_first":
        raise Unsupported("Flatten with data_format='channels_first'")
    return [(layer.name, "flatten", {}, {})]


@converter("Reshape")
def _reshape(layer, shapes) -> list[Spec]:
    return [(layer.name, "reshape", {"shape": [int(d) for d in layer.target_shape]}, {})]


@converter("Permute")
def _permute(layer, shapes) -> list[Spec]:
    return [(layer.name, "transpose", {"perm": [int(d) - 1 for d in layer.dims]}, {})]


@converter("BatchNormalization")
def _batch_normalization(layer, shapes) -> list[Spec]:
    """Inference-time batch normalization, gamma * (x - mean) / sqrt(variance + epsilon) +
    beta per channel, is a standardization (x - m) / s with s = sqrt(variance + epsilon) /
    gamma and m = mean - beta * s, computed in double."""
    config = layer.get_config()
    axis = config.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    rank = len(shapes[0]) if shapes else None
    if axis != -1 and (rank is None or axis != rank):
        raise Unsupported(f"BatchNormalization over axis {axis} (only the last, channels)")
    if config.get("renorm"):
        raise Unsupported("BatchNormalization with renorm=True")
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    mean, variance = f64(layer.moving_mean), f64(layer.moving_variance)
    gamma = f64(layer.gamma) if config.get("scale", True) else np.ones_like(mean)
    beta = f64(layer.beta) if config.get("center", True) else np.zeros_like(mean)
    if (gamma == 0).any():
        raise Unsupported("BatchNormalization with a zero gamma")
    std = np.sqrt(variance + config.get("epsilon", 1e-3)) / gamma
    return [(layer.name, "normalize", {}, {"mean": (mean - beta * std).astype(np.float32),
                                           "std": std.astype(np.float32)})]


@converter("Normalization")
def _normalization(layer, shapes) -> list[Spec]:
    config = layer.get_config()
    if config.get("invert"):
        raise Unsupported("Normalization with invert=True")
    axis = config.get("axis", -1)
    axis = tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)
    mean, variance = (np.asarray(a, np.float32) for a in (layer.mean, layer.variance))
    if axis == (-1,):
        shape = (-1,)
    elif axis == tuple(range(1, mean.ndim)) and mean.shape[0] == 1:
        shape = mean.shape[1:]  # one statistic per value of the sample, over all its axes
    else:
        raise Unsupported(f"Normalization over axis {config.get('axis')}")
    mean = mean.reshape(shape)
    # Keras divides by max(sqrt(variance), epsilon).
    std = np.maximum(np.sqrt(variance.reshape(shape)), 1e-7)
    return [(layer.name, "normalize", {}, {"mean": mean, "std": std.astype(np.float32)})]


def _channels_last(config: dict) -> None:
    if config.get("data_format", "channels_last") != "channels_last":
        raise Unsupported(f"data_format={config['data_format']!r} (only channels_last)")


def _side_widths(layer, value: Any) -> list[int]:
    """Keras's padding or cropping of a 1-D layer (an int or (before, after)) or a 2-D one
    ((top, bottom), (left, right)) as the IR's widths: before each axis, then after each."""
    if type(layer).__name__.endswith("1D"):
        return _tuple(value, 2)
    rows, cols = (_tuple(v, 2) for v in value)
    return [rows[0], cols[0], rows[1], cols[1]]


def _tuple(value: Any, rank: int) -> list[int]:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * rank
    return [int(v) for v in values]


def _pads(padding: str, shape, window: list[int], strides: list[int],
          dilation: list[int]) -> list[int]:
    try:
        return ops.same_pads(padding, shape, window, strides, dilation)
    except ValueError as e:
        raise Unsupported(str(e)) from None


def _windowed_config(layer, shapes, window: list[int]) -> dict[str, Any]:
    config = layer.get_config()
    _channels_last(config)
    if shapes is None:
        raise Unsupported(f"{type(layer).__name__} outside a functional or Sequential model")
    rank = len(window)
    if len(shapes[0]) != rank + 1:
        raise Unsupported(f"an input of shape {shapes[0]}")
    strides = _tuple(config.get("strides") or window, rank)
    dilation = _tuple(config.get("dilation_rate", 1), rank)
    return {"strides": strides, "dilation": dilation,
            "pads": _pads(config.get("padding", "valid"), shapes[0][:-1], window, strides,
                          dilation)}


@converter("Conv1D", "Conv2D")
def _conv(layer, shapes) -> list[Spec]:
    config = layer.get_config()
    kernel = np.asarray(layer.kernel, np.float32)
    attrs = _windowed_config(layer, shapes, list(kernel.shape[:-2]))
    attrs["groups"] = int(config.get("groups", 1))
    if not any(d > 1 for d in attrs["dilation"]):
        del attrs["dilation"]
    weights = {"kernel": kernel}
    if config.get("use_bias", True):
        weights["bias"] = np.asarray(layer.bias, np.float32)
    return [(layer.name, "conv", attrs, weights)] + _activation(config.get("activation"),
                                                                layer.name)


@converter("Conv1DTranspose", "Conv2DTranspose")
def _conv_transpose(layer, shapes) -> list[Spec]:
    config = layer.get_config()
    kernel = np.asarray(layer.kernel, np.float32)  # (*window, filters, channels)
    window = list(kernel.shape[:-2])
    attrs = _windowed_config(layer, shapes, window)
    extra = config.get("output_padding")
    try:
        attrs["pads"], extra = ops.transposed_pads(
            config.get("padding", "valid"), shapes[0][:-1], window, attrs["strides"],
            attrs["dilation"], None if extra is None else _tuple(extra, len(window)))
    except ValueError as e:
        raise Unsupported(str(e)) from None
    if any(extra):
        attrs["output_padding"] = extra
    if not any(d > 1 for d in attrs["dilation"]):
        del attrs["dilation"]
    weights = {"kernel": np.ascontiguousarray(np.swapaxes(kernel, -1, -2))}
    if config.get("use_bias", True):
        weights["bias"] = np.asarray(layer.bias, np.float32)
    return [(layer.name, "conv_transpose", attrs, weights)] + \
        _activation(config.get("activation"), layer.name)


@converter("Embedding")
def _embedding(layer, shapes) -> list[Spec]:
    config = layer.get_config()
    problems = [f"{key}=True" for key in ("mask_zero", "sparse") if config.get(key)]
    if getattr(layer, "lora_enabled", False):
        problems.append("LoRA enabled (merge the LoRA weights first)")
    if problems:
        raise Unsupported(", ".join(problems))
    return [(layer.name, "embedding", {}, {"embeddings": np.asarray(layer.embeddings,
                                                                    np.float32)})]



@converter("Bidirectional")
def _bidirectional(layer, shapes) -> list[Spec]:
    """The forward and the backward layer on the same input; with return_sequences the
    backward one's steps are put back in time order (reverse); then the merge."""
    mode = layer.get_config().get("merge_mode", "concat")
    if mode not in nn.BIDIRECTIONAL_MERGES:
        raise Unsupported(f"merge_mode={mode!r} (supported: {', '.join(nn.BIDIRECTIONAL_MERGES)})")
    inner = type(layer.forward_layer).__name__
    if inner not in ("SimpleRNN", "GRU", "LSTM"):
        raise Unsupported(f"a Bidirectional {inner}")
    forward, backward = (_recurrent(part, shapes)[0] for part in (layer.forward_layer,
                                                                  layer.backward_layer))
    return nn.bidirectional_nodes(layer.name, forward, backward, mode)


@converter("TimeDistributed")
def _time_distributed(layer, shapes) -> list[Spec]:
    """A Dense (or an activation) applied at every step is that layer on the last axis."""
    inner = layer.layer
    kind = type(inner).__name__
    if kind not in ("Dense", "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Dropout"):
        raise Unsupported(f"a TimeDistributed {kind} (Dense and activations are)")
    if kind == "Dropout":
        return []
    return [(layer.name + raw[len(inner.name):] if raw.startswith(inner.name) else raw, *rest)
            for raw, *rest in CONVERTERS[kind](inner, shapes)]


def _step_activation(name: Any) -> str | None:
    name = _activation_name(name)
    return name if name in ops.STEP_ACTIVATIONS else None


@converter("SimpleRNN", "GRU", "LSTM")
def _recurrent(layer, shapes) -> list[Spec]:
    config = layer.get_config()
    op = {"SimpleRNN": "simple_rnn", "GRU": "gru", "LSTM": "lstm"}[type(layer).__name__]
    problems = [f"{key}=True" for key in ("return_state", "stateful", "time_major")
                if config.get(key)]
    attrs: dict[str, Any] = {"return_sequences": bool(config.get("return_sequences"))}
    keys = ["activation"] + (["recurrent_activation"] if op != "simple_rnn" else [])
    for key in keys:
        name = _step_activation(config.get(key))
        if name is None:
            problems.append(f"{key}={config.get(key)!r} (supported: "
                            f"{', '.join(ops.STEP_ACTIVATIONS)})")
        attrs[key] = name
    if shapes is not None and len(shapes[0]) != 2:
        problems.append(f"an input of shape {shapes[0]} (steps, features)")
    if problems:
        raise Unsupported(", ".join(problems))
    if config.get("go_backwards"):
        attrs["go_backwards"] = True
    if op == "gru":
        attrs["reset_after"] = bool(config.get("reset_after", True))
    cell = getattr(layer, "cell", layer)
    weights = {"kernel": np.asarray(cell.kernel, np.float32),
               "recurrent_kernel": np.asarray(cell.recurrent_kernel, np.float32)}
    if config.get("use_bias", True):
        weights["bias"] = np.asarray(cell.bias, np.float32)
    return [(layer.name, op, attrs, weights)]


def _depthwise_kernel(layer) -> np.ndarray:
    """A depthwise kernel (*window, channels, multiplier) as a grouped conv's
    (*window, 1, channels * multiplier): group c makes outputs c * multiplier + m."""
    k = np.asarray(layer.depthwise_kernel if hasattr(layer, "depthwise_kernel") else layer.kernel,
                   np.float32)
    return k.reshape(*k.shape[:-2], 1, k.shape[-2] * k.shape[-1])


@converter("DepthwiseConv1D", "DepthwiseConv2D")
def _depthwise(layer, shapes) -> list[Spec]:
    config = layer.get_config()
    kernel = _depthwise_kernel(layer)
    attrs = _windowed_config(layer, shapes, list(kernel.shape[:-2]))
    attrs["groups"] = shapes[0][-1]
    weights = {"kernel": kernel}
    if config.get("use_bias", True):
        weights["bias"] = np.asarray(layer.bias, np.float32)
    return [(layer.name, "conv", attrs, weights)] + _activation(config.get("activation"),
                                                                layer.name)


@converter("SeparableConv1D", "SeparableConv2D")
def _separable(layer, shapes) -> list[Spec]:
    """A depthwise convolution, then a 1x1 one (the pointwise kernel), then the bias."""
    config = layer.get_config()
    kernel = _depthwise_kernel(layer)
    attrs = _windowed_config(layer, shapes, list(kernel.shape[:-2]))
    attrs["groups"] = shapes[0][-1]
    rank = kernel.ndim - 2
    pointwise = {"kernel": np.asarray(layer.pointwise_kernel, np.float32)}
    if config.get("use_bias", True):
        pointwise["bias"] = np.asarray(layer.bias, np.float32)
    return [(f"{layer.name}_depthwise", "conv", attrs, {"kernel": kernel}),
            (layer.name, "conv", {"strides": [1] * rank, "pads": [0] * (2 * rank),
                                  "groups": 1}, pointwise)] + \
        _activation(config.get("activation"), layer.name)


@converter("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D")
def _pooling(layer, shapes) -> list[Spec]:
    rank = int(type(layer).__name__[-2])
    pool = _tuple(layer.get_config()["pool_size"], rank)
    attrs = _windowed_config(layer, shapes, pool)
    del attrs["dilation"]
    op = "max_pool" if type(layer).__name__.startswith("Max") else "avg_pool"
    return [(layer.name, op, {"pool": pool, **attrs}, {})]


@converter("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D",
           "GlobalMaxPooling2D")
def _global_pooling(layer, shapes) -> list[Spec]:
    config = layer.get_config()
    if config.get("keepdims"):
        raise Unsupported("keepdims=True")
    _channels_last(config)
    op = "global_avg_pool" if "Average" in type(layer).__name__ else "global_max_pool"
    return [(layer.name, op, {}, {})]


@converter("ZeroPadding1D", "ZeroPadding2D")
def _zero_padding(layer, shapes) -> list[Spec]:
    config = layer.get_config()
    _channels_last(config)
    return [(layer.name, "zero_pad", {"pads": _side_widths(layer, config["padding"])}, {})]


@converter("Cropping1D", "Cropping2D")
def _cropping(layer, shapes) -> list[Spec]:
    config = layer.get_config()
    _channels_last(config)
    return [(layer.name, "crop", {"crops": _side_widths(layer, config["cropping"])}, {})]


@converter("UpSampling1D", "UpSampling2D")
def _upsampling(layer, shapes) -> list[Spec]:
    config = layer.get_config()
    _channels_last(config)
    interpolation = config.get("interpolation", "nearest")
    if interpolation not in ("nearest", "bilinear"):
        raise Unsupported(f"interpolation={interpolation!r} (nearest and bilinear are)")
    rank = int(type(layer).__name__[-2])
    attrs = {"size": _tuple(config["size"], rank)}
    if interpolation == "bilinear":
        attrs["interpolation"] = "linear"
    return [(layer.name, "upsample", attrs, {})]


MERGES = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply", "Average": "average",
          "Maximum": "maximum", "Minimum": "minimum"}


@converter(*MERGES)
def _merge(layer, shapes) -> list[Spec]:
    return [(layer.name, MERGES[type(layer).__name__], {}, {})]


@converter("Concatenate")
def _concatenate(layer, shapes) -> list[Spec]:
    axis = int(layer.get_config().get("axis", -1))
    if shapes is None:
        raise Unsupported("Concatenate outside a functional model")
    rank = len(shapes[0])
    if axis == 0 or not -rank <= axis <= rank:
        raise Unsupported(f"Concatenate on axis {axis} (the batch axis, or outside the inputs)")
    return [(layer.name, "concatenate", {"axis": axis - 1 if axis > 0 else rank + axis}, {})]


def _has_input(layer) -> bool:
    try:
        layer.input  # noqa: B018
        return True
    except (AttributeError, ValueError):
        return False


# ------------------------------------------------------------------------------ the walkers

def _chain_layers(model) -> list:
    """The layers of a model that is not a graph (a subclassed one, or an unbuilt
    Sequential), in the order data flows through them, or DistillError."""
    import keras
    if isinstance(model, keras.Sequential):
        return list(model.layers)
    return _observed_chain(model)


def _observed_chain(model) -> list:
    """Layers of a subclassed model, in the order its `call` runs them on a probe input."""
    import keras
    features = _input_shape(model)
    order, patched = [], keras.layers.Layer.__call__
    own = {id(layer) for layer in model._flatten_layers(include_self=False)}

    def recording(self, *args, **kwargs):
        if id(self) in own:
            order.append(self)
        return patched(self, *args, **kwargs)

    keras.layers.Layer.__call__ = recording
    try:
        model(np.zeros((1, *features), np.float32))
    finally:
        keras.layers.Layer.__call__ = patched
    if not order:
        raise DistillError(f"model {model.name!r} ran no layers on a probe input; distill "
                           "imports models whose call is a chain of layers")
    return order


def _input_shape(model) -> tuple[int, ...]:
    shape = None
    try:
        shape = model.input_shape
    except (AttributeError, ValueError):
        pass
    if isinstance(shape, list):
        raise DistillError(f"model {model.name!r} has {len(shape)} inputs; distill imports "
                           "single-input models")
    if shape is None:
        # A subclassed model remembers the shape it was built with.
        build = (model.get_build_config() or {}) if hasattr(model, "get_build_config") else {}
        shapes = list(build.values())
        if len(shapes) == 1 and isinstance(shapes[0], (list, tuple)) and shapes[0]:
            shape = tuple(shapes[0])
    if shape is None:
        raise DistillError(f"cannot tell the input shape of model {model.name!r}; call it on "
                           "data once (or build it) before saving")
    if any(d is None for d in shape[1:]):
        raise DistillError(f"model {model.name!r} has an input of unknown size {shape}")
    return tuple(int(d) for d in shape[1:])


class _Graph:
    """A Keras functional graph read into `ir.make_model`'s terms: inputs, layers with their
    wiring, outputs. Nested models are inlined (their layers named `outer/inner`); a layer
    called several times (a shared layer) gives one node per call, sharing its weight arrays."""

    def __init__(self) -> None:
        self.specs: list[tuple] = []
        self.problems: list[str] = []
        self.taken: set[str] = set()
        self.converted: dict[tuple, list[Spec]] = {}  # (layer, input shapes) -> its nodes
        self.weights: dict[int, dict] = {}  # id(layer) -> its first conversion's arrays

    def unique(self, base: str) -> str:
        name, i = base, 2
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    def walk(self, model, sources: list[str], prefix: str = "") -> list[str]:
        """The names of `model`'s outputs, its inputs being the values named `sources`."""
        names = {id(t): src for t, src in zip(model.inputs, sources)}
        stack = list(reversed(model.outputs))  # first things first: the order of a forward pass
        while stack:
            t = stack[-1]
            if id(t) in names:
                stack.pop()
                continue
            op, index, _ = t._keras_history
            call = op._inbound_nodes[index]
            pending = [u for u in call.input_tensors if id(u) not in names]
            if type(op).__name__ == "InputLayer" or (not call.input_tensors and not pending):
                self.problems.append(f"input {op.name!r} of {model.name!r} is not among its "
                                     "inputs")
                names[id(t)] = sources[0]
                continue
            if pending:
                stack.extend(reversed(pending))
                continue
            stack.pop()
            outputs = self.call(op, call, [names[id(u)] for u in call.input_tensors], prefix)
            for k, out in enumerate(call.output_tensors):
                names[id(out)] = outputs[min(k, len(outputs) - 1)]
        return [names[id(t)] for t in model.outputs]

    def share(self, layer, specs: list[Spec]) -> list[Spec]:
        """`specs` with each weight replaced by the array an earlier conversion of the same
        layer made for it, so that a shared layer's nodes share their arrays."""
        first = self.weights.setdefault(id(layer), {})
        out = []
        for k, (raw, op_name, attrs, weights, *wiring) in enumerate(specs):
            same = {}
            for name, arr in weights.items():
                earlier = first.setdefault((k, name), arr)
                same[name] = earlier if np.array_equal(earlier, arr) and \
                    earlier.shape == np.shape(arr) else arr
            out.append((raw, op_name, attrs, same, *wiring))
        return out

    def call(self, layer, call, inputs: list[str], prefix: str) -> list[str]:
        """Add the nodes of one call of `layer`; the names of its outputs."""
        import keras
        kind = type(layer).__name__
        if isinstance(layer, keras.Model) and _is_graph(layer):
            return self.walk(layer, inputs, f"{prefix}{layer.name}/")
        if len(call.output_tensors) != 1:
            self.problems.append(f"layer {layer.name!r} ({kind}) gives "
                                 f"{len(call.output_tensors)} outputs")
            return inputs[:1]
        if kind in DROPPED:
            return inputs[:1]
        convert = CONVERTERS.get(kind)
        if convert is None:
            self.problems.append(f"layer {layer.name!r} ({kind}) is not supported")
            return inputs[:1]
        shapes = None if None in call.input_tensors else \
            [tuple(int(d) for d in u.shape[1:]) for u in call.input_tensors]
        # once per layer and input shapes (a shared layer's pads or axes can depend on them),
        # each weight one array however often it is converted
        key = (id(layer), str(shapes))
        if key not in self.converted:
            try:
                self.converted[key] = self.share(layer, convert(layer, shapes))
            except Unsupported as e:
                self.problems.append(f"layer {layer.name!r} ({kind}): {e} is not supported")
                self.converted[key] = []
        specs = self.converted[key]
        if not specs:
            return inputs[:1]
        if len(inputs) != 1 and specs[0][1] not in ops.MERGES:
            self.problems.append(f"layer {layer.name!r} ({kind}) takes {len(inputs)} inputs")
            return inputs[:1]
        wiring: Any = inputs
        made: dict[str, str] = {}
        for raw, op_name, attrs, weights, *reads in specs:
            if reads:
                wiring = [inputs[0] if src == "" else made[src] for src in reads[0]]
            name = self.unique(prefix + raw)
            made[raw] = name
            self.specs.append((name, op_name, attrs, weights, wiring))
            wiring = [name]
        return wiring


def _fold_normalizations(specs: list[tuple], outputs: list[str] | None
                         ) -> tuple[list[tuple], list[str] | None]:
    """Fold a per-channel normalize (a BatchNormalization) into the dense or conv node before
    it, when nothing else reads that node and its kernel is its own: kernel / std and
    (bias - mean) / std, computed in double. One node fewer, and no pass over the data."""
    readers: dict[str, int] = {}
    for spec in specs:
        for source in spec[4]:
            readers[source] = readers.get(source, 0) + 1
    for out in outputs or []:
        readers[out] = readers.get(out, 0) + 1
    users: dict[int, int] = {}
    for spec in specs:
        for arr in spec[3].values():
            users[id(arr)] = users.get(id(arr), 0) + 1
    by_name = {spec[0]: k for k, spec in enumerate(specs)}
    renamed: dict[str, str] = {}
    folded, out = set(), list(specs)
    for k, (name, op_name, _, weights, wiring) in enumerate(specs):
        source = wiring[0] if len(wiring) == 1 else None
        j = by_name.get(source) if op_name == "normalize" else None
        if j is None or specs[j][1] not in ("dense", "conv") or readers.get(source) != 1:
            continue
        producer = out[j]
        kernel = producer[3]["kernel"]
        mean, std = (np.asarray(weights[key], np.float64) for key in ("mean", "std"))
        if mean.shape != (kernel.shape[-1],) or std.shape != mean.shape or \
                users[id(kernel)] != 1:
            continue
        bias = np.asarray(producer[3].get("bias", np.zeros(kernel.shape[-1])), np.float64)
        new = {"kernel": (np.asarray(kernel, np.float64) / std).astype(np.float32),
               "bias": ((bias - mean) / std).astype(np.float32)}
        out[j] = (producer[0], producer[1], producer[2], new, producer[4])
        folded.add(k)
        renamed[name] = producer[0]
    if not folded:
        return specs, outputs
    specs = [(n, o, a, w, [renamed.get(src, src) for src in wiring])
             for k, (n, o, a, w, wiring) in enumerate(out) if k not in folded]
    return specs, None if outputs is None else [renamed.get(o, o) for o in outputs]


def _graph(model) -> tuple[dict[str, tuple[int, ...]], _Graph, list[str]]:
    """The inputs (name: per-sample shape), nodes and outputs of a functional or Sequential
    model."""
    graph = _Graph()
    inputs = {}
    for t in model.inputs:
        shape = tuple(t.shape[1:])
        if any(d is None for d in shape):
            raise DistillError(f"model {model.name!r} has an input of unknown size "
                               f"{tuple(t.shape)}")
        inputs[graph.unique(t._keras_history[0].name)] = tuple(int(d) for d in shape)
    outputs = graph.walk(model, list(inputs))
    return inputs, graph, outputs


def _is_graph(model) -> bool:
    try:
        return bool(model.inputs) and bool(model.outputs)
    except (AttributeError, ValueError):
        return False


def import_keras(model, name: str | None = None, metadata: dict | None = None,
                 check: bool = True) -> ir.Model:
    """Convert an in-memory Keras model to the IR and check it against `model.predict`.

    Functional and Sequential models are read as graphs (several inputs and outputs, merges,
    shared layers, nested models); a subclassed model as the chain of layers its `call` runs.
    """
    if _is_graph(model):
        inputs, graph, outputs = _graph(model)
    else:
        graph, outputs = _Graph(), None
        inputs = {ir.INPUT: _input_shape(model)}
        for layer in _chain_layers(model):
            graph.call(layer, _Call(), [graph.specs[-1][0]] if graph.specs else [ir.INPUT], "")
    if graph.problems:
        raise DistillError("cannot import the Keras model: " + "; ".join(graph.problems)
                           + f"; supported layers: {', '.join(sorted(CONVERTERS))}")
    import keras
    meta = {"source": {"framework": "keras", "keras_version": keras.__version__,
                       "class": type(model).__name__}, **(metadata or {})}
    specs, outputs = _fold_normalizations(graph.specs, outputs)
    result = ir.make_model(name or model.name, inputs, specs, metadata=meta, outputs=outputs)
    if check:
        compare_with_keras(model, result)
    return result


class _Call:
    """A layer call in a subclassed model: one input and one output, shapes unknown."""
    input_tensors = (None,)
    output_tensors = (None,)


def compare_with_keras(model, result: ir.Model, samples: int = 64, seed: int = 0) -> float:
    """Max abs difference between Keras and `ir.run` on random inputs (ids of the table for
    an input that an embedding reads); raises on mismatch."""
    rng = np.random.default_rng(seed)
    xs = []
    for name, shape in result.inputs:
        vocab = [n.weights["embeddings"].shape[0] for n in result.nodes
                 if n.op == "embedding" and name in n.inputs]
        xs.append(rng.integers(0, min(vocab), (samples, *shape)).astype(np.float32) if vocab
                  else rng.normal(size=(samples, *shape)).astype(np.float32))
    try:
        want = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    except Exception as e:  # Keras's runtime refusing its own model (e.g. an op CPUs lack)
        last = ([line for line in str(e).splitlines() if line.strip()] or [type(e).__name__])[-1]
        raise DistillError("Keras cannot run the model to check the import: "
                           f"{last.strip()[:200]}") from None
    want = [np.asarray(w, np.float32) for w in (want if isinstance(want, (list, tuple))
                                                 else [want])]
    got = ir.run(result, xs if len(xs) > 1 else xs[0], split=True)
    if [w.shape for w in want] != [g.shape for g in got]:
        raise DistillError(f"the imported model gives outputs of shapes "
                           f"{[g.shape[1:] for g in got]}, Keras gives "
                           f"{[w.shape[1:] for w in want]}; the model is not a graph distill "
                           "can read")
    worst = 0.0
    for w, g in zip(want, got):
        err = np.abs(g.astype(np.float64) - w)
        bad = err > ABS_TOL + REL_TOL * np.abs(w)
        if bad.any() or not np.isfinite(g).all():
            raise DistillError(f"the imported model differs from Keras's predictions by up "
                               f"to {float(np.nanmax(err)):.3g} on random inputs; its call is "
                               "not the chain of layers distill read (write it as a "
                               "Sequential or functional model)")
        worst = max(worst, float(err.max(initial=0.0)))
    return worst


def load_keras(path: str | os.PathLike, isolate: bool = False) -> ir.Model:
    """Read a `.keras` or `.h5` file with Keras and import it.

    The file is checked before Keras sees it (`preflight`): Keras builds every layer a config
    declares, so a config of a few bytes could otherwise ask for terabytes. TensorFlow's native
    start-up and load chatter is kept off stderr, where distill prints one line per error.

    `isolate=True` (the command line) reads the file in a worker process instead, under a time
    limit: HDF5 and TensorFlow are native code, and a damaged file can make them loop forever
    or crash, which no check in this process could stop. The worker has only Keras's own
    classes, so a model of custom classes registered in this process needs `isolate=False`.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelFormatError(f"{path}: is a directory, not a Keras .keras or .h5 file")
    if not path.is_file():
        what = "not a regular file" if path.exists() else "no such file"
        raise ModelFormatError(f"{path}: {what}")
    if isolate:
        preflight(path, hdf5=False)  # the HDF5 part runs in the worker, under its time limit
        return _WORKER.load(path)
    preflight(path)
    return _load_checked(path)


@contextlib.contextmanager
def _lower_case_suffix(path: Path):
    """`path`, or a link to it ending in the lower-case suffix: Keras picks its reader by
    suffix and only knows `.keras`, `.h5` and `.hdf5` spelled that way (MODEL.H5 is common)."""
    if path.suffix == path.suffix.lower():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="distill-keras-") as tmp:
        link = Path(tmp) / f"model{path.suffix.lower()}"
        link.symlink_to(path.resolve())
        yield link


def _load_error(e: Exception) -> str:
    """Keras's error as one whole sentence: its messages run to kilobytes of config."""
    text = str(e).strip()
    found = re.search(r"Could not locate (?:class|function) '([^']{1,80})'", text)
    if found:
        return (f"Keras cannot load it: it uses the class or function {found[1]!r}, which the "
                "program that saved it defines (a Keras file holds no code). Import it from "
                "Python, where that class is defined: distill.backends.keras.import_keras(model)")
    first = text.splitlines()[0] if text else type(e).__name__
    if len(first) > 200:  # cut at a sentence or word boundary, and say that it was cut
        cut = first[:200]
        cut = cut[:cut.rfind(". ") + 1] if ". " in cut else cut[:cut.rfind(" ")]
        first = cut.rstrip() + " ..."
    return f"Keras cannot load it ({first})"


def _load_checked(path: Path) -> ir.Model:
    """Keras's load and the import, once `preflight` has passed."""
    with _native_stderr_quiet():
        try:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up quiet
            import keras
        except ImportError:
            raise DistillError(f"{path}: reading Keras files needs TensorFlow "
                               "(pip install 'distill[tensorflow]')") from None
        try:
            with _lower_case_suffix(path) as readable:
                # safe_mode (the default, spelled out): no Python lambdas, no foreign modules.
                model = keras.saving.load_model(readable, compile=False, safe_mode=True)
        except Exception as e:  # Keras raises many kinds; every one means "cannot read this file"
            raise ModelFormatError(f"{path}: {_load_error(e)}") from None
        return import_keras(model, name=path.stem, metadata={"source_file": path.name})


# ------------------------------------------------------------------- the isolated reader

# Seconds a worker may take to start (it imports TensorFlow) and to read one file.
KERAS_START_SECONDS = 600.0
KERAS_SECONDS: float | None = None  # None: DISTILL_KERAS_TIMEOUT, default 120


def read_seconds() -> float:
    """The time limit for reading one Keras file: KERAS_SECONDS, or DISTILL_KERAS_TIMEOUT."""
    if KERAS_SECONDS is not None:
        return KERAS_SECONDS
    text = os.environ.get("DISTILL_KERAS_TIMEOUT", "120")
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= 86400:  # NaN fails too
        raise DistillError(f"DISTILL_KERAS_TIMEOUT must be a number of seconds above 0 and at "
                           f"most 86400, got {text[:40]!r}")
    return seconds


class _Worker:
    """A child process that imports TensorFlow once and then reads Keras files on request.

    Requests are one JSON line (the path); answers one JSON line, then for a model the bytes of
    its `.distill` archive (loaded here with `ir.load`: validated, never unpickled). A worker
    that overruns its time is killed and the next request starts a fresh one; one that dies (a
    crash in native code) is reported and replaced the same way.
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.buffer = b""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.kill()
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                with contextlib.suppress(OSError):
                    stream.close()
        self.proc, self.buffer = None, b""

    def _start(self, path: Path) -> None:
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        here = str(Path(__file__).resolve().parent.parent.parent)  # the folder holding distill
        env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from distill.backends.keras import _serve; _serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self.buffer = b""
        ready = self._answer(path, KERAS_START_SECONDS, "start")
        if not ready.get("ready"):
            self.stop()
            raise DistillError(f"{path}: {ready.get('message', 'the Keras reader did not start')}")

    def load(self, path: Path) -> ir.Model:
        seconds = read_seconds()
        if self.pid is None:
            self._start(path)
        self.proc.stdin.write((json.dumps(str(path)) + "\n").encode())
        self.proc.stdin.flush()
        answer = self._answer(path, seconds, "read")
        if not answer.get("ok"):
            kind = ModelFormatError if answer.get("kind") == "ModelFormatError" else DistillError
            raise kind(answer.get("message", f"{path}: Keras cannot load it"))
        data = self._read(int(answer["size"]), path, seconds)
        with tempfile.TemporaryDirectory(prefix="distill-keras-") as folder:
            tmp = Path(folder) / "imported.distill"
            tmp.write_bytes(data)
            return ir.load(tmp)

    def _answer(self, path: Path, seconds: float, what: str) -> dict:
        deadline = time.monotonic() + seconds
        while b"\n" not in self.buffer:
            self._fill(path, deadline, what, seconds)
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def _read(self, size: int, path: Path, seconds: float) -> bytes:
        deadline = time.monotonic() + seconds
        while len(self.buffer) < size:
            self._fill(path, deadline, "read", seconds)
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _fill(self, path: Path, deadline: float, what: str, seconds: float) -> None:
        fd = self.proc.stdout.fileno()
        left = deadline - time.monotonic()
        ready = select.select([fd], [], [], max(left, 0))[0] if left > 0 else []
        if not ready:
            self.stop()
            doing = "start" if what == "start" else "finish reading it"
            raise ModelFormatError(f"{path}: Keras did not {doing} within {seconds:g} s (a "
                                   "damaged HDF5 file can make it loop forever); not imported")
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            code = self.proc.wait()
            self.stop()
            how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
            raise ModelFormatError(f"{path}: Keras crashed reading it ({how}); not imported")
        self.buffer += chunk


_WORKER = _Worker()
atexit.register(_WORKER.stop)


def _serve() -> None:
    """The worker's loop (see `_Worker`): protocol on a private copy of stdout, while fd 1
    and 2 point at nothing, so that no print or native log can corrupt an answer."""
    proto = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    with contextlib.suppress(OSError, AttributeError):  # die with the parent (Linux)
        import ctypes
        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL

    def send(header: dict, data: bytes = b"") -> None:
        proto.write((json.dumps(header) + "\n").encode() + data)
        proto.flush()
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras  # noqa: F401  (once, before the first request)
    except ImportError:
        send({"ready": False, "message": "reading Keras files needs TensorFlow "
                                         "(pip install 'distill[tensorflow]')"})
        return
    send({"ready": True})
    for line in sys.stdin.buffer:
        path = Path(json.loads(line))
        try:
            preflight(path)
            model = _load_checked(path)
            with tempfile.TemporaryDirectory(prefix="distill-keras-") as folder:
                ir.save(model, Path(folder) / "m.distill")
                data = (Path(folder) / "m.distill").read_bytes()
            send({"ok": True, "size": len(data)}, data)
        except DistillError as e:
            send({"ok": False, "kind": type(e).__name__, "message": str(e)})
        except Exception as e:  # a bug in distill's import: one line, and it says so
            send({"ok": False, "kind": "DistillError", "message": f"{path}: internal error "
                  f"while importing ({type(e).__name__}: {_first_line(e)}); please report it"})


# What a Keras file may make this process allocate beyond its own size: Keras builds (and
# randomly initializes) every declared weight before reading the file's values, and the import
# check runs 64 samples through the model.
MAX_KERAS_BYTES = 128 << 20
MAX_KERAS_CONFIG = 16 << 20
# Config keys whose integers size a weight, and keys that hold a shape.
_SIZE_KEYS = {"units", "filters", "input_dim", "output_dim", "num_heads", "key_dim", "value_dim",
              "max_tokens", "num_tokens", "depth"}
_SHAPE_KEYS = {"batch_shape", "batch_input_shape", "input_shape", "shape", "target_shape",
               "output_shape"}


def preflight(path: Path, hdf5: bool = True) -> None:
    """Refuse a Keras file whose archive or config is damaged, a zip bomb, or declares layers
    too large to build, without loading TensorFlow; raises ModelFormatError. `hdf5=False`
    skips reading an `.h5` file's config (native code, which may not return)."""
    size = path.stat().st_size
    if size == 0:
        raise ModelFormatError(f"{path}: empty file, not a Keras model")
    if path.suffix.lower() == ".keras":
        config = _keras_archive_config(path, size)
    elif hdf5:
        config = _h5_config(path)
    else:
        return
    if config is None:
        return  # Keras will say what is missing
    params, widest = _declared_sizes(config, path)
    need = 4 * (params + 2 * 64 * widest)
    if need > MAX_KERAS_BYTES + 2 * size:
        raise ModelFormatError(f"{path}: declares layers needing about {need:,} bytes for a "
                               f"{size:,}-byte file; distill imports small models only")


def _keras_archive_config(path: Path, size: int) -> Any:
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            inflated = sum(i.file_size for i in infos)
            # zipfile stops at the declared size, so declared sizes bound what reading costs.
            if inflated > MAX_KERAS_BYTES + 16 * size:
                raise ModelFormatError(f"{path}: its entries inflate to {inflated:,} bytes "
                                       f"from {size:,}; not a Keras model (a zip bomb?)")
            try:
                info = z.getinfo("config.json")
            except KeyError:
                raise ModelFormatError(f"{path}: not a Keras model archive (no config.json "
                                       "inside)") from None
            if info.file_size > MAX_KERAS_CONFIG:
                raise ModelFormatError(f"{path}: config.json is larger than "
                                       f"{MAX_KERAS_CONFIG:,} bytes")
            text = z.read(info)
    except ModelFormatError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError,
            NotImplementedError) as e:
        raise ModelFormatError(f"{path}: not a Keras model archive ({_first_line(e)})") from None
    return _parse_config(text, path)


def _h5_config(path: Path) -> Any:
    try:
        import h5py
    except ImportError:
        return None
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            if raw is None:
                return None
            if isinstance(raw, bytes) and len(raw) > MAX_KERAS_CONFIG:
                raise ModelFormatError(f"{path}: model_config is larger than "
                                       f"{MAX_KERAS_CONFIG:,} bytes")
    except ModelFormatError:
        raise
    except Exception as e:  # h5py raises OSError, KeyError, ValueError, ... for damaged files
        raise ModelFormatError(f"{path}: not a readable HDF5 Keras file "
                               f"({_first_line(e)})") from None
    return _parse_config(raw, path)


def _parse_config(raw: Any, path: Path) -> Any:
    try:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8")
        if not isinstance(raw, str):
            raise ValueError(f"a {type(raw).__name__}, not JSON text")
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ModelFormatError(f"{path}: the model config is not JSON ({_first_line(e)})") \
            from None


def _declared_sizes(config: Any, path: Path) -> tuple[int, int]:
    """An upper estimate of the weights a config declares, and its widest shape."""
    sizes, widest, stack, seen = [], 1, [config], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > 1_000_000:
            raise ModelFormatError(f"{path}: the model config is too large to be a small model")
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _SIZE_KEYS and _is_count(value):
                    sizes.append(value)
                elif key in _SHAPE_KEYS and isinstance(value, list) and value and all(
                        d is None or _is_count(d) or _is_int(d) for d in value):
                    widest = max(widest, prod(d for d in value if _is_count(d)))
                else:
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    widest = max([widest, *sizes])
    return sum(s * widest + s for s in sizes), widest


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return _is_int(value) and value > 0


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:200]


@contextlib.contextmanager
def _native_stderr_quiet() -> Iterator[None]:
    """Send what native code (TensorFlow's C++ logging, HDF5) writes to file descriptor 2 to a
    temporary file for the duration; Python's own sys.stderr is left alone."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def is_keras_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in KERAS_SUFFIXES


def load_any(path: str | os.PathLike, isolate: bool = False) -> ir.Model:
    """A `.distill` file, or a Keras file (`isolate`: see `load_keras`) or an ONNX file
    imported on the fly."""
    from .onnx import is_onnx_file, load_onnx
    if is_onnx_file(path):
        return load_onnx(path)
    return load_keras(path, isolate) if is_keras_file(path) else ir.load(path)
