"""Exporters: an IR model in, standalone source with the weights baked in out.

Where it sits: after the IR, before `verify`. The rule, as in m2cgen: code generators know
nothing about the model. This module turns an `ir.Model` into a language-neutral *context*
(sizes, a buffer plan, weights, golden vectors) and each text language renders that context with
its own templates in `templates/<lang>/`:

    target.toml        files to write, identifier style, reserved words, build/run commands
    *.j2               the files; `ops/<op>.j2` holds one op's code (one per IR op)

ONNX is not text; `codegen.onnx` builds it with `onnx.helper`. Adding a language is one folder
under `templates/`; adding an op is one `ops/<op>.j2` per language plus a lowering for ONNX.

Weights are written as source literals (`weights="literal"`: shortest round-trip decimals,
readable and diffable) or as raw bits (`weights="blob"`): C gets each array as 32-bit words in
a union with a float array, Go a little-endian `NAME.weights` file read through `//go:embed`
(a target opts in with `blob_file` in its target.toml). Both are bit-exact. Blobs take fewer
bytes per parameter (C 12.6 instead of 15, Go 4 instead of 13.4), and a Go blob builds in a
fraction of a second where a million literals take ten. The default, `weights="auto"`, is
literals up to AUTO_BLOB_PARAMETERS parameters and a blob above.

The buffer plan (`plan`): an op reads its inputs from `input` (or its part of a packed input,
`in0`, `in1`, ...) or workspace slots, and writes to a slot or its part of the output. Slots
are reused as soon as their value's last reader has run, elementwise ops write over an input
that nothing reads later, and `flatten`, `reshape` and `linear` move no data. So a chain needs
two activations at most and a graph what is live at once, known at export time, and emitted
code needs no allocation. A batch kernel (C's `NAME_predict_batch`) follows the same plan for
`batch_tile` samples side by side, each buffer that many times larger.
"""

from __future__ import annotations

import json
import keyword
import os
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, ir
from ..errors import DistillError
from ..ops import GATES
from .render import make_env, templates_dir
from .stream import Stream, step_model

# The documented agreement between emitted code and the reference, per output value:
# |emitted - reference| <= ABS_TOL + REL_TOL * |reference|. Differences come only from the
# order of accumulation and from the libm's exp/tanh.
ABS_TOL = 1e-5
REL_TOL = 1e-4

MARKER = ".distill-export"  # in every export directory; lets a re-export replace it safely
NO_DATA_OPS = ("flatten", "reshape", "linear")
WEIGHT_STORAGE = ("auto", "literal", "blob")
AUTO_BLOB_PARAMETERS = 100_000  # weights="auto": literals up to this many parameters


@dataclass(frozen=True)
class Target:
    lang: str
    folder: Path
    description: str
    files: tuple[tuple[str, str], ...]  # (template, output path pattern with {name})
    ident_style: str                    # "snake" or "camel"
    reserved: frozenset[str]
    name_suffix: str                    # added to a model name that is a reserved word
    build: tuple[str, ...]
    run: tuple[str, ...]
    blob_file: str | None = None        # where weights="blob" puts the raw weights, with {name}
    reserved_suffixes: tuple[str, ...] = ()  # name endings that are reserved too


def text_targets() -> dict[str, Target]:
    out = {}
    for folder in sorted(templates_dir().iterdir()):
        spec = folder / "target.toml"
        if spec.is_file():
            doc = tomllib.loads(spec.read_text())
            reserved = set(doc.get("reserved", []))
            if doc.get("python_keywords"):
                reserved |= set(keyword.kwlist) | set(keyword.softkwlist)
            if doc.get("python_stdlib"):  # a module named `pickle` would shadow numpy's import
                reserved |= set(sys.stdlib_module_names)
            out[folder.name] = Target(
                lang=folder.name, folder=folder, description=doc["description"],
                files=tuple((f["template"], f["output"]) for f in doc["files"]),
                ident_style=doc.get("ident_style", "snake"), reserved=frozenset(reserved),
                name_suffix=doc.get("name_suffix", "_model"),
                build=tuple(doc.get("build", [])), run=tuple(doc.get("run", [])),
                blob_file=doc.get("blob_file"),
                reserved_suffixes=tuple(doc.get("reserved_suffixes", [])))
    return out


def languages() -> list[str]:
    return [*text_targets(), "onnx"]


