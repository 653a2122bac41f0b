"""The model IR: a versioned DAG of named layer nodes with float32 weights, and its oracle.

Where it sits: at the centre. Backends (the NumPy trainer, TensorFlow, Keras import) produce a
`Model`; exporters consume one; `run` is the reference interpreter every exported program is
checked against. The op math lives in `ops`, so `run` and training compute the same thing.

What it promises:
- A `Model` that exists has been validated: known ops, sanitized unique names, every weight
  present, float32, finite and of the right shape, every node's inputs earlier in the list and
  their shapes what the op takes, and every node on a path to an output.
- `save` writes one `.distill` file atomically and deterministically (same model, same bytes);
  `load` reads it back without pickle and rejects anything else with a `ModelFormatError`
  naming the node and the problem, checking declared sizes before it allocates.

The `.distill` file is a zip archive (stored, not compressed) holding `model.json` (the graph,
see `to_json`) and one `.npy` file per weight under `weights/<node>/<weight>.npy` (a shared
layer's arrays once, under the first node that uses them). Format 2 is a DAG with named
inputs and outputs; format 1 files (a chain from one input) still load.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import stat
import tempfile
import tokenize
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, ops
from . import autodiff as ad
from .errors import ModelFormatError, did_you_mean
from .ops import OPS

FORMAT = "distill-ir"
FORMAT_VERSION = 2  # 1: a chain with one input; 2: a DAG, several inputs and outputs
INPUT = "input"  # the name by which nodes refer to the model's input
MAX_JSON_BYTES = 16 << 20
MAX_ELEMENTS = 1 << 28  # 1 GiB of float32 per weight: far beyond a "small" network
_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# zip flag bits zipfile cannot read: encrypted (0), compressed patched data (5), strong
# encryption (6). A distill writer never sets them, so an entry with one is not ours.
_ZIP_UNREADABLE_FLAGS = 0x61
# What zipfile raises, besides BadZipFile, for archives it cannot read: NotImplementedError
# for a newer zip version or an unknown method, RuntimeError for encryption.
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError,
               NotImplementedError)

Shape = tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Node:
    name: str
    op: str
    attrs: Mapping[str, Any]
    weights: Mapping[str, np.ndarray]  # a shared layer's nodes hold the very same arrays
    inputs: tuple[str, ...]            # earlier nodes or model inputs, in the op's order
    input_shapes: tuple[Shape, ...]    # per sample, one per input
    output_shape: Shape

    @property
    def input_shape(self) -> Shape:
        """The shape of the first (for most ops, the only) input."""
        return self.input_shapes[0]


@dataclass(frozen=True, eq=False)
class Model:
    """A DAG of nodes in topological order, from named inputs to named outputs.

    Per sample, a model with several inputs (or outputs) takes (gives) them *packed*: each
    flattened, one after another, in the order of `inputs` (`outputs`). That is the layout of
    the C and Go APIs, and what `input_shape` and `output_shape` describe; `run` also takes
    and gives a list of arrays, one per input and output.
    """
    name: str
    inputs: tuple[tuple[str, Shape], ...]  # (name, per-sample shape); one input is "input"
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]               # node or input names, in order; may repeat
    labels: tuple[str, ...] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    input_dtype: str = "float32"

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.inputs)

    @property
    def input_shapes(self) -> tuple[Shape, ...]:
        return tuple(tuple(shape) for _, shape in self.inputs)

    @property
    def output_shapes(self) -> tuple[Shape, ...]:
        shapes = dict(self.inputs)
        return tuple(tuple(shapes[out]) if out in shapes else self.node(out).output_shape
                     for out in self.outputs)

    @property
    def input_shape(self) -> Shape:
        """The only input's shape, or for several the packed `(total,)`."""
        return _packed(self.input_shapes)

    @property
    def output_shape(self) -> Shape:
        """The only output's shape, or for several the packed `(total,)`."""
        return _packed(self.output_shapes)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {_show(name)}"
                       f"{did_you_mean(name, [n.name for n in self.nodes])}")


def _packed(shapes: Sequence[Shape]) -> Shape:
    return tuple(shapes[0]) if len(shapes) == 1 else (sum(prod(s) for s in shapes),)


# -------------------------------------------------------------------------------------- names

def sanitize_name(raw: Any, taken: Iterable[str] = ()) -> str:
    """An identifier `[a-z][a-z0-9_]*` made from any string, unique among `taken`.

    Names come from model files and configs, so they are never trusted: everything outside the
    safe alphabet becomes `_`, a leading digit or an empty result gets a letter in front, long
    names are cut with a short hash so distinct names stay distinct.
    """
    text = str(raw)
    name = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    if not name or not name[0].isalpha():
        name = "n_" + name if name else "node"
    if len(name) > 40:
        name = name[:31].rstrip("_") + "_" + _name_hash(text)
    taken = set(taken) | {INPUT}
    base, i = name, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def _name_hash(text: str) -> str:
    # surrogatepass: JSON can spell a lone surrogate ("\ud800"), which strict UTF-8 refuses.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


