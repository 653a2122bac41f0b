"""The data layer: the `[data]` table of a training config becomes a `Dataset` of arrays.

Where it sits: at the start of the flow (`config + data -> backend -> ir.Model -> ...`). A backend
calls `load_data` with the parsed table, `split` to cut off validation and test rows, and
`standardization` / `one_hot` to prepare them; nothing here knows about models or training.

What it promises:
- Every `Dataset` holds finite float32 features `x` of shape (N, ...) and labels `y`: int64 class
  indices of shape (N,) for classification, float32 targets of shape (N, d) for regression.
  The constructor checks this, so a `Dataset` that exists is a valid one.
- Generators (`blobs`, `linear`, `exp`, `sumprod`, `signals`) are deterministic for a given seed.
- Bad input raises `ConfigError` (the table is wrong: an unknown key with a suggestion, a wrong
  type naming the key and what it accepts) or `DataError` (the data is wrong: naming the file,
  and the line, row or column where that is known). Nothing is downloaded.

Sources (`source = "..."`); every key is optional unless marked required:
- `blobs`: `n` points per class (500): unit-variance 2-D Gaussian clouds centred at (3, 2),
  label 0, and (-3, -2), label 1.
- `linear`: `m` samples (100), `inputs` n (1), `outputs` d (3), `noise` (1.0):
  X ~ N(0, 1) of shape (m, n), Y = X W + B + noise * N(0, 1). W (n, d) and B (d,) are drawn from
  N(0, 10) read as *variance* 10 (standard deviation sqrt(10)), and returned as `truth`.
- `exp`: `n` (1000) points x uniform on [0, 1), y = e^x.
- `sumprod`: `n` (1500) points uniform on [0, 1)^2, y = (x1 + x2, x1 * x2).
- `signals`: `n` series per class (250) of `length` steps (128), one channel, shape
  (N, length, 1), and `noise` (0.1): four classes of waveform, "sine", "square", "triangle" and
  "sawtooth", each of a random frequency (2 to 8 periods), phase and amplitude (0.5 to 1.5),
  plus noise * N(0, 1) at every step. For 1-D convolutions.
- `digits`, `iris`, `wine`, `breast_cancer`: the sets bundled with scikit-learn.
- `csv`: `path` (required), `label` (column name or index, negative counts from the end; default
  the last column), `features` (column names; default all but the label), `header` (true),
  `delimiter` (","), `task`. Names need a header row.
- `npz`: `path` (required), `x` ("x") and `y` ("y") array names, `task`.
- `idx`: `path` (required) a directory of MNIST-style files `train-images-idx3-ubyte` and
  `train-labels-idx1-ubyte` (each may be gzipped, `.gz`); when `t10k-*` files are there too,
  their rows are appended after the training rows, so `split(test=...)` cuts its own test set.
  `flatten` (true) gives (N, rows * cols) features, false keeps (N, rows, cols).
Common to all: `source` (required), `seed` (replaces the config's seed), and `validation`, `test`
and `standardize`, which are checked here but used by `split` and the backends.

When `task` is not given, labels are classes when every value is an integer or some value is not
a number. Class labels, integers or texts, become indices in sorted order of their distinct
values, which are kept as `class_names` (labels 1..3 give three classes, "1", "2" and "3").

Data files must be regular files (a FIFO or /dev/zero would block or grow forever) of at most
MAX_DATA_BYTES (CSV: MAX_CSV_BYTES, which Python's parser turns into many times that in
memory); an NPZ archive's arrays are checked against the same bound before they are inflated.
CSV cells that are empty or NA, N/A, NaN, nan, null, NULL, None or ? are missing: `missing =
"error"` (the default) lists them, `"drop"` drops their rows. IDX bytes are pixel values 0..255
and stay so: the model's first node divides by 255, so exported code takes the raw bytes.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import math
import os
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import ConfigError, DataError, check_keys, did_you_mean

__all__ = ["DATA_KEYS", "TASKS", "Dataset", "load_data", "one_hot", "read_idx", "split",
           "standardization", "write_idx"]

TASKS = ("classification", "regression")


@dataclass(frozen=True, eq=False)  # eq=False: `==` on array fields would raise, not compare
class Dataset:
    """Features and labels with what is known about them; checked on construction."""

    x: np.ndarray
    y: np.ndarray
    task: str
    feature_names: tuple[str, ...] | None
    class_names: tuple[str, ...] | None
    description: str
    truth: dict | None = None
    # The features are raw values that the model's first node divides by this (IDX bytes:
    # 255), so that exported code takes the data as the files hold it.
    input_scale: float | None = None

    def __post_init__(self) -> None:
        where = self.description or "dataset"
        if self.task not in TASKS:
            raise DataError(f"{where}: task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not isinstance(self.x, np.ndarray) or self.x.dtype != np.float32 or self.x.ndim < 2:
            raise DataError(f"{where}: features must be a float32 array of shape (N, ...), got "
                            f"{_array_kind(self.x)}")
        if not isinstance(self.y, np.ndarray) or self.y.ndim == 0 or len(self.y) != len(self.x):
            count = len(self.y) if isinstance(self.y, np.ndarray) and self.y.ndim else "no"
            raise DataError(f"{where}: {len(self.x)} rows of features but {count} labels")
        _check_finite(self.x, where, "feature")
        if self.task == "classification":
            if self.y.dtype != np.int64 or self.y.ndim != 1:
                raise DataError(f"{where}: class labels must be an int64 array of shape (N,), got "
                                f"{_array_kind(self.y)}")
            if len(self.y) and self.y.min() < 0:
                raise DataError(f"{where}: class label {self.y.min()} is negative")
            if self.class_names is not None and len(self.y) and self.y.max() >= len(
                    self.class_names):
                raise DataError(f"{where}: class label {self.y.max()} but only "
                                f"{len(self.class_names)} class names")
        else:
            if self.y.dtype != np.float32 or self.y.ndim != 2:
                raise DataError(f"{where}: regression targets must be a float32 array of shape "
                                f"(N, d), got {_array_kind(self.y)}")
            if self.class_names is not None:
                raise DataError(f"{where}: a regression dataset has no class names")
            _check_finite(self.y, where, "target")

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx: Any) -> Dataset:
        """The rows `idx` (indices, a boolean mask or a slice) with the same metadata."""
        if not isinstance(idx, slice):
            # A lone integer would drop the row axis; keep (1, ...) like any other selection.
            idx = np.atleast_1d(np.asarray(idx))
            if idx.size == 0:
                idx = idx.astype(np.intp)  # np.asarray([]) is float64, which cannot index
        return dataclasses.replace(self, x=self.x[idx], y=self.y[idx])


def _array_kind(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def _check_finite(a: np.ndarray, where: str, what: str) -> None:
    if a.size == 0:
        return  # reshape(0, -1) is ambiguous; nothing to check anyway
    bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
    if bad.any():
        raise DataError(f"{where}: row {int(np.argmax(bad))} (0-based) has a NaN or infinite "
                        f"{what}")


# ---------------------------------------------------------------------------------------------
# Reading the [data] table

_COMMON_KEYS = frozenset({"source", "seed", "validation", "test", "standardize"})

# source name -> (its own keys, loader(table, base_dir, seed) -> Dataset); filled by @_source.
_SOURCES: dict[str, tuple[frozenset[str], Callable[[Mapping[str, Any], Path, int], Dataset]]] = {}


def _source(name: str, keys: Iterable[str] = ()) -> Callable:
    def register(loader: Callable[[Mapping[str, Any], Path, int], Dataset]) -> Callable:
        _SOURCES[name] = (frozenset(keys), loader)
        return loader
    return register


def _show(value: Any) -> str:
    # Values came from TOML, so show them as TOML would ("ten", true, [1, 2]), not as Python.
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _type_error(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"[data] key {key!r} must be {expected}, got {_show(value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, (float, np.floating)) and math.isfinite(value))


def _get_int(table: Mapping[str, Any], key: str, default: int, minimum: int = 1,
             maximum: int | None = None) -> int:
    value = table.get(key, default)
    if not _is_int(value) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise _type_error(key, kind, value)
    if maximum is not None and value > maximum:
        raise ConfigError(f"[data] key {key!r} must be at most {maximum:,}, got {value:,}")
    return int(value)


# Generated sets are drawn in float64 before they become float32: bound the values one asks for,
# so a typo (`n = 10000000000`) is a config error, not an exhausted machine.
MAX_GENERATED_VALUES = 1 << 25


def _get_size(table: Mapping[str, Any], key: str, default: int, per_row: int = 1) -> int:
    return _get_int(table, key, default, maximum=max(1, MAX_GENERATED_VALUES // per_row))


def _get_float(table: Mapping[str, Any], key: str, default: float, minimum: float) -> float:
    value = table.get(key, default)
    if not _is_number(value) or value < minimum:
        raise _type_error(key, f"a number >= {minimum:g}", value)
    return float(value)


def _get_bool(table: Mapping[str, Any], key: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise _type_error(key, "true or false", value)
    return value


def _get_str(table: Mapping[str, Any], key: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise _type_error(key, "a non-empty string", value)
    return value


def _get_task(table: Mapping[str, Any]) -> str | None:
    value = table.get("task")
    if value is None:
        return None
    if value not in TASKS:
        hint = did_you_mean(value, TASKS) if isinstance(value, str) else ""
        raise ConfigError(f"[data] key 'task' must be \"classification\" or \"regression\", got "
                          f"{_show(value)}{hint}")
    return value


def _get_path(table: Mapping[str, Any], base_dir: Path, source: str) -> Path:
    if "path" not in table:
        raise ConfigError(f"[data] source {source!r} needs key 'path'")
    value = table["path"]
    if not isinstance(value, str) or not value:
        raise _type_error("path", "a non-empty string (a file path)", value)
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def _check_fraction(value: Any, key: str) -> float:
    if not _is_number(value) or not 0 <= value < 1:
        raise _type_error(key, "a number in [0, 1)", value)
    return float(value)


def _check_fractions(validation: Any, test: Any) -> tuple[float, float]:
    v, t = _check_fraction(validation, "validation"), _check_fraction(test, "test")
    if v + t >= 1:
        raise ConfigError(f"[data] validation + test must be below 1 so rows are left to train "
                          f"on, got {v:g} + {t:g}")
    return v, t


def load_data(table: Mapping[str, Any], base_dir: Path = Path("."), seed: int = 0) -> Dataset:
    """Load the data a `[data]` table describes; relative paths resolve against `base_dir`."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"[data] must be a table, got {_show(table)}")
    if "source" not in table:
        raise ConfigError(f"[data] needs key 'source', one of: {', '.join(sorted(_SOURCES))}")
    source = table["source"]
    if not isinstance(source, str):
        raise _type_error("source", "a string", source)
    if source not in _SOURCES:
        raise ConfigError(f"[data] unknown source {source!r}{did_you_mean(source, _SOURCES)}; "
                          f"expected one of: {', '.join(sorted(_SOURCES))}")
    own_keys, loader = _SOURCES[source]
    allowed = _COMMON_KEYS | own_keys
    for key in table:
        # A key that belongs to another source gets a more useful message than "unknown".
        if key in DATA_KEYS and key not in allowed:
            users = sorted(name for name, (keys, _) in _SOURCES.items() if key in keys)
            raise ConfigError(f"[data] key {key!r} does not apply to source {source!r} (it is for "
                              f"{', '.join(users)}); keys for {source!r}: "
                              f"{', '.join(sorted(allowed))}")
    check_keys(dict(table), allowed, "[data]")
    seed = _get_int(table, "seed", seed, minimum=0)
    _check_fractions(table.get("validation", 0.0), table.get("test", 0.0))
    _get_bool(table, "standardize", False)
    return loader(table, Path(base_dir), seed)


