"""Tests for distill.ir: round trips for every op, determinism, the reference interpreter,
name sanitizing, validation, hostile `.distill` files, a mutation fuzzer and `stats`.

Tests marked `xfail(strict=True)` pin bugs that are known and not yet fixed; each reason says
where the bug is and how to fix it. Once it is fixed the test passes, the strict xfail turns
into a failure, and the marker should be removed.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import stat
import struct
import tracemalloc
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distill import ir, ops
from distill.errors import ModelFormatError

ALPHA = 0.1234567
NAME_RE = re.compile(r"[a-z][a-z0-9_]*\Z")


def randn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------------- models and helpers

Layers = list[tuple[str, str, dict, dict]]

# Every registered op, with the models that exercise it: (case id, input shape, layers(rng)).
# A newly registered op fails `test_every_registered_op_has_a_round_trip_case` until it is here.
OP_CASES: dict[str, list[tuple[str, tuple[int, ...], Callable[[Any], Layers]]]] = {
    "dense": [
        ("with_bias", (4,), lambda r: [
            ("Dense-1", "dense", {}, {"kernel": randn(r, 4, 3), "bias": randn(r, 3)})]),
        ("without_bias", (4,), lambda r: [("d", "dense", {}, {"kernel": randn(r, 4, 3)})]),
        ("on_last_axis", (2, 4), lambda r: [
            ("d", "dense", {}, {"kernel": randn(r, 4, 5), "bias": randn(r, 5)})]),
    ],
    "normalize": [
        ("per_feature", (4,), lambda r: [
            ("n", "normalize", {}, {"mean": randn(r, 4),
                                    "std": np.abs(randn(r, 4)) + np.float32(0.5)})]),
    ],
    "linear": [("plain", (3,), lambda r: [("a", "linear", {}, {})])],
    "sigmoid": [("plain", (3,), lambda r: [("a", "sigmoid", {}, {})])],
    "tanh": [("plain", (3,), lambda r: [("a", "tanh", {}, {})])],
    "relu": [("plain", (3,), lambda r: [("a", "relu", {}, {})])],
    "leaky_relu": [("alpha", (3,), lambda r: [("a", "leaky_relu", {"alpha": ALPHA}, {})])],
    "softmax": [("plain", (3,), lambda r: [("a", "softmax", {}, {})])],
    "flatten": [("from_3d", (2, 3, 2), lambda r: [("f", "flatten", {}, {})])],
    "reshape": [
        ("explicit", (6,), lambda r: [("r", "reshape", {"shape": [2, 3]}, {})]),
        ("inferred", (6,), lambda r: [("r", "reshape", {"shape": [3, -1]}, {})]),
    ],
    **{merge: [("two", {"a": (2, 3), "b": (2, 3)}, lambda r, m=merge: [
        ("m", m, {}, {}, ["a", "b"])])] for merge in ops.MERGES if merge != "concatenate"},
    "concatenate": [
        ("axis_0", {"a": (2, 3), "b": (1, 3)}, lambda r: [
            ("c", "concatenate", {"axis": 0}, {}, ["a", "b"])]),
        ("last_axis_three", {"a": (2, 3), "b": (2, 1), "c": (2, 2)}, lambda r: [
            ("c", "concatenate", {"axis": 1}, {}, ["a", "b", "c"])]),
    ],
}
_ACTIVATION_ATTRS = {"elu": {"alpha": ALPHA}, "clipped_relu": {
    "threshold": 0.25, "negative_slope": 0.1, "max_value": 6.0}}
for _op in ("elu", "selu", "gelu", "gelu_tanh", "silu", "softplus", "softsign", "hard_sigmoid",
            "exponential", "clipped_relu"):
    OP_CASES[_op] = [("plain", (2, 3), lambda r, o=_op: [("a", o, _ACTIVATION_ATTRS.get(o, {}),
                                                           {})])]
OP_CASES["clipped_relu"].append(("uncapped", (3,), lambda r: [
    ("a", "clipped_relu", {"threshold": -0.5, "negative_slope": 0.3}, {})]))
OP_CASES["prelu"] = [
    ("per_value", (2, 3), lambda r: [("p", "prelu", {}, {"alpha": randn(r, 2, 3)})]),
    ("shared_axis", (2, 3), lambda r: [("p", "prelu", {}, {"alpha": randn(r, 1, 3)})]),
]
OP_CASES["layer_norm"] = [
    ("last_axis", (2, 3), lambda r: [("n", "layer_norm", {"axis": 1, "epsilon": 1e-3},
                                      {"gamma": randn(r, 3), "beta": randn(r, 3)})]),
    ("all_axes_plain", (2, 3), lambda r: [("n", "layer_norm", {"axis": 0, "epsilon": 1e-5}, {})]),
]
OP_CASES["softmax"].append(("first_axis", (3, 2), lambda r: [("a", "softmax", {"axis": 0}, {})]))
OP_CASES["conv"] = [
    ("2d_groups_bias", (5, 4, 4), lambda r: [("c", "conv", {
        "strides": [2, 1], "pads": [1, 0, 1, 2], "groups": 2, "dilation": [1, 2]},
        {"kernel": randn(r, 3, 2, 2, 6), "bias": randn(r, 6)})]),
    ("1d_plain", (6, 2), lambda r: [("c", "conv", {"strides": [1], "pads": [0, 0],
                                                   "groups": 1}, {"kernel": randn(r, 3, 2, 3)})]),
]
OP_CASES["conv_transpose"] = [
    ("2d_all_options", (3, 4, 2), lambda r: [("t", "conv_transpose", {
        "strides": [2, 3], "pads": [1, 0, 0, 2], "dilation": [2, 1], "output_padding": [1, 2]},
        {"kernel": randn(r, 2, 3, 2, 3), "bias": randn(r, 3)})]),
    ("1d_plain", (4, 2), lambda r: [("t", "conv_transpose", {"strides": [1], "pads": [0, 0]},
                                     {"kernel": randn(r, 3, 2, 2)})]),
]
OP_CASES["transpose"] = [
    ("3d", (2, 3, 4), lambda r: [("t", "transpose", {"perm": [2, 0, 1]}, {})]),
    ("2d", (3, 2), lambda r: [("t", "transpose", {"perm": [1, 0]}, {})]),
]
OP_CASES["reverse"] = [("steps", (3, 2), lambda r: [("r", "reverse", {}, {})])]
OP_CASES["embedding"] = [("ids", (4,), lambda r: [("e", "embedding", {},
                                                   {"embeddings": randn(r, 3, 2)})])]
OP_CASES["simple_rnn"] = [("sequences", (4, 3), lambda r: [("s", "simple_rnn", {
    "return_sequences": True, "go_backwards": True, "activation": "relu"},
    {"kernel": randn(r, 3, 2), "recurrent_kernel": randn(r, 2, 2), "bias": randn(r, 2)})])]
OP_CASES["lstm"] = [("last", (4, 3), lambda r: [("s", "lstm", {"return_sequences": False}, {
    "kernel": randn(r, 3, 8), "recurrent_kernel": randn(r, 2, 8), "bias": randn(r, 8)})])]
OP_CASES["gru"] = [
    ("reset_after", (4, 3), lambda r: [("s", "gru", {
        "return_sequences": True, "reset_after": True},
        {"kernel": randn(r, 3, 6), "recurrent_kernel": randn(r, 2, 6), "bias": randn(r, 2, 6)})]),
    ("reset_before", (4, 3), lambda r: [("s", "gru", {
        "return_sequences": False, "reset_after": False, "recurrent_activation": "hard_sigmoid"},
        {"kernel": randn(r, 3, 6), "recurrent_kernel": randn(r, 2, 6)})]),
]
for _pool in ("max_pool", "avg_pool"):
    OP_CASES[_pool] = [("2d", (5, 4, 2), lambda r, p=_pool: [
        (p, p, {"pool": [2, 3], "strides": [2, 1], "pads": [0, 1, 1, 1]}, {})])]
OP_CASES["crop"] = [("2d", (5, 4, 2), lambda r: [("c", "crop", {"crops": [1, 0, 2, 1]}, {})])]
OP_CASES["upsample"] = [
    ("1d", (3, 2), lambda r: [("u", "upsample", {"size": [2]}, {})]),
    ("2d_linear", (3, 2, 2), lambda r: [("u", "upsample", {"size": [2, 3],
                                                           "interpolation": "linear"}, {})]),
]
OP_CASES["zero_pad"] = [("1d", (4, 2), lambda r: [("z", "zero_pad", {"pads": [2, 1]}, {})])]
OP_CASES["global_avg_pool"] = [("2d", (3, 2, 4), lambda r: [("g", "global_avg_pool", {}, {})])]
OP_CASES["global_max_pool"] = [("1d", (5, 2), lambda r: [("g", "global_max_pool", {}, {})])]
for _merge in ("add", "multiply", "average", "maximum", "minimum"):
    OP_CASES[_merge].append(("three_with_repeat", {"a": (3,), "b": (3,)}, lambda r, m=_merge: [
        ("m", m, {}, {}, ["a", "b", "a"])]))


def every_op_model(seed: int = 0) -> ir.Model:
    """One chain using every op, with labels and metadata."""
    r = np.random.default_rng(seed)
    layers = [
        ("Normalize", "normalize", {}, {"mean": randn(r, 6), "std": np.full(6, 2, np.float32)}),
        ("Dense-1", "dense", {}, {"kernel": randn(r, 6, 8), "bias": randn(r, 8)}),
        ("leaky", "leaky_relu", {"alpha": ALPHA}, {}),
        ("to_grid", "reshape", {"shape": [2, -1]}, {}),
        ("tanh", "tanh", {}, {}),
        ("flat", "flatten", {}, {}),
        ("relu", "relu", {}, {}),
        ("sig", "sigmoid", {}, {}),
        ("lin", "linear", {}, {}),
        ("Dense-1", "dense", {}, {"kernel": randn(r, 8, 3)}),  # sanitized to dense_1_2
        ("probs", "softmax", {}, {}),
    ]
    return ir.make_model("Every Op", (6,), layers, labels=["cat", "dög", "ünïcödé"],
                         metadata={"accuracy": 0.875, "epochs": 12, "notes": "line1\nline2",
                                   "nested": {"list": [1, 2.5, "x"], "none": None}})


def classifier(seed: int = 0, bias: bool = True) -> ir.Model:
    """The 4-8-3 dense/relu/dense/softmax model."""
    r = np.random.default_rng(seed)
    w1 = {"kernel": randn(r, 4, 8), **({"bias": randn(r, 8)} if bias else {})}
    w2 = {"kernel": randn(r, 8, 3), **({"bias": randn(r, 3)} if bias else {})}
    return ir.make_model("clf", (4,), [("d1", "dense", {}, w1), ("act", "relu", {}, {}),
                                       ("d2", "dense", {}, w2), ("probs", "softmax", {}, {})],
                         labels=["a", "b", "c"], metadata={"source": "test"})


def assert_same_model(a: ir.Model, b: ir.Model) -> None:
    """Field by field, weights bit for bit, attribute values with their types."""
    assert (a.name, a.input_shape, a.outputs, a.labels, a.input_dtype) == \
        (b.name, b.input_shape, b.outputs, b.labels, b.input_dtype)
    assert dict(a.metadata) == dict(b.metadata)
    assert [n.name for n in a.nodes] == [n.name for n in b.nodes]
    for na, nb in zip(a.nodes, b.nodes, strict=True):
        assert (na.op, na.inputs, na.input_shape, na.output_shape) == \
            (nb.op, nb.inputs, nb.input_shape, nb.output_shape), na.name
        assert dict(na.attrs) == dict(nb.attrs), na.name
        assert {k: type(v) for k, v in na.attrs.items()} == \
            {k: type(v) for k, v in nb.attrs.items()}, na.name
        assert sorted(na.weights) == sorted(nb.weights), na.name
        for key, wa in na.weights.items():
            wb = nb.weights[key]
            assert wb.dtype == np.float32 and wb.shape == wa.shape, (na.name, key)
            assert wb.tobytes() == wa.tobytes(), (na.name, key)


def rewrite(src: Path, dst: Path, *, doc: Callable[[dict], Any] | None = None,
            entries: Mapping[str, bytes | None] | None = None,
            deflate: Iterable[str] = ()) -> Path:
    """Copy the archive `src` to `dst` with edits, keeping entry order and valid CRCs.

    `doc` maps the parsed model.json to a new dict (dumped as JSON) or to raw str/bytes;
    `entries` replaces entries by name (None drops one; a new name is appended); entries named
    in `deflate` are written compressed.
    """
    entries, deflate = dict(entries or {}), set(deflate)
    with zipfile.ZipFile(src) as z:
        items = {i.filename: z.read(i.filename) for i in z.infolist()}
    if doc is not None:
        new = doc(json.loads(items["model.json"]))
        items["model.json"] = new if isinstance(new, (str, bytes)) else json.dumps(new)
    for name, data in entries.items():
        if data is None:
            items.pop(name, None)
        else:
            items[name] = data
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in items.items():
            info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            z.writestr(info, data)
    return dst


def edit_node(doc: dict, node_name: str, **changes: Any) -> dict:
    for node in doc["nodes"]:
        if node["name"] == node_name:
            node.update(changes)
            return doc
    raise AssertionError(f"no node {node_name!r} in model.json")


def npy(arr: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def npy_with_header(shape: tuple[int, ...], data: bytes) -> bytes:
    """A .npy whose header claims `shape` float32, followed by `data` (whatever its length)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def load_error(path: Path, match: str | None = None) -> str:
    """The message of the ModelFormatError that loading `path` raises; it must be one line."""
    with pytest.raises(ModelFormatError) as info:
        ir.load(path)
    message = str(info.value)
    assert message and "\n" not in message and "\r" not in message, message
    if match is not None:
        assert re.search(match, message), message
    return message