# ----------------------------------------------------------------------------------- building

def make_model(name: str, input_shape: Sequence[int] | Mapping[str, Sequence[int]],
               layers: Sequence[tuple],
               labels: Sequence[str] | None = None,
               metadata: Mapping[str, Any] | None = None,
               outputs: Sequence[str] | None = None) -> Model:
    """Build a validated model from `(name, op, attrs, weights[, inputs])` tuples.

    `input_shape` is one input's shape, or `{name: shape}` for several inputs. A layer's
    `inputs` (a name or a list of names, of earlier layers or inputs) default to the layer
    before it, and `outputs` (names) to the last layer, so a chain states no wiring at all.
    Names are sanitized and de-duplicated here (a name refers to the latest layer given it),
    weights become float32 copies (an array passed to two layers stays one array: a shared
    layer), and shapes are computed, so callers (backends, importers) state only what they know.
    """
    if isinstance(input_shape, Mapping):
        raw_inputs = list(input_shape.items())
    else:
        raw_inputs = [(INPUT, input_shape)]
    known: dict[str, str] = {}  # raw name -> sanitized name
    shapes: dict[str, Shape] = {}
    inputs = []
    for raw, shape in raw_inputs:
        # Input names share the nodes' namespace; "input" is the name of a sole input.
        node_name = INPUT if len(raw_inputs) == 1 else sanitize_name(raw, shapes)
        known[str(raw)] = node_name
        shapes[node_name] = tuple(int(d) for d in shape)
        inputs.append((node_name, shapes[node_name]))
    nodes, prev, copies = [], inputs[0][0], {}

    def refer(raw: Any, node_name: str) -> str:
        if str(raw) not in known:
            raise ModelFormatError(f"node {node_name!r}: input {_show(raw)} names no earlier "
                                   f"layer or input{did_you_mean(str(raw), known)}")
        return known[str(raw)]

    def float32(v: Any) -> np.ndarray:
        if id(v) not in copies:
            copies[id(v)] = (v, np.array(v, dtype=np.float32))  # v kept: its id stays its own
        return copies[id(v)][1]

    for layer in layers:
        raw, op_name, attrs, weights = layer[:4]
        node_name = sanitize_name(raw, shapes)
        if len(layer) > 4:
            wiring = [layer[4]] if isinstance(layer[4], str) else layer[4]
            sources = tuple(refer(r, node_name) for r in wiring)
        else:
            sources = (prev,)
        w = {k: float32(v) for k, v in weights.items()}
        opdef = _opdef(op_name, node_name)
        in_shapes = tuple(shapes[src] for src in sources)
        try:
            out = ops.output_shape(opdef, list(in_shapes), attrs, w)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ModelFormatError(f"node {node_name!r} ({op_name}): {_short(e)}") from None
        nodes.append(Node(node_name, op_name, dict(attrs), w, sources, in_shapes, out))
        known[str(raw)] = prev = node_name
        shapes[node_name] = out
    wanted = [prev] if outputs is None else [refer(r, "outputs") for r in outputs]
    model = Model(sanitize_name(name), tuple(inputs), tuple(nodes), tuple(wanted),
                  tuple(labels) if labels else None, dict(metadata or {}))
    validate(model)
    return model


def _opdef(op_name: str, node_name: str):
    if op_name not in OPS:
        raise ModelFormatError(f"node {_show(node_name)}: unknown op {_show(op_name)}"
                               f"{did_you_mean(op_name, OPS)}, not one of the {len(OPS)} ops this "
                               f"distill knows (README: the IR's ops)")
    return OPS[op_name]