def unsupported(model: ir.Model, langs: Sequence[str]) -> list[str]:
    """Every (language, node, op) this export cannot handle, as lines; empty when all is well."""
    problems = []
    for lang in langs:
        if lang == "onnx":
            from .onnx import LOWERINGS
            have = set(LOWERINGS)
        else:
            have = {p.stem for p in (text_targets()[lang].folder / "ops").glob("*.j2")}
        problems += [f"{lang}: node {n.name!r} uses op {n.op!r}, which has no {lang} template"
                     for n in model.nodes if n.op not in have and n.op not in NO_DATA_OPS]
    return problems


# ------------------------------------------------------------------------------------ context

def export_name(model: ir.Model, target: Target, name: str | None) -> str:
    base = ir.sanitize_name(name) if name else model.name
    taken = base in target.reserved or base.endswith(target.reserved_suffixes)
    return base + target.name_suffix if taken else base


# Ops whose every output value is a function of the input value at its own index, with no
# weights: the rows a target holds its values in stay as they are.
ELEMENTWISE_OPS = frozenset({"sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu",
                             "gelu_tanh", "silu", "softplus", "softsign", "hard_sigmoid",
                             "exponential", "clipped_relu"})
# Ops that may write their result over their first input: each output value depends only on
# the input values at its own index (merges: at its index in every input), or, for softmax, on
# values its row has already read.
IN_PLACE_OPS = ELEMENTWISE_OPS | {"normalize", "softmax", "add", "subtract", "multiply",
                                  "average", "maximum", "minimum", "prelu", "layer_norm"}


