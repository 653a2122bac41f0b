"""Hostile model files through the command line: every case ends in exit 0, or in exactly one
stderr line `distill: error: ...` and exit 2; never a traceback, a hang or unbounded memory.

Each case is a damaged copy of a valid `.distill` (raw bytes, `model.json` edits, weight-entry
edits, zip-header edits) or of a Keras `.keras` / `.h5` file, run through `distill inspect`
(`--json`), `predict` and `export --lang all` by calling `distill.cli.main` in process, under a
per-case alarm (no hang) and tracemalloc (peak memory per case, bounded by the file's size plus
`MEMORY_SLACK`). tests/test_ir.py checks `ir.load` itself; this file checks what a user meets.

The mutators take a `random.Random`, so hypothesis drives them here (a few hundred cases in CI,
shrinkable) and `benchmarks/fuzz_models.py` drives the same ones with a seeded loop for the long
run (10,000+ cases; it prints cases tried, crashes, the largest memory and time per case).
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import signal
import struct
import time
import tracemalloc
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import HANG_SECONDS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill import cli, ir

MEMORY_SLACK = 200 << 20     # what one case may allocate beyond its file's size
CASE_SECONDS = HANG_SECONDS  # one case (all its commands); a hang trips the alarm
MAX_PREDICT_VALUES = 1 << 16  # predict only on models whose input a test can afford to make


# ----------------------------------------------------------------------------- the oracle

class Hang(Exception):
    """Raised by the per-case alarm."""


@dataclass
class Outcome:
    """What one case did: exit codes per command, the largest memory and time."""

    codes: dict[str, int] = field(default_factory=dict)
    peak: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def run_cli(argv: list[str]) -> tuple[int, str, str, int]:
    """`distill ARGV` in process: (exit code, stdout, stderr, peak traced bytes).

    An exception escaping `main` is a crash and propagates to the caller.
    """
    out, err = io.StringIO(), io.StringIO()
    tracemalloc.start()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return code, out.getvalue(), err.getvalue(), peak


def check_error(code: int, stderr: str, argv: list[str]) -> str | None:
    """The one-line-error promise; returns the error line (None on success)."""
    assert code in (0, 2), f"{argv}: exit {code}: {stderr!r}"
    assert "Traceback" not in stderr, f"{argv}: {stderr}"
    if code == 0:
        return None
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("distill: error: "), f"{argv}: {stderr!r}"
    assert lines[0].isprintable(), f"{argv}: {stderr!r}"
    return lines[0]


@contextlib.contextmanager
def alarm(seconds: float):
    def ring(signum, frame):
        raise Hang(f"no result after {seconds} s")
    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def check_model_file(path: Path, work: Path, export: str | None = "all",
                     seconds: float = CASE_SECONDS) -> Outcome:
    """Run a (possibly damaged) model file through inspect, predict and export (`export`
    languages, as `--lang` takes them; None: no export)."""
    outcome = Outcome()
    size = path.stat().st_size if path.is_file() else 0
    start = time.perf_counter()

    def step(name: str, argv: list[str]) -> tuple[int, str]:
        code, out, err, peak = run_cli(argv)
        outcome.codes[name] = code
        outcome.peak = max(outcome.peak, peak)
        line = check_error(code, err, argv)
        if line:
            outcome.errors.append(line)
        assert peak < size + MEMORY_SLACK, f"{argv}: {peak:,} bytes for a {size:,}-byte file"
        return code, out

    with alarm(seconds):
        code, _ = step("inspect", ["inspect", str(path)])
        if code == 0:
            code, text = step("inspect_json", ["inspect", "--json", str(path)])
            assert code == 0, "inspect worked once and failed the second time"
            info = json.loads(text)
            shape = tuple(info["input"]["shape"])
            if prod(shape) <= MAX_PREDICT_VALUES:
                x = np.zeros((2, *shape), np.float32)
                x[1] = np.nan  # NaN inputs are allowed: they propagate
                np.save(work / "x.npy", x)
                for name, extra in (("predict", []), ("classes", ["--classes"])):
                    code, text = step(name, ["predict", str(path), "--input",
                                             str(work / "x.npy"), *extra])
                    assert code == 0, "a model that loads must predict on inputs of its shape"
            if export:
                code, _ = step("export", ["export", str(path), "--lang", export, "-o",
                                          str(work / "out"), "--samples", "2"])
                if code == 0:
                    assert (work / "out" / ".distill-export").is_file()
    outcome.seconds = time.perf_counter() - start
    return outcome


# ------------------------------------------------------------------------------ the corpus

def base_model() -> ir.Model:
    """Every op, labels (with non-ASCII text), metadata the exporters read (samples,
    input_range) and free-form metadata."""
    r = np.random.default_rng(7)

    def w(*shape):
        return r.standard_normal(shape).astype(np.float32)
    layers = [
        ("norm", "normalize", {}, {"mean": w(6), "std": np.full(6, 2, np.float32)}),
        ("dense", "dense", {}, {"kernel": w(6, 8), "bias": w(8)}),
        ("leaky", "leaky_relu", {"alpha": 0.125}, {}),
        ("grid", "reshape", {"shape": [2, -1]}, {}),
        ("tanh", "tanh", {}, {}),
        ("flat", "flatten", {}, {}),
        ("relu", "relu", {}, {}),
        ("sig", "sigmoid", {}, {}),
        ("lin", "linear", {}, {}),
        ("out", "dense", {}, {"kernel": w(8, 3)}),
        ("probs", "softmax", {}, {}),
    ]
    meta = {"task": "classification", "samples": w(2, 6).tolist(),
            "input_range": [[-1.0] * 6, [1.0] * 6],
            "training": {"backend": "numpy", "epochs": 3, "metrics": {"test": {"loss": 0.5}}},
            "notes": "free text"}
    return ir.make_model("fuzz", (6,), layers, labels=["a", "bé", "c"], metadata=meta)


@dataclass
class Base:
    """A valid model file, taken apart for the mutators."""

    data: bytes
    doc: dict[str, Any]
    entries: list[tuple[str, bytes]]

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing case
        return f"Base({len(self.data)} bytes)"


def make_base(folder: Path, model: ir.Model | None = None) -> Base:
    path = folder / "base.distill"
    ir.save(model or base_model(), path)
    data = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        entries = [(i.filename, z.read(i)) for i in z.infolist()]
    return Base(data, json.loads(dict(entries)["model.json"]), entries)


def zip_bytes(entries: list[tuple[str, bytes]], deflate: set[str] = frozenset()) -> bytes:
    """A zip of `entries` in order (duplicates allowed), valid CRCs."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z, _quiet_duplicates():
        for name, data in entries:
            info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            z.writestr(info, data)
    return buf.getvalue()