def loads_cleanly_or_rejects(path: Path) -> ir.Model | None:
    """What `load` promises for any file: a usable model, or a one-line ModelFormatError."""
    try:
        model = ir.load(path)
    except ModelFormatError as e:
        assert "\n" not in str(e), str(e)
        return None
    ir.validate(model)
    out = ir.run(model, np.zeros(model.input_shape, np.float32))
    assert out.shape == model.output_shape
    ir.stats(model)
    ir.model_hash(model)
    ir.save(model, path.with_name(path.name + ".again"))  # a loaded model can be saved again
    return model


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A saved every-op model."""
    path = tmp_path / "model.distill"
    ir.save(every_op_model(), path)
    return path


# --------------------------------------------------------------------------------- round trip

def test_every_registered_op_has_a_round_trip_case():
    assert set(OP_CASES) == set(ops.OPS)
    # the chain holds the first ops; merges and later ones have their round trips above
    assert {n.op for n in every_op_model().nodes} <= set(ops.OPS)


@pytest.mark.parametrize("op_name, case", [
    (op_name, case) for op_name, cases in OP_CASES.items() for case in cases
], ids=lambda v: v if isinstance(v, str) else v[0])
def test_round_trip_per_op(tmp_path, op_name, case):
    _, input_shape, layers = case
    built = layers(np.random.default_rng(1))
    model = ir.make_model(f"m_{op_name}", input_shape, built, metadata={"op": op_name})
    assert [n.op for n in model.nodes] == [op_name]
    path = tmp_path / "m.distill"
    ir.save(model, path)
    loaded = ir.load(path)
    assert_same_model(model, loaded)
    x = np.random.default_rng(2).standard_normal((5, *model.input_shape)).astype(np.float32)
    before, after = ir.run(model, x), ir.run(loaded, x)
    assert before.shape == after.shape == (5, *model.output_shape)
    assert before.tobytes() == after.tobytes()


def test_round_trip_every_op_model_with_labels_and_metadata(saved):
    model = every_op_model()
    loaded = ir.load(saved)
    assert_same_model(model, loaded)
    assert loaded.labels == ("cat", "dög", "ünïcödé")
    assert loaded.metadata["nested"] == {"list": [1, 2.5, "x"], "none": None}
    assert loaded.metadata["notes"] == "line1\nline2"
    assert [n.name for n in loaded.nodes] == [
        "normalize", "dense_1", "leaky", "to_grid", "tanh", "flat", "relu", "sig", "lin",
        "dense_1_2", "probs"]
    assert all(n.inputs == (prev,) for n, prev in
               zip(loaded.nodes, ["input"] + [n.name for n in loaded.nodes]))
    x = np.random.default_rng(3).standard_normal((7, 6)).astype(np.float32)
    assert ir.run(model, x).tobytes() == ir.run(loaded, x).tobytes()
    assert ir.run(model, x[0]).tobytes() == ir.run(loaded, x[0]).tobytes()


def test_leaky_relu_alpha_survives_bit_for_bit(saved):
    alpha = ir.load(saved).node("leaky").attrs["alpha"]
    assert type(alpha) is float and alpha == ALPHA
    assert struct.pack("<d", alpha) == struct.pack("<d", ALPHA)


def test_dense_without_bias_round_trips_without_a_bias(tmp_path):
    path = tmp_path / "m.distill"
    ir.save(classifier(bias=False), path)
    assert all(sorted(n.weights) == ["kernel"] for n in ir.load(path).nodes if n.op == "dense")
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["model.json", "weights/d1/kernel.npy",
                                        "weights/d2/kernel.npy"]


def test_archive_layout_is_a_stored_zip_without_pickle(saved):
    with zipfile.ZipFile(saved) as z:
        infos = z.infolist()
        assert infos[0].filename == "model.json"
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        doc = json.loads(z.read("model.json"))
        for node in doc["nodes"]:
            for key, spec in node["weights"].items():
                assert spec["file"] == f"weights/{node['name']}/{key}.npy"
                arr = np.load(io.BytesIO(z.read(spec["file"])), allow_pickle=False)
                assert arr.dtype == np.dtype("<f4") and list(arr.shape) == spec["shape"]
    assert doc["format"] == ir.FORMAT and doc["format_version"] == ir.FORMAT_VERSION


def test_save_replaces_an_existing_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "m.distill"
    path.write_bytes(b"old contents")
    ir.save(classifier(), path)
    assert_same_model(ir.load(path), classifier())
    assert [p.name for p in tmp_path.iterdir()] == ["m.distill"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_get_the_mode_a_new_file_would(tmp_path, umask):
    old = os.umask(umask)
    try:
        ir.save(classifier(), tmp_path / "m.distill")
        ir.atomic_write(tmp_path / "notes.txt", b"x")
    finally:
        os.umask(old)
    for name in ("m.distill", "notes.txt"):  # not mkstemp's 0600
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


# ------------------------------------------------------------------------------- determinism

def test_saving_twice_gives_identical_bytes(tmp_path):
    a, b, c = tmp_path / "a.distill", tmp_path / "b.distill", tmp_path / "c.distill"
    ir.save(every_op_model(), a)
    ir.save(every_op_model(), b)  # built afresh: no identity or dict-order leaks into the bytes
    ir.save(ir.load(a), c)        # and a loaded model saves to the same bytes again
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()


def test_saved_bytes_do_not_depend_on_the_platform(tmp_path, monkeypatch):
    ir.save(classifier(), tmp_path / "here.distill")
    monkeypatch.setattr(zipfile.sys, "platform", "win32")  # ZipInfo's create_system becomes 0
    ir.save(classifier(), tmp_path / "windows.distill")
    monkeypatch.undo()
    assert (tmp_path / "here.distill").read_bytes() == (tmp_path / "windows.distill").read_bytes()
    with zipfile.ZipFile(tmp_path / "here.distill") as z:
        assert {(i.create_system, i.external_attr >> 16) for i in z.infolist()} == {(3, 0o644)}


def test_model_hash_ignores_name_and_metadata_but_not_weights():
    model = classifier()
    renamed = dataclasses.replace(model, name="other_name", metadata={"anything": [1, 2]})
    ir.validate(renamed)
    assert ir.model_hash(renamed) == ir.model_hash(model) == ir.model_hash(classifier())
    assert re.fullmatch(r"[0-9a-f]{64}", ir.model_hash(model))

    for node in (n for n in model.nodes if n.weights):
        for key, arr in node.weights.items():
            flipped = arr.copy()
            flipped.reshape(-1).view(np.uint32)[-1] ^= 1  # lowest mantissa bit of one value
            assert not np.array_equal(flipped.view(np.uint32), arr.view(np.uint32))
            nodes = tuple(dataclasses.replace(n, weights={**n.weights, key: flipped})
                          if n is node else n for n in model.nodes)
            changed = dataclasses.replace(model, nodes=nodes)
            ir.validate(changed)
            assert ir.model_hash(changed) != ir.model_hash(model), (node.name, key)


def test_model_hash_sees_ops_and_attrs():
    def leaky(alpha: float) -> ir.Model:
        return ir.make_model("m", (3,), [("a", "leaky_relu", {"alpha": alpha}, {})])
    relu = ir.make_model("m", (3,), [("a", "relu", {}, {})])
    assert ir.model_hash(leaky(0.1)) == ir.model_hash(leaky(0.1))
    assert len({ir.model_hash(leaky(0.1)), ir.model_hash(leaky(0.2)), ir.model_hash(relu)}) == 3


def test_model_hash_survives_save_and_load(saved):
    assert ir.model_hash(ir.load(saved)) == ir.model_hash(every_op_model())


# ----------------------------------------------------------------------------------------- run

@pytest.mark.parametrize("model", [classifier(), every_op_model()], ids=["clf", "every_op"])
def test_single_sample_agrees_with_batch(model):
    x = np.random.default_rng(4).standard_normal((6, *model.input_shape)).astype(np.float32)
    batch = ir.run(model, x)
    assert batch.shape == (6, *model.output_shape) and batch.dtype == np.float32
    for i in range(6):
        one = ir.run(model, x[i])
        assert one.shape == model.output_shape
        np.testing.assert_allclose(one, batch[i], rtol=1e-6, atol=1e-7)


def test_single_sample_agrees_with_batch_for_a_multi_axis_input():
    model = ir.make_model("m", (2, 3), [("f", "flatten", {}, {}), ("d", "dense", {}, {
        "kernel": randn(np.random.default_rng(5), 6, 2)})])
    x = np.random.default_rng(6).standard_normal((4, 2, 3)).astype(np.float32)
    batch = ir.run(model, x)
    assert batch.shape == (4, 2)
    np.testing.assert_allclose(ir.run(model, x[1]), batch[1], rtol=1e-6, atol=1e-7)


def test_run_accepts_lists_and_float64():
    model = classifier()
    x = np.random.default_rng(7).standard_normal(4)
    expected = ir.run(model, x.astype(np.float32))
    assert ir.run(model, x).tobytes() == expected.tobytes()
    assert ir.run(model, x.tolist()).tobytes() == expected.tobytes()


@pytest.mark.parametrize("shape", [(5,), (3,), (2, 5), (2, 4, 1), (), (1, 1, 4)])
def test_run_rejects_wrong_shapes_naming_the_shape(shape):
    with pytest.raises(ValueError, match=re.escape(str(shape))) as info:
        ir.run(classifier(), np.zeros(shape, np.float32))
    assert "(4,)" in str(info.value)  # and it says what it takes


def test_dense_sigmoid_dense_softmax_by_hand():
    r = np.random.default_rng(8)
    k1, b1, k2, b2 = randn(r, 5, 4), randn(r, 4), randn(r, 4, 3), randn(r, 3)
    model = ir.make_model("m", (5,), [
        ("h", "dense", {}, {"kernel": k1, "bias": b1}), ("s", "sigmoid", {}, {}),
        ("o", "dense", {}, {"kernel": k2, "bias": b2}), ("p", "softmax", {}, {})])
    x = randn(r, 9, 5)
    x[0] *= 100  # saturated sigmoids must not overflow
    h = 1 / (1 + np.exp(-(x.astype(np.float64) @ k1 + b1)))
    z = h @ k2 + b2
    e = np.exp(z - z.max(axis=1, keepdims=True))
    expected = e / e.sum(axis=1, keepdims=True)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        got = ir.run(model, x)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1, rtol=1e-6)


def test_leaky_relu_by_hand():
    model = ir.make_model("m", (6,), [("a", "leaky_relu", {"alpha": ALPHA}, {})])
    x = np.array([-3.5, -1.0, -1e-30, 0.0, 0.25, 7.0], np.float32)
    # alpha is applied as a float32, as emitted code will
    expected = np.where(x > 0, x, x * np.float32(ALPHA))
    got = ir.run(model, x)
    assert got.dtype == np.float32
    assert got.tobytes() == expected.tobytes()
    assert got[0] == np.float32(-3.5) * np.float32(ALPHA) and got[5] == 7.0


def test_normalize_by_hand():
    mean = np.array([1.0, -2.0, 0.5], np.float32)
    std = np.array([2.0, 0.25, 3.0], np.float32)
    model = ir.make_model("m", (3,), [("n", "normalize", {}, {"mean": mean, "std": std})])
    x = np.array([[3.0, -2.0, 6.5], [1.0, -1.0, -2.5]], np.float32)
    np.testing.assert_array_equal(ir.run(model, x), [[1.0, 0.0, 2.0], [0.0, 4.0, -1.0]])


@pytest.mark.parametrize("op_name, ref", [
    ("linear", lambda x: x),
    ("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
    ("tanh", np.tanh),
    ("relu", lambda x: np.maximum(x, 0)),
    ("softmax", lambda x: np.exp(x - x.max(-1, keepdims=True))
     / np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)),
])
def test_elementwise_ops_by_hand(op_name, ref):
    model = ir.make_model("m", (5,), [("a", op_name, {}, {})])
    x = np.array([[-80.0, -1.5, 0.0, 0.5, 80.0], [1e3, -1e3, 3.0, 2.0, 1.0]], np.float32)
    with np.errstate(over="ignore"):
        expected = ref(x.astype(np.float64))
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        got = ir.run(model, x)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-30)


def test_reshape_and_flatten_are_row_major():
    model = ir.make_model("m", (6,), [("r", "reshape", {"shape": [3, -1]}, {}),
                                      ("f", "flatten", {}, {})])
    assert model.node("r").output_shape == (3, 2) and model.output_shape == (6,)
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    values = ir.run(model, x, intermediates=True)
    np.testing.assert_array_equal(values["r"], x.reshape(2, 3, 2))
    np.testing.assert_array_equal(values["f"], x)


def test_intermediates_hold_every_node():
    model = classifier()
    x = np.random.default_rng(9).standard_normal((3, 4)).astype(np.float32)
    values = ir.run(model, x, intermediates=True)
    assert list(values) == ["input", "d1", "act", "d2", "probs"]
    np.testing.assert_array_equal(values["input"], x)
    for node in model.nodes:
        assert values[node.name].shape == (3, *node.output_shape)
    np.testing.assert_array_equal(values["act"], np.maximum(values["d1"], 0))
    assert values["probs"].tobytes() == ir.run(model, x).tobytes()
    single = ir.run(model, x[0], intermediates=True)  # batched even for one sample
    assert single["d1"].shape == (1, 8)


# ------------------------------------------------------------------------------ sanitize_name

HOSTILE_NAMES = ["Dense-1", "int", "123", "", '"; system("rm -rf /"); //', "*/", "a\nb",
                 "ünïcödé", "x" * 10000, "input", "INPUT", " input ", "_", "__init__", "-1",
                 "/*", "a/../../b", "\x00", "😀", "func", "lambda", "type", 42, None, 3.5]


@pytest.mark.parametrize("raw", HOSTILE_NAMES, ids=lambda v: repr(v)[:20])
def test_sanitize_name_gives_a_safe_identifier(raw):
    name = ir.sanitize_name(raw)
    assert NAME_RE.match(name), name
    assert name != "input"
    assert len(name) <= 40
    assert ir.sanitize_name(raw) == name  # deterministic


@pytest.mark.parametrize("raw, expected", [
    ("Dense-1", "dense_1"), ("int", "int"), ("123", "n_123"), ("", "node"), ("a\nb", "a_b"),
    ('"; system("rm -rf /"); //', "system_rm_rf"), ("*/", "node"), ("ünïcödé", "n_c_d"),
    ("input", "input_2"), ("INPUT", "input_2"),
])
def test_sanitize_name_examples(raw, expected):
    assert ir.sanitize_name(raw) == expected


def test_sanitize_name_de_duplicates_against_taken():
    taken: set[str] = set()
    for _ in range(30):
        name = ir.sanitize_name("Dense-1", taken)
        assert NAME_RE.match(name) and name not in taken and name != "input"
        taken.add(name)
    assert len(taken) == 30 and "dense_1" in taken
    assert ir.sanitize_name("dense", {"dense", "dense_2"}) == "dense_3"


def test_long_names_are_bounded_and_stay_distinct():
    a, b = ir.sanitize_name("x" * 10000), ir.sanitize_name("x" * 9999 + "y")
    c = ir.sanitize_name("x" * 10001)
    assert len({a, b, c}) == 3
    assert all(len(n) <= 40 and NAME_RE.match(n) and n.startswith("x" * 31) for n in (a, b, c))
    taken = {a}
    d = ir.sanitize_name("x" * 10000, taken)
    assert d != a and NAME_RE.match(d) and len(d) <= 48


@settings(max_examples=200, deadline=None)
@given(raw=st.text(max_size=80), taken=st.sets(st.from_regex(NAME_RE, fullmatch=True),
                                               max_size=5))
def test_sanitize_name_property(raw, taken):
    name = ir.sanitize_name(raw, taken)
    assert NAME_RE.match(name)
    assert name not in taken and name != "input"
    assert len(name) <= 40 + 4  # room for a de-duplicating suffix


def test_make_model_sanitizes_and_de_duplicates_node_names():
    model = ir.make_model("My Model!", (3,), [(raw, "relu", {}, {}) for raw in
                                              ["Dense-1", "dense_1", "DENSE 1", "input", "int"]])
    names = [n.name for n in model.nodes]
    assert model.name == "my_model"
    assert len(set(names)) == 5 and "input" not in names
    assert all(NAME_RE.match(n) for n in names)
    assert names[0] == "dense_1" and names[-1] == "int"


def test_sanitize_name_long_name_with_a_lone_surrogate():
    # JSON can spell a lone surrogate ('\ud800'), which strict UTF-8 cannot encode for the hash
    name = ir.sanitize_name("a" * 50 + "\ud800")
    assert NAME_RE.match(name) and name != ir.sanitize_name("a" * 50 + "\udc00")


# --------------------------------------------------------------------------------- validation

def with_node(model: ir.Model, node_name: str, **changes: Any) -> ir.Model:
    """`model` with one node changed, bypassing make_model (so validate sees it raw)."""
    nodes = tuple(dataclasses.replace(n, **changes) if n.name == node_name else n
                  for n in model.nodes)
    return dataclasses.replace(model, nodes=nodes)


def rejects(match: str) -> Any:
    return pytest.raises(ModelFormatError, match=match)


def test_unknown_op_suggests_the_near_miss():
    with rejects(r"'act'.*unknown op 'sigmoidd' \(did you mean \"sigmoid\"\?\)") as info:
        ir.make_model("m", (3,), [("act", "sigmoidd", {}, {})])
    assert f"not one of the {len(ops.OPS)} ops" in str(info.value)
    with rejects(r"'act'.*unknown op 'conv2d'"):
        ir.validate(with_node(classifier(), "act", op="conv2d"))


def test_missing_weight_is_rejected():
    with rejects(r"'d'.*kernel"):
        ir.make_model("m", (4,), [("d", "dense", {}, {"bias": np.zeros(3)})])
    with rejects(r"'n' \(normalize\): missing weight 'std'"):
        ir.make_model("m", (4,), [("n", "normalize", {}, {"mean": np.zeros(4)})])
    model = classifier()
    with rejects(r"'d1' \(dense\): missing weight 'kernel'"):
        ir.validate(with_node(model, "d1", weights={"bias": model.node("d1").weights["bias"]}))


def test_extra_weight_is_rejected():
    with rejects(r"'act' \(relu\): unexpected weight 'kernel'"):
        ir.make_model("m", (4,), [("act", "relu", {}, {"kernel": np.ones((4, 4))})])
    with rejects(r"'d' \(dense\): unexpected weight 'bias_' \(did you mean \"bias\"\?\)"):
        ir.make_model("m", (4,), [("d", "dense", {}, {"kernel": np.ones((4, 2)),
                                                      "bias_": np.ones(2)})])


@pytest.mark.parametrize("weights", [
    {"kernel": np.ones((5, 3))}, {"kernel": np.ones(4)}, {"kernel": np.ones((4, 3, 1))},
    {"kernel": np.ones((4, 3)), "bias": np.ones(4)}, {"kernel": np.ones((4, 3)),
                                                      "bias": np.ones((1, 3))},
])
def test_misshapen_dense_weights_are_rejected(weights):
    with rejects(r"'d' \(dense\)"):
        ir.make_model("m", (4,), [("d", "dense", {}, weights)])


def test_misshapen_normalize_and_zero_std_are_rejected():
    with rejects(r"'n' \(normalize\)"):
        ir.make_model("m", (4,), [("n", "normalize", {}, {"mean": np.zeros(3),
                                                          "std": np.ones(4)})])
    with rejects(r"'n' \(normalize\): std holds a zero"):
        ir.make_model("m", (4,), [("n", "normalize", {}, {"mean": np.zeros(4),
                                                          "std": [1, 1, 0, 1]})])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e39])  # 1e39 overflows float32
@np.errstate(over="ignore")
def test_non_finite_weights_are_rejected(bad):
    kernel = np.ones((4, 3))
    kernel[2, 1] = bad
    with rejects(r"'d' \(dense\): weight 'kernel' holds NaN or Inf"):
        ir.make_model("m", (4,), [("d", "dense", {}, {"kernel": kernel})])
    model = classifier()
    bias = model.node("d2").weights["bias"].copy()
    bias[0] = bad
    with rejects(r"'d2' \(dense\): weight 'bias' holds NaN or Inf"):
        ir.validate(with_node(model, "d2", weights={**model.node("d2").weights, "bias": bias}))


def test_non_float32_weight_is_rejected_by_validate():
    model = classifier()
    kernel = model.node("d1").weights["kernel"].astype(np.float64)
    with rejects(r"'d1' \(dense\): weight 'kernel' must be a float32 array"):
        ir.validate(with_node(model, "d1", weights={"kernel": kernel,
                                                    "bias": model.node("d1").weights["bias"]}))


def test_duplicate_names_are_rejected():
    with rejects(r"duplicate node name 'd1'"):
        ir.validate(with_node(classifier(), "act", name="d1"))


@pytest.mark.parametrize("bad", ["Dense-1", "input", "", "1abc", "a b", "a\n", "ä", "_a"])
def test_invalid_node_names_are_rejected(bad):
    with rejects(re.escape(repr(bad)) + r" is not a valid identifier"):
        ir.validate(with_node(classifier(), "act", name=bad))


@pytest.mark.parametrize("bad", ["Clf", "", "my model", "clf\n"])
def test_invalid_model_names_are_rejected(bad):
    with rejects(r"model name " + re.escape(repr(bad))):
        ir.validate(dataclasses.replace(classifier(), name=bad))


def test_broken_shape_chain_is_rejected():
    model = classifier()
    with rejects(r"'act' \(relu\): input shapes \[\(7,\)\] do not match the \[\(8,\)\]"):
        ir.validate(with_node(model, "act", input_shapes=((7,),)))
    with rejects(r"'act' \(relu\): output shape \(7,\) should be \(8,\)"):
        ir.validate(with_node(model, "act", output_shape=(7,)))
    with rejects(r"'d2' \(dense\)"):
        ir.validate(with_node(model, "d2", inputs=("input",), input_shapes=((4,),)))
    with rejects(r"'d2' \(dense\): inputs \['probs'\] must be earlier nodes"):
        ir.validate(with_node(model, "d2", inputs=("probs",)))
    with rejects(r"'d2' \(dense\): takes 1 inputs, not 2"):
        ir.validate(with_node(model, "d2", inputs=("act", "d1")))
    with rejects(r"outputs \['nowhere'\]"):
        ir.validate(dataclasses.replace(model, outputs=("nowhere",)))
    with rejects(r"model input: bad shape"):
        ir.make_model("m", (0,), [])


def test_label_count_must_match_outputs():
    with rejects(r"2 labels for 3 outputs"):
        ir.validate(dataclasses.replace(classifier(), labels=("a", "b")))
    with rejects(r"4 labels for 3 outputs"):
        ir.make_model("m", (3,), [("s", "softmax", {}, {})], labels=list("abcd"))
    with rejects(r"3 labels for 1 outputs"):
        ir.make_model("m", (1,), [("s", "sigmoid", {}, {})], labels=list("abc"))
    with rejects(r"labels must be strings"):
        ir.make_model("m", (3,), [("s", "softmax", {}, {})], labels=["a", "b", 3])
    # one sigmoid output with two labels is a binary classifier
    binary = ir.make_model("m", (1,), [("s", "sigmoid", {}, {})], labels=["no", "yes"])
    assert binary.labels == ("no", "yes") and binary.output_shape == (1,)


@pytest.mark.parametrize("attrs, match", [
    ({}, r"'a' \(leaky_relu\): missing attribute 'alpha'"),
    ({"alpha": "0.1"}, r"'a' \(leaky_relu\): attribute 'alpha' must be float"),
    ({"alpha": True}, r"'a' \(leaky_relu\): attribute 'alpha' must be float"),
    ({"alpha": float("nan")}, r"'a' \(leaky_relu\): attribute 'alpha' is not finite"),
    ({"alpha": float("inf")}, r"'a' \(leaky_relu\): attribute 'alpha' is not finite"),
    ({"alpha": 0.1, "alfa": 0.2}, r"'a' \(leaky_relu\): unknown attribute 'alfa'"),
])
def test_leaky_relu_attribute_rules(attrs, match):
    with rejects(match):
        ir.make_model("m", (3,), [("a", "leaky_relu", attrs, {})])


def test_attributes_on_ops_without_attributes_and_bad_reshapes_are_rejected():
    with rejects(r"'a' \(relu\): unknown attribute 'alpha'"):
        ir.make_model("m", (3,), [("a", "relu", {"alpha": 0.1}, {})])
    for shape in ([4], [-1, -1], [0, 6], [-2, -3], [5, -1]):
        with rejects(r"'r' \(reshape\)"):
            ir.make_model("m", (6,), [("r", "reshape", {"shape": shape}, {})])
    with rejects(r"'r' \(reshape\)"):
        ir.make_model("m", (6,), [("r", "reshape", {}, {})])
    with rejects(r"'r' \(reshape\): attribute 'shape' must be list"):
        ir.make_model("m", (6,), [("r", "reshape", {"shape": (2, 3)}, {})])


def test_integer_alpha_is_accepted():
    model = ir.make_model("m", (2,), [("a", "leaky_relu", {"alpha": 2}, {})])
    np.testing.assert_array_equal(ir.run(model, [-1.0, 1.0]), [-2.0, 1.0])


def test_make_model_reshape_with_a_string_shape():
    with rejects(r"'r' \(reshape\)"):
        ir.make_model("m", (2,), [("r", "reshape", {"shape": "ab"}, {})])
    with rejects(r"'r' \(reshape\)"):  # TypeError from the shape rule: list(5)
        ir.make_model("m", (2,), [("r", "reshape", {"shape": 5}, {})])


@pytest.mark.parametrize("shape", [[1.0, 2.0], [True, 2], [1, "2"], [None]])
def test_reshape_with_non_int_dims_is_rejected(shape):
    # (1.0, 2.0) == (1, 2), so float dims would pass the shape chain and then break run()
    with rejects(r"'r' \(reshape\): target shape dims must be integers"):
        ir.make_model("m", (2,), [("r", "reshape", {"shape": shape}, {})])


def test_models_make_model_accepts_can_be_loaded():
    # a reshape to [] computes the output shape (), which no file may hold: refused at build time
    with rejects(r"'r' \(reshape\) output: bad shape \(\)"):
        ir.make_model("m", (1,), [("r", "reshape", {"shape": []}, {})])


@pytest.mark.parametrize("metadata", [{"accuracy": float("nan")}, {"loss": float("inf")},
                                      {"array": np.zeros(2)}, {"set": {1}}, {1: "a", "b": 2}])
def test_metadata_that_cannot_be_saved_is_rejected(metadata):
    # save() writes strict, sorted JSON: NaN, Inf, non-JSON values and mixed keys cannot be
    with rejects(r"metadata cannot be saved as JSON"):
        ir.make_model("m", (2,), [("a", "relu", {}, {})], metadata=metadata)


# ----------------------------------------------------------------------------- load rejections

def test_load_missing_file(tmp_path):
    load_error(tmp_path / "nope.distill", r"nope\.distill: no such file")


def test_load_directory(tmp_path):
    load_error(tmp_path, r"is a directory")


@pytest.mark.parametrize("content", [b"", b"hello, I am a text file\n", b"PK\x03\x04",
                                     b"PK\x05\x06" + b"\0" * 18, b"\x89HDF\r\n\x1a\n" * 64])
def test_load_non_archives(tmp_path, content):
    path = tmp_path / "m.distill"
    path.write_bytes(content)
    load_error(path, r"m\.distill: not a distill model file")


@pytest.mark.parametrize("cut", [1, 4, 30, 0.25, 0.5, 0.75, 0.9, -23, -22, -10, -1])
def test_load_truncated(saved, cut):
    data = saved.read_bytes()
    keep = int(len(data) * cut) if isinstance(cut, float) else cut % len(data)
    saved.write_bytes(data[:keep])
    load_error(saved)


def test_load_zip_without_model_json(saved, tmp_path):
    load_error(rewrite(saved, tmp_path / "x.distill", entries={"model.json": None}),
               r"no model\.json inside")


@pytest.mark.parametrize("text", [b"{not json", b"\xff\xfe{}", b"", b"[" * 100_000,
                                  b'{"format": NaN}', b'{"a": Infinity}'])
def test_load_bad_json(saved, tmp_path, text):
    load_error(rewrite(saved, tmp_path / "x.distill", doc=lambda d: text),
               r"model\.json is unreadable")


@pytest.mark.parametrize("text", ["[]", "1", "null", '"distill-ir"'])
def test_load_model_json_not_an_object(saved, tmp_path, text):
    load_error(rewrite(saved, tmp_path / "x.distill", doc=lambda d: text),
               r"model\.json is not a JSON object")


@pytest.mark.parametrize("value", ["onnx", None, 1])
def test_load_wrong_format(saved, tmp_path, value):
    load_error(rewrite(saved, tmp_path / "x.distill", doc=lambda d: {**d, "format": value}),
               r"not a distill model file")


@pytest.mark.parametrize("version", [0, 3, 999, "1", None, True, 1.0])
def test_load_unsupported_format_version(saved, tmp_path, version):
    path = rewrite(saved, tmp_path / "x.distill", doc=lambda d: {**d, "format_version": version})
    load_error(path, r"format version " + re.escape(repr(version)) + r" is not supported")


def test_load_unknown_op(saved, tmp_path):
    path = rewrite(saved, tmp_path / "x.distill",
                   doc=lambda d: edit_node(d, "sig", op="sigmoidd"))
    load_error(path, r"node 'sig': unknown op 'sigmoidd' \(did you mean \"sigmoid\"\?\)")


@pytest.mark.parametrize("edit, match", [
    (lambda d: edit_node(d, "relu", name="Relu"), r"'Relu' is not a valid identifier"),
    (lambda d: edit_node(d, "relu", name="flat"), r"duplicate node name 'flat'"),
    (lambda d: edit_node(d, "relu", attrs={"alpha": 1}), r"'relu' \(relu\): unknown attr"),
    (lambda d: edit_node(d, "leaky", attrs={}), r"'leaky' \(leaky_relu\): missing attribute"),
    (lambda d: json.dumps(edit_node(d, "leaky", attrs={"alpha": "X"})).replace('"X"', "1e999"),
     r"'leaky' \(leaky_relu\): attribute 'alpha' is not finite"),
    (lambda d: edit_node(d, "relu", input_shapes=[[7]]), r"'relu' \(relu\): input shapes"),
    (lambda d: edit_node(d, "relu", output_shape=[7]), r"'relu' \(relu\): output shape"),
    (lambda d: edit_node(d, "relu", inputs=["probs"]), r"'relu' \(relu\): inputs"),
    (lambda d: edit_node(d, "relu", input_shapes=[[True]]),
     r"'relu' input_shapes\[0\]: bad shape"),
    (lambda d: edit_node(d, "relu", output_shape="8"), r"'relu' output_shape: bad shape"),
    (lambda d: edit_node(d, "relu", weights=[]), r"node 'relu': 'weights' is missing"),
    (lambda d: edit_node(d, "relu", op=None), r"node 'relu': 'op' is missing"),
    (lambda d: {**d, "nodes": [1]}, r"node #0 is not an object"),
    (lambda d: {**d, "nodes": {}}, r"'nodes' is missing or not a list"),
    (lambda d: {**d, "labels": ["x"]}, r"1 labels for 3 outputs"),
    (lambda d: {**d, "labels": "abc"}, r"'labels' must be a list or null"),
    (lambda d: {**d, "metadata": [1]}, r"'metadata' must be an object"),
    (lambda d: {**d, "outputs": ["sig", "nowhere"]}, r"outputs \['sig', 'nowhere'\]"),
    (lambda d: {**d, "outputs": []}, r"outputs \[\]"),
    (lambda d: {**d, "name": "Every Op"}, r"model name 'Every Op'"),
    (lambda d: {**d, "inputs": [{"name": "input", "shape": [6], "dtype": "float64"}]},
     r"input dtype 'float64'"),
    (lambda d: {**d, "inputs": [{"name": "input", "shape": [0]}]}, r"model input: bad shape"),
    (lambda d: {**d, "inputs": [{"name": "input", "shape": [1] * 9}]}, r"model input: bad shape"),
])
def test_load_rejects_invalid_graphs(saved, tmp_path, edit, match):
    load_error(rewrite(saved, tmp_path / "x.distill", doc=edit), match)


def test_load_weight_with_wrong_shape_or_dtype(saved, tmp_path):
    entry = "weights/dense_1/kernel.npy"  # (6, 8) float32
    cases = {
        "transposed": npy(np.ones((8, 6), np.float32)),
        "float64": npy(np.ones((6, 8), np.float64)),
        "big endian": npy(np.ones((6, 8), ">f4")),
        "int32": npy(np.ones((6, 8), np.int32)),
        "fortran float16": npy(np.asfortranarray(np.ones((6, 16), np.float16))),
        "too small": npy(np.ones((6, 7), np.float32)),
        "not npy": b"\0" * 400,
    }
    for why, data in cases.items():
        path = rewrite(saved, tmp_path / "x.distill", entries={entry: data})
        message = load_error(path, r"node 'dense_1' weight 'kernel'")
        assert entry in message, why


def test_load_weight_npy_layouts(saved, tmp_path):
    entry = "weights/dense_1/kernel.npy"  # (6, 8) float32
    kernel = np.arange(48, dtype=np.float32).reshape(6, 8)
    v2 = io.BytesIO()
    np.lib.format.write_array(v2, kernel, version=(2, 0))
    model = ir.load(rewrite(saved, tmp_path / "v2.distill", entries={entry: v2.getvalue()}))
    loaded = model.node("dense_1").weights["kernel"]
    assert loaded.tobytes() == kernel.tobytes() and loaded.dtype == np.float32
    assert loaded.flags.writeable and loaded.flags.owndata  # not a view of the file's bytes
    cases = {
        "fortran order": (npy(np.asfortranarray(kernel)), r"\(Fortran order\)"),
        "a byte short": (npy(kernel)[:-1], r"holds 191 data bytes, expected 192"),
        "a byte over": (npy(kernel) + b"\0", r"holds 193 data bytes, expected 192"),
        "shape too long": (npy_with_header((1,) * 500, kernel.tobytes()),
                           r"is float32 \(1, 1, .*\.\.\., expected float32 \(6, 8\)"),
        "npy version 9": (b"\x93NUMPY\x09\x00" + npy(kernel)[8:], r"is unreadable"),
    }
    for why, (data, match) in cases.items():
        path = rewrite(saved, tmp_path / "x.distill", entries={entry: data})
        message = load_error(path, r"node 'dense_1' weight 'kernel': " + re.escape(entry))
        assert re.search(match, message) and len(message) < 300, (why, message)


def test_load_weight_described_with_wrong_shape_or_dtype(saved, tmp_path):
    def spec(**changes):
        def edit(d):
            node = next(n for n in d["nodes"] if n["name"] == "dense_1")
            node["weights"]["kernel"].update(changes)
            return d
        return edit
    load_error(rewrite(saved, tmp_path / "a.distill", doc=spec(shape=[8, 6])),
               r"'dense_1'.*weight 'kernel'")
    load_error(rewrite(saved, tmp_path / "b.distill", doc=spec(dtype="float64")),
               r"'dense_1': weight 'kernel' must be float32")
    load_error(rewrite(saved, tmp_path / "c.distill", doc=spec(shape=[])),
               r"'dense_1' weight 'kernel': bad shape")


@pytest.mark.parametrize("edit", [
    lambda d: edit_node(d, "relu", name="R" * 100_000),
    lambda d: edit_node(d, "relu", op="x" * 100_000),
    lambda d: edit_node(d, "relu", name="relu\n" * 1000),
    lambda d: edit_node(d, "relu", attrs={"a" * 100_000: 1}),
    lambda d: edit_node(d, "relu", inputs=["flat"] * 100_000),
    lambda d: edit_node(d, "relu", input_shapes=[[1] * 100_000]),
    lambda d: edit_node(d, "relu", weights={"k" * 100_000: 1}),
    lambda d: edit_node(d, "to_grid", attrs={"shape": [1] * 100_000}),
    lambda d: {**d, "outputs": ["x" * 100_000]},
    lambda d: {**d, "name": "N" * 100_000},
    lambda d: {**d, "format_version": "9" * 100_000},
    lambda d: {**d, "inputs": [{"name": "input", "shape": [6], "dtype": "f" * 100_000}]},
    lambda d: {**d, "metadata": {"x": [float("nan")] * 100_000}},
])
def test_load_error_messages_stay_short_whatever_the_file_holds(saved, tmp_path, edit):
    path = rewrite(saved, tmp_path / "x.distill", doc=edit)
    message = load_error(path)
    assert len(message) < len(str(path)) + 300, message


def test_load_weight_entry_missing(saved, tmp_path):
    path = rewrite(saved, tmp_path / "x.distill", entries={"weights/dense_1/bias.npy": None})
    load_error(path, r"'dense_1' weight 'bias'.*weights/dense_1/bias\.npy is missing")


def test_load_weight_not_declared_in_json(saved, tmp_path):
    def drop_bias(d):
        next(n for n in d["nodes"] if n["name"] == "dense_1")["weights"].pop("bias")
        return d
    # the kernel alone is a valid dense, so this loads: the stray entry is just never read
    model = ir.load(rewrite(saved, tmp_path / "x.distill", doc=drop_bias))
    assert sorted(model.node("dense_1").weights) == ["kernel"]

    def add_extra(d):
        node = next(n for n in d["nodes"] if n["name"] == "relu")
        node["weights"]["kernel"] = {"shape": [8], "dtype": "float32",
                                     "file": "weights/relu/kernel.npy"}
        return d
    path = rewrite(saved, tmp_path / "y.distill", doc=add_extra,
                   entries={"weights/relu/kernel.npy": npy(np.ones(8, np.float32))})
    load_error(path, r"'relu' \(relu\): unexpected weight 'kernel'")


UNPICKLED: list[str] = []


def _unpickled() -> str:
    UNPICKLED.append("unpickled!")
    return "boom"


class Boom:
    def __reduce__(self):
        return (_unpickled, ())


def test_load_never_unpickles(saved, tmp_path):
    entry = "weights/dense_1/bias.npy"  # (8,) float32: 32 data bytes
    obj = np.empty(3, dtype=object)
    obj[:] = [Boom(), "padding" * 20, 1.5]
    data = npy(obj, allow_pickle=True)
    assert 32 < len(data) <= 32 + 4096  # within the size window, so the .npy is really parsed
    np.load(io.BytesIO(data), allow_pickle=True)
    assert UNPICKLED == ["unpickled!"]  # the sentinel works
    UNPICKLED.clear()
    load_error(rewrite(saved, tmp_path / "x.distill", entries={entry: data}),
               r"'dense_1' weight 'bias'")
    assert UNPICKLED == []


def test_load_declared_huge_weight_fails_fast(saved, tmp_path):
    def huge(d):
        node = next(n for n in d["nodes"] if n["name"] == "dense_1")
        node["weights"]["kernel"]["shape"] = [1000000, 1000000]
        return d
    load_error(rewrite(saved, tmp_path / "x.distill", doc=huge),
               r"'dense_1' weight 'kernel': bad shape \[1000000, 1000000\]")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_load_non_finite_weights(saved, tmp_path, value):
    kernel = np.ones((6, 8), np.float32)
    kernel[5, 7] = value
    path = rewrite(saved, tmp_path / "x.distill",
                   entries={"weights/dense_1/kernel.npy": npy(kernel)})
    load_error(path, r"'dense_1' \(dense\): weight 'kernel' holds NaN or Inf")


def test_load_compressed_model_json(saved, tmp_path):
    load_error(rewrite(saved, tmp_path / "x.distill", deflate=["model.json"]),
               r"model\.json is compressed")


def test_load_deflated_weight_zip_bomb(tmp_path):
    # 4 MiB of zero weights deflate to ~4 KiB: a stored-only reader must not inflate them
    model = ir.make_model("m", (1024,), [("d", "dense", {}, {"kernel": np.zeros((1024, 1024))})])
    ir.save(model, tmp_path / "m.distill")
    path = rewrite(tmp_path / "m.distill", tmp_path / "bomb.distill",
                   deflate=["weights/d/kernel.npy"])
    assert path.stat().st_size < 64 << 10
    tracemalloc.start()
    try:
        load_error(path, r"'d' weight 'kernel'.*expected a stored \.npy")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def zip_field_offsets(data: bytes, entry: str) -> dict[str, int]:
    """Offsets of `entry`'s central directory fields (zip APPNOTE 4.3.12 and 4.3.16)."""
    eocd = data.rindex(b"PK\x05\x06")
    count, _, start = struct.unpack("<HII", data[eocd + 10:eocd + 20])
    for _ in range(count):
        assert data[start:start + 4] == b"PK\x01\x02"
        n, m, k = struct.unpack("<HHH", data[start + 28:start + 34])
        if data[start + 46:start + 46 + n] == entry.encode():
            return {"version_needed": start + 6, "flags": start + 8}
        start += 46 + n + m + k
    raise AssertionError(f"no entry {entry!r}")