def plan(model: ir.Model) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The steps that compute the model, and the buffers they use.

    Every value lives in a buffer: `input` (or `in0`, `in1`, ... for several inputs, each a
    part of the packed input), `output` (`out0`, ...), or a workspace slot `ws0`, `ws1`, ...
    Slots are reused by liveness: a value's slot is free again after its last reader, an op
    of IN_PLACE_OPS writes over its first input when that is read by no one later, and ops
    that move no data (NO_DATA_OPS) share their input's buffer. A value the model outputs is
    written straight into its part of the output; one that is an input, or output twice, is
    copied there at the end. A chain uses two slots, as ws0, ws1, ws0, ...

    Each buffer: {"kind": "input" | "output" | "workspace", "offset": floats from the start
    of the packed input, output or workspace, "size": floats}.
    """
    root = {name: name for name in model.input_names}  # value -> the value whose data it is
    size = {name: prod(shape) for name, shape in model.inputs}
    last: dict[str, int] = {}
    for i, node in enumerate(model.nodes):
        for src in node.inputs:
            last[root[src]] = i
        root[node.name] = root[node.inputs[0]] if node.op in NO_DATA_OPS else node.name
        size[node.name] = prod(node.output_shape)
    end = len(model.nodes)
    for out in model.outputs:
        last[root[out]] = end
    buffers: dict[str, dict[str, Any]] = {}
    where: dict[str, str] = {}  # root value -> buffer name

    def add(name: str, kind: str, offset: int, floats: int) -> str:
        buffers[name] = {"kind": kind, "offset": offset, "size": floats}
        return name
    offset = 0
    for k, (name, shape) in enumerate(model.inputs):
        where[name] = add("input" if len(model.inputs) == 1 else f"in{k}", "input", offset,
                          prod(shape))
        offset += prod(shape)
    out_of: dict[str, str] = {}  # root value -> the output buffer it is computed into
    copies, offset = [], 0
    for k, out in enumerate(model.outputs):
        name = add("output" if len(model.outputs) == 1 else f"out{k}", "output", offset,
                   size[out])
        offset += size[out]
        r = root[out]
        if r in model.input_names or r in out_of:
            copies.append((r, name))
        else:
            out_of[r] = name
    slots: list[dict[str, Any]] = []  # {"name", "size", "holds": root value or None}
    steps: list[dict[str, Any]] = []
    for i, node in enumerate(model.nodes):
        if node.op in NO_DATA_OPS:
            continue
        srcs = [where[root[src]] for src in node.inputs]
        first = root[node.inputs[0]]
        owned = srcs[0].startswith("ws") and last[first] == i
        if node.name in out_of:
            dst = out_of[node.name]
        elif node.op in IN_PLACE_OPS and owned:
            dst = srcs[0]
        else:
            free = [s for s in slots if s["holds"] is None or last[s["holds"]] < i]
            fits = [s for s in free if s["size"] >= size[node.name]]
            slot = (min(fits, key=lambda s: s["size"]) if fits else
                    max(free, key=lambda s: s["size"]) if free else None)
            if slot is None:
                slot = {"name": f"ws{len(slots)}", "size": 0, "holds": None}
                slots.append(slot)
            dst = slot["name"]
        for slot in slots:
            if slot["name"] == dst:
                slot["holds"] = node.name
                slot["size"] = max(slot["size"], size[node.name])
        where[node.name] = dst
        steps.append({"op": node.op, "node": node, "srcs": srcs, "src": srcs[0], "dst": dst,
                      "size": size[node.name], "owned": owned,
                      "reads": [root[src] for src in node.inputs], "writes": node.name})
    for r, name in copies:
        steps.append({"op": "copy", "node": None, "srcs": [where[r]], "src": where[r],
                      "dst": name, "size": size[r], "owned": False, "reads": [r],
                      "writes": r})
    offset = 0
    for slot in slots:
        add(slot["name"], "workspace", offset, slot["size"])
        offset += slot["size"]
    return steps, buffers


def workspace_floats(model: ir.Model) -> int:
    """The floats of workspace one prediction needs in emitted C and Go."""
    return sum(b["size"] for b in plan(model)[1].values() if b["kind"] == "workspace")


# A batch kernel runs this many samples side by side (vector lanes over samples); its scratch
# memory is tile * (input + output + workspace) floats, kept to 128 KiB where a tile of 4 allows.
BATCH_TILES = (16, 8, 4)
BATCH_WORKSPACE_FLOATS = 32768


def batch_tile(floats_per_sample: int) -> int:
    """Samples per batch tile for a model needing `floats_per_sample` floats of scratch each."""
    fits = [t for t in BATCH_TILES if t * floats_per_sample <= BATCH_WORKSPACE_FLOATS]
    return fits[0] if fits else BATCH_TILES[-1]


WINDOWED = ("conv", "conv_transpose", "max_pool", "avg_pool", "zero_pad", "crop", "upsample")


def _window_figures(node: ir.Node) -> dict[str, Any]:
    """A windowed op's sizes as if it were 2-D (a 1-D one has height 1), for the templates."""
    from ..ops import transposed_full, window_counts, window_index
    a, shape = node.attrs, node.input_shape
    rank = len(shape) - 1
    lift = (lambda v: [1, *v]) if rank == 1 else (lambda v: list(v))
    pads = list(a["pads"] if "pads" in a else a.get("crops", [0] * (2 * rank)))
    window = list(node.weights["kernel"].shape[:-2]) if "kernel" in node.weights else \
        list(a.get("pool", [1] * rank))
    fig = {"C": shape[-1], "PT": pads[0] if rank == 2 else 0, "PL": pads[rank - 1],
           "PB": pads[2] if rank == 2 else 0, "PR": pads[-1]}
    for (h, w), values in ((("H", "W"), shape[:-1]), (("OH", "OW"), node.output_shape[:-1]),
                           (("KH", "KW"), window),
                           (("SH", "SW"), a.get("strides", a.get("size", [1] * rank))),
                           (("DH", "DW"), a.get("dilation", [1] * rank))):
        fig[h], fig[w] = lift(values)
    # (before, after) per axis of a batch, as np.pad takes them
    fig["pad_widths"] = [[0, 0], *([p, q] for p, q in zip(pads[:rank], pads[rank:])), [0, 0]]
    if node.op == "conv":
        fig["F"] = node.output_shape[-1]
        fig["G"] = a["groups"]
        fig["CG"] = shape[-1] // a["groups"]
        fig["FG"] = fig["F"] // a["groups"]
        # C's tile for one sample: P output positions by J slices of the group's filters,
        # its P * FG sums in a local array (and two P-long index arrays) on the stack
        fig["J"] = 2 if fig["FG"] % 16 == 0 else 1
        fig["P"] = 12 // fig["J"]
        fig["tile_bytes"] = 4 * fig["P"] * fig["FG"] + 16 * fig["P"]
    fig["rank"] = rank
    if node.op == "upsample" and a.get("interpolation") == "linear":
        from ..ops import lerp_table
        # each output row's and column's two neighbours and the second one's weight
        (fig["y0"], fig["y1"], fig["fy"]), (fig["x0"], fig["x1"], fig["fx"]) = (
            lerp_table(n, k) for n, k in zip(lift(shape[:-1]), lift(a["size"])))
    if node.op == "conv_transpose":
        fig["F"] = node.output_shape[-1]
        full = transposed_full(shape, a, node.weights)
        # where each input position's window offsets land in the full (uncut) output, and
        # that output's shape with the output padding after, for languages that scatter
        fig["window_index"] = window_index((*full, fig["F"]), window, {
            **a, "pads": [0] * (2 * rank)}).astype(np.int32)
        extra = a.get("output_padding", [0] * rank)
        fig["full"], fig["full_size"] = list(full), prod(full)
        fig["extra_widths"] = [[0, 0], *([0, e] for e in extra), [0, 0]] if any(extra) else None
        fig["cut"] = [[p, p + o] for p, o in zip(pads[:rank], node.output_shape[:-1])]
    if node.op in ("conv", "max_pool", "avg_pool"):
        # which padded-input positions each output reads, for languages that gather (NumPy)
        fig["window_index"] = window_index(shape, window, a).astype(np.int32)
    if node.op == "avg_pool":  # the number each window's sum is divided by
        fig["counts"] = window_counts(shape, window, a)
    return fig