def _describe(name: str, origin: str, x: np.ndarray, y: np.ndarray, task: str,
              classes: int | None = None) -> str:
    features = math.prod(x.shape[1:])
    shape = "x".join(map(str, x.shape[1:]))
    plural = "s" if features != 1 else ""
    feature_text = f"{features} feature{plural}" if x.ndim == 2 else \
        f"{shape} = {features} feature{plural}"
    if task == "classification":
        tail = f"{classes} classes"
    else:
        tail = f"{y.shape[1]} output{'s' if y.shape[1] != 1 else ''}"
    return f"{name} ({origin}, {len(x)} samples, {feature_text}, {tail})"


def _generated(name: str, seed: int, x: np.ndarray, y: np.ndarray, task: str,
               truth: dict | None = None) -> Dataset:
    class_names = ("0", "1") if task == "classification" else None
    return Dataset(x=x, y=y, task=task, feature_names=None, class_names=class_names,
                   description=_describe(name, f"generated, seed {seed}", x, y, task, 2),
                   truth=truth)


# ---------------------------------------------------------------------------------------------
# Generators

@_source("blobs", {"n"})
def _blobs(table: Mapping[str, Any], base_dir: Path, seed: int) -> Dataset:
    n = _get_size(table, "n", 500, per_row=4)
    rng = np.random.default_rng(seed)
    centres = np.array([[3.0, 2.0], [-3.0, -2.0]])
    labels = np.repeat(np.arange(2, dtype=np.int64), n)
    x = centres[labels] + rng.standard_normal((2 * n, 2))
    # Shuffled so that any prefix (a first mini-batch, an unshuffled cut) holds both classes.
    order = rng.permutation(2 * n)
    return _generated("blobs", seed, x[order].astype(np.float32), labels[order], "classification")


