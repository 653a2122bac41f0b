"""Training configs: a TOML file read, checked whole, and turned into a `Config`.

Where it sits: the command line reads a file with `load_config`; a backend takes the `Config`.
Every key is checked here (unknown keys get a "did you mean", wrong types name the key and the
expected type), so a bad config fails in one line before any data is loaded or step is taken.

    name = "digits"                      # model name (default: the file's stem)
    seed = 0                             # weights, shuffling, dropout, splits
    [data]                               # see distill.data
    source = "digits"
    [[model.layers]]
    type = "dense"                       # dense | activation | dropout | flatten | reshape
                                         # conv1d | conv2d (filters, kernel_size, strides,
                                         #   padding, dilation_rate, groups, activation)
                                         # conv1d_transpose | conv2d_transpose (filters,
                                         #   kernel_size, strides, padding, output_padding,
                                         #   dilation_rate, activation)
                                         # max_pooling1d/2d | average_pooling1d/2d
                                         #   (pool_size, strides, padding)
                                         # global_average_pooling1d/2d, global_max_pooling1d/2d
                                         # embedding (input_dim, output_dim): ids -> rows
                                         # simple_rnn | gru | lstm (units, activation,
                                         #   recurrent_activation, return_sequences,
                                         #   go_backwards, reset_after, unit_forget_bias,
                                         #   bidirectional = "concat" | "sum" | "mul" | "ave")
    units = 100
    activation = "sigmoid"               # or {name = "leaky_relu", alpha = 0.2} (elu too)
    [training]
    loss = "categorical_crossentropy"    # or {name = ..., from_logits = true}
    optimizer = {name = "sgd", learning_rate = 0.1}
    batch_size = 100                     # or "full"
    epochs = 30
    metrics = ["accuracy"]
    checkpoint_every = 100               # steps between resumable checkpoints
    early_stopping = {monitor = "val_loss", patience = 5}
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import nn, ops, optim
from .data import DATA_KEYS
from .errors import ConfigError, check_keys, did_you_mean

# A dense layer's width, and a reshape's dimensions: far beyond a small network, and small
# enough that a typo is a config error rather than an allocation that exhausts the machine.
MAX_UNITS = 1 << 24
TOP_KEYS = {"name", "seed", "description", "data", "model", "training"}
TRAINING_KEYS = {"loss", "optimizer", "batch_size", "epochs", "metrics", "shuffle",
                 "checkpoint_every", "early_stopping"}
LAYER_KEYS = {
    "dense": {"units", "activation", "use_bias", "kernel_initializer", "bias_initializer"},
    "activation": {"activation", "alpha"},
    "dropout": {"rate"},
    "flatten": set(),
    "reshape": {"shape"},
    **{kind: {"filters", "kernel_size", "strides", "padding", "dilation_rate", "groups",
              "activation", "use_bias", "kernel_initializer", "bias_initializer"}
       for kind in ("conv1d", "conv2d")},
    **{kind: {"filters", "kernel_size", "strides", "padding", "output_padding", "dilation_rate",
              "activation", "use_bias", "kernel_initializer", "bias_initializer"}
       for kind in ("conv1d_transpose", "conv2d_transpose")},
    **{kind: {"pool_size", "strides", "padding"}
       for kind in ("max_pooling1d", "max_pooling2d", "average_pooling1d",
                    "average_pooling2d")},
    **{kind: set() for kind in ("global_average_pooling1d", "global_average_pooling2d",
                                "global_max_pooling1d", "global_max_pooling2d")},
}
RECURRENT_KEYS = {"units", "activation", "recurrent_activation", "use_bias", "return_sequences",
                  "go_backwards", "kernel_initializer", "recurrent_initializer",
                  "bias_initializer", "bidirectional"}
LAYER_KEYS["embedding"] = {"input_dim", "output_dim", "embeddings_initializer"}
LAYER_KEYS.update(simple_rnn=RECURRENT_KEYS - {"recurrent_activation"},
                  gru=RECURRENT_KEYS | {"reset_after"}, lstm=RECURRENT_KEYS | {"unit_forget_bias"})
WINDOW_SIZES = ("kernel_size", "strides", "dilation_rate", "pool_size")
OPTIMIZER_KEYS = {"sgd": {"learning_rate", "momentum", "nesterov"},
                  "adam": {"learning_rate", "beta_1", "beta_2", "epsilon"},
                  "rmsprop": {"learning_rate", "rho", "momentum", "epsilon"}}
DECAY_RATES = {"beta_1", "beta_2", "rho", "momentum"}  # each in [0, 1)
SCHEDULE_KEYS = {"exponential_decay": {"initial_learning_rate", "decay_steps", "decay_rate",
                                       "staircase"},
                 "step_decay": {"initial_learning_rate", "step_size", "factor"},
                 "piecewise_constant_decay": {"boundaries", "values"}}


@dataclass(frozen=True)
class Config:
    name: str
    seed: int
    data: dict[str, Any]
    layers: list[dict[str, Any]]
    loss: Any
    optimizer: Any
    batch_size: int | None  # None: the whole training set at once
    epochs: int
    metrics: list[str]
    shuffle: bool = True
    checkpoint_every: int = 100
    early_stopping: dict[str, Any] | None = None
    description: str = ""
    base_dir: Path = field(default=Path("."))

    def fingerprint(self, seed: int | None = None) -> str:
        """sha256 of what decides the steps a run takes: data, layers, loss, optimizer,
        batches, metrics and seed. A checkpoint records it, so `--resume` refuses one from
        another config. Name, epochs and checkpoint interval are left out: a run may be
        extended with more epochs."""
        doc = {"data": self.data, "layers": self.layers, "loss": self.loss,
               "optimizer": self.optimizer, "batch_size": self.batch_size,
               "metrics": self.metrics, "shuffle": self.shuffle,
               "early_stopping": self.early_stopping,
               "seed": self.seed if seed is None else seed}
        text = json.dumps(doc, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def build_layers(self) -> list[nn.Layer]:
        """Fresh layer objects for the NumPy backend."""
        layers = []
        for spec in self.layers:
            spec = dict(spec)
            kind = spec.pop("type")
            name = spec.pop("name", None)
            if kind == "dense":
                layers.append(nn.Dense(name=name, **spec))
            elif kind == "activation":
                layers.append(nn.Activation(spec["activation"], spec.get("alpha"), name=name))
            elif kind == "dropout":
                layers.append(nn.Dropout(spec["rate"], name=name))
            elif kind == "flatten":
                layers.append(nn.Flatten(name=name))
            elif kind in nn.WINDOWED:
                layers.append(nn.WINDOWED[kind](name=name, **spec))
            elif kind == "embedding":
                layers.append(nn.Embedding(name=name, **spec))
            elif kind in nn.RECURRENT:
                merge = spec.pop("bidirectional", None)
                layer = nn.RECURRENT[kind](name=None if merge else name, **spec)
                layers.append(nn.Bidirectional(layer, merge, name) if merge else layer)
            else:
                layers.append(nn.Reshape(spec["shape"], name=name))
        return layers


def load_config(path: str | Path) -> Config:
    path = Path(path)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "no such config file"
        raise ConfigError(f"{path}: {what}")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML (nested too deeply)") from None
    try:
        return parse_config(doc, default_name=path.stem, base_dir=path.parent)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def parse_config(doc: dict[str, Any], default_name: str = "model",
                 base_dir: Path = Path(".")) -> Config:
    check_keys(doc, TOP_KEYS, "the config")
    name = _typed(doc, "name", str, default_name, "the config")
    seed = _typed(doc, "seed", int, 0, "the config")
    if seed < 0:
        raise ConfigError(f"the config key 'seed' must be a non-negative integer, got {seed}")
    data = _typed(doc, "data", dict, None, "the config")
    if data is None:
        raise ConfigError("missing [data] table (it names the data set: source = \"...\")")
    if "source" not in data:
        raise ConfigError("[data] needs a source (a generator, a bundled set, csv, npz, idx)")
    check_keys(data, DATA_KEYS, "[data]")
    model = _typed(doc, "model", dict, None, "the config")
    if model is None:
        raise ConfigError("missing [model] table with [[model.layers]]")
    check_keys(model, {"layers"}, "[model]")
    layers = [_layer(spec, i) for i, spec in enumerate(_typed(model, "layers", list, [],
                                                              "[model]"))]
    if not layers:
        raise ConfigError("[model] has no layers")
    names = [spec["name"] for spec in layers if "name" in spec]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"layer name {n!r} is used twice")
    training = _typed(doc, "training", dict, None, "the config")
    if training is None:
        raise ConfigError("missing [training] table (loss, optimizer, epochs, ...)")
    check_keys(training, TRAINING_KEYS, "[training]")
    where = "[training]"
    loss = training.get("loss")
    if loss is None:
        raise ConfigError(f"{where} needs a loss; one of {', '.join(sorted(nn.LOSSES))}")
    _loss(loss)
    optimizer = _optimizer(training.get("optimizer", "sgd"))
    batch = training.get("batch_size", 32)
    if batch != "full" and (not isinstance(batch, int) or isinstance(batch, bool) or batch < 1):
        raise ConfigError(f"{where} batch_size must be a positive integer or \"full\", "
                          f"got {batch!r}")
    epochs = _typed(training, "epochs", int, 10, where)
    if epochs < 1:
        raise ConfigError(f"{where} epochs must be at least 1, got {epochs}")
    metrics = _typed(training, "metrics", list, [], where)
    for m in metrics:
        if not isinstance(m, str) or m not in nn.METRICS:
            hint = did_you_mean(m, nn.METRICS) if isinstance(m, str) else ""
            raise ConfigError(f"{where} unknown metric {m!r}{hint}; expected one of "
                              f"{', '.join(nn.METRICS)}")
    every = _typed(training, "checkpoint_every", int, 100, where)
    if every < 1:
        raise ConfigError(f"{where} checkpoint_every must be at least 1 step")
    stopping = _typed(training, "early_stopping", dict, None, where)
    if stopping is not None:
        _early_stopping(stopping, metrics)
    return Config(name=name, seed=seed, data=data, layers=layers, loss=loss,
                  optimizer=optimizer, batch_size=None if batch == "full" else batch,
                  epochs=epochs, metrics=metrics,
                  shuffle=_typed(training, "shuffle", bool, True, where),
                  checkpoint_every=every, early_stopping=stopping,
                  description=_typed(doc, "description", str, "", "the config"),
                  base_dir=base_dir)


def _early_stopping(spec: dict[str, Any], metrics: list[str]) -> None:
    where = "[training] early_stopping"
    check_keys(spec, {"monitor", "patience", "min_delta", "restore_best_weights"}, where)
    monitors = ["loss", *metrics]
    monitors += [f"val_{m}" for m in monitors]
    monitor = _typed(spec, "monitor", str, "val_loss", where)
    if monitor not in monitors:
        raise ConfigError(f"{where} cannot monitor {monitor!r}{did_you_mean(monitor, monitors)}"
                          f"; training reports {', '.join(monitors)}")
    patience = _typed(spec, "patience", int, 0, where)
    if patience < 0:
        raise ConfigError(f"{where} patience must be a non-negative integer, got {patience}")
    delta = _typed(spec, "min_delta", float, 0.0, where)
    if not math.isfinite(delta) or delta < 0:
        raise ConfigError(f"{where} min_delta must be a non-negative number, got {delta!r}")
    _typed(spec, "restore_best_weights", bool, False, where)


def _finite(value: Any) -> bool:
    """A TOML number that is neither nan nor inf (nor a bool, which Python counts as one)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _typed(table: dict, key: str, kind: type, default: Any, where: str) -> Any:
    if key not in table:
        return default
    value = table[key]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
                 list: "a list", dict: "a table"}
        raise ConfigError(f"{where} key {key!r} must be {names[kind]}, got {value!r}")
    return value