def _root(model: ir.Model, value: str) -> str:
    """The value whose data `value` is: itself, or for an op that moves no data its input's."""
    while value not in model.input_names and model.node(value).op in NO_DATA_OPS:
        value = model.node(value).inputs[0]
    return value


def _named(buffers: dict[str, dict[str, Any]], kind: str) -> list[str]:
    return [name for name, b in buffers.items() if b["kind"] == kind]


def _idents(model: ir.Model, target: Target, prefix: str) -> dict[tuple[str, str], str]:
    from .render import camel
    taken, out = set(target.reserved), {}
    for node in model.nodes:
        for key in sorted(node.weights):
            base = f"{node.name}_{key}"
            ident = camel(base) if target.ident_style == "camel" else f"{prefix}_{base}"
            unique, i = ident, 2
            while unique in taken:
                unique, i = f"{ident}{i}", i + 1
            taken.add(unique)
            out[node.name, key] = unique
    return out


# Golden vectors are generated, held and printed as text in every self-test: a model file of a
# few hundred bytes may declare an input of 2**28 values, so their count is bounded first.
MAX_GOLDEN_VALUES = 1 << 22


def golden_budget(model: ir.Model, samples: int) -> None:
    """Raise DistillError unless `samples` golden vectors (inputs and outputs) fit in
    MAX_GOLDEN_VALUES values, saying how many would."""
    if samples < 0:
        raise DistillError(f"the number of golden vectors must be 0 or more, got {samples}")
    per_sample = prod(model.input_shape) + prod(model.output_shape)
    if samples * per_sample > MAX_GOLDEN_VALUES:
        most = MAX_GOLDEN_VALUES // per_sample
        hint = f"; --samples {most} or fewer fit" if most else ""
        raise DistillError(f"model {model.name!r} takes {prod(model.input_shape):,} and gives "
                           f"{prod(model.output_shape):,} values per sample: {samples} golden "
                           f"vectors would exceed {MAX_GOLDEN_VALUES:,} values{hint}")


def golden_samples(model: ir.Model, count: int, seed: int = 0) -> np.ndarray:
    """Inputs for self-tests: saved samples first, then seeded random ones in the training
    range (or N(0, 1) when the model does not record one); `count` within golden_budget."""
    golden_budget(model, count)
    shape = tuple(model.input_shape)
    saved = np.asarray(model.metadata.get("samples", []), dtype=np.float32)
    saved = saved.reshape(-1, *shape)[:count] if saved.size else np.zeros((0, *shape),
                                                                          np.float32)
    rng = np.random.default_rng(seed)
    lo_hi = model.metadata.get("input_range")
    n = count - len(saved)
    if lo_hi:
        lo = np.asarray(lo_hi[0], np.float32).reshape(shape)
        hi = np.asarray(lo_hi[1], np.float32).reshape(shape)
        extra = rng.uniform(lo, hi, (n, *shape))
    else:
        extra = rng.normal(size=(n, *shape))
    if n > 0 and not len(saved):
        extra[0] = 0  # an all-zero input is an edge case worth keeping
    return np.concatenate([saved, extra.astype(np.float32)])


