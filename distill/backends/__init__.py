"""Training backends: a `Config` in, a trained `ir.Model` and its history out.

Where it sits: between the config/data layer and the IR. Every backend follows the same steps
(`prepare` the data, train, convert, `evaluate` on the splits), so its results are comparable;
only the training in the middle differs. `train(config, backend=...)` picks one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import data as dataset
from .. import ir, nn, ops
from ..config import Config
from ..errors import ConfigError, DataError

BACKENDS = ("numpy", "tensorflow")


def registrar(table: dict[str, Callable]) -> Callable:
    """A decorator factory for an importer's converters: `@converter("A", "B")` files the
    function in `table` under each name (a Keras layer class, an ONNX op type)."""
    def converter(*names: str) -> Callable:
        def register(fn: Callable) -> Callable:
            for name in names:
                table[name] = fn
            return fn
        return register
    return converter


@dataclass
class Prepared:
    """The config's data, split and shaped for its loss."""

    train: dataset.Dataset
    validation: dataset.Dataset | None
    test: dataset.Dataset | None
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    standardize: tuple[np.ndarray, np.ndarray] | None
    classes: int | None


@dataclass
class TrainResult:
    model: ir.Model
    history: dict[str, list[float]]
    steps: list[float]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def prepare(config: Config, seed: int) -> Prepared:
    """Load and split the data, and shape the labels for the loss (one-hot, column, ...)."""
    table = config.data
    ds = dataset.load_data(table, config.base_dir, seed)
    train, val, test = dataset.split(ds, table.get("validation", 0.0), table.get("test", 0.0),
                                     table.get("seed", seed))
    loss = nn.get_loss(config.loss)
    classes = None
    if ds.task == "classification":
        classes = len(ds.class_names) if ds.class_names else int(ds.y.max()) + 1
        if isinstance(loss, (nn.MeanSquaredError, nn.MeanAbsoluteError,
                             nn.HalfSumSquaredError)):
            raise ConfigError(f"loss {loss.name} is for regression, but {ds.description} is a "
                              "classification set; use a cross-entropy loss")
    elif not isinstance(loss, (nn.MeanSquaredError, nn.MeanAbsoluteError,
                               nn.HalfSumSquaredError)):
        raise ConfigError(f"loss {loss.name} is for classification, but {ds.description} is a "
                          "regression set; use mean_squared_error")
    if isinstance(loss, nn.BinaryCrossentropy) and classes != 2:
        raise ConfigError(f"binary_crossentropy needs two classes, the data has {classes}")

    def labels(part: dataset.Dataset) -> np.ndarray:
        if ds.task == "regression":
            return part.y.astype(np.float32)
        if isinstance(loss, nn.SparseCategoricalCrossentropy):
            return part.y
        if isinstance(loss, nn.BinaryCrossentropy):
            return part.y.astype(np.float32).reshape(-1, 1)
        return dataset.one_hot(part.y, classes)

    parts = {"train": train, "validation": val, "test": test}
    stats = dataset.standardization(train.x) if table.get("standardize", False) else None
    if stats is None and ds.input_scale:  # raw data the model scales itself (IDX bytes)
        shape = train.x.shape[1:]
        stats = (np.zeros(shape, np.float32), np.full(shape, ds.input_scale, np.float32))
    return Prepared(train, val, test,
                    {k: v.x for k, v in parts.items() if v is not None},
                    {k: labels(v) for k, v in parts.items() if v is not None},
                    stats, classes)