def _layer(spec: Any, i: int) -> dict[str, Any]:
    where = f"layer #{i + 1}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a table with a type")
    kind = spec.get("type")
    if not isinstance(kind, str) or kind not in LAYER_KEYS:
        raise ConfigError(f"{where}: unknown layer type {kind!r}"
                          f"{did_you_mean(str(kind), LAYER_KEYS)}; expected one of "
                          f"{', '.join(LAYER_KEYS)}")
    check_keys(spec, LAYER_KEYS[kind] | {"type", "name"}, f"{where} ({kind})")
    _typed(spec, "name", str, None, where)
    if kind in nn.WINDOWED:
        _windowed(spec, kind, where)
    if kind in nn.RECURRENT:
        _recurrent(spec, kind, where)
    if kind == "embedding":
        for key in ("input_dim", "output_dim"):
            _size(spec, key, f"{where} (embedding)")
        _initializer(spec, "embeddings_initializer", where)
    if kind == "dense":
        units = spec.get("units")
        if not isinstance(units, int) or isinstance(units, bool) or units < 1:
            raise ConfigError(f"{where} (dense) needs units, a positive integer; got {units!r}")
        if units > MAX_UNITS:
            raise ConfigError(f"{where} (dense) units must be at most {MAX_UNITS:,}, got "
                              f"{units:,}")
        _weighted(spec, where)
    if (kind in ("dense", "activation") or kind.startswith("conv")) and "activation" in spec:
        _activation(spec["activation"], where)
    if kind == "activation":
        if "activation" not in spec:
            raise ConfigError(f"{where} (activation) needs activation = \"...\"")
        _activation({"name": spec["activation"],
                     **({"alpha": spec["alpha"]} if "alpha" in spec else {})}, where)
    if kind == "dropout":
        rate = _typed(spec, "rate", float, None, where)
        if rate is None or not 0 <= rate < 1:
            raise ConfigError(f"{where} (dropout) needs rate in [0, 1), got {rate!r}")
    if kind == "reshape":
        shape = _typed(spec, "shape", list, None, where)
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool)
                                and (0 < d <= MAX_UNITS or d == -1) for d in shape):
            raise ConfigError(f"{where} (reshape) needs shape, a list of positive integers "
                              f"of at most {MAX_UNITS:,} (one may be -1)")
    return dict(spec)