def _steps(model: ir.Model, steps: list[dict[str, Any]], idents: dict[tuple[str, str], str],
           arrays: list[dict[str, Any]], by_array: dict[Any, dict[str, Any]]) -> list[dict]:
    """The plan's steps as templates see them: buffers, shapes, each op's figures, and its
    weights, each array added to `arrays` the first time it is met (`by_array`)."""
    # Where a value is read from after the step that writes it: languages that hold values in
    # variables (NumPy) keep a value in one of its own when a later step reads it other than
    # straight after it is written, or when the model outputs it.
    later_reads: dict[str, list[int]] = {}
    for i, st in enumerate(steps):
        for k, r in enumerate(st["reads"]):
            later_reads.setdefault(r, []).append(i if k == 0 else -1)
    outputs = {_root(model, out) for out in model.outputs}
    value_size = {name: prod(shape) for name, shape in model.inputs}
    value_size.update((st["writes"], st["size"]) for st in steps)
    ctx_steps = []
    for i, s in enumerate(steps):
        node = s["node"]
        follows = i > 0 and s["reads"][0] == steps[i - 1]["writes"]
        step = {"op": s["op"], "src": s["src"], "srcs": s["srcs"], "dst": s["dst"],
                "size": s["size"], "owned": s["owned"], "reads": s["reads"],
                "writes": s["writes"], "follows": follows,
                "read_sizes": [value_size[r] for r in s["reads"]],
                "kept": any(j != i + 1 for j in later_reads.get(s["writes"], []))
                or (s["writes"] in outputs and (len(model.outputs) > 1 or len(model.inputs) > 1
                                                or i != len(steps) - 1)),
                "name": node.name if node else "copy", "attrs": dict(node.attrs) if node else {},
                "in_shape": list(node.input_shape if node else [s["size"]]),
                "in_shapes": [list(sh) for sh in node.input_shapes] if node else [[s["size"]]],
                "out_shape": list(node.output_shape if node else [s["size"]]),
                "weights": {}}
        if node is not None:
            for key, arr in sorted(node.weights.items()):
                broadcast = node.op in ("normalize", "prelu")  # one value per input value
                # a shared array is emitted once, or once per input shape it is broadcast to
                shared = (id(arr), tuple(node.input_shape) if broadcast else None)
                if shared not in by_array:
                    values = np.broadcast_to(arr, node.input_shape) if broadcast else arr
                    by_array[shared] = {"ident": idents[node.name, key],
                                        "values": np.ascontiguousarray(values, np.float32),
                                        "size": int(values.size)}
                    arrays.append(by_array[shared])
                step["weights"][key] = by_array[shared]
            if node.op == "dense":
                step["inputs"] = node.input_shape[-1]
                step["units"] = node.output_shape[-1]
                step["rows"] = prod(node.input_shape[:-1])
                step["has_bias"] = "bias" in node.weights
            if node.op == "softmax":
                axis = node.attrs.get("axis", len(node.output_shape) - 1)
                step["rows"] = prod(node.output_shape[:axis])
                step["width"] = node.output_shape[axis]
                step["inner"] = prod(node.output_shape[axis + 1:])
            if node.op in WINDOWED:
                step.update(_window_figures(node))
            if node.op == "reverse":  # `steps` rows of `row` values, last to first
                step.update(steps=node.input_shape[0], row=prod(node.input_shape[1:]))
            if node.op == "transpose":  # each output axis's size and its input stride
                strides = [prod(node.input_shape[k + 1:]) for k in range(len(node.input_shape))]
                step["axes"] = [(node.output_shape[k], prod(node.output_shape[k + 1:]),
                                 strides[p]) for k, p in enumerate(node.attrs["perm"])]
            if node.op == "embedding":  # ids, each a row of D of a table of V
                step.update(ids=prod(node.input_shape), V=node.weights["embeddings"].shape[0],
                            D=node.weights["embeddings"].shape[1])
            if node.op in GATES:  # steps T of F features, U units, G gates
                a = node.attrs
                step.update(T=node.input_shape[0], F=node.input_shape[1],
                            U=node.weights["recurrent_kernel"].shape[0], G=GATES[node.op],
                            act=a.get("activation", "tanh"),
                            ract=a.get("recurrent_activation", "sigmoid"),
                            seq=a["return_sequences"], backwards=a.get("go_backwards", False),
                            reset_after=a.get("reset_after", False))
                step["acts"] = [step["act"]] + ([step["ract"]] if node.op != "simple_rnn" else [])
            if node.op in ("global_avg_pool", "global_max_pool"):
                step["positions"] = prod(node.input_shape[:-1])
                step["channels"] = node.input_shape[-1]
            if node.op == "layer_norm":
                step["rows"] = prod(node.output_shape[:node.attrs["axis"]])
                step["group"] = prod(node.output_shape[node.attrs["axis"]:])
            if node.op == "concatenate":
                axis = node.attrs["axis"]
                step["outer"] = prod(node.output_shape[:axis])
                step["chunks"] = [prod(sh[axis:]) for sh in node.input_shapes]
        ctx_steps.append(step)
    return ctx_steps