def validate(model: Model) -> None:
    """Raise ModelFormatError naming the first node that breaks an IR rule."""
    if not isinstance(model.name, str) or not _NAME.match(model.name):
        raise ModelFormatError(f"model name {_show(model.name)} is not a sanitized identifier")
    if model.input_dtype != "float32":
        raise ModelFormatError(f"input dtype {_show(model.input_dtype)} is not supported; "
                               "expected float32")
    seen = _check_inputs(model)
    try:
        # save() writes strict JSON, and JSON's 1e999 loads as inf: refuse what it cannot write.
        json.dumps(dict(model.metadata), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError, RecursionError) as e:
        raise ModelFormatError(f"metadata cannot be saved as JSON ({_short(e)})") from None
    _check_samples(model)
    for node in model.nodes:
        _check_node_name(node.name, seen)
        where = f"node {_show(node.name)} ({_clip(str(node.op))})"
        opdef = _opdef(node.op, node.name)
        if (not isinstance(node.inputs, tuple) or not node.inputs
                or not all(isinstance(i, str) and i in seen for i in node.inputs)):
            raise ModelFormatError(f"{where}: inputs {_show(list(node.inputs))} must be "
                                   "earlier nodes or model inputs")
        if not ops.takes(opdef, len(node.inputs)):
            want = "two or more" if opdef.arity == ops.MANY else str(opdef.arity)
            raise ModelFormatError(f"{where}: takes {want} inputs, not {len(node.inputs)}")
        known_attrs = {**opdef.attrs, **opdef.optional_attrs}
        for key, value in node.attrs.items():
            kind = known_attrs.get(key)
            if kind is None:
                raise ModelFormatError(f"{where}: unknown attribute {_show(key)}"
                                       f"{did_you_mean(key, known_attrs)}")
            # An int stands for a float (JSON writers drop the ".0"); a bool never does.
            number = kind is float and isinstance(value, int)
            if (isinstance(value, bool) and kind is not bool) or not (
                    isinstance(value, kind) or number):
                raise ModelFormatError(f"{where}: attribute {key!r} must be {kind.__name__}")
            if kind is float and not _is_finite(value):
                raise ModelFormatError(f"{where}: attribute {key!r} is not finite")
        for key in opdef.attrs:
            if key not in node.attrs:
                raise ModelFormatError(f"{where}: missing attribute {key!r}")
        allowed = set(opdef.weights) | set(opdef.optional_weights)
        for key in opdef.weights:
            if key not in node.weights:
                raise ModelFormatError(f"{where}: missing weight {key!r}")
        for key, arr in node.weights.items():
            if key not in allowed:
                raise ModelFormatError(f"{where}: unexpected weight {_show(key)}"
                                       f"{did_you_mean(key, allowed)}")
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
                raise ModelFormatError(f"{where}: weight {key!r} must be a float32 array")
            if not np.isfinite(arr).all():
                raise ModelFormatError(f"{where}: weight {key!r} holds NaN or Inf")
        in_shapes = [seen[i] for i in node.inputs]
        if [tuple(x) for x in node.input_shapes] != in_shapes:
            raise ModelFormatError(f"{where}: input shapes {_show(list(node.input_shapes))} do "
                                   f"not match the {in_shapes} it receives")
        try:
            out = ops.output_shape(opdef, in_shapes, node.attrs, node.weights)
            if node.op == "normalize":
                for key in ("mean", "std"):
                    np.broadcast_to(node.weights[key], in_shapes[0])
                if (node.weights["std"] == 0).any():
                    raise ValueError("std holds a zero")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ModelFormatError(f"{where}: {_short(e)}") from None
        # The rule may compute a shape no file can hold (a reshape to []): load would refuse it.
        _check_shape(out, f"{where} output")
        if out != tuple(node.output_shape):
            raise ModelFormatError(f"{where}: output shape {tuple(node.output_shape)} should be "
                                   f"{out}")
        seen[node.name] = out
    if (not isinstance(model.outputs, tuple) or not model.outputs
            or not all(isinstance(o, str) and o in seen for o in model.outputs)):
        raise ModelFormatError(f"outputs {_show(list(model.outputs))} must name nodes or inputs")
    _check_reached(model)
    if model.labels is not None:
        if not all(isinstance(x, str) for x in model.labels):
            raise ModelFormatError("labels must be strings")
        for i, label in enumerate(model.labels):
            try:
                label.encode("utf-8")
            except UnicodeEncodeError:  # JSON can spell a lone surrogate; code cannot
                raise ModelFormatError(f"label #{i} is not valid Unicode text") from None
        width = model.output_shape[-1]
        # One output with two labels is a binary classifier: the output is P(labels[1]).
        if len(model.labels) != width and not (width == 1 and len(model.labels) == 2):
            raise ModelFormatError(f"{len(model.labels)} labels for {width} outputs")


def _check_inputs(model: Model) -> dict[str, Shape]:
    """The model's inputs, checked, as the first entries of the names-to-shapes table."""
    if not isinstance(model.inputs, tuple) or not model.inputs:
        raise ModelFormatError("a model needs at least one input")
    seen: dict[str, Shape] = {}
    for i, spec in enumerate(model.inputs):
        if not isinstance(spec, tuple) or len(spec) != 2:
            raise ModelFormatError(f"input #{i} is not a (name, shape) pair")
        name, shape = spec
        if len(model.inputs) == 1:
            if name != INPUT:
                raise ModelFormatError(f"a sole input is named {INPUT!r}, not {_show(name)}")
        elif not isinstance(name, str) or not _NAME.match(name) or name == INPUT or name in seen:
            raise ModelFormatError(f"input name {_show(name)} is not a valid identifier "
                                   "([a-z][a-z0-9_]*, not 'input') or is used twice")
        _check_shape(shape, "model input" if len(model.inputs) == 1 else f"input {_show(name)}")
        seen[name] = tuple(shape)
    return seen