@pytest.mark.parametrize("entry", ["model.json", "weights/dense_1/kernel.npy"])
@pytest.mark.parametrize("field, value", [
    # zipfile raises RuntimeError (encrypted) or NotImplementedError (flag bits 5 and 6, a
    # newer "version needed to extract") for these; load must turn them into ModelFormatError
    pytest.param("flags", 0x01, id="encrypted"),
    pytest.param("flags", 0x20, id="patched"),
    pytest.param("flags", 0x40, id="strong_encryption"),
    pytest.param("version_needed", 99, id="version_needed"),
    pytest.param("flags", 0x08, id="data_descriptor"),
])
def test_load_zip_header_flags(saved, entry, field, value):
    data = bytearray(saved.read_bytes())
    data[zip_field_offsets(bytes(data), entry)[field]] = value
    saved.write_bytes(bytes(data))
    model = loads_cleanly_or_rejects(saved)
    assert (model is None) == (value != 0x08)  # only the data descriptor bit is harmless


# numpy's read_array would allocate the claimed shape before reading (MemoryError for 1e12
# elements, 200 MiB for 5e7) while the entry is 300 bytes: the header must be checked first.
@pytest.mark.parametrize("claimed", [(1000000, 1000000), (50_000_000,)])
def test_load_npy_header_claiming_a_huge_shape(saved, tmp_path, claimed):
    data = npy_with_header(claimed, np.ones((6, 8), np.float32).tobytes())
    path = rewrite(saved, tmp_path / "x.distill", entries={"weights/dense_1/kernel.npy": data})
    tracemalloc.start()
    try:
        load_error(path, r"'dense_1' weight 'kernel'")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