@_source("linear", {"m", "inputs", "outputs", "noise"})
def _linear(table: Mapping[str, Any], base_dir: Path, seed: int) -> Dataset:
    n = _get_size(table, "inputs", 1)
    d = _get_size(table, "outputs", 3)
    m = _get_size(table, "m", 100, per_row=n + d)
    if n * d > MAX_GENERATED_VALUES:
        raise ConfigError(f"[data] inputs * outputs must be at most {MAX_GENERATED_VALUES:,} "
                          f"(the true weights are drawn), got {n} * {d}")
    noise = _get_float(table, "noise", 1.0, minimum=0.0)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, n))
    # The write-up's N(0, 10) is read as variance 10: standard deviation sqrt(10).
    w = rng.normal(0.0, math.sqrt(10.0), (n, d))
    b = rng.normal(0.0, math.sqrt(10.0), d)
    y = x @ w + b + noise * rng.standard_normal((m, d))
    truth = {"W": w.astype(np.float32), "B": b.astype(np.float32)}
    return _generated("linear", seed, x.astype(np.float32), y.astype(np.float32), "regression",
                      truth)


@_source("exp", {"n"})
def _exp(table: Mapping[str, Any], base_dir: Path, seed: int) -> Dataset:
    n = _get_size(table, "n", 1000, per_row=2)
    x = np.random.default_rng(seed).random((n, 1)).astype(np.float32)
    # Targets from the float32 inputs the model will see, so they are exact for those inputs.
    y = np.exp(x.astype(np.float64)).astype(np.float32)
    return _generated("exp", seed, x, y, "regression")