def check_output_width(config: Config, prep: Prepared, shape: tuple[int, ...],
                       layer: str) -> None:
    """The last layer must fit the labels: one unit per class, one for binary, d for targets,
    as one vector per sample."""
    shape = tuple(int(d) for d in shape)
    if len(shape) != 1:
        raise DataError(f"the last layer {layer!r} gives outputs of shape {shape} per sample, "
                        "but the labels are one vector per sample; add a flatten layer before "
                        "the last dense layer")
    width = shape[0]
    loss = nn.get_loss(config.loss)
    if prep.classes is not None:
        want = 1 if isinstance(loss, nn.BinaryCrossentropy) else prep.classes
        what = "one output (binary)" if want == 1 else f"{want} outputs, one per class"
    else:
        want = prep.y["train"].shape[-1]
        what = f"{want} outputs, one per target"
    if width != want:
        raise DataError(f"the last layer {layer!r} has {width} outputs but the data needs "
                        f"{what}")


# Trainable values a config may ask for (weights, plus the optimizer's slots beside them):
# 2**26 float32 is 256 MiB, far beyond a small network.
MAX_PARAMETERS = 1 << 26


def check_parameters(layers: list, input_shape: tuple[int, ...]) -> None:
    """Count the dense and conv weights the layers will create on this input, before creating any.

    A shape the layers cannot take is left for `build` to report in its own words.
    """
    shape, total = tuple(input_shape), 0
    for layer in layers:
        try:
            out = tuple(layer.compute_output_shape(shape))
        except (ValueError, TypeError, IndexError, ZeroDivisionError):
            return
        if isinstance(layer, nn.Dense) and shape:
            total += (shape[-1] + 1) * layer.units
        if isinstance(layer, nn.Embedding):
            total += layer.input_dim * layer.output_dim
        if isinstance(layer, nn.Recurrent) and len(shape) == 2:
            size = ops.GATES[layer.op] * layer.units
            total += (shape[-1] + layer.units + 2) * size
        if isinstance(layer, nn.Conv):
            total += (math.prod(layer.kernel_size) * shape[-1] // layer.groups + 1) * \
                layer.filters
        shape = out
    if total > MAX_PARAMETERS:
        raise DataError(f"the layers need {total:,} parameters on data of shape "
                        f"{tuple(input_shape)}; the most distill trains is {MAX_PARAMETERS:,}")


def labels_for(prep: Prepared) -> list[str] | None:
    names = prep.train.class_names
    return list(names) if names and prep.classes else None


def metadata(config: Config, prep: Prepared, backend: str, seed: int, epochs: int,
             metrics: dict[str, dict[str, float]], extra: dict[str, Any] | None = None) -> dict:
    x = prep.x["train"]
    saved = prep.x.get("test", x)[:8]
    names = prep.train.feature_names
    return {
        "task": prep.train.task,
        # The data's column names, when it has them: `predict` picks them from a CSV.
        **({"features": list(names)} if names else {}),
        # For exporters' self-tests: real samples, and the range random ones are drawn from.
        "samples": saved.reshape(len(saved), -1).tolist(),
        "input_range": [x.min(axis=0).reshape(-1).tolist(), x.max(axis=0).reshape(-1).tolist()],
        "training": {
            "backend": backend, "config": config.name, "data": prep.train.description,
            "loss": nn.get_loss(config.loss).name, "epochs": epochs, "seed": seed,
            "samples": {k: int(len(v)) for k, v in prep.x.items()},
            "metrics": metrics, **(extra or {}),
        },
    }


def evaluate_model(model: ir.Model, config: Config, prep: Prepared) -> dict[str, dict]:
    """Loss and metrics of the *converted* model on every split, computed by `ir.run`."""
    from ..autodiff import Tensor
    loss = nn.get_loss(config.loss)
    out: dict[str, dict[str, float]] = {}
    for part, x in prep.x.items():
        pred = ir.run(model, x)
        y = prep.y[part]
        scores = {"loss": float(loss(y, Tensor(pred)).data)}
        for m in config.metrics:
            scores[m] = float(nn.METRICS[m](y, pred))
        out[part] = scores
    return out


def train(config: Config, backend: str = "numpy", **options: Any) -> TrainResult:
    if backend == "numpy":
        from .numpy import train as run
    elif backend == "tensorflow":
        from .tensorflow import train as run
    else:
        raise ConfigError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    return run(config, **options)