@contextlib.contextmanager
def _quiet_duplicates():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": that is the point
        yield


def npy_header(shape: tuple, descr: str = "<f4", fortran: bool = False,
               version: tuple[int, int] = (1, 0)) -> bytes:
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": fortran, "shape": shape}
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=arr.dtype.hasobject)
    return buf.getvalue()


class _Pickled:
    """Unpickling this would call `_unpickled`; loading must never do it."""

    def __reduce__(self):
        return (_unpickled, ())


UNPICKLED: list[int] = []


def _unpickled():
    UNPICKLED.append(1)
    return 0


# Values a JSON edit puts anywhere in model.json. "__INF__" becomes a JSON 1e999 (inf).
HOSTILE_VALUES: list[Any] = [
    0, 1, 2, -1, 3, 2 ** 31, 2 ** 63, 10 ** 12, 10 ** 400, 1e308, -1e308, 5e-324, 0.5, -0.0,
    True, False, None, "", "x" * 10000, "\u0000", "\ud800", "\x1b[31m", "a\nb", "../../etc/x",
    "input", "dense", "probs", "relu", "softmax", "reshape", "normalize", "float32", "float64",
    "<f4", "distill-ir", "weights/dense/kernel.npy", [], [0], [1], [-1], [10 ** 12],
    [2 ** 28, 2], [1] * 9, [6], [2, 4], [8], [[1]], ["input"], ["dense"], {}, {"a": 1},
    {"shape": [6], "dtype": "float32"}, [[[[[[[[[[[]]]]]]]]]]], "__INF__",
]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every position in a JSON document, as key/index tuples."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def edit_json(doc: dict, rng: random.Random) -> str:
    """1-3 structural edits of a copy of `doc`; returns the new model.json text."""
    doc = json.loads(json.dumps(doc))
    for _ in range(rng.randint(1, 3)):
        paths = _paths(doc)
        path = rng.choice(paths[1:]) if len(paths) > 1 else ()
        if not path:
            break
        parent, key = _get(doc, path[:-1]), path[-1]
        action = rng.choice(["replace", "replace", "replace", "delete", "duplicate", "wrap",
                             "swap", "nodes"])
        if action == "replace":
            parent[key] = rng.choice(HOSTILE_VALUES)
        elif action == "delete":
            del parent[key]
        elif action == "duplicate" and isinstance(parent, list):
            parent.insert(key, json.loads(json.dumps(parent[key])))
        elif action == "wrap":
            parent[key] = [parent[key]]
        elif action == "swap":
            other = rng.choice(paths[1:])
            if other[:len(path)] == path or path[:len(other)] == other:
                continue  # one holds the other: swapping would make a cycle
            try:
                a, b = _get(doc, path), _get(doc, other)
                parent[key], _get(doc, other[:-1])[other[-1]] = b, a
            except (KeyError, IndexError, TypeError):
                pass
        elif action == "nodes" and isinstance(doc.get("nodes"), list) and doc["nodes"]:
            nodes = doc["nodes"]
            i, j = rng.randrange(len(nodes)), rng.randrange(len(nodes))
            choice = rng.choice(["reorder", "repeat", "drop"])
            if choice == "reorder":
                nodes[i], nodes[j] = nodes[j], nodes[i]
            elif choice == "repeat":
                nodes[i:i] = [nodes[i]] * rng.randint(1, 50)
            else:
                del nodes[i]
    return json.dumps(doc).replace('"__INF__"', "1e999")