def _stream_context(stream: Stream, model: ir.Model, idents: dict[tuple[str, str], str],
                    arrays: list[dict[str, Any]], whole: list[dict]) -> dict[str, Any]:
    """What templates need for the streaming API (see `stream`): the plan of one step, with
    each recurrent step's `state` offset. A weight array that is the same as the whole
    sequence's is that one; one that differs (a normalize's values for one step) is added
    to `arrays` under the name the whole sequence's has, plus "_step"."""
    from .stream import figures
    steps, buffers = plan(stream.model)
    roots = [_root(stream.model, out) for out in stream.model.outputs]
    known = {(st["name"], key): w for st in whole for key, w in st["weights"].items()}
    mine: list[dict[str, Any]] = []
    added: list[dict[str, Any]] = []  # the arrays of its own (only normalize and prelu have any)
    ctx_steps = _steps(stream.model, steps, {k: f"{v}_step" for k, v in idents.items()}, mine,
                       {})
    for st in ctx_steps:
        for key, w in st["weights"].items():
            same = known.get((st["name"], key))
            if same is not None and np.array_equal(same["values"], w["values"]):
                st["weights"][key] = same
            elif not any(w is a for a in arrays):
                arrays.append(w)
                added.append(w)
        if st["name"] in stream.state:
            st["state"] = stream.state[st["name"]]
    for st in whole:  # a dense on a sequence, in a language whose matmul rounds by its rows
        if st["op"] == "dense" and st["name"] in stream.sequences:  # (NumPy): a step at a time
            st["per_step"] = model.input_shape[0]
    return {"steps": ctx_steps, "buffers": buffers, "state_size": stream.state_size,
            "weights": added,
            "workspace": sum(b["size"] for b in buffers.values() if b["kind"] == "workspace"),
            "input_size": prod(stream.model.input_shape),
            "output_size": prod(stream.model.output_shape),
            "steps_trained": model.input_shape[0],
            "input_shape": list(stream.model.input_shape[1:]),  # one step's, no time axis
            "output_shape": list(stream.model.output_shape),
            "inputs_kept": any(r in stream.model.input_names for k, st in enumerate(steps)
                               for j, r in enumerate(st["reads"]) if k or j)
            or bool(set(roots) & set(stream.model.input_names)),
            "roots": roots,
            "outputs": figures(stream, model)}