def _weighted(spec: dict[str, Any], where: str) -> None:
    """A dense or conv layer's use_bias and initializers."""
    _typed(spec, "use_bias", bool, True, where)
    for key in ("kernel_initializer", "bias_initializer"):
        _initializer(spec, key, where)


def _initializer(spec: dict[str, Any], key: str, where: str) -> None:
    init = _typed(spec, key, str, "zeros", where)
    if init not in nn.INITIALIZERS:
        raise ConfigError(f"{where} unknown {key} {init!r}; expected one of "
                          f"{', '.join(nn.INITIALIZERS)}")


def _size(spec: dict[str, Any], key: str, where: str) -> None:
    """A required count (filters, units, a table's rows): 1 to MAX_UNITS."""
    value = spec.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_UNITS:
        raise ConfigError(f"{where} needs {key}, a positive integer of at most "
                          f"{MAX_UNITS:,}; got {value!r}")


def _recurrent(spec: dict[str, Any], kind: str, where: str) -> None:
    """A recurrent layer's keys: units, step activations by name, flags, initializers."""
    where = f"{where} ({kind})"
    _size(spec, "units", where)
    for key in ("activation", "recurrent_activation"):
        name = _typed(spec, key, str, "tanh", where)
        if name not in ops.STEP_ACTIVATIONS:
            raise ConfigError(f"{where} {key} {name!r} is not one of "
                              f"{', '.join(ops.STEP_ACTIVATIONS)}")
    for key in ("return_sequences", "go_backwards", "reset_after", "unit_forget_bias"):
        _typed(spec, key, bool, False, where)
    merge = _typed(spec, "bidirectional", str, "concat", where)
    if merge not in nn.BIDIRECTIONAL_MERGES:
        raise ConfigError(f"{where} bidirectional {merge!r} is not one of "
                          f"{', '.join(nn.BIDIRECTIONAL_MERGES)} (how the two directions merge)")
    _weighted(spec, where)
    _initializer(spec, "recurrent_initializer", where)