def mutate_bytes(data: bytes, rng: random.Random, steps: int | None = None) -> bytes:
    buf = bytearray(data)
    for _ in range(steps or rng.randint(1, 4)):
        if not buf:
            break
        i = rng.randrange(len(buf))
        kind = rng.choice(["flip", "set", "truncate", "insert", "delete", "repeat"])
        if kind == "flip":
            buf[i] ^= 1 << rng.randrange(8)
        elif kind == "set":
            buf[i] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        elif kind == "truncate":
            del buf[i:]
        elif kind == "insert":
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == "delete":
            del buf[i:i + rng.randint(1, 64)]
        else:
            n = rng.randint(1, 64)
            buf[i:i] = buf[i:i + n] * rng.randint(1, 16)
    return bytes(buf)


def weight_variant(name: str, data: bytes, rng: random.Random) -> bytes | None:
    """A hostile replacement for one `.npy` weight entry (None: drop the entry)."""
    try:
        arr = np.load(io.BytesIO(data))
    except Exception:  # already damaged by an earlier edit (numpy raises many kinds)
        return mutate_bytes(data, rng)
    n = arr.size
    choice = rng.randrange(16)
    if choice == 0:
        return None
    if choice == 1:
        return b""
    if choice == 2:
        return data[:rng.randrange(len(data))]
    if choice == 3:
        return data + b"\0" * rng.randint(1, 64)
    if choice == 4:  # a header claiming absurd sizes over the real bytes
        return npy_header(rng.choice([(10 ** 12,), (2 ** 31, 2 ** 31), (n + 1,), (0,), ()])) \
            + data[-4 * n:]
    if choice == 5:
        return npy(arr.astype(rng.choice(["<f8", ">f4", "<f2", "<i4", "|u1", "<c8"])))
    if choice == 6:
        return npy(np.asfortranarray(arr.reshape(arr.shape[::-1]).T)) if arr.ndim == 2 \
            else npy(arr.reshape(-1, 1))
    if choice == 7:
        bad = arr.copy().reshape(-1)
        bad[rng.randrange(n)] = rng.choice([np.nan, np.inf, -np.inf])
        return npy(bad.reshape(arr.shape))
    if choice == 8:
        obj = np.empty(max(n // 8, 1), dtype=object)
        obj[0] = _Pickled()
        return npy(obj)
    if choice == 9:
        return npy(arr.reshape(-1)) if arr.ndim > 1 else npy(arr.reshape(1, -1))
    if choice == 10:
        return npy_header(arr.shape, version=(2, 0)) + arr.astype("<f4").tobytes()
    if choice == 11:  # header text numpy must parse without evaluating it
        text = rng.choice(["{'descr': '<f4', 'fortran_order': False, 'shape': (2**64,), }",
                           "{'descr': __import__('os').getcwd(), 'shape': (1,)}",
                           "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }",
                           "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}",
                           "(" * 500 + ")" * 500, "{'descr': 'O', 'fortran_order': False, "
                           "'shape': (1,), }"])
        header = text.encode() + b" " * (-(len(text) + 11) % 64) + b"\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header \
            + arr.astype("<f4").tobytes()
    if choice == 12:
        return b"\x93NUMPY\x09\x00" + data[8:]
    if choice == 13:
        return mutate_bytes(data, rng)
    if choice == 14:
        return npy(np.full(arr.shape, rng.choice([3.4e38, -0.0, 1e-45]), np.float32))
    return data * 2


def edit_entries(base: Base, rng: random.Random) -> bytes:
    """Weight entries replaced, dropped, duplicated, renamed, deflated or added."""
    entries = list(base.entries)
    deflate: set[str] = set()
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(entries))
        name, data = entries[i]
        action = rng.choice(["weight", "weight", "weight", "duplicate", "rename", "deflate",
                             "add", "json_first"])
        if action == "weight" and name.endswith(".npy"):
            new = weight_variant(name, data, rng)
            if new is None:
                del entries[i]
            else:
                entries[i] = (name, new)
        elif action == "duplicate":
            entries.insert(rng.randrange(len(entries) + 1),
                           (name, rng.choice([data, mutate_bytes(data, rng), b""])))
        elif action == "rename":
            entries[i] = (rng.choice(["../" + name, "/" + name, name.upper(), name + "\0",
                                      name.replace("/", "\\"), "weights/x/kernel.npy"]), data)
        elif action == "deflate":
            deflate.add(name)
        elif action == "add":
            entries.append((rng.choice(["weights/zero.npy", "model.json/x", "x" * 300]),
                            rng.choice([b"", b"\0" * (1 << 20), data])))
        else:
            entries.sort(key=lambda e: e[0] != "model.json")
    return zip_bytes(entries, deflate)


def edit_zip_headers(data: bytes, rng: random.Random) -> bytes:
    """Central-directory and local-header fields set to hostile values."""
    buf = bytearray(data)
    sigs = {b"PK\x01\x02": [(6, "H"), (8, "H"), (10, "H"), (16, "I"), (20, "I"), (24, "I"),
                            (28, "H"), (30, "H"), (42, "I")],
            b"PK\x03\x04": [(4, "H"), (6, "H"), (8, "H"), (18, "I"), (22, "I"), (26, "H")],
            b"PK\x05\x06": [(8, "H"), (10, "H"), (12, "I"), (16, "I"), (20, "H")]}
    spots = [(i, off, fmt) for sig, fields in sigs.items()
             for i in _find_all(bytes(buf), sig) for off, fmt in fields]
    for _ in range(rng.randint(1, 3)):
        i, off, fmt = rng.choice(spots)
        top = 0xFFFF if fmt == "H" else 0xFFFFFFFF
        value = rng.choice([0, 1, 8, 99, 0x20, 0x41, top, top - 1, rng.randrange(top + 1)])
        if i + off + struct.calcsize(fmt) <= len(buf):
            struct.pack_into("<" + fmt, buf, i + off, value)
    return bytes(buf)


def _find_all(data: bytes, sig: bytes) -> list[int]:
    out, i = [], data.find(sig)
    while i >= 0:
        out.append(i)
        i = data.find(sig, i + 1)
    return out


def rezip_doc(base: Base, text: str | bytes) -> bytes:
    return zip_bytes([(n, text.encode("utf-8", "surrogatepass") if isinstance(text, str)
                       and n == "model.json" else (text if n == "model.json" else d))
                      for n, d in base.entries])


MUTATORS: dict[str, Callable[[Base, random.Random], bytes]] = {
    "bytes": lambda b, r: mutate_bytes(b.data, r),
    "json": lambda b, r: rezip_doc(b, edit_json(b.doc, r)),
    "json_text": lambda b, r: rezip_doc(b, mutate_bytes(dict(b.entries)["model.json"], r)),
    "entries": edit_entries,
    "zip_headers": lambda b, r: edit_zip_headers(b.data, r),
}


# ----------------------------------------------------------------------------- CI run

@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Base, Path]:
    folder = tmp_path_factory.mktemp("fuzz")
    return make_base(folder), folder