def _check_reached(model: Model) -> None:
    """Every node feeds an output: exporters compute nodes, so one that does not is dead code
    (importers leave such layers out)."""
    needed = set(model.outputs)
    for node in reversed(model.nodes):
        if node.name in needed:
            needed.update(node.inputs)
        else:
            raise ModelFormatError(f"node {_show(node.name)} ({_clip(str(node.op))}) reaches "
                                   "no output")


def _check_samples(model: Model) -> None:
    """Exporters use `samples` (rows of input values) and `input_range` ([low row, high row])
    from the metadata to seed their self-tests; a file must not be able to make them fail."""
    size = prod(model.input_shape)
    meta = model.metadata
    for key, rows in (("samples", None), ("input_range", 2)):
        if key not in meta or (key == "samples" and meta[key] == []):
            continue
        try:
            with np.errstate(over="ignore"):
                arr = np.array(meta[key], dtype=np.float32)
            ok = (arr.ndim == 2 and arr.shape[1] == size and (rows is None or len(arr) == rows)
                  and bool(np.isfinite(arr).all()))
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            want = f"{rows} rows" if rows else "rows"
            raise ModelFormatError(f"metadata {key!r} must be {want} of {size} finite float32 "
                                   "values (the model's input)")
        if rows is not None and (arr[0] > arr[1]).any():
            raise ModelFormatError("metadata 'input_range' has a low value above its high value")


def _check_node_name(name: Any, seen: Iterable[str]) -> None:
    if not isinstance(name, str) or not _NAME.match(name) or name == INPUT:
        raise ModelFormatError(f"node name {_show(name)} is not a valid identifier "
                               "([a-z][a-z0-9_]*, not 'input')")
    if name in seen:
        raise ModelFormatError(f"duplicate node name {_show(name)}")


def _is_finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range, as JSON's 10**400 loads
        return False


def _check_shape(shape: Any, where: str) -> None:
    if (not isinstance(shape, (list, tuple)) or not shape or len(shape) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d for d in shape)
            or prod(shape) > MAX_ELEMENTS):
        raise ModelFormatError(f"{where}: bad shape {_show(shape)}")


# ------------------------------------------------------------------------------------ running