def _windowed(spec: dict[str, Any], kind: str, where: str) -> None:
    """A conv or pooling layer's keys: sizes as a positive integer or one per spatial axis."""
    where = f"{where} ({kind})"
    if kind.startswith("conv"):
        _size(spec, "filters", where)
        if "kernel_size" not in spec:
            raise ConfigError(f"{where} needs kernel_size (an integer, or one per axis)")
        _weighted(spec, where)
        _typed(spec, "groups", int, 1, where)
    for key in WINDOW_SIZES:
        value = spec.get(key, 1)
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool)
                                 and 0 < v <= MAX_UNITS for v in values):
            raise ConfigError(f"{where} key {key!r} must be a positive integer or a list of "
                              f"them (at most {MAX_UNITS:,}), got {value!r}")
    _typed(spec, "padding", str, "valid", where)
    args = {k: v for k, v in spec.items() if k not in ("type", "name", "activation")}
    try:
        nn.WINDOWED[kind](**args)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _activation(spec: Any, where: str) -> None:
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} activation must be a name or a table, got {spec!r}")
    check_keys(spec, {"name", "alpha"}, f"{where} activation")
    name = spec.get("name")
    if not isinstance(name, str) or name not in ops.ACTIVATIONS:
        raise ConfigError(f"{where} unknown activation {name!r}"
                          f"{did_you_mean(str(name), ops.ACTIVATIONS)}; expected one of "
                          f"{', '.join(ops.ACTIVATIONS)}")
    if "alpha" in spec and (name not in ("leaky_relu", "elu") or not _finite(spec["alpha"])):
        raise ConfigError(f"{where} alpha is a finite number and only for leaky_relu and elu")


