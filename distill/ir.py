"""The model IR: a versioned graph of named layer nodes with float32 weights, and its oracle.

Where it sits: at the centre. Backends (the NumPy trainer, TensorFlow, Keras import) produce a
`Model`; exporters consume one; `run` is the reference interpreter every exported program is
checked against. The op math lives in `ops`, so `run` and training compute the same thing.

What it promises:
- A `Model` that exists has been validated: known ops, sanitized unique names, every weight
  present, float32, finite and of the right shape, and a shape chain that holds.
- `save` writes one `.distill` file atomically and deterministically (same model, same bytes);
  `load` reads it back without pickle and rejects anything else with a `ModelFormatError`
  naming the node and the problem, checking declared sizes before it allocates.

The `.distill` file is a zip archive (stored, not compressed) holding `model.json` (the graph,
see `to_json`) and one `.npy` file per weight under `weights/<node>/<weight>.npy`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from . import autodiff as ad
from .errors import ModelFormatError, did_you_mean
from .ops import OPS

FORMAT = "distill-ir"
FORMAT_VERSION = 1
INPUT = "input"  # the name by which nodes refer to the model's input
MAX_JSON_BYTES = 16 << 20
MAX_ELEMENTS = 1 << 28  # 1 GiB of float32 per weight: far beyond a "small" network
_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)

Shape = tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Node:
    name: str
    op: str
    attrs: Mapping[str, Any]
    weights: Mapping[str, np.ndarray]
    inputs: tuple[str, ...]
    input_shape: Shape
    output_shape: Shape


@dataclass(frozen=True, eq=False)
class Model:
    name: str
    input_shape: Shape
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]
    labels: tuple[str, ...] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    input_dtype: str = "float32"

    @property
    def output_shape(self) -> Shape:
        return self.node(self.outputs[0]).output_shape if self.nodes else self.input_shape

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r}{did_you_mean(name, [n.name for n in self.nodes])}")


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
        name = name[:31].rstrip("_") + "_" + hashlib.sha256(text.encode()).hexdigest()[:8]
    taken = set(taken) | {INPUT}
    base, i = name, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


# ----------------------------------------------------------------------------------- building

def make_model(name: str, input_shape: Sequence[int],
               layers: Sequence[tuple[str, str, Mapping[str, Any], Mapping[str, Any]]],
               labels: Sequence[str] | None = None,
               metadata: Mapping[str, Any] | None = None) -> Model:
    """Build a validated chain model from `(name, op, attrs, weights)` tuples.

    Names are sanitized and de-duplicated here, weights become float32 copies, and shapes are
    computed from the input shape, so callers (backends, importers) state only what they know.
    """
    nodes, taken, prev = [], set(), INPUT
    shape = tuple(int(d) for d in input_shape)
    for raw, op_name, attrs, weights in layers:
        node_name = sanitize_name(raw, taken)
        taken.add(node_name)
        w = {k: np.array(v, dtype=np.float32) for k, v in weights.items()}
        opdef = _opdef(op_name, node_name)
        try:
            out = tuple(int(d) for d in opdef.out_shape(shape, attrs, w))
        except (ValueError, KeyError, IndexError) as e:
            raise ModelFormatError(f"node {node_name!r} ({op_name}): {e}") from None
        nodes.append(Node(node_name, op_name, dict(attrs), w, (prev,), shape, out))
        prev, shape = node_name, out
    model = Model(sanitize_name(name), tuple(int(d) for d in input_shape), tuple(nodes),
                  (prev,) if nodes else (INPUT,), tuple(labels) if labels else None,
                  dict(metadata or {}))
    validate(model)
    return model


def _opdef(op_name: str, node_name: str):
    if op_name not in OPS:
        raise ModelFormatError(f"node {node_name!r}: unknown op {op_name!r}"
                               f"{did_you_mean(op_name, OPS)}; supported: {', '.join(OPS)}")
    return OPS[op_name]


def validate(model: Model) -> None:
    """Raise ModelFormatError naming the first node that breaks an IR rule."""
    if not _NAME.match(model.name):
        raise ModelFormatError(f"model name {model.name!r} is not a sanitized identifier")
    if model.input_dtype != "float32":
        raise ModelFormatError(f"input dtype {model.input_dtype!r} is not supported; "
                               "expected float32")
    _check_shape(model.input_shape, "model input")
    seen: dict[str, Shape] = {INPUT: tuple(model.input_shape)}
    for node in model.nodes:
        where = f"node {node.name!r} ({node.op})"
        if not isinstance(node.name, str) or not _NAME.match(node.name) or node.name == INPUT:
            raise ModelFormatError(f"node name {node.name!r} is not a valid identifier "
                                   "([a-z][a-z0-9_]*, not 'input')")
        if node.name in seen:
            raise ModelFormatError(f"duplicate node name {node.name!r}")
        opdef = _opdef(node.op, node.name)
        if len(node.inputs) != 1 or node.inputs[0] not in seen:
            raise ModelFormatError(f"{where}: inputs {list(node.inputs)} must be one earlier "
                                   "node or 'input'")
        for key, value in node.attrs.items():
            kind = opdef.attrs.get(key)
            if kind is None:
                raise ModelFormatError(f"{where}: unknown attribute {key!r}"
                                       f"{did_you_mean(key, opdef.attrs)}")
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                continue
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ModelFormatError(f"{where}: attribute {key!r} must be {kind.__name__}")
            if kind is float and not np.isfinite(value):
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
                raise ModelFormatError(f"{where}: unexpected weight {key!r}"
                                       f"{did_you_mean(key, allowed)}")
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
                raise ModelFormatError(f"{where}: weight {key!r} must be a float32 array")
            if not np.isfinite(arr).all():
                raise ModelFormatError(f"{where}: weight {key!r} holds NaN or Inf")
        in_shape = seen[node.inputs[0]]
        if tuple(node.input_shape) != in_shape:
            raise ModelFormatError(f"{where}: input shape {tuple(node.input_shape)} does not "
                                   f"match the {in_shape} it receives")
        try:
            out = tuple(opdef.out_shape(in_shape, node.attrs, node.weights))
            if node.op == "normalize":
                for key in ("mean", "std"):
                    np.broadcast_to(node.weights[key], in_shape)
                if (node.weights["std"] == 0).any():
                    raise ValueError("std holds a zero")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ModelFormatError(f"{where}: {e}") from None
        if out != tuple(node.output_shape):
            raise ModelFormatError(f"{where}: output shape {tuple(node.output_shape)} should be "
                                   f"{out}")
        seen[node.name] = out
    if len(model.outputs) != 1 or model.outputs[0] not in seen:
        raise ModelFormatError(f"outputs {list(model.outputs)} must name one node")
    if model.labels is not None:
        if not all(isinstance(x, str) for x in model.labels):
            raise ModelFormatError("labels must be strings")
        width = model.output_shape[-1]
        # One output with two labels is a binary classifier: the output is P(labels[1]).
        if len(model.labels) != width and not (width == 1 and len(model.labels) == 2):
            raise ModelFormatError(f"{len(model.labels)} labels for {width} outputs")


def _check_shape(shape: Any, where: str) -> None:
    if (not isinstance(shape, (list, tuple)) or not shape or len(shape) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d for d in shape)
            or prod(shape) > MAX_ELEMENTS):
        raise ModelFormatError(f"{where}: bad shape {shape!r}")


# ------------------------------------------------------------------------------------ running

def run(model: Model, x: Any, *, intermediates: bool = False) -> Any:
    """The reference interpreter: outputs for one sample `(...)` or a batch `(N, ...)`.

    With `intermediates=True` returns a dict of every node's output (batched), input included.
    """
    x = np.asarray(x, dtype=np.float32)
    shape = tuple(model.input_shape)
    single = x.shape == shape
    if not single and x.shape[1:] != shape:
        raise ValueError(f"model {model.name!r} takes input of shape {shape} or (N, "
                         f"{', '.join(map(str, shape))}), got {x.shape}")
    values = {INPUT: ad.Tensor(x[None] if single else x)}
    for node in model.nodes:
        values[node.name] = OPS[node.op].forward(values[node.inputs[0]], node.attrs,
                                                 node.weights)
    if intermediates:
        return {k: v.data for k, v in values.items()}
    out = values[model.outputs[0]].data
    return out[0] if single else out


# ----------------------------------------------------------------------------------- figures

def stats(model: Model) -> dict[str, int]:
    """Parameters, weight bytes, multiply-adds and peak activation bytes per sample."""
    params = sum(int(a.size) for n in model.nodes for a in n.weights.values())
    macs = sum(OPS[n.op].macs(n.input_shape, n.output_shape) for n in model.nodes)
    sizes = [prod(model.input_shape)] + [prod(n.output_shape) for n in model.nodes]
    # An op reads one buffer and writes another, so the peak is the largest adjacent pair.
    peak = max([a + b for a, b in zip(sizes, sizes[1:])] or sizes)
    return {"parameters": params, "weight_bytes": 4 * params, "macs": macs,
            "peak_activation_bytes": 4 * peak, "largest_activation": max(sizes)}


def model_hash(model: Model) -> str:
    """sha256 of what the model computes (graph and weight bits), not of its name or metadata."""
    h = hashlib.sha256()
    graph = [[n.op, n.attrs, list(n.input_shape), list(n.inputs), sorted(n.weights)]
             for n in model.nodes]
    h.update(json.dumps([list(model.input_shape), graph], sort_keys=True).encode())
    for n in model.nodes:
        for key in sorted(n.weights):
            h.update(np.ascontiguousarray(n.weights[key], dtype="<f4").tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------ save and load

def to_json(model: Model) -> dict[str, Any]:
    """The `model.json` document: everything but the weight values."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "distill_version": __version__,
        "name": model.name,
        "input": {"name": INPUT, "shape": list(model.input_shape), "dtype": model.input_dtype},
        "outputs": list(model.outputs),
        "labels": list(model.labels) if model.labels is not None else None,
        "metadata": dict(model.metadata),
        "nodes": [{
            "name": n.name,
            "op": n.op,
            "inputs": list(n.inputs),
            "attrs": dict(n.attrs),
            "input_shape": list(n.input_shape),
            "output_shape": list(n.output_shape),
            "weights": {k: {"shape": list(a.shape), "dtype": "float32",
                            "file": f"weights/{n.name}/{k}.npy"}
                        for k, a in sorted(n.weights.items())},
        } for n in model.nodes],
    }


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def archive_bytes(doc: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                  doc_name: str = "model.json") -> bytes:
    """A deterministic stored zip of one JSON document and `.npy` arrays (no pickle inside)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        info = zipfile.ZipInfo(doc_name, _ZIP_DATE)
        z.writestr(info, json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n")
        for name, arr in arrays.items():
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.ascontiguousarray(arr), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(name, _ZIP_DATE), npy.getvalue())
    return buf.getvalue()


def save(model: Model, path: str | os.PathLike) -> None:
    validate(model)
    doc = to_json(model)
    arrays = {w["file"]: model.node(nd["name"]).weights[k]
              for nd in doc["nodes"] for k, w in nd["weights"].items()}
    atomic_write(path, archive_bytes(doc, arrays))


def read_archive(path: str | os.PathLike, doc_name: str = "model.json",
                 what: str = "distill model") -> tuple[dict[str, Any], zipfile.ZipFile]:
    """Open a zip written by `archive_bytes`; returns its JSON document and the open archive."""
    path = Path(path)
    if path.is_dir():
        raise ModelFormatError(f"{path}: is a directory, not a {what} file")
    try:
        z = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ModelFormatError(f"{path}: not a {what} file ({_short(e)})") from None
    try:
        info = z.getinfo(doc_name)
    except KeyError:
        z.close()
        raise ModelFormatError(f"{path}: not a {what} file (no {doc_name} inside)") from None
    if info.file_size > MAX_JSON_BYTES or info.compress_type != zipfile.ZIP_STORED:
        z.close()
        raise ModelFormatError(f"{path}: {doc_name} is compressed or larger than "
                               f"{MAX_JSON_BYTES} bytes")
    try:
        doc = json.loads(z.read(info).decode("utf-8"),
                         parse_constant=lambda c: _raise(f"{doc_name} holds {c}"))
    except (ValueError, zipfile.BadZipFile, OSError, RecursionError, EOFError) as e:
        z.close()
        raise ModelFormatError(f"{path}: {doc_name} is unreadable ({_short(e)})") from None
    if not isinstance(doc, dict):
        z.close()
        raise ModelFormatError(f"{path}: {doc_name} is not a JSON object")
    return doc, z


def read_array(z: zipfile.ZipFile, name: str, shape: Shape, where: str) -> np.ndarray:
    """Read one float32 `.npy` entry, checking its size before reading a byte of data."""
    try:
        info = z.getinfo(name)
    except KeyError:
        raise ModelFormatError(f"{where}: {name} is missing from the file") from None
    expected = 4 * prod(shape)
    # Stored entries only: their size is bounded by the file's, so nothing can inflate.
    if info.compress_type != zipfile.ZIP_STORED or not (
            expected < info.file_size <= expected + 4096):
        raise ModelFormatError(f"{where}: {name} has {info.file_size} bytes, expected a "
                               f"stored .npy of {expected} data bytes")
    try:
        with z.open(info) as f:
            arr = np.lib.format.read_array(io.BytesIO(f.read()), allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise ModelFormatError(f"{where}: {name} is unreadable ({_short(e)})") from None
    if arr.dtype != np.dtype("<f4") or arr.shape != tuple(shape):
        raise ModelFormatError(f"{where}: {name} is {arr.dtype} {arr.shape}, "
                               f"expected float32 {tuple(shape)}")
    return arr.astype(np.float32, copy=False)


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
    if version != FORMAT_VERSION:
        raise ModelFormatError(f"format version {version!r} is not supported; this distill "
                               f"reads version {FORMAT_VERSION}")
    name = _field(doc, "name", str, "model")
    inp = _field(doc, "input", dict, "model")
    _check_shape(inp.get("shape"), "model input")
    nodes_doc = _field(doc, "nodes", list, "model")
    outputs = _field(doc, "outputs", list, "model")
    labels = doc.get("labels")
    if labels is not None and not isinstance(labels, list):
        raise ModelFormatError("'labels' must be a list or null")
    metadata = doc.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ModelFormatError("'metadata' must be an object")
    nodes = []
    for i, nd in enumerate(nodes_doc):
        if not isinstance(nd, dict):
            raise ModelFormatError(f"node #{i} is not an object")
        node_name = _field(nd, "name", str, f"node #{i}")
        where = f"node {node_name!r}"
        op_name = _field(nd, "op", str, where)
        _opdef(op_name, node_name)
        weights_doc = _field(nd, "weights", dict, where)
        attrs = _field(nd, "attrs", dict, where)
        inputs = _field(nd, "inputs", list, where)
        in_shape, out_shape = nd.get("input_shape"), nd.get("output_shape")
        _check_shape(in_shape, f"{where} input_shape")
        _check_shape(out_shape, f"{where} output_shape")
        weights = {}
        for key, spec in weights_doc.items():
            if not isinstance(spec, dict):
                raise ModelFormatError(f"{where}: weight {key!r} is not described by an object")
            shape = spec.get("shape")
            _check_shape(shape, f"{where} weight {key!r}")
            if spec.get("dtype") != "float32":
                raise ModelFormatError(f"{where}: weight {key!r} must be float32")
            weights[key] = read_array(z, f"weights/{node_name}/{key}.npy", tuple(shape),
                                      f"{where} weight {key!r}")
        nodes.append(Node(node_name, op_name, attrs, weights, tuple(inputs), tuple(in_shape),
                          tuple(out_shape)))
    model = Model(name, tuple(inp["shape"]), tuple(nodes), tuple(outputs),
                  tuple(labels) if labels is not None else None, metadata,
                  inp.get("dtype", "float32"))
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
    return str(e).splitlines()[0][:120] if str(e) else type(e).__name__