def context(model: ir.Model, target: Target, name: str | None = None,
            samples: int = 16, weights: str = "auto") -> dict[str, Any]:
    """Everything a template may use. Templates see no IR objects, only these values."""
    weights = storage(model, weights)
    prefix = export_name(model, target, name)
    idents = _idents(model, target, prefix)
    steps, buffers = plan(model)
    figures = ir.stats(model)
    x = golden_samples(model, samples)
    with np.errstate(all="ignore"):
        y = ir.run(model, x).reshape(len(x), prod(model.output_shape))
    finite = np.isfinite(y).all(axis=1)  # an overflowing sample proves nothing; drop it
    x, y = x[finite], y[finite]
    if not len(x):
        raise DistillError(f"model {model.name!r} overflows on every self-test input")
    labels = list(model.labels) if model.labels else []
    arrays: list[dict[str, Any]] = []
    ctx_steps = _steps(model, steps, idents, arrays, {})
    stream = step_model(model)
    streaming = _stream_context(stream, model, idents, arrays, ctx_steps) \
        if isinstance(stream, Stream) else None
    offset = 0
    for w in arrays:  # where each array starts in a weights blob, in floats
        w["offset"] = offset
        offset += w["size"]
    workspace = sum(b["size"] for b in buffers.values() if b["kind"] == "workspace")
    # whether a model input is read by any step but the first, or output
    inputs_kept = any(r in model.input_names for k, st in enumerate(steps)
                      for j, r in enumerate(st["reads"]) if k or j) or bool(
                          {_root(model, out) for out in model.outputs} & set(model.input_names))
    blob = weights == "blob" and target.blob_file is not None
    return {
        "name": prefix,
        "model_name": model.name,
        "hash": ir.model_hash(model),
        "version": __version__,
        "input_shape": list(model.input_shape),
        "output_shape": list(model.output_shape),
        "inputs": [{"name": n, "buffer": b, "shape": list(model.input_shapes[k]),
                    "offset": buffers[b]["offset"], "size": buffers[b]["size"]}
                   for k, (n, b) in enumerate(zip(model.input_names, _named(buffers, "input")))],
        "outputs": [{"name": n, "buffer": b, "shape": list(model.output_shapes[k]),
                     "offset": buffers[b]["offset"], "size": buffers[b]["size"]}
                    for k, (n, b) in enumerate(zip(model.outputs, _named(buffers, "output")))],
        "buffers": buffers,
        "inputs_kept": inputs_kept,
        "roots": [_root(model, out) for out in model.outputs],
        "input_size": prod(model.input_shape),
        "keeps_rows": sorted(ELEMENTWISE_OPS | set(NO_DATA_OPS)),
        "output_size": prod(model.output_shape),
        "labels": labels,
        "classifier": bool(labels),
        "binary": len(labels) == 2 and prod(model.output_shape) == 1,
        "parameters": figures["parameters"],
        "flash_bytes": figures["weight_bytes"],
        "macs": figures["macs"],
        "workspace": workspace,
        "batch_tile": batch_tile(prod(model.input_shape) + prod(model.output_shape) + workspace),
        "ram_bytes": 4 * workspace,
        "tile_bytes": max((st["tile_bytes"] for st in ctx_steps if "tile_bytes" in st),
                          default=0),
        "steps": ctx_steps,
        "stream": streaming,
        "weights": arrays,
        "weight_storage": weights,
        "blob_file": target.blob_file.format(name=prefix) if blob else None,
        "abs_tol": ABS_TOL,
        "rel_tol": REL_TOL,
        "samples": {"count": len(x), "inputs": x, "outputs": y.astype(np.float32)},
    }


# ------------------------------------------------------------------------------------ writing

def _check_storage(weights: str) -> None:
    if weights not in WEIGHT_STORAGE:
        raise DistillError(f"unknown weight storage {weights!r}; expected "
                           f"{' or '.join(WEIGHT_STORAGE)}")


def storage(model: ir.Model, weights: str = "auto") -> str:
    """"literal" or "blob": `weights`, with "auto" resolved by the model's size."""
    _check_storage(weights)
    if weights != "auto":
        return weights
    return "blob" if ir.stats(model)["parameters"] > AUTO_BLOB_PARAMETERS else "literal"


def render(model: ir.Model, lang: str, name: str | None = None,
           samples: int = 16, weights: str = "auto") -> dict[str, bytes]:
    """The files of one export as {relative path: bytes}, without touching the disk.

    `weights`: "literal" (source literals), "blob" (raw bits) or "auto" (literals for models
    up to AUTO_BLOB_PARAMETERS parameters); see the module docstring.
    """
    _check_storage(weights)
    if lang == "onnx":
        from .onnx import to_onnx
        base = ir.sanitize_name(name) if name else model.name
        return {f"{base}.onnx": to_onnx(model, base).SerializeToString()}
    targets = text_targets()
    if lang not in targets:
        raise DistillError(f"unknown language {lang!r}; expected one of "
                           f"{', '.join(languages())}, or all")
    target = targets[lang]
    ctx = context(model, target, name, samples, weights)
    env = make_env(target.folder)
    files = {}
    for template, pattern in target.files:
        text = env.get_template(template).render(m=ctx)
        files[pattern.format(name=ctx["name"])] = text.encode("utf-8")
    if ctx["blob_file"]:
        files[ctx["blob_file"]] = b"".join(
            np.ascontiguousarray(w["values"], dtype="<f4").tobytes() for w in ctx["weights"])
    return files