def run(model: Model, x: Any, *, split: bool = False, intermediates: bool = False) -> Any:
    """The reference interpreter: outputs for one sample `(...)` or a batch `(N, ...)`.

    `x` is an array of `model.input_shape` (several inputs packed) or, for a model with
    several inputs, a list with one array per input. The result is an array of
    `model.output_shape` (several outputs packed) or, with `split=True`, a list with one array
    per output. With `intermediates=True` returns a dict of every node's output (batched), the
    inputs included.
    """
    listed = isinstance(x, (list, tuple)) and len(model.inputs) > 1
    xs = [np.asarray(v, dtype=np.float32) for v in x] if listed else \
        [np.asarray(x, dtype=np.float32)]
    shapes = list(model.input_shapes) if listed else [tuple(model.input_shape)]
    if len(xs) != len(shapes):
        raise ValueError(f"model {model.name!r} takes {len(shapes)} inputs, got {len(xs)}")
    single = all(v.shape == s for v, s in zip(xs, shapes))
    batch = None if single or not xs[0].ndim else xs[0].shape[0]  # every input's, or an error
    for v, shape in zip(xs, shapes):
        if not single and v.shape[1:] == shape and v.ndim and v.shape[0] != batch:
            raise ValueError(f"model {model.name!r}: its inputs hold batches of "
                             f"{batch} and {v.shape[0]} samples")
        if not single and v.shape != (batch, *shape):
            raise ValueError(f"model {model.name!r} takes input of shape {shape} or (N, "
                             f"{', '.join(map(str, shape))}), got {v.shape}")
    xs = [v[None] if single else v for v in xs]
    if not listed and len(model.inputs) > 1:  # packed: split into the inputs
        cuts = np.cumsum([prod(s) for s in model.input_shapes])[:-1]
        xs = [part.reshape(len(xs[0]), *s) for part, s in
              zip(np.split(xs[0], cuts, axis=1), model.input_shapes)]
    if intermediates:
        return _run(model, xs, keep_all=True)
    n = len(xs[0])
    # A batch at a time, so that memory stays within RUN_VALUES whatever N is.
    step = max(1, RUN_VALUES // max(stats(model)["largest_activation"], 1))
    parts = [_run(model, [v[i:i + step] for v in xs]) for i in range(0, n, step)]
    outs = []
    for out, shape in zip(model.outputs, model.output_shapes):
        pieces = [p[out] for p in parts]
        outs.append((np.concatenate(pieces) if len(pieces) != 1 else pieces[0]) if pieces
                    else np.zeros((0, *shape), np.float32))
    if not split and len(outs) > 1:  # packed, as C and Go give them
        outs = [np.concatenate([o.reshape(len(o), -1) for o in outs], axis=1)]
    if single:
        outs = [o[0] for o in outs]
    return outs if split else outs[0]


# Values of the largest activation ir.run holds at once (128 MiB). Larger batches run in
# pieces; a matrix product's bits can depend on its row count, so this is set above any batch
# the tests compare bit for bit.
RUN_VALUES = 1 << 25


def _run(model: Model, xs: list[np.ndarray], keep_all: bool = False) -> dict[str, np.ndarray]:
    """Every node's output (keep_all) or just the outputs': each intermediate is dropped
    after its last reader, so a chain of 2,000 nodes holds two activations, not 2,000."""
    last = {}
    for i, node in enumerate(model.nodes):
        for name in node.inputs:
            last[name] = i
    values = {name: ad.Tensor(v) for name, v in zip(model.input_names, xs)}
    for i, node in enumerate(model.nodes):
        values[node.name] = ops.forward(OPS[node.op], [values[n] for n in node.inputs],
                                        node.attrs, node.weights)
        if not keep_all:
            for name in set(node.inputs):
                if last[name] == i and name not in model.outputs:
                    del values[name]
    return {k: v.data for k, v in values.items() if keep_all or k in model.outputs}


# ----------------------------------------------------------------------------------- figures

def weight_arrays(model: Model) -> list[np.ndarray]:
    """Every distinct weight array, in node order: a shared layer's arrays count once."""
    seen, arrays = set(), []
    for n in model.nodes:
        for key in sorted(n.weights):
            if id(n.weights[key]) not in seen:
                seen.add(id(n.weights[key]))
                arrays.append(n.weights[key])
    return arrays


def stats(model: Model) -> dict[str, int]:
    """Parameters, weight bytes, multiply-adds and peak activation bytes per sample."""
    params = sum(int(a.size) for a in weight_arrays(model))
    macs = sum(OPS[n.op].macs(n.input_shape, n.output_shape, n.weights) for n in model.nodes)
    sizes = {name: prod(shape) for name, shape in model.inputs}
    last = {name: len(model.nodes) if name in model.outputs else -1 for name in sizes}
    for i, n in enumerate(model.nodes):
        sizes[n.name] = prod(n.output_shape)
        last[n.name] = len(model.nodes) if n.name in model.outputs else i
        for src in n.inputs:
            last[src] = max(last[src], i)
    # While a node runs, what it reads and writes and all that is read later is held: for a
    # chain, the largest adjacent pair.
    peak = sum(sizes[name] for name, _ in model.inputs)
    live = set(model.input_names)
    for i, n in enumerate(model.nodes):
        live.add(n.name)
        peak = max(peak, sum(sizes[k] for k in live))
        live = {k for k in live if last[k] > i}
    return {"parameters": params, "weight_bytes": 4 * params, "macs": macs,
            "peak_activation_bytes": 4 * peak, "largest_activation": max(sizes.values())}


def model_hash(model: Model) -> str:
    """sha256 of what the model computes (graph and weight bits), not of its name or metadata."""
    h = hashlib.sha256()
    graph = [[n.op, n.attrs, list(n.input_shape) if len(n.inputs) == 1 else
              [list(s) for s in n.input_shapes], list(n.inputs), sorted(n.weights)]
             for n in model.nodes]
    doc: list[Any] = [list(model.input_shape), graph]
    if len(model.inputs) > 1 or len(model.outputs) > 1:  # one-in one-out hashes as in format 1
        doc.append([[[name, list(shape)] for name, shape in model.inputs], list(model.outputs)])
    h.update(json.dumps(doc, sort_keys=True).encode())
    for n in model.nodes:
        for key in sorted(n.weights):
            h.update(np.ascontiguousarray(n.weights[key], dtype="<f4").tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------ save and load

def to_json(model: Model) -> dict[str, Any]:
    """The `model.json` document: everything but the weight values. A weight array that
    several nodes share (a shared layer) is stored once, in the first node's file, and the
    others name that file."""
    files: dict[int, str] = {}
    for n in model.nodes:
        for k, a in sorted(n.weights.items()):
            files.setdefault(id(a), f"weights/{n.name}/{k}.npy")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "distill_version": __version__,
        "name": model.name,
        "inputs": [{"name": name, "shape": list(shape), "dtype": model.input_dtype}
                   for name, shape in model.inputs],
        "outputs": list(model.outputs),
        "labels": list(model.labels) if model.labels is not None else None,
        "metadata": dict(model.metadata),
        "nodes": [{
            "name": n.name,
            "op": n.op,
            "inputs": list(n.inputs),
            "attrs": dict(n.attrs),
            "input_shapes": [list(s) for s in n.input_shapes],
            "output_shape": list(n.output_shape),
            "weights": {k: {"shape": list(a.shape), "dtype": "float32", "file": files[id(a)]}
                        for k, a in sorted(n.weights.items())},
        } for n in model.nodes],
    }


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one.

    The file gets the permissions `open()` would give a new file (0666 less the umask). A
    symbolic link is written through (its target is replaced and the link kept) when
    `may_follow` allows it, else replaced itself.
    """
    path = Path(path)
    if path.is_symlink() and may_follow(path):
        path = Path(os.path.realpath(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=temporary_prefix(path),
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file 0600, which would leave a saved model unreadable to others.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def may_follow(link: Path) -> bool:
    """Whether a write may go through the symbolic link `link`: as the kernel's
    protected_symlinks rule has it, in a sticky world-writable folder (/tmp) only a link of
    our own or of the folder's owner is followed, so that another user's planted link cannot
    aim our write at a file of ours."""
    try:
        st, folder = os.lstat(link), os.stat(Path(link).parent)
    except OSError:
        return False
    shared = folder.st_mode & stat.S_ISVTX and folder.st_mode & stat.S_IWOTH
    return not shared or st.st_uid in (os.geteuid(), folder.st_uid)


def temporary_prefix(path: Path) -> str:
    """How the temporaries of a write to `path` begin: `.NAME.PID.`, beside it (atomic_write's
    files, codegen's export folders), so that remove_stale_temporaries knows whose they are."""
    return f".{path.name}.{os.getpid()}."


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporaries (`.NAME.PID.XXXXXXXX`, a file or a folder) that killed writes to
    `path` left beside it. One whose process still runs is left alone: it may be mid-write."""
    parent = Path(path).parent
    if not parent.is_dir():
        return
    pattern = re.compile(re.escape(f".{Path(path).name}.") + r"(\d+)\.\w{8}(\.tmp)?")
    for tmp in parent.iterdir():
        found = pattern.fullmatch(tmp.name)
        if not found or process_running(int(found[1])):
            continue
        if tmp.is_symlink():
            tmp.unlink(missing_ok=True)  # the link itself, never what it points to
        elif tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.is_file():
            tmp.unlink(missing_ok=True)


def process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # someone else's process, or no way to tell: keep its temporary
    return True


def _umask() -> int:
    # The umask can only be read by setting it. Linux shows it in /proc; elsewhere set it and
    # put it back at once, a short window in which another thread's new file gets the wrong mode.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def archive_bytes(doc: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                  doc_name: str = "model.json") -> bytes:
    """A deterministic stored zip of one JSON document and `.npy` arrays (no pickle inside)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(_zip_info(doc_name),
                   json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n")
        for name, arr in arrays.items():
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.ascontiguousarray(arr), allow_pickle=False)
            z.writestr(_zip_info(name), npy.getvalue())
    return buf.getvalue()


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, _ZIP_DATE)
    # ZipInfo's defaults depend on the platform (create_system is 0 on Windows, 3 elsewhere):
    # fix them so the same model gives the same bytes everywhere, as a Unix rw-r--r-- file.
    info.create_system = 3
    info.external_attr = 0o644 << 16
    return info


def save(model: Model, path: str | os.PathLike) -> None:
    validate(model)
    doc = to_json(model)
    arrays = {}
    for nd, node in zip(doc["nodes"], model.nodes):
        for k, w in nd["weights"].items():
            arrays.setdefault(w["file"], node.weights[k])
    atomic_write(path, archive_bytes(doc, arrays))


def read_archive(path: str | os.PathLike, doc_name: str = "model.json",
                 what: str = "distill model") -> tuple[dict[str, Any], zipfile.ZipFile]:
    """Open a zip written by `archive_bytes`; returns its JSON document and the open archive.

    Every entry has been checked to need no zip feature that `archive_bytes` does not use
    (encryption, patched data), so reading one cannot fail for that reason.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelFormatError(f"{path}: is a directory, not a {what} file")
    if path.exists() and not path.is_file():  # a FIFO blocks zipfile, /dev/zero never ends
        raise ModelFormatError(f"{path}: is not a regular file")
    try:
        z = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file") from None
    except _ZIP_ERRORS as e:
        raise ModelFormatError(f"{path}: not a {what} file ({_short(e)})") from None
    size = path.stat().st_size
    try:
        for info in z.infolist():
            if info.flag_bits & _ZIP_UNREADABLE_FLAGS:
                raise ModelFormatError(f"{path}: {_clip(info.filename)} is encrypted or "
                                       f"patched, which a {what} file never is")
            # zipfile reads a stored entry by its compressed size: the two must agree, or a
            # tiny file could claim gigabytes.
            if info.compress_size > size or (info.compress_type == zipfile.ZIP_STORED
                                             and info.compress_size != info.file_size):
                raise ModelFormatError(f"{path}: {_clip(info.filename)} claims "
                                       f"{info.compress_size} stored bytes but holds "
                                       f"{info.file_size}")
        try:
            info = z.getinfo(doc_name)
        except KeyError:
            raise ModelFormatError(f"{path}: not a {what} file (no {doc_name} inside)") from None
        if info.file_size > MAX_JSON_BYTES or info.compress_type != zipfile.ZIP_STORED:
            raise ModelFormatError(f"{path}: {doc_name} is compressed or larger than "
                                   f"{MAX_JSON_BYTES} bytes")
        try:
            doc = json.loads(z.read(info).decode("utf-8"),
                             parse_constant=lambda c: _raise(f"{doc_name} holds {c}"))
        except (*_ZIP_ERRORS, RecursionError) as e:
            raise ModelFormatError(f"{path}: {doc_name} is unreadable ({_short(e)})") from None
        if not isinstance(doc, dict):
            raise ModelFormatError(f"{path}: {doc_name} is not a JSON object")
    except BaseException:
        z.close()
        raise
    return doc, z


def read_array(z: zipfile.ZipFile, name: str, shape: Shape, where: str) -> np.ndarray:
    """Read one little-endian float32 `.npy` entry of exactly `shape`, as a new writeable array.

    Sizes are checked before anything is read, and the `.npy` header is parsed here (never
    trusted to size an allocation, never unpickled): the data must be exactly `shape`'s bytes.
    """
    shape = tuple(shape)
    try:
        info = z.getinfo(name)
    except KeyError:
        raise ModelFormatError(f"{where}: {_clip(name)} is missing from the file") from None
    expected = 4 * prod(shape)
    # Stored entries only: their size is bounded by the file's, so nothing can inflate.
    if info.compress_type != zipfile.ZIP_STORED or not (
            expected < info.file_size <= expected + 4096):
        raise ModelFormatError(f"{where}: {_clip(name)} has {info.file_size} bytes, expected "
                               f"a stored .npy of {expected} data bytes")
    if info.flag_bits & _ZIP_UNREADABLE_FLAGS:
        raise ModelFormatError(f"{where}: {_clip(name)} is encrypted or patched")
    try:
        with z.open(info) as f:
            data = f.read()
        buf = io.BytesIO(data)
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            header = np.lib.format.read_array_header_2_0(buf)
        else:
            raise ValueError(f".npy version {version} is not supported")
    except (*_ZIP_ERRORS, TypeError, RecursionError, tokenize.TokenError) as e:
        # numpy's header parser tokenizes the header: '((((' raises tokenize.TokenError.
        raise ModelFormatError(f"{where}: {_clip(name)} is unreadable ({_short(e)})") from None
    found, fortran_order, dtype = header
    if dtype.str != "<f4" or fortran_order or found != shape:
        layout = " (Fortran order)" if fortran_order else ""
        raise ModelFormatError(f"{where}: {_clip(name)} is {_clip(str(dtype))} "
                               f"{_show(found)}{layout}, expected float32 {shape} in C order")
    if len(data) - buf.tell() != expected:
        raise ModelFormatError(f"{where}: {_clip(name)} holds {len(data) - buf.tell()} data "
                               f"bytes, expected {expected}")
    # astype copies: the array owns its memory and is writeable, unlike a view of `data`.
    return np.frombuffer(data, "<f4", offset=buf.tell()).reshape(shape).astype(np.float32)


def load(path: str | os.PathLike) -> Model:
    """Read and validate a `.distill` file; any defect raises ModelFormatError."""
    doc, z = read_archive(path)
    with z:
        try:
            return _from_json(doc, z)
        except ModelFormatError as e:
            raise ModelFormatError(f"{path}: {e}") from None


def _from_json(doc: dict[str, Any], z: zipfile.ZipFile) -> Model:
    if doc.get("format") != FORMAT:
        raise ModelFormatError("not a distill model file (no 'format': 'distill-ir')")
    version = doc.get("format_version")
    # `True == 1` and `1.0 == 1` in Python, but neither is the version number this reads.
    if not isinstance(version, int) or isinstance(version, bool) or version not in (1, 2):
        raise ModelFormatError(f"format version {_show(version)} is not supported; this "
                               f"distill reads versions 1 and {FORMAT_VERSION}")
    name = _field(doc, "name", str, "model")
    if version == 1:  # one input, named "input"; each node one input_shape
        inputs_doc = [{**_field(doc, "input", dict, "model"), "name": INPUT}]
    else:
        inputs_doc = _field(doc, "inputs", list, "model")
    inputs, dtypes = [], set()
    for i, spec in enumerate(inputs_doc):
        if not isinstance(spec, dict):
            raise ModelFormatError(f"input #{i} is not an object")
        _check_shape(spec.get("shape"), "model input" if len(inputs_doc) == 1 else f"input #{i}")
        dtype = spec.get("dtype", "float32")
        if not isinstance(dtype, str):
            raise ModelFormatError(f"input #{i}: dtype {_show(dtype)} is not a string")
        inputs.append((spec.get("name"), tuple(spec["shape"])))
        dtypes.add(dtype)
    if len(dtypes) > 1:
        raise ModelFormatError(f"inputs of several dtypes ({_show(sorted(dtypes))}); "
                               "expected float32")
    nodes_doc = _field(doc, "nodes", list, "model")
    outputs = _field(doc, "outputs", list, "model")
    labels = doc.get("labels")
    if labels is not None and not isinstance(labels, list):
        raise ModelFormatError("'labels' must be a list or null")
    metadata = doc.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ModelFormatError("'metadata' must be an object")
    # Names first, before any weight is read: N nodes with one name would read one entry N
    # times, so a small file could ask for many times its size in memory.
    names: set[str] = {n for n, _ in inputs if isinstance(n, str)}
    for i, nd in enumerate(nodes_doc):
        if not isinstance(nd, dict):
            raise ModelFormatError(f"node #{i} is not an object")
        _check_node_name(_field(nd, "name", str, f"node #{i}"), names)  # rejects INPUT too
        names.add(nd["name"])
    nodes, read = [], {}  # read: file -> array, each file read once (a shared layer's)
    for nd in nodes_doc:
        node_name = nd["name"]
        where = f"node {_show(node_name)}"
        op_name = _field(nd, "op", str, where)
        _opdef(op_name, node_name)
        weights_doc = _field(nd, "weights", dict, where)
        attrs = _field(nd, "attrs", dict, where)
        node_inputs = _field(nd, "inputs", list, where)
        if version == 1:
            in_shapes = [nd.get("input_shape")]
        else:
            in_shapes = _field(nd, "input_shapes", list, where)
        for k, shape in enumerate(in_shapes):
            _check_shape(shape, f"{where} input_shapes[{k}]" if version > 1
                         else f"{where} input_shape")
        out_shape = nd.get("output_shape")
        _check_shape(out_shape, f"{where} output_shape")
        weights = {}
        for key, spec in weights_doc.items():
            if not isinstance(spec, dict):
                raise ModelFormatError(f"{where}: weight {_show(key)} is not described by an "
                                       "object")
            shape = spec.get("shape")
            _check_shape(shape, f"{where} weight {_show(key)}")
            if spec.get("dtype") != "float32":
                raise ModelFormatError(f"{where}: weight {_show(key)} must be float32")
            own = f"weights/{node_name}/{key}.npy"
            file = own if version == 1 else spec.get("file", own)
            if not isinstance(file, str) or (file != own and file not in read):
                raise ModelFormatError(f"{where}: weight {_show(key)} names {_show(file)}, "
                                       "which is neither its own file nor an earlier node's")
            if file not in read:
                read[file] = read_array(z, file, tuple(shape), f"{where} weight {_show(key)}")
            elif read[file].shape != tuple(shape):
                raise ModelFormatError(f"{where}: weight {_show(key)} is {_show(tuple(shape))} "
                                       f"but {_clip(file)} holds {read[file].shape}")
            weights[key] = read[file]
        nodes.append(Node(node_name, op_name, attrs, weights, tuple(node_inputs),
                          tuple(tuple(s) for s in in_shapes), tuple(out_shape)))
    model = Model(name, tuple(inputs), tuple(nodes), tuple(outputs),
                  tuple(labels) if labels is not None else None, metadata, dtypes.pop()
                  if dtypes else "float32")
    validate(model)
    return model


def _field(doc: dict, key: str, kind: type, where: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind):
        raise ModelFormatError(f"{where}: '{key}' is missing or not a {kind.__name__}")
    return value


def _raise(msg: str):
    raise ValueError(msg)


def _short(e: BaseException) -> str:
    """An exception's message for another message: its first line, at most 120 characters."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return _clip(lines[0] if lines else type(e).__name__, 120)


def _clip(text: str, limit: int = 60) -> str:
    """`text` for an error message: one printable line of at most `limit` characters.

    Names in messages come from files, so they may be huge or hold control characters.
    """
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _show(value: Any) -> str:
    """repr(value) for an error message, cut like `_clip`."""
    return _clip(repr(value))