def _schedule_numbers(spec: dict[str, Any], where: str) -> None:
    for key, value in spec.items():
        if key == "name":
            continue
        if key == "staircase":
            _typed(spec, key, bool, False, where)
        elif key in ("boundaries", "values"):
            if not isinstance(value, list) or not all(_finite(v) for v in value):
                raise ConfigError(f"{where} key {key!r} must be a list of finite numbers, "
                                  f"got {value!r}")
        elif not _finite(value) or value < 0:
            raise ConfigError(f"{where} key {key!r} must be a finite non-negative number, "
                              f"got {value!r}")


def _loss(spec: Any) -> None:
    if isinstance(spec, dict):
        check_keys(spec, {"name", "from_logits"}, "[training] loss")
        _typed(spec, "from_logits", bool, False, "[training] loss")
        spec = spec.get("name")
    if not isinstance(spec, str) or spec not in nn.LOSSES:
        raise ConfigError(f"[training] unknown loss {spec!r}{did_you_mean(str(spec), nn.LOSSES)}"
                          f"; expected one of {', '.join(sorted(nn.LOSSES))}")


def _optimizer(spec: Any) -> Any:
    where = "[training] optimizer"
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a name or a table, got {spec!r}")
    name = str(spec.get("name", "")).lower()
    if name not in OPTIMIZER_KEYS:
        raise ConfigError(f"{where}: unknown optimizer {name!r}"
                          f"{did_you_mean(name, OPTIMIZER_KEYS)}; expected one of "
                          f"{', '.join(OPTIMIZER_KEYS)}")
    check_keys(spec, OPTIMIZER_KEYS[name] | {"name"}, where)
    for key, value in spec.items():
        if key == "name":
            continue
        if key == "nesterov":
            _typed(spec, "nesterov", bool, False, where)
            continue
        if key == "learning_rate" and isinstance(value, dict):
            kind = value.get("name")
            if not isinstance(kind, str) or kind not in SCHEDULE_KEYS:
                raise ConfigError(f"{where} learning_rate schedule {kind!r} is unknown; "
                                  f"expected one of {', '.join(SCHEDULE_KEYS)}")
            check_keys(value, SCHEDULE_KEYS[kind] | {"name"}, f"{where} learning_rate")
            _schedule_numbers(value, f"{where} learning_rate")
            continue
        if not _finite(value) or value < 0:
            raise ConfigError(f"{where} key {key!r} must be a finite non-negative number, "
                              f"got {value!r}")
        if key in DECAY_RATES and not value < 1:  # 1 divides by zero in Adam's bias correction
            raise ConfigError(f"{where} key {key!r} must be in [0, 1), got {value!r}")
    try:
        optim.get(spec)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None
    return spec