def export(model: ir.Model, langs: Sequence[str], out_dir: str | os.PathLike,
           name: str | None = None, samples: int = 16, weights: str = "auto") -> list[Path]:
    """Write the exports of `model` into `out_dir` (one language: its files directly there;
    several: a subfolder each). All or nothing: the folder is replaced in one step.
    `weights`: "auto", "literal" or "blob", as for `render`.
    """
    _check_storage(weights)
    problems = unsupported(model, langs)
    if problems:
        raise DistillError("cannot export: " + "; ".join(problems))
    files: dict[str, bytes] = {}
    for lang in langs:
        for rel, data in render(model, lang, name, samples, weights).items():
            files[rel if len(langs) == 1 else f"{lang}/{rel}"] = data
    files[MARKER] = (json.dumps({"model": model.name, "hash": ir.model_hash(model),
                                 "languages": list(langs), "files": sorted(files)},
                                indent=1) + "\n").encode()
    replace_dir(Path(out_dir), files)
    return [Path(out_dir) / rel for rel in sorted(files) if rel != MARKER]


def replace_dir(out: Path, files: dict[str, bytes]) -> None:
    """Make `out` hold exactly `files`, atomically: readers see the old folder or the new one.

    An existing folder is only replaced if it is empty or an earlier export that holds nothing
    else (its MARKER lists what it wrote; build products beside the sources are allowed), so a
    mistyped `-o` never deletes a user's files. A symbolic link is followed: the folder it
    points to is replaced and the link kept. Missing parent folders are created.
    """
    out = Path(out)
    if out.is_symlink():
        out = Path(os.path.realpath(out))
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise DistillError(f"{out}: is the current directory (or holds it), and an export "
                           "replaces its folder as a whole; name a new subfolder, such as "
                           "-o ./export")
    if out.exists():
        if not out.is_dir():
            raise DistillError(f"{out}: exists and is not a directory")
        if any(out.iterdir()):
            _check_earlier_export(out)
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    ir.remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=ir.temporary_prefix(out), dir=parent))
    try:
        for rel, data in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        os.chmod(tmp, 0o755)
        if out.exists():
            _exchange(tmp, out)  # tmp now holds the old export
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# What building an export leaves beside its sources: compiled objects, Python's caches, and an
# executable named after a source (`cc -o digits_test digits_test.c`).
_BUILD_PRODUCTS = (".o", ".obj", ".pyc", ".exe", ".out", ".test")
_TOOL_LEFTOVERS = ("__pycache__", ".pytest_cache", ".DS_Store")  # and *.dSYM debug folders


def _check_earlier_export(out: Path) -> None:
    """Refuse to replace a folder that is not an earlier export holding only what it wrote."""
    marker = out / MARKER
    if not marker.is_file() or marker.is_symlink():
        raise DistillError(f"{out}: exists and was not written by distill export; choose "
                           "a new or empty directory")
    try:
        listed = json.loads(marker.read_text(encoding="utf-8"))["files"]
        listed = {str(f) for f in listed} | {MARKER}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise DistillError(f"{out}: its {MARKER} is damaged, so what it holds is unknown; "
                           "choose a new or empty directory") from None
    stems = {Path(f).with_suffix("").as_posix() for f in listed}
    foreign = []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        if rel in listed or path.suffix in _BUILD_PRODUCTS or (rel in stems and path.is_file()) \
                or any(p in _TOOL_LEFTOVERS or p.endswith(".dSYM") for p in path.parts):
            continue
        foreign.append(rel)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                          else "")
        raise DistillError(f"{out}: an earlier export, but it now holds files that export did "
                           f"not write ({shown}); move them out or choose another directory")


def _exchange(a: Path, b: Path) -> None:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE); elsewhere, two
    renames with the old folder kept until the new one is in place."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
        AT_FDCWD, RENAME_EXCHANGE = -100, 2
        if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
            return
    except (OSError, AttributeError):
        pass
    old = b.with_name(f".{b.name}.old")
    os.rename(b, old)
    os.rename(a, b)
    os.rename(old, a)