@_source("sumprod", {"n"})
def _sumprod(table: Mapping[str, Any], base_dir: Path, seed: int) -> Dataset:
    n = _get_size(table, "n", 1500, per_row=4)
    x = np.random.default_rng(seed).random((n, 2)).astype(np.float32)
    x64 = x.astype(np.float64)
    y = np.stack([x64[:, 0] + x64[:, 1], x64[:, 0] * x64[:, 1]], axis=1).astype(np.float32)
    return _generated("sumprod", seed, x, y, "regression")


WAVEFORMS = ("sine", "square", "triangle", "sawtooth")


@_source("signals", {"n", "length", "noise"})
def _signals(table: Mapping[str, Any], base_dir: Path, seed: int) -> Dataset:
    k = len(WAVEFORMS)
    length = _get_int(table, "length", 128, minimum=2, maximum=MAX_GENERATED_VALUES // k)
    n = _get_size(table, "n", 250, per_row=k * length)
    noise = _get_float(table, "noise", 0.1, minimum=0.0)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(k, dtype=np.int64), n))
    periods = rng.uniform(2.0, 8.0, (k * n, 1))
    amplitude = rng.uniform(0.5, 1.5, (k * n, 1))
    t = periods * np.arange(length) / length + rng.random((k * n, 1))  # in periods
    frac = t - np.floor(t)
    waves = np.stack([np.sin(2 * np.pi * t), np.where(frac < 0.5, 1.0, -1.0),
                      4 * np.abs(frac - 0.5) - 1, 2 * frac - 1])
    x = amplitude * waves[labels, np.arange(k * n)] + noise * rng.standard_normal((k * n, length))
    x = x.astype(np.float32).reshape(k * n, length, 1)
    return Dataset(x=x, y=labels, task="classification", feature_names=None,
                   class_names=WAVEFORMS,
                   description=_describe("signals", f"generated, seed {seed}", x, labels,
                                         "classification", len(WAVEFORMS)))


# ---------------------------------------------------------------------------------------------
# scikit-learn's bundled sets

def _sklearn_set(name: str) -> Dataset:
    try:
        from sklearn import datasets
    except ImportError:
        raise DataError(f"data source {name!r} needs scikit-learn: "
                        "pip install 'distill[data]'") from None
    bunch = getattr(datasets, f"load_{name}")()
    x = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    class_names = tuple(str(c) for c in bunch.target_names)
    names = getattr(bunch, "feature_names", None)
    feature_names = tuple(str(f) for f in names) if names is not None else None
    return Dataset(x=x, y=y, task="classification", feature_names=feature_names,
                   class_names=class_names,
                   description=_describe(name, "scikit-learn", x, y, "classification",
                                         len(class_names)))


for _name in ("digits", "iris", "wine", "breast_cancer"):
    _source(_name)(lambda table, base_dir, seed, _name=_name: _sklearn_set(_name))


# ---------------------------------------------------------------------------------------------
# Labels from files (CSV cells, NPZ arrays)

# Integer labels are class indices; past this they are surely numeric targets, and a tuple of
# that many class names would be the first thing to run out of memory.
_MAX_CLASSES = 100_000


def _labels(values: np.ndarray, task: str | None, where: str,
            line_of: Callable[[int], str]) -> tuple[np.ndarray, str, tuple[str, ...] | None]:
    """(y, task, class_names) from raw label values: numbers, or strings that may be numbers.

    `line_of(i)` says where row i came from, for error messages.
    """
    if values.dtype.kind in "biuf":
        numbers, text = values.astype(np.float64), None
    else:
        text = np.array([str(v).strip() for v in values], dtype=object)
        for i, t in enumerate(text):
            if not t:
                raise DataError(f"{where}: {line_of(i)}: empty label")
        try:
            numbers = np.array([float(t) for t in text])
        except ValueError:
            numbers = None  # some label is not a number: the labels are class names
    finite = integral = None
    if numbers is not None:
        finite = np.isfinite(numbers)
        integral = bool(finite.all()) and bool((numbers == np.round(numbers)).all())
    if task is None:
        task = "classification" if numbers is None or integral else "regression"
    if task == "regression":
        if numbers is None:
            bad = next(i for i, t in enumerate(text) if not _parses(t))
            raise DataError(f"{where}: {line_of(bad)}: label {text[bad]!r} is not a number, "
                            "but the task is regression")
        if not finite.all():
            bad = int(np.argmin(finite))
            raise DataError(f"{where}: {line_of(bad)}: label is NaN or infinite")
        return numbers.astype(np.float32).reshape(-1, 1), task, None
    if numbers is None:
        names = sorted(set(text))
        index = {name: i for i, name in enumerate(names)}
        return np.array([index[t] for t in text], dtype=np.int64), task, tuple(names)
    if integral and len(numbers) and np.abs(numbers).max() >= 2.0 ** 53:
        integral = False  # beyond 2**53 a float is no longer an exact integer: not a class
    if not integral:
        bad = next(i for i, v in enumerate(numbers)
                   if not (math.isfinite(v) and v == round(v) and abs(v) < 2.0 ** 53))
        raise DataError(f"{where}: {line_of(bad)}: class label {numbers[bad]:g} is not an "
                        "integer of at most 2**53 (set task = \"regression\" for numeric "
                        "targets)")
    values, y = np.unique(numbers.astype(np.int64), return_inverse=True)
    if len(values) > _MAX_CLASSES:
        raise DataError(f"{where}: {len(values):,} distinct class labels (at most "
                        f"{_MAX_CLASSES:,}); set task = \"regression\" for numeric targets")
    return y.reshape(-1).astype(np.int64), task, tuple(str(int(v)) for v in values)


