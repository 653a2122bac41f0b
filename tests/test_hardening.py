"""Hardening: the named hostile inputs of each kind, one test each, through the command line.

- Model files: empty, a directory, a FIFO, a device, a zip bomb, headers claiming 10**12
  values, NaN/Inf weights, unknown ops, wrong versions, a pickle, damaged metadata and labels,
  a file of a few hundred bytes whose input is 2**28 values: one line and exit 2, bounded
  memory, no hang. (The generated cases are in test_hardening_fuzz.py.)
- Configs: unknown keys (with a "did you mean"), wrong types, non-finite numbers, absurd sizes,
  missing data files, layers that do not fit the data: one line, before any training starts.
- `predict` inputs and output locations: damaged `.npy`/`.csv`, empty batches, NaN and
  out-of-range values, directories, FIFOs.
- `inspect` prints text from the file (labels, metadata) as single, escaped lines.

The library-level tests near the end pin holes found while writing this file (quadratic
name checks, zipfile size claims, FIFOs, unparsable .npy headers, metadata and labels that
could not be exported); each was fixed in distill/ir.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG_SECONDS
from test_hardening_fuzz import (
    alarm,
    base_model,
    check_error,
    npy,
    npy_header,
    run_cli,
    zip_bytes,
)

from distill import codegen, ir
from distill.errors import DistillError, ModelFormatError

ROOT = Path(__file__).resolve().parent.parent


def fails(argv: list[str], match: str) -> str:
    """`distill ARGV` must fail with one line containing `match` (a regex) and exit 2."""
    code, out, err, _ = run_cli([str(a) for a in argv])
    line = check_error(code, err, argv)
    assert code == 2 and line, f"{argv}: exit {code}, stdout {out[:200]!r}"
    assert re.search(match, line), line
    return line


@pytest.fixture
def saved(tmp_path) -> Path:
    path = tmp_path / "m.distill"
    ir.save(base_model(), path)
    return path


def entries_of(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def with_doc(path: Path, dst: Path, edit) -> Path:
    entries = entries_of(path)
    doc = json.loads(dict(entries)["model.json"])
    new = edit(doc)
    text = new if isinstance(new, str) else json.dumps(new)
    dst.write_bytes(zip_bytes([(n, text.encode("utf-8", "surrogatepass") if n == "model.json"
                                else d) for n, d in entries]))
    return dst


def with_entry(path: Path, dst: Path, name: str, data: bytes | None,
               deflate: frozenset[str] = frozenset()) -> Path:
    entries = [(n, data if n == name else d) for n, d in entries_of(path)]
    dst.write_bytes(zip_bytes([(n, d) for n, d in entries if d is not None], set(deflate)))
    return dst


# ------------------------------------------------------------------------ named model files

@pytest.mark.parametrize("make, match", [
    pytest.param(lambda p: p.write_bytes(b""), "not a distill model file", id="empty"),
    pytest.param(lambda p: p.mkdir(), "is a directory", id="directory"),
    pytest.param(lambda p: os.mkfifo(p), "not a regular file", id="fifo"),
    pytest.param(lambda p: p.symlink_to("/dev/zero"), "not a regular file", id="dev_zero"),
    pytest.param(lambda p: p.symlink_to(p), "", id="symlink_loop"),
    pytest.param(lambda p: p.write_bytes(b"PK\x05\x06" + b"\0" * 18), "not a distill model",
                 id="empty_zip"),
    pytest.param(lambda p: p.write_bytes(os.urandom(4096)), "not a distill model",
                 id="random_bytes"),
    pytest.param(lambda p: p.write_text("{}"), "not a distill model", id="json_not_zip"),
])
def test_not_model_files(tmp_path, make, match):
    for name in ("m.distill", "m.h5", "m.keras"):
        (tmp_path / name).mkdir()
        path = tmp_path / name / name
        make(path)
        # Keras files are refused in Keras's words (or the preflight's), .distill in ours.
        expect = match if name.endswith(".distill") else "."
        with alarm(HANG_SECONDS):
            fails(["inspect", path], expect)
            fails(["export", path, "--lang", "c", "-o", tmp_path / "out"], expect)
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit, match", [
    (lambda d: {**d, "format_version": 3}, "format version 3 is not supported"),
    (lambda d: {**d, "format_version": "1"}, "format version '1'"),
    (lambda d: {**d, "format": "onnx"}, "not a distill model file"),
    (lambda d: {**d, "nodes": [{**d["nodes"][0], "op": "conv2d"}] + d["nodes"][1:]},
     "unknown op 'conv2d'"),
    (lambda d: {**d, "inputs": [{**d["inputs"][0], "shape": [10 ** 12]}]}, "bad shape"),
    (lambda d: {**d, "inputs": [{**d["inputs"][0], "dtype": "float64"}]}, "float64"),
    (lambda d: {**d, "labels": ["a"]}, "1 labels for 3 outputs"),
    (lambda d: {**d, "labels": ["a\ud800", "b", "c"]}, "label #0 is not valid Unicode"),
    (lambda d: {**d, "metadata": {**d["metadata"], "samples": [[1, 2]]}},
     "metadata 'samples' must be rows of 6"),
    (lambda d: {**d, "metadata": {**d["metadata"], "samples": "x"}}, "metadata 'samples'"),
    (lambda d: {**d, "metadata": {**d["metadata"], "input_range": [[1] * 6, [0] * 6]}},
     "low value above its high"),
    (lambda d: {**d, "metadata": {**d["metadata"], "input_range": [[-1e300] * 6, [0] * 6]}},
     "metadata 'input_range' must be 2 rows of 6 finite"),
    (lambda d: json.dumps(d).replace('"epochs": 3', '"epochs": 1e999'),
     "metadata cannot be saved as JSON"),
    (lambda d: "[" * 100000 + "]" * 100000, "unreadable|not a JSON object"),
])
def test_damaged_model_json(saved, tmp_path, edit, match):
    path = with_doc(saved, tmp_path / "x.distill", edit)
    for argv in (["inspect", path], ["export", path, "--lang", "all", "-o", tmp_path / "out"]):
        fails(argv, match)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights(saved, tmp_path, value):
    kernel = np.ones((6, 8), np.float32)
    kernel[3, 4] = value
    path = with_entry(saved, tmp_path / "x.distill", "weights/dense/kernel.npy", npy(kernel))
    fails(["inspect", path], r"'dense' \(dense\): weight 'kernel' holds NaN or Inf")


@pytest.mark.parametrize("claimed", [(10 ** 12,), (1 << 31, 1 << 31), (6, 8, 10 ** 9)])
def test_header_claiming_huge_sizes_allocates_nothing(saved, tmp_path, claimed):
    # In the .npy header, and in model.json's declared shape.
    data = npy_header(claimed) + np.ones((6, 8), np.float32).tobytes()
    path = with_entry(saved, tmp_path / "x.distill", "weights/dense/kernel.npy", data)
    code, _, err, peak = run_cli(["inspect", str(path)])
    assert code == 2 and peak < 16 << 20, (err, peak)

    def declare(d):
        d["nodes"][1]["weights"]["kernel"]["shape"] = list(claimed)
        return d
    path = with_doc(saved, tmp_path / "y.distill", declare)
    code, _, err, peak = run_cli(["inspect", str(path)])
    assert code == 2 and "bad shape" in err and peak < 16 << 20, (err, peak)


def test_zip_bomb_is_not_inflated(tmp_path):
    # 64 MiB of zero weights deflate to ~64 KiB; the archive says so in its headers.
    model = ir.make_model("bomb", (4096,), [("d", "dense", {}, {"kernel": np.zeros((4096,
                                                                                    4096))})])
    ir.save(model, tmp_path / "m.distill")
    path = with_entry(tmp_path / "m.distill", tmp_path / "bomb.distill", "weights/d/kernel.npy",
                      entries_of(tmp_path / "m.distill")[1][1],
                      deflate=frozenset({"weights/d/kernel.npy", "model.json"}))
    assert path.stat().st_size < 256 << 10
    code, _, err, peak = run_cli(["inspect", str(path)])
    assert code == 2 and peak < 8 << 20, (err, peak)


def test_pickled_weights_are_never_unpickled(saved, tmp_path):
    import test_hardening_fuzz as fuzz
    obj = np.empty(8, dtype=object)
    obj[0] = fuzz._Pickled()
    data = npy(obj)
    path = with_entry(saved, tmp_path / "x.distill", "weights/dense/bias.npy", data)
    fails(["inspect", path], "'dense' weight 'bias'")
    fails(["predict", path, "--input", path], "'dense' weight 'bias'")
    assert fuzz.UNPICKLED == []


def test_tiny_file_with_a_huge_input_is_refused_before_allocating(tmp_path):
    """A 600-byte model whose input is 2**28 values: exporting it would build golden vectors
    of 16 * 2**28 values (32 GiB) unless the command bounds them first."""
    model = ir.make_model("wide", (1 << 28,), [("r", "relu", {}, {})])
    ir.save(model, tmp_path / "wide.distill")
    assert (tmp_path / "wide.distill").stat().st_size < 1000
    out = tmp_path / "out"
    for argv in (["export", tmp_path / "wide.distill", "--lang", "c", "-o", out],
                 ["verify", tmp_path / "wide.distill", "--lang", "c"]):
        with alarm(HANG_SECONDS):
            code, _, err, peak = run_cli([str(a) for a in argv])
        assert code == 2 and "golden vectors would exceed" in err and peak < 16 << 20, err
    assert not out.exists()
    # A model that fits the budget only with fewer golden vectors is told how many.
    ir.save(ir.make_model("mid", (1 << 20,), [("r", "relu", {}, {})]), tmp_path / "mid.distill")
    fails(["export", tmp_path / "mid.distill", "--lang", "c", "-o", out],
          r"--samples 2 or fewer fit")


def test_inspect_prints_hostile_text_as_escaped_single_lines(tmp_path):
    evil = "\x1b]0;pwned\x07\x1b[2J"
    model = ir.make_model("m", (2,), [("d", "dense", {}, {"kernel": np.ones((2, 3))})],
                          labels=["ok", f"a\nb{evil}", "c"],
                          metadata={"notes": f"line1\nline2{evil}", evil: [evil],
                                    "training": {"metrics": {"test": {"acc": "n/a", "x": [1]},
                                                             "val": 3},
                                                 evil: evil}})
    ir.save(model, tmp_path / "m.distill")
    code, out, err, _ = run_cli(["inspect", str(tmp_path / "m.distill")])
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out
    assert "line1\\nline2" in out and "a\\nb" in out
    for broken in ("training", "metrics"):  # any shape of metadata prints, nothing crashes
        model2 = ir.make_model("m", (2,), [("r", "relu", {}, {})],
                               metadata={"training": [1, 2] if broken == "training"
                                         else {"metrics": [1]}})
        ir.save(model2, tmp_path / "m2.distill")
        code, out, err, _ = run_cli(["inspect", str(tmp_path / "m2.distill")])
        assert code == 0 and "[1" in out, err


def test_error_messages_are_one_printable_line_whatever_the_path(tmp_path):
    path = tmp_path / "a\nb\x1b[31m.distill"
    path.write_bytes(b"junk")
    line = fails(["inspect", path], "not a distill model file")
    assert "\x1b" not in line


# ------------------------------------------------------------------------ library-level bugs

def test_loading_many_nodes_is_not_quadratic(tmp_path, monkeypatch):
    """Name checks share one set per pass: building a new set per node made 30,000 nodes take
    ~7 s and 100,000 over a minute. Checked by what the loader does, not by a clock."""
    model = ir.make_model("m", (2,), [("r", "relu", {}, {})])
    ir.save(model, tmp_path / "one.distill")

    def many(d):
        node = d["nodes"][0]
        d["nodes"] = [{**node, "name": f"r{i}", "inputs": [f"r{i - 1}" if i else "input"]}
                      for i in range(30_000)]
        d["outputs"] = ["r29999"]
        return d
    path = with_doc(tmp_path / "one.distill", tmp_path / "many.distill", many)
    kept = []  # the containers themselves, kept alive so no two can share an id
    check = ir._check_node_name

    def recording(name, seen):
        if not any(seen is k for k in kept[-3:]):
            kept.append(seen)
        return check(name, seen)
    monkeypatch.setattr(ir, "_check_node_name", recording)
    model = ir.load(path)
    assert len(model.nodes) == 30_000
    assert len(kept) <= 2  # one for the names pass, one for validate: never one per node


def test_ir_load_refuses_an_unparsable_npy_header(saved, tmp_path):
    text = b"(" * 50
    header = text + b" " * (-(len(text) + 11) % 64) + b"\n"
    data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 192
    path = with_entry(saved, tmp_path / "x.distill", "weights/dense/kernel.npy", data)
    fails(["inspect", path], "unreadable")  # the command line: one line
    with pytest.raises(ModelFormatError):
        ir.load(path)


def test_ir_load_memory_is_bounded_by_declared_sizes(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    entry = b"weights/dense/bias.npy"
    cd = data.rindex(b"PK\x01\x02", 0, data.rindex(entry))  # its central directory record
    data[cd + 20:cd + 24] = (2 ** 32 - 1).to_bytes(4, "little")  # compressed size
    path = tmp_path / "x.distill"
    path.write_bytes(bytes(data))
    code, _, err, peak = run_cli(["inspect", str(path)])
    assert code == 2 and "claims" in err and peak < 16 << 20, (err, peak)  # the command line
    tracemalloc.start()
    try:
        with contextlib.suppress(ModelFormatError):
            ir.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak:,} bytes to load a {path.stat().st_size:,}-byte file"


def test_ir_load_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "m.distill")
    with alarm(HANG_SECONDS), pytest.raises(ModelFormatError):
        ir.load(tmp_path / "m.distill")


@pytest.mark.parametrize("meta", [{"samples": [[1, 2]]}, {"input_range": [[1, 1], [0, 0]]},
                                  {"input_range": "x"}])
def test_library_refuses_unusable_sample_metadata(meta):
    with pytest.raises(DistillError, match="metadata 'input_range'|metadata 'samples'"):
        ir.make_model("m", (3,) if "samples" in meta else (2,), [("r", "relu", {}, {})],
                      metadata=meta)


def test_library_refuses_labels_that_are_not_unicode():
    with pytest.raises(DistillError, match="not valid Unicode"):
        ir.make_model("m", (2,), [("d", "dense", {}, {"kernel": np.ones((2, 2))})],
                      labels=["a\ud800", "b"])


# --------------------------------------------------------------------------------- configs

CONFIG = """\
name = "small"
seed = 3
[data]
source = "blobs"
n = 100
validation = 0.2
[[model.layers]]
type = "dense"
units = 4
activation = "tanh"
[[model.layers]]
type = "dropout"
rate = 0.1
[[model.layers]]
type = "dense"
units = 1
activation = "sigmoid"
[training]
loss = "binary_crossentropy"
optimizer = {name = "adam", learning_rate = 0.01}
batch_size = 16
epochs = 2
metrics = ["accuracy"]
"""


def sub(old: str, new: str) -> str:
    assert old in CONFIG, old
    return CONFIG.replace(old, new, 1)


CONFIG_CASES = [
    # unknown keys, with the near miss
    (sub("seed = 3", "sed = 3"), 'unknown key .sed. .*did you mean "seed"'),
    (sub("n = 100", "nn = 100"), "unknown key 'nn' in \\[data\\]"),
    (sub("units = 4", "unit = 4"), 'did you mean "units"'),
    (sub("rate = 0.1", "rat = 0.1"), 'did you mean "rate"'),
    (sub("batch_size = 16", "batchsize = 16"), 'did you mean "batch_size"'),
    (sub("learning_rate = 0.01", "learning_rat = 0.01"), 'did you mean "learning_rate"'),
    (sub('type = "dropout"', 'type = "dropot"'), 'did you mean "dropout"'),
    (sub('activation = "tanh"', 'activation = "tnah"'), 'did you mean "tanh"'),
    (sub('metrics = ["accuracy"]', 'metrics = ["acuracy"]'), 'did you mean "accuracy"'),
    (sub('loss = "binary_crossentropy"', 'loss = "binary_crosentropy"'),
     'did you mean "binary_crossentropy"'),
    (CONFIG + 'early_stopping = {monitor = "val_los", patience = 1}\n',
     'cannot monitor .val_los. .*did you mean "val_loss"'),
    # wrong types
    (sub("seed = 3", 'seed = "3"'), "'seed' must be an integer"),
    (sub("seed = 3", "seed = -3"), "'seed' must be a non-negative integer"),
    (sub("units = 4", "units = 4.5"), "units, a positive integer"),
    (sub("units = 4", "units = true"), "units, a positive integer"),
    (sub("n = 100", 'n = "100"'), "'n' must be a positive integer"),
    (sub("batch_size = 16", "batch_size = 0"), "batch_size must be a positive integer"),
    (sub("epochs = 2", "epochs = [2]"), "'epochs' must be an integer"),
    (sub('metrics = ["accuracy"]', 'metrics = [["accuracy"]]'), "unknown metric"),
    (sub('loss = "binary_crossentropy"', 'loss = ["binary_crossentropy"]'), "unknown loss"),
    (sub('type = "dropout"', 'type = ["dropout"]'), "unknown layer type"),
    (sub('activation = "tanh"', 'activation = ["tanh"]'), "activation must be a name"),
    (sub('activation = "tanh"', 'activation = {name = "leaky_relu", alpha = "x"}'),
     "alpha is a finite number"),
    (sub('optimizer = {name = "adam", learning_rate = 0.01}', 'optimizer = ["adam"]'),
     "optimizer must be a name or a table"),
    (sub('optimizer = {name = "adam", learning_rate = 0.01}',
         'optimizer = {name = "sgd", nesterov = "yes"}'), "'nesterov' must be true or false"),
    (sub('loss = "binary_crossentropy"',
         'loss = {name = "binary_crossentropy", from_logits = 1}'),
     "'from_logits' must be true or false"),
    (CONFIG + 'early_stopping = {monitor = "val_loss", patience = "x"}\n',
     "'patience' must be an integer"),
    (sub("validation = 0.2", 'validation = "0.2"'), "'validation' must be a number"),
    (sub("[data]", "data = 1\n[dataa]"), "unknown key|must be a table"),
    # non-finite and absurd numbers: one line now, not NaN weights (or a full machine) later
    (sub("learning_rate = 0.01", "learning_rate = nan"), "must be a finite non-negative"),
    (sub("learning_rate = 0.01", "learning_rate = inf"), "must be a finite non-negative"),
    (sub("learning_rate = 0.01", "learning_rate = -0.1"), "must be a finite non-negative"),
    (sub('activation = "tanh"', 'activation = {name = "leaky_relu", alpha = inf}'),
     "alpha is a finite number"),
    (sub('optimizer = {name = "adam", learning_rate = 0.01}', 'optimizer = {name = "sgd", '
         'learning_rate = {name = "exponential_decay", initial_learning_rate = nan, '
         'decay_steps = 10, decay_rate = 0.5}}'), "'initial_learning_rate' must be a finite"),
    (sub("rate = 0.1", "rate = nan"), "rate in \\[0, 1\\)"),
    (sub("units = 4", "units = 1000000000000"), "units must be at most"),
    (sub("units = 4", "units = 10000000").replace("units = 1\n", "units = 10000000\n"),
     "the layers need 100,000,0.* parameters"),
    (sub("n = 100", "n = 1000000000000"), "'n' must be at most"),
    (sub('type = "dropout"\nrate = 0.1', 'type = "reshape"\nshape = [1000000000000, -1]'),
     "reshape.*at most"),
    # data that does not exist, layers that do not fit it
    (sub('source = "blobs"\nn = 100', 'source = "csv"\npath = "missing.csv"'),
     "data file not found: .*missing.csv"),
    (sub('source = "blobs"\nn = 100', 'source = "npz"\npath = "missing.npz"'),
     "data file not found"),
    (sub('source = "blobs"\nn = 100', 'source = "idx"\npath = "missing"'),
     "IDX directory not found"),
    (sub('source = "blobs"\nn = 100', 'source = "blobz"'), 'did you mean "blobs"'),
    (sub('type = "dropout"\nrate = 0.1', 'type = "reshape"\nshape = [3, 5]'),
     "do not fit the data \\(2,\\)"),
    (sub("units = 1\n", "units = 3\n"), "has 3 outputs but the data needs one output"),
    (sub("binary_crossentropy", "mean_squared_error"), "for regression"),
    # not a config at all
    ("[" * 5000, "not valid TOML"),
    ("a = " + "[" * 5000 + "]" * 5000, "not valid TOML"),
    ("\x00\xff garbage", "not valid TOML"),
]


@pytest.mark.parametrize("text, match", CONFIG_CASES,
                         ids=[f"config{i}" for i in range(len(CONFIG_CASES))])
def test_config_errors_are_one_line_before_training(tmp_path, text, match):
    config = tmp_path / "c.toml"
    config.write_text(text, encoding="utf-8", errors="surrogateescape")
    with alarm(HANG_SECONDS):  # a hang guard, not a speed test
        code, out, err, peak = run_cli(["train", str(config), "-o", str(tmp_path / "m.distill"),
                                        "-q"])
    line = check_error(code, err, ["train", config])
    assert code == 2 and re.search(match, line), line
    # Before training: no "training ..." announcement, nothing written, little time and memory.
    assert "training '" not in err and out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]
    assert peak < 64 << 20


def test_a_diverging_run_is_one_line_not_a_traceback(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[data]\nsource = "exp"\nn = 100\n[[model.layers]]\ntype = "dense"\n'
                      'units = 8\nactivation = "relu"\n[[model.layers]]\ntype = "dense"\n'
                      'units = 1\n[training]\nloss = "mean_squared_error"\nepochs = 3\n'
                      'optimizer = {name = "sgd", learning_rate = 1e20}\n')
    code, _, err, _ = run_cli(["train", str(config), "-o", str(tmp_path / "m.distill"), "-q"])
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("distill: error: training diverged"), err
    assert "Traceback" not in err and "Warning" not in err
    assert not (tmp_path / "m.distill").exists()


def test_config_name_cannot_choose_where_the_model_goes(tmp_path):
    (tmp_path / "run").mkdir()
    config = tmp_path / "run" / "c.toml"
    config.write_text(sub('name = "small"', 'name = "../../escaped"').replace("epochs = 2",
                                                                              "epochs = 1"))
    cwd = os.getcwd()
    os.chdir(tmp_path / "run")
    try:
        code, _, err, _ = run_cli(["train", "c.toml", "-q"])
    finally:
        os.chdir(cwd)
    assert code == 0, err
    assert (tmp_path / "run" / "escaped.distill").is_file()
    assert not list(tmp_path.parent.glob("escaped*")) and not list(tmp_path.glob("escaped*"))


# --------------------------------------------------------------------------- predict inputs

def write_npy_header_only(path: Path, shape, descr="<f4") -> Path:
    path.write_bytes(npy_header(shape, descr) + b"\0" * 64)
    return path


@pytest.mark.parametrize("make, match", [
    (lambda p: write_npy_header_only(p / "x.npy", (10 ** 12, 2)), "unreadable"),
    (lambda p: write_npy_header_only(p / "x.npy", (1 << 40,)), "unreadable"),
    (lambda p: write_npy_header_only(p / "x.npy", (2,), "|O"), "unreadable"),
    (lambda p: (p / "x.npy").write_bytes(npy(np.array([1 + 2j, 2]))), "complex"),
    (lambda p: (p / "x.npy").write_bytes(b"\x93NUMPY\x01"), "unreadable"),
    (lambda p: (p / "x.npy").write_bytes(b""), "unreadable"),
    (lambda p: (p / "x.npy").write_bytes(npy(np.zeros((2, 5), np.float32))),
     r"samples of shape \(5,\)"),
    (lambda p: (p / "x.npy").write_bytes(npy(np.float32(1))), r"samples of shape \(\)"),
    (lambda p: (p / "x.csv").write_text(""), "no data rows"),
    (lambda p: (p / "x.csv").write_text("1,2\n3\n"), "line 2: 1 columns, expected 2"),
    (lambda p: (p / "x.csv").write_bytes(b"\xff\xfe1,2\n"), "cannot read as CSV"),
    (lambda p: (p / "x.csv").write_text("a,b\n"), "no data rows"),
    (lambda p: (p / "x.csv").write_text("1,2\nx,\n"), "2 cells are not finite numbers"),
    (lambda p: (p / "x.npy").write_bytes(b"\x93NUMPY\x01\x00\x88\x13" + (
        b"{'descr': '<f4', 'fortran_order': False, 'shape': " + b"(" * 4950).ljust(5000)),
     "unreadable"),
    (lambda p: (p / "x.txt").write_text("1,2\n"), "expected a .npy or .csv"),
    (lambda p: (p / "x.npy").mkdir(), "not a regular file"),
    (lambda p: os.mkfifo(p / "x.npy"), "not a regular file"),
])
def test_predict_rejects_bad_inputs(small, tmp_path, make, match):
    make(tmp_path)
    x = next(p for p in tmp_path.iterdir() if p.stem == "x")
    with alarm(HANG_SECONDS):
        code, _, err, peak = run_cli(["predict", str(small), "--input", str(x)])
    line = check_error(code, err, ["predict", x])
    assert code == 2 and re.search(match, line) and peak < 16 << 20, (line, peak)


def test_predict_edge_inputs_work(small, tmp_path):
    def predict(x, *extra):
        np.save(tmp_path / "x.npy", x)
        code, out, err, _ = run_cli(["predict", str(small), "--input", str(tmp_path / "x.npy"),
                                     *extra])
        assert code == 0 and err == "", err
        return out
    assert predict(np.zeros((0, 2), np.float32)) == ""  # an empty batch is no samples out
    assert predict(np.zeros((0, 2), np.float32), "--classes") == ""
    assert predict(np.array([np.nan, 1], np.float32)).strip() == "nan,nan"  # NaN propagates
    assert predict(np.array([[1e300, 0]])).strip() == "nan,nan"  # beyond float32: inf, then NaN
    assert predict(np.array([[1, 2]], np.int64)).count(",") == 1
    assert predict(np.array([0.0, 1.0], np.float32), "--classes") == "yes\n"


def test_predict_and_train_outputs_that_cannot_be_files(small, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 2), np.float32))
    x = str(tmp_path / "x.npy")
    fails(["predict", small, "--input", x, "-o", tmp_path], "is a directory")
    fails(["predict", small, "--input", x, "-o", tmp_path / "nope" / "y.csv"],
          "no such directory")
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    fails(["train", config, "-o", tmp_path], "is a directory")
    os.mkfifo(tmp_path / "m.distill")
    fails(["train", config, "-o", tmp_path / "m.distill"], "not a regular file")
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_predict_to_a_fifo_writes_through_it(small, tmp_path):
    """`-o /dev/stdout` or a named pipe is written, not replaced by a regular file."""
    np.save(tmp_path / "x.npy", np.zeros((3, 2), np.float32))
    fifo = tmp_path / "y.csv"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    with alarm(HANG_SECONDS):
        code, _, err, _ = run_cli(["predict", str(small), "--input", str(tmp_path / "x.npy"),
                                   "-o", str(fifo)])
        reader.join()
    assert code == 0, err
    assert got and got[0].count("\n") == 3 and fifo.is_fifo()


def test_export_lang_list_is_checked(small, tmp_path):
    fails(["export", small, "--lang", "", "-o", tmp_path / "o"], "names no language")
    fails(["export", small, "--lang", ",", "-o", tmp_path / "o"], "names no language")
    fails(["export", small, "--lang", "c,cobol", "-o", tmp_path / "o"], "unknown language")
    code, _, err, _ = run_cli(["export", str(small), "--lang", "c,c", "-o", str(tmp_path / "o")])
    assert code == 0 and sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        ".distill-export", "s.c", "s.h", "s_test.c"], err
    assert not (tmp_path / "x").exists()



def test_golden_samples_refuse_absurd_counts(tmp_path):
    """The Python API gets the command line's bound too (golden_samples, hence export and
    verify, call codegen.golden_budget)."""
    model = ir.make_model("m", (1000,), [("d", "dense", {}, {
        "kernel": np.ones((1000, 2), np.float32), "bias": np.zeros(2, np.float32)})])
    assert codegen.golden_samples(model, 3).shape == (3, 1000)
    with pytest.raises(DistillError, match="golden vectors must be 0 or more, got -1"):
        codegen.golden_samples(model, -1)
    with pytest.raises(DistillError, match="golden vectors would exceed"):
        codegen.golden_samples(model, 1 << 20)
    with pytest.raises(DistillError, match="golden vectors would exceed"):
        codegen.export(model, ["c"], tmp_path / "out", samples=1 << 20)
    assert not (tmp_path / "out").exists()