# N nodes named alike would read one entry N times (a 1 MiB file costing 64 MiB here), so
# names are checked before any weight is read.
def test_load_duplicate_nodes_do_not_multiply_memory(tmp_path):
    model = ir.make_model("m", (65536,), [("d", "dense", {}, {"kernel": np.ones((65536, 4))})])
    ir.save(model, tmp_path / "m.distill")
    path = rewrite(tmp_path / "m.distill", tmp_path / "x.distill",
                   doc=lambda d: {**d, "nodes": d["nodes"] * 64})
    assert path.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        load_error(path, r"duplicate node name 'd'")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


@pytest.mark.parametrize("edit", [
    # the output is the input: output_shape is the input's, not a node's (no KeyError)
    pytest.param(lambda d: {**d, "outputs": ["input"]}, id="output_is_input_with_labels"),
    pytest.param(lambda d: {**d, "outputs": ["input"], "labels": None}, id="output_is_input"),
    # JSON lists and objects are unhashable: inputs and outputs are checked to be strings first
    pytest.param(lambda d: edit_node(d, "relu", inputs=[["flat"]]), id="unhashable_input"),
    pytest.param(lambda d: {**d, "outputs": [{"a": 1}]}, id="unhashable_output"),
    # an int float-attribute beyond the float range is not finite
    pytest.param(lambda d: edit_node(d, "leaky", attrs={"alpha": 10 ** 400}),
                 id="huge_int_alpha"),
    pytest.param(lambda d: edit_node(d, "to_grid", attrs={"shape": [2.0, 4]}),
                 id="float_reshape_dims"),
    # JSON's 1e999 loads as inf, which save() could not write again
    pytest.param(lambda d: json.dumps({**d, "metadata": "X"}).replace('"X"', '{"x": 1e999}'),
                 id="infinite_metadata"),
])
def test_loaded_models_are_usable(saved, tmp_path, edit):
    loads_cleanly_or_rejects(rewrite(saved, tmp_path / "x.distill", doc=edit))