def _parses(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


MAX_DATA_BYTES = 2 << 30   # a data file, or the arrays an NPZ archive inflates to
MAX_CSV_BYTES = 256 << 20  # Python's CSV parser holds several times the file in memory


def _must_exist(path: Path, what: str = "data file", limit: int = MAX_DATA_BYTES) -> None:
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    if what == "data file" and path.is_dir():
        raise DataError(f"{path} is a directory, not a {what}")
    if what == "data file" and not path.is_file():
        raise DataError(f"{path}: not a regular file (a pipe or a device would block or never "
                        "end); give a file")
    if what == "data file" and path.stat().st_size > limit:
        raise DataError(f"{path}: {path.stat().st_size:,} bytes; distill reads data files of "
                        f"up to {limit:,} bytes")


# ---------------------------------------------------------------------------------------------
# CSV

MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})  # compared lower-cased
MISSING_POLICIES = ("error", "drop")
_SHOWN_CELLS = 10  # bad cells named in one error; the rest are counted


@_source("csv", {"path", "label", "features", "header", "delimiter", "task", "missing"})
def _csv(table: Mapping[str, Any], base_dir: Path, seed: int) -> Dataset:
    path = _get_path(table, base_dir, "csv")
    header = _get_bool(table, "header", True)
    delimiter = _get_str(table, "delimiter", ",")
    if len(delimiter) != 1:
        raise _type_error("delimiter", "a single character", delimiter)
    task = _get_task(table)
    label = table.get("label", -1)
    if not (_is_int(label) or (isinstance(label, str) and label)):
        raise _type_error("label", "a column name or a column index", label)
    features = table.get("features")
    if features is not None and (not isinstance(features, list) or not features
                                 or not all(isinstance(f, str) for f in features)):
        raise _type_error("features", "a non-empty list of column names", features)
    missing = table.get("missing", "error")
    if missing not in MISSING_POLICIES:
        raise _type_error("missing", " or ".join(map(repr, MISSING_POLICIES)), missing)
    if not header and (isinstance(label, str) or features is not None):
        key = "label" if isinstance(label, str) else "features"
        raise ConfigError(f"[data] key {key!r} names columns, which needs a header row "
                          "(header = true); without one give 'label' as a column index")
    names, rows, lines = read_csv(path, delimiter, header)
    width = len(names) if names is not None else len(rows[0])
    if width < 2:
        raise DataError(f"{path}: needs at least two columns (features and a label), has {width}")
    if names is None:
        names = [str(i) for i in range(width)]

    def column(ref: str | int, key: str) -> int:
        if isinstance(ref, str):
            if ref not in names:
                raise ConfigError(f"[data] {key} column {ref!r} is not in {path}"
                                  f"{did_you_mean(ref, names)}; columns: {', '.join(names)}")
            return names.index(ref)
        if not -width <= ref < width:
            raise ConfigError(f"[data] {key} column index {ref} is out of range: {path} has "
                              f"{width} columns")
        return ref % width

    label_col = column(label, "label")
    if features is None:
        feature_cols = [i for i in range(width) if i != label_col]
    else:
        feature_cols = [column(f, "features") for f in features]
        if label_col in feature_cols:
            raise ConfigError(f"[data] features include the label column {names[label_col]!r}")
        if len(set(feature_cols)) != len(feature_cols):
            raise ConfigError("[data] features name a column twice")

    # A label is missing only when its cell is empty: "NA" or "none" may be class names.
    if missing == "drop":
        keep = [r for r, row in enumerate(rows)
                if row[label_col].strip() and not any(row[c].strip().lower() in MISSING
                                                      for c in feature_cols)]
        if not keep:
            raise DataError(f"{path}: every row has a missing value (missing = \"drop\")")
        rows, lines = [rows[r] for r in keep], [lines[r] for r in keep]
    else:
        empty = [f"line {line}, column {names[label_col]!r}" for row, line in zip(rows, lines)
                 if not row[label_col].strip()]
        if empty:
            raise DataError(f"{path}: {_cells(empty, 'is a missing label', 'are missing labels')}"
                            " (rows with missing cells can be dropped: missing = \"drop\")")
    x = numeric_cells(path, rows, lines, feature_cols, names,
                      " (rows with missing cells can be dropped: missing = \"drop\")")
    raw = np.array([row[label_col] for row in rows], dtype=object)
    y, task, class_names = _labels(raw, task, str(path), lambda i: f"line {lines[i]}")
    feature_names = tuple(names[c] for c in feature_cols) if header else None
    return Dataset(x=x, y=y, task=task, feature_names=feature_names, class_names=class_names,
                   description=_describe(path.name, "CSV", x, y, task,
                                         len(class_names or ())))