def fuzz_one(base: tuple[Base, Path], mutator: str, rng: random.Random) -> Outcome:
    b, folder = base
    path = folder / "case.distill"
    path.write_bytes(MUTATORS[mutator](b, rng))
    # Every language now and then; C and NumPy (the cheap renders) otherwise.
    outcome = check_model_file(path, folder, "all" if rng.random() < 0.2 else "c,numpy")
    assert not UNPICKLED
    return outcome


FUZZ = settings(max_examples=50, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(rng=st.randoms(use_true_random=False))
def test_fuzz_raw_bytes(base, rng):
    fuzz_one(base, "bytes", rng)


@FUZZ
@given(rng=st.randoms(use_true_random=False))
def test_fuzz_model_json_edits(base, rng):
    fuzz_one(base, "json", rng)


@FUZZ
@given(rng=st.randoms(use_true_random=False))
def test_fuzz_model_json_text(base, rng):
    fuzz_one(base, "json_text", rng)


@settings(FUZZ, max_examples=30)
@given(rng=st.randoms(use_true_random=False))
def test_fuzz_weight_entries(base, rng):
    fuzz_one(base, "entries", rng)


@settings(FUZZ, max_examples=25)
@given(rng=st.randoms(use_true_random=False))
def test_fuzz_zip_headers(base, rng):
    fuzz_one(base, "zip_headers", rng)


def test_the_base_model_passes_every_command(base):
    b, folder = base
    outcome = check_model_file(folder / "base.distill", folder)
    assert outcome.codes == {"inspect": 0, "inspect_json": 0, "predict": 0, "classes": 0,
                             "export": 0}


def test_mutators_reach_past_the_archive(base):
    """A fuzzer that only ever trips the zip CRC tests nothing else: most JSON and entry edits
    must be refused for what they say (or load), not for being unreadable archives."""
    b, folder = base
    rng = random.Random(1)
    for name in ("json", "entries"):
        messages = []
        for _ in range(40):
            path = folder / "reach.distill"
            path.write_bytes(MUTATORS[name](b, rng))
            messages += check_model_file(path, folder, export=None).errors
        archive = [m for m in messages if "not a distill model file" in m]
        assert len(archive) < len(messages) / 2, (name, archive[:3])