# ------------------------------------------------------------------------------ mutation fuzz

@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> tuple[Path, bytes, bytes]:
    """A directory, a valid saved model's bytes and its model.json."""
    root = tmp_path_factory.mktemp("fuzz")
    ir.save(every_op_model(), root / "base.distill")
    data = (root / "base.distill").read_bytes()
    with zipfile.ZipFile(root / "base.distill") as z:
        return root, data, z.read("model.json")


# (what, where, value): `where` is taken modulo the current length
mutations = st.lists(st.tuples(st.sampled_from(["flip", "set", "truncate", "insert"]),
                               st.integers(0, 1 << 20), st.integers(0, 255)),
                     min_size=1, max_size=4)


def mutate(data: bytes, steps: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, where, value in steps:
        if not buf:
            break
        i = where % len(buf)
        if kind == "flip":
            buf[i] ^= 1 << (value % 8)
        elif kind == "set":
            buf[i] = value
        elif kind == "truncate":
            del buf[i:]
        else:
            buf[i:i] = bytes([value])
    return bytes(buf)


@settings(max_examples=200, deadline=None, database=None)
@given(steps=mutations)
def test_mutated_files_load_or_raise_model_format_error(fuzz_dir, steps):
    root, data, _ = fuzz_dir
    path = root / "mutated.distill"
    path.write_bytes(mutate(data, steps))
    loads_cleanly_or_rejects(path)


# Byte mutations almost never get past the zip CRCs, so mutate model.json itself and re-zip.
@settings(max_examples=200, deadline=None, database=None)
@given(steps=mutations)
def test_mutated_model_json_loads_or_raises_model_format_error(fuzz_dir, steps):
    root, _, doc = fuzz_dir
    path = root / "mutated_json.distill"
    rewrite(root / "base.distill", path, doc=lambda d: mutate(doc, steps))
    loads_cleanly_or_rejects(path)


# ------------------------------------------------------------------------------------- stats

def test_stats_by_hand_for_4_8_3():
    s = ir.stats(classifier())
    params = (4 * 8 + 8) + (8 * 3 + 3)
    assert s["parameters"] == params == 67
    assert s["weight_bytes"] == 4 * params
    assert s["macs"] == 4 * 8 + 8 * 3
    # activations per sample: input 4, d1 8, relu 8, d2 3, softmax 3; an op reads one buffer
    # while writing the next, so the peak is the largest adjacent pair: d1 -> relu, 8 + 8
    assert s["peak_activation_bytes"] == 4 * (8 + 8)
    assert s["largest_activation"] == 8


def test_stats_without_bias_and_on_multi_axis_input():
    assert ir.stats(classifier(bias=False))["parameters"] == 4 * 8 + 8 * 3
    model = ir.make_model("m", (5, 4), [("d", "dense", {}, {"kernel": np.ones((4, 2))}),
                                        ("f", "flatten", {}, {})])
    s = ir.stats(model)
    assert s["macs"] == 5 * 4 * 2 and s["parameters"] == 8
    assert s["peak_activation_bytes"] == 4 * (20 + 10)


def test_stats_of_an_empty_model():
    s = ir.stats(ir.make_model("m", (3,), []))
    assert s == {"parameters": 0, "weight_bytes": 0, "macs": 0, "peak_activation_bytes": 12,
                 "largest_activation": 3}


# --------------------------------------------------------------------------- graphs (format 2)

def as_format_1(doc: dict) -> dict:
    """A format-2 chain document written as format 1 wrote it."""
    doc = dict(doc, format_version=1)
    (inp,) = doc.pop("inputs")
    doc["input"] = {"name": "input", "shape": inp["shape"], "dtype": inp["dtype"]}
    doc["nodes"] = [{**{k: v for k, v in n.items() if k != "input_shapes"},
                     "input_shape": n["input_shapes"][0],
                     "weights": {k: {kk: vv for kk, vv in w.items() if kk != "file"}
                                 for k, w in n["weights"].items()}} for n in doc["nodes"]]
    return doc


def test_format_1_files_still_load(saved, tmp_path):
    path = rewrite(saved, tmp_path / "v1.distill", doc=as_format_1)
    assert json.loads(zipfile.ZipFile(path).read("model.json"))["format_version"] == 1
    loaded = ir.load(path)
    assert_same_model(every_op_model(), loaded)
    assert ir.model_hash(loaded) == ir.model_hash(every_op_model())
    ir.save(loaded, tmp_path / "again.distill")  # and is saved as format 2
    assert json.loads(zipfile.ZipFile(tmp_path / "again.distill").read("model.json"))[
        "format_version"] == 2


def graph(shared: bool = True) -> ir.Model:
    r = np.random.default_rng(9)
    w = {"kernel": randn(r, 3, 3), "bias": randn(r, 3)}
    return ir.make_model("g", {"a": (3,), "b": (3,)}, [
        ("da", "dense", {}, w, "a"),
        ("db", "dense", {}, w if shared else {k: v.copy() for k, v in w.items()}, "b"),
        ("sum", "add", {}, {}, ["da", "db"]),
        ("both", "concatenate", {"axis": 0}, {}, ["sum", "a"]),
    ], outputs=["both", "da"])


def test_a_shared_layer_is_stored_once_and_stays_shared(tmp_path):
    model = graph()
    assert model.node("da").weights["kernel"] is model.node("db").weights["kernel"]
    assert ir.stats(model)["parameters"] == 12
    ir.save(model, tmp_path / "g.distill")
    with zipfile.ZipFile(tmp_path / "g.distill") as z:
        assert sorted(n for n in z.namelist() if n.startswith("weights/")) == [
            "weights/da/bias.npy", "weights/da/kernel.npy"]
        doc = json.loads(z.read("model.json"))
    assert doc["nodes"][1]["weights"]["kernel"]["file"] == "weights/da/kernel.npy"
    loaded = ir.load(tmp_path / "g.distill")
    assert loaded.node("da").weights["kernel"] is loaded.node("db").weights["kernel"]
    assert ir.stats(graph(shared=False))["parameters"] == 24
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    assert ir.run(loaded, x).tobytes() == ir.run(model, x).tobytes()


def test_a_weight_file_must_be_its_own_or_an_earlier_nodes(tmp_path):
    ir.save(graph(), tmp_path / "g.distill")

    def steal(d):  # the first node naming a later node's file
        d["nodes"][0]["weights"]["kernel"]["file"] = "weights/db/kernel.npy"
        return d
    load_error(rewrite(tmp_path / "g.distill", tmp_path / "x.distill", doc=steal),
               r"names 'weights/db/kernel.npy', which is neither its own file")


def test_run_takes_packed_or_listed_inputs_and_gives_packed_or_split_outputs():
    model = graph()
    assert (model.input_shape, model.output_shape) == ((6,), (9,))
    assert model.output_shapes == ((6,), (3,))
    x = np.random.default_rng(2).standard_normal((5, 6)).astype(np.float32)
    packed = ir.run(model, x)
    both, da = ir.run(model, [x[:, :3], x[:, 3:]], split=True)
    assert packed.shape == (5, 9) and both.shape == (5, 6) and da.shape == (5, 3)
    assert np.concatenate([both, da], axis=1).tobytes() == packed.tobytes()
    np.testing.assert_array_equal(both[:, 3:], x[:, :3])  # the concatenated input a
    one = ir.run(model, x[0], split=True)
    assert [o.shape for o in one] == [(6,), (3,)]
    with pytest.raises(ValueError, match="takes 2 inputs"):
        ir.run(model, [x[:, :3]])
    with pytest.raises(ValueError, match="batches of 5 and 4 samples"):
        ir.run(model, [x[:, :3], x[:4, 3:]])
    with pytest.raises(ValueError, match=r"input of shape \(3,\) or \(N, 3\), got \(5, 2\)"):
        ir.run(model, [x[:, :3], x[:, 4:]])


@pytest.mark.parametrize("layers, outputs, match", [
    ([("d", "relu", {}, {}, "a"), ("e", "relu", {}, {}, "b")], ["d"], r"'e' \(relu\) reaches no"),
    ([("s", "add", {}, {}, ["a", "c"])], None, r"'s' \(add\): inputs of shapes \(3,\), \(4,\)"),
    ([("s", "add", {}, {}, ["a"])], None, r"'s' \(add\): takes two or more inputs, not 1"),
    ([("s", "subtract", {}, {}, ["a", "b", "a"])], None, r"takes 2 inputs, not 3"),
    ([("s", "relu", {}, {}, ["a", "b"])], None, r"takes 1 inputs, not 2"),
    ([("s", "add", {}, {}, ["a", "nope"])], None, r"input 'nope' names no earlier layer"),
    ([("c", "concatenate", {"axis": 1}, {}, ["a", "b"])], None, r"axis 1 is outside"),
    ([("c", "concatenate", {"axis": 0}, {}, ["a", "m"])], None, r"differ on an axis other"),
    ([("d", "relu", {}, {}, "a")], ["nowhere"], r"'nowhere' names no earlier layer"),
])
def test_bad_graphs_are_refused_naming_the_node(layers, outputs, match):
    with rejects(match):
        ir.make_model("bad", {"a": (3,), "b": (3,), "c": (4,), "m": (1, 3)}, layers,
                      outputs=outputs or [layers[-1][0]])


def test_input_names_share_the_node_namespace():
    model = ir.make_model("m", {"x": (2,), "Input": (2,)}, [("x", "add", {}, {}, ["x", "Input"])])
    assert model.input_names == ("x", "input_2") and model.nodes[0].name == "x_2"
    with rejects(r"duplicate node name 'x'"):
        ir.validate(with_node(model, "x_2", name="x"))


def test_peak_activations_follow_liveness():
    # while the concatenation runs: a (read by it), da (an output), sum (read by it) and its
    # result; b and db have had their last readers
    stats = ir.stats(graph())
    assert stats["peak_activation_bytes"] == 4 * (3 + 3 + 3 + 6)


def test_stats_count_a_convolutions_multiply_adds():
    # every one of the 6 * 5 * 6 outputs sums a 3x3 window over its group's 2 channels, pads
    # included (the emitted loops skip them, but the count is the layer's, as peers give it)
    r = np.random.default_rng(0)
    model = ir.make_model("c", (6, 5, 4), [
        ("c", "conv", {"strides": [1, 1], "pads": [1, 1, 1, 1], "groups": 2},
         {"kernel": randn(r, 3, 3, 2, 6)}),
        ("d", "dense", {}, {"kernel": randn(r, 6, 2)})])
    assert ir.stats(model)["macs"] == 6 * 5 * 6 * 3 * 3 * 2 + 6 * 5 * 6 * 2