def read_csv(path: Path, delimiter: str = ",", header: bool | None = True
             ) -> tuple[list[str] | None, list[list[str]], list[int]]:
    """(column names, rows of cells, their line numbers) of a CSV file: UTF-8 with or without
    a byte-order mark, quoted cells as the csv module reads them, blank lines skipped, every
    row as wide as the first. `header=None`: a first row with a cell that is neither a number
    nor missing is the header."""
    _must_exist(path, limit=MAX_CSV_BYTES)
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            for row in reader:
                if any(cell.strip() for cell in row):  # blank lines, a trailing one too
                    rows.append(row)
                    lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read as CSV: {e}") from None
    if header is None:
        header = bool(rows) and not all(_parses(c) or c.strip().lower() in MISSING
                                        for c in rows[0])
    names = None
    if header and rows:
        names = [cell.strip() for cell in rows.pop(0)]
        lines.pop(0)
    if not rows:
        raise DataError(f"{path}: no data rows")
    width = len(names) if names is not None else len(rows[0])
    for row, line in zip(rows, lines, strict=True):
        if len(row) != width:
            raise DataError(f"{path}: line {line}: {len(row)} columns, expected {width}")
    return names, rows, lines


def numeric_cells(path: Path, rows: list[list[str]], lines: list[int], cols: list[int],
                  names: list[str], hint: str = "") -> np.ndarray:
    """The `cols` of `rows` as float32 (N, len(cols)); every cell that is not a finite number
    is named in one error (the first few, and how many in all)."""
    x = np.empty((len(rows), len(cols)), dtype=np.float32)
    bad: list[str] = []
    for r, (row, line) in enumerate(zip(rows, lines, strict=True)):
        for c, col in enumerate(cols):
            cell = row[col].strip()
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                what = "missing" if cell.lower() in MISSING else repr(cell)
                bad.append(f"line {line}, column {names[col]!r}: {what}")
                continue
            x[r, c] = value
    if bad:
        raise DataError(f"{path}: {_cells(bad, 'is not a finite number', 'are not finite numbers')}"
                        + hint)
    return x


def _cells(bad: list[str], one: str, many: str) -> str:
    """'1 cell is X: A' or '12 cells are X: A; B; ... and 2 more'."""
    shown = "; ".join(bad[:_SHOWN_CELLS])
    more = f"; and {len(bad) - _SHOWN_CELLS:,} more" if len(bad) > _SHOWN_CELLS else ""
    return (f"1 cell {one}: " if len(bad) == 1 else f"{len(bad):,} cells {many}: ") + shown + more


# ---------------------------------------------------------------------------------------------
# NPZ

@_source("npz", {"path", "x", "y", "task"})
def _npz(table: Mapping[str, Any], base_dir: Path, seed: int) -> Dataset:
    path = _get_path(table, base_dir, "npz")
    x_key = _get_str(table, "x", "x")
    y_key = _get_str(table, "y", "y")
    task = _get_task(table)
    _must_exist(path)
    with open(path, "rb") as f:
        # np.load reads anything that is not a zip as a pickle or a lone .npy array; both would
        # give confusing errors below, so say what the file is not.
        if f.read(2) != b"PK":
            raise DataError(f"{path}: not an NPZ file (a zip archive made by numpy.savez)")
    try:
        with zipfile.ZipFile(path) as z:  # a small file can inflate to terabytes: check first
            inflated = sum(i.file_size for i in z.infolist()
                           if i.filename.removesuffix(".npy") in (x_key, y_key))
        if inflated > MAX_DATA_BYTES:
            raise DataError(f"{path}: its arrays inflate to {inflated:,} bytes; distill reads "
                            f"data of up to {MAX_DATA_BYTES:,} bytes")
        with np.load(path, allow_pickle=False) as archive:
            arrays = {}
            for key, which in ((x_key, "x"), (y_key, "y")):
                if key not in archive.files:
                    raise DataError(f"{path}: no array named {key!r} (key {which!r})"
                                    f"{did_you_mean(key, archive.files)}; arrays: "
                                    f"{', '.join(archive.files) or 'none'}")
                arrays[which] = archive[key]
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        # allow_pickle=False turns object arrays into ValueError: say so rather than load them.
        raise DataError(f"{path}: cannot read as NPZ: {e}") from None
    raw_x, raw_y = arrays["x"], arrays["y"]
    if raw_x.dtype.kind not in "biuf" or raw_x.ndim < 1:
        raise DataError(f"{path}: features {x_key!r} must be a numeric array, got "
                        f"{_array_kind(raw_x)}")
    x = raw_x.astype(np.float32).reshape(len(raw_x), -1) if raw_x.ndim == 1 else \
        raw_x.astype(np.float32)
    if raw_y.ndim < 1 or len(raw_y) != len(x):
        raise DataError(f"{path}: {len(x)} rows of features but labels {y_key!r} have shape "
                        f"{raw_y.shape}")
    if raw_y.dtype.kind not in "biufUS":
        raise DataError(f"{path}: labels {y_key!r} must be numbers or strings, got "
                        f"{_array_kind(raw_y)}")
    _check_finite(x, str(path), "feature")
    if raw_y.ndim == 1 or (raw_y.ndim == 2 and raw_y.shape[1] == 1):
        flat = raw_y.reshape(-1)
        if flat.dtype.kind == "S":
            flat = flat.astype(str)
        if flat.dtype.kind in "US":
            flat = flat.astype(object)
        y, task, class_names = _labels(flat, task, str(path), lambda i: f"row {i}")
    else:
        if task == "classification" or raw_y.ndim > 2 or raw_y.dtype.kind not in "biuf":
            raise DataError(f"{path}: labels {y_key!r} of shape {raw_y.shape} are neither class "
                            "indices of shape (N,) nor regression targets of shape (N, d)")
        task, class_names = "regression", None
        y = raw_y.astype(np.float32)
        _check_finite(y, str(path), "target")
    return Dataset(x=x, y=y, task=task, feature_names=None, class_names=class_names,
                   description=_describe(path.name, "NPZ", x, y, task, len(class_names or ())))


