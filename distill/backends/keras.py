"""Keras import: a Keras 3 model (in memory, `.keras` or `.h5`) becomes a distill IR model.

Where it sits: beside the training backends. `distill import`, `export` and `verify` call
`load_keras(path)`; the TensorFlow backend calls `import_keras(model)` on what it trained.

What it promises:
- Layers are read from their objects and configs, never assumed: a Dense with a fused
  activation becomes dense + activation nodes; LeakyReLU's slope is read under either name
  (`negative_slope` in Keras 3, `alpha` in Keras 2 files); ReLU options are honoured or refused;
  Softmax must act on the last axis; Dropout-like layers and InputLayer are dropped.
- Sequential and functional chains import directly; a subclassed model whose `call` is a chain
  of layers imports by observing the order its layers run on a probe input.
- Every unsupported layer is listed at once, in one error.
- Every import ends by comparing the Keras model's own predictions with `ir.run`'s on random
  inputs; a mismatch is an error, not a warning.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import ir
from ..errors import DistillError, ModelFormatError

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
# Agreement demanded between Keras and the IR on random inputs (looser than exporters':
# TensorFlow's matmul kernels sum in other orders and may use FMA).
ABS_TOL, REL_TOL = 1e-4, 1e-3

Spec = tuple[str, str, dict, dict]  # (name, op, attrs, weights) as ir.make_model takes them

ACTIVATIONS = {"linear": None, "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh",
               "softmax": "softmax", "leaky_relu": "leaky_relu"}
DROPPED = {"InputLayer", "Dropout", "AlphaDropout", "GaussianDropout", "GaussianNoise",
           "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "ActivityRegularization"}
CONVERTERS: dict[str, Callable[[Any], list[Spec]]] = {}


def converter(*class_names: str) -> Callable:
    def register(fn: Callable) -> Callable:
        for name in class_names:
            CONVERTERS[name] = fn
        return fn
    return register


class Unsupported(Exception):
    """One layer (or option) distill cannot represent; collected, then reported together."""


def _activation(name: Any, layer_name: str) -> list[Spec]:
    """The nodes for an activation given as Keras stores it (a name, or a serialized dict)."""
    if isinstance(name, dict):
        name = name.get("config", {}).get("name") or name.get("class_name")
    if callable(name):
        name = getattr(name, "__name__", str(name))
    if name not in ACTIVATIONS:
        raise Unsupported(f"activation {name!r} (supported: {', '.join(ACTIVATIONS)})")
    op = ACTIVATIONS[name]
    if op is None:
        return []
    attrs = {"alpha": float(np.float32(0.2))} if op == "leaky_relu" else {}
    return [(f"{layer_name}_{op}", op, attrs, {})]


@converter("Dense")
def _dense(layer) -> list[Spec]:
    config = layer.get_config()
    if getattr(layer, "lora_enabled", False):
        raise Unsupported("Dense with LoRA enabled (merge the LoRA weights first)")
    weights = {"kernel": np.asarray(layer.kernel)}
    if config.get("use_bias", True):
        weights["bias"] = np.asarray(layer.bias)
    return [(layer.name, "dense", {}, weights)] + _activation(config.get("activation"),
                                                              layer.name)


@converter("Activation")
def _activation_layer(layer) -> list[Spec]:
    specs = _activation(layer.get_config()["activation"], layer.name)
    return [(layer.name, op, attrs, w) for _, op, attrs, w in specs] or [
        (layer.name, "linear", {}, {})]


@converter("ReLU")
def _relu(layer) -> list[Spec]:
    config = layer.get_config()
    if config.get("max_value") is not None:
        raise Unsupported(f"ReLU max_value={config['max_value']} (a capped ReLU)")
    if config.get("threshold", 0.0):
        raise Unsupported(f"ReLU threshold={config['threshold']}")
    slope = config.get("negative_slope", 0.0) or 0.0
    if slope:
        return [(layer.name, "leaky_relu", {"alpha": float(np.float32(slope))}, {})]
    return [(layer.name, "relu", {}, {})]


@converter("LeakyReLU")
def _leaky_relu(layer) -> list[Spec]:
    config = layer.get_config()
    slope = config.get("negative_slope", config.get("alpha"))
    if slope is None:
        raise Unsupported("LeakyReLU without a negative_slope or alpha in its config")
    return [(layer.name, "leaky_relu", {"alpha": float(np.float32(slope))}, {})]


@converter("Softmax")
def _softmax(layer) -> list[Spec]:
    axis = layer.get_config().get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    rank = len(layer.input.shape) if _has_input(layer) else None
    if axis != -1 and (rank is None or axis != rank - 1):
        raise Unsupported(f"Softmax over axis {axis} (only the last axis)")
    return [(layer.name, "softmax", {}, {})]


@converter("Flatten")
def _flatten(layer) -> list[Spec]:
    if layer.get_config().get("data_format", "channels_last") == "channels_first":
        raise Unsupported("Flatten with data_format='channels_first'")
    return [(layer.name, "flatten", {}, {})]


@converter("Reshape")
def _reshape(layer) -> list[Spec]:
    return [(layer.name, "reshape", {"shape": [int(d) for d in layer.target_shape]}, {})]


@converter("Normalization")
def _normalization(layer) -> list[Spec]:
    config = layer.get_config()
    if config.get("invert"):
        raise Unsupported("Normalization with invert=True")
    axis = config.get("axis", -1)
    if axis not in (-1, (-1,), [-1]):
        raise Unsupported(f"Normalization over axis {axis}")
    mean = np.asarray(layer.mean, np.float32).reshape(-1)
    # Keras divides by max(sqrt(variance), epsilon).
    std = np.maximum(np.sqrt(np.asarray(layer.variance, np.float32).reshape(-1)), 1e-7)
    return [(layer.name, "normalize", {}, {"mean": mean, "std": std.astype(np.float32)})]


def _has_input(layer) -> bool:
    try:
        layer.input  # noqa: B018
        return True
    except (AttributeError, ValueError):
        return False


# ------------------------------------------------------------------------------ the walkers

def _chain_layers(model) -> list:
    """The model's layers in the order data flows through them, or DistillError."""
    import keras
    if isinstance(model, keras.Sequential):
        return list(model.layers)
    if isinstance(model, keras.Model) and getattr(model, "_is_graph_network", False) or \
            type(model).__name__ == "Functional":
        layers = [lay for lay in model.layers if type(lay).__name__ != "InputLayer"]
        previous = None
        for layer in layers:
            inbound = layer.input
            if isinstance(inbound, (list, tuple)):
                raise DistillError(f"layer {layer.name!r} takes {len(inbound)} inputs; distill "
                                   "imports chains of single-input layers")
            source = inbound._keras_history.operation
            if previous is not None and source is not previous:
                raise DistillError(f"layer {layer.name!r} does not take the previous layer's "
                                   f"output; distill imports chains of layers")
            previous = layer
        return layers
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