# ---------------------------------------------------------------------------------------------
# IDX (the MNIST file format)

# type code -> big-endian dtype, as the format defines them.
_IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_CODES = {dt.newbyteorder("="): code for code, dt in _IDX_TYPES.items()}
_CHUNK = 1 << 20


def _open_binary(path: Path, mode: str) -> BinaryIO:
    return gzip.open(path, mode) if path.name.endswith(".gz") else open(path, mode)


def _read_exactly(f: BinaryIO, size: int, path: Path, what: str) -> bytes:
    # Read in chunks: asking a stream for the declared size at once would allocate it up front,
    # and a corrupt header can declare terabytes.
    parts, got = [], 0
    while got < size:
        part = f.read(min(_CHUNK, size - got))
        if not part:
            raise DataError(f"{path}: truncated IDX file: {what} needs {size} bytes, "
                            f"found {got}")
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzipped when its name ends in .gz) into a native-endian array."""
    path = Path(path)
    _must_exist(path)
    try:
        with _open_binary(path, "rb") as f:
            magic = _read_exactly(f, 4, path, "the header")
            if magic[0] or magic[1]:
                raise DataError(f"{path}: not an IDX file (magic bytes {magic.hex()})")
            code, ndim = magic[2], magic[3]
            if code not in _IDX_TYPES:
                raise DataError(f"{path}: unknown IDX type code 0x{code:02x}; supported: "
                                f"{', '.join(f'0x{c:02x}' for c in _IDX_TYPES)}")
            if ndim == 0:
                raise DataError(f"{path}: IDX file with no dimensions")
            dims = tuple(int(d) for d in np.frombuffer(
                _read_exactly(f, 4 * ndim, path, "the dimensions"), dtype=">u4"))
            dtype = _IDX_TYPES[code]
            size = math.prod(dims) * dtype.itemsize
            if not path.name.endswith(".gz"):
                actual = path.stat().st_size - 4 - 4 * ndim
                if actual < size:
                    raise DataError(f"{path}: truncated IDX file: shape {dims} of {dtype.name} "
                                    f"needs {size} bytes of data, the file has {actual}")
            data = _read_exactly(f, size, path, f"shape {dims} of {dtype.name}")
            if f.read(1):
                raise DataError(f"{path}: IDX file has data past the {size} bytes its shape "
                                f"{dims} declares")
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read IDX file: {e}") from None
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write `array` as an IDX file (gzipped when the name ends in .gz).

    Supported dtypes: uint8, int8, int16, int32, float32, float64 (the format has no others).
    """
    path = Path(path)
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise DataError(f"{path}: IDX has no type for {array.dtype}; use one of uint8, int8, "
                        "int16, int32, float32, float64")
    if not 1 <= array.ndim <= 255 or any(d >= 2**32 for d in array.shape):
        raise DataError(f"{path}: IDX cannot hold an array of shape {array.shape}")
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    with _open_binary(path, "wb") as f:
        f.write(header)
        f.write(np.ascontiguousarray(array, dtype=_IDX_TYPES[code]).tobytes())


def _idx_file(directory: Path, prefix: str, kind: str) -> Path | None:
    for name in (f"{prefix}-{kind}", f"{prefix}-{kind}".replace("-idx", ".idx")):
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


@_source("idx", {"path", "flatten"})
def _idx(table: Mapping[str, Any], base_dir: Path, seed: int) -> Dataset:
    directory = _get_path(table, base_dir, "idx")
    flatten = _get_bool(table, "flatten", True)
    _must_exist(directory, "IDX directory")
    if not directory.is_dir():
        raise DataError(f"{directory} is not a directory; [data] source 'idx' needs the folder "
                        "holding train-images-idx3-ubyte and train-labels-idx1-ubyte")
    images, labels = [], []
    for prefix in ("train", "t10k"):
        image_file = _idx_file(directory, prefix, "images-idx3-ubyte")
        label_file = _idx_file(directory, prefix, "labels-idx1-ubyte")
        if prefix == "t10k" and image_file is None and label_file is None:
            break  # the test files are optional
        for found, kind in ((image_file, "images-idx3-ubyte"), (label_file, "labels-idx1-ubyte")):
            if found is None:
                raise DataError(f"{directory}: missing {prefix}-{kind} (or {prefix}-{kind}.gz)")
        imgs, labs = read_idx(image_file), read_idx(label_file)
        if imgs.ndim != 3:
            raise DataError(f"{image_file}: images must have 3 dimensions (N, rows, cols), got "
                            f"shape {imgs.shape}")
        if labs.ndim != 1 or labs.dtype.kind not in "iu":
            raise DataError(f"{label_file}: labels must be integers of shape (N,), got "
                            f"{_array_kind(labs)}")
        if len(labs) != len(imgs):
            raise DataError(f"{label_file}: {len(labs)} labels for {len(imgs)} images in "
                            f"{image_file.name}")
        if images and imgs.shape[1:] != images[0].shape[1:]:
            raise DataError(f"{image_file}: images of {imgs.shape[1:]} pixels, but the training "
                            f"images have {images[0].shape[1:]}")
        images.append(imgs)
        labels.append(labs)
    raw = np.concatenate(images)
    # Bytes are pixel intensities 0..255: kept so, with the scaling to 0..1 left to the model's
    # first node (`input_scale`). Other types are taken as the values they hold.
    x = raw.astype(np.float32)
    scale = 255.0 if raw.dtype == np.uint8 else None
    if flatten:
        x = x.reshape(len(x), -1)
    y = np.concatenate(labels).astype(np.int64)
    if len(y) and y.min() < 0:
        raise DataError(f"{directory}: negative class label {y.min()}")
    classes = max(10, int(y.max()) + 1 if len(y) else 0)
    class_names = tuple(str(i) for i in range(classes))
    return Dataset(x=x, y=y, task="classification", feature_names=None, class_names=class_names,
                   description=_describe(directory.name or str(directory),
                                         "IDX files", x, y, "classification", classes),
                   input_scale=scale)


DATA_KEYS: frozenset[str] = _COMMON_KEYS.union(*(keys for keys, _ in _SOURCES.values()))


# ---------------------------------------------------------------------------------------------
# Preparing arrays for training

def split(ds: Dataset, validation: float = 0.0, test: float = 0.0,
          seed: int = 0) -> tuple[Dataset, Dataset | None, Dataset | None]:
    """(train, validation, test) after a seeded shuffle; a part is None when its fraction is 0.

    Classification is stratified: every class keeps its share (within one row) in each part, so
    a class with more rows than 1 / (2 * fraction) appears in that part. A nonzero fraction
    always gets at least one row.
    """
    validation, test = _check_fractions(validation, test)
    if not _is_int(seed) or seed < 0:
        raise _type_error("seed", "an integer >= 0", seed)
    n = len(ds)
    n_test = max(1, math.floor(test * n + 0.5)) if test else 0
    n_val = max(1, math.floor(validation * n + 0.5)) if validation else 0
    if n - n_test - n_val < 1:
        raise DataError(f"{ds.description}: {n} rows are too few for validation = "
                        f"{validation:g} and test = {test:g} with rows left to train on")
    rng = np.random.default_rng(seed)
    groups = ds.y if ds.task == "classification" else np.zeros(n, dtype=np.int64)
    # Shuffle each class, place its k-th row at (k + 0.5) / class size along [0, 1), and order
    # all rows by that place: any cut then takes each class in proportion to its size.
    place = np.empty(n)
    for c in np.unique(groups):
        members = np.flatnonzero(groups == c)
        place[rng.permutation(members)] = (np.arange(len(members)) + 0.5) / len(members)
    order = np.lexsort((rng.random(n), place))  # random tie-break between classes
    test_idx, val_idx = order[:n_test], order[n_test:n_test + n_val]
    train_idx = rng.permutation(order[n_test + n_val:])
    return (ds.subset(train_idx),
            ds.subset(val_idx) if n_val else None,
            ds.subset(test_idx) if n_test else None)


def standardization(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (mean, std) over axis 0 as float32; a constant feature gets std 1."""
    x = np.asarray(x)
    if len(x) == 0:
        raise DataError("cannot standardize features with no rows")
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    std = x.std(axis=0, dtype=np.float64).astype(np.float32)
    std[std == 0] = 1  # checked after the cast: a std too small for float32 is 0 there too
    return mean, std


def one_hot(y: np.ndarray, classes: int) -> np.ndarray:
    """Class indices of shape (N,) as float32 rows of shape (N, classes) with a single 1."""
    y = np.asarray(y)
    if not _is_int(classes) or classes < 1:
        raise DataError(f"one_hot needs a positive number of classes, got {classes!r}")
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise DataError(f"one_hot needs integer class indices of shape (N,), got {_array_kind(y)}")
    if y.size and (y.min() < 0 or y.max() >= classes):
        bad = y.min() if y.min() < 0 else y.max()
        raise DataError(f"class index {bad} is outside 0..{classes - 1}")
    out = np.zeros((len(y), classes), dtype=np.float32)
    out[np.arange(len(y)), y.astype(np.intp)] = 1
    return out