def import_keras(model, name: str | None = None, metadata: dict | None = None,
                 check: bool = True) -> ir.Model:
    """Convert an in-memory Keras model to the IR and check it against `model.predict`."""
    layers = _chain_layers(model)
    input_shape = _input_shape(model)
    specs, problems = [], []
    for layer in layers:
        kind = type(layer).__name__
        if kind in DROPPED:
            continue
        convert = CONVERTERS.get(kind)
        if convert is None:
            problems.append(f"layer {layer.name!r} ({kind}) is not supported")
            continue
        try:
            specs += convert(layer)
        except Unsupported as e:
            problems.append(f"layer {layer.name!r} ({kind}): {e} is not supported")
    if problems:
        raise DistillError("cannot import the Keras model: " + "; ".join(problems)
                           + f"; supported layers: {', '.join(sorted(CONVERTERS))}")
    import keras
    meta = {"source": {"framework": "keras", "keras_version": keras.__version__,
                       "class": type(model).__name__}, **(metadata or {})}
    result = ir.make_model(name or model.name, input_shape, specs, metadata=meta)
    if check:
        compare_with_keras(model, result)
    return result


def compare_with_keras(model, result: ir.Model, samples: int = 64, seed: int = 0) -> float:
    """Max abs difference between Keras and `ir.run` on random inputs; raises on mismatch."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, *result.input_shape)).astype(np.float32)
    want = np.asarray(model.predict(x, verbose=0), np.float32)
    got = ir.run(result, x)
    if want.shape != got.shape:
        raise DistillError(f"the imported model gives outputs of shape {got.shape[1:]}, Keras "
                           f"gives {want.shape[1:]}; the model is not a chain distill can read")
    err = np.abs(got.astype(np.float64) - want)
    bad = err > ABS_TOL + REL_TOL * np.abs(want)
    if bad.any() or not np.isfinite(got).all():
        raise DistillError(f"the imported model differs from Keras's predictions by up to "
                           f"{float(np.nanmax(err)):.3g} on random inputs; its call is not "
                           "the chain of layers distill read (write it as a Sequential or "
                           "functional model)")
    return float(err.max(initial=0.0))


def load_keras(path: str | os.PathLike) -> ir.Model:
    """Read a `.keras` or `.h5` file with Keras and import it."""
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up quiet
        import keras
    except ImportError:
        raise DistillError(f"{path}: reading Keras files needs TensorFlow "
                           "(pip install 'distill[tensorflow]')") from None
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many kinds; every one means "cannot read this file"
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelFormatError(f"{path}: Keras cannot load it ({first})") from None
    return import_keras(model, name=path.stem, metadata={"source_file": path.name})


def is_keras_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in KERAS_SUFFIXES


def load_any(path: str | os.PathLike) -> ir.Model:
    """A `.distill` file, or a Keras file imported on the fly."""
    return load_keras(path) if is_keras_file(path) else ir.load(path)

