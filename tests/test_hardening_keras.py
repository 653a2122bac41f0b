"""Hostile Keras files (`.keras` archives and legacy `.h5`) through `distill inspect`, `import`
and `export`: every case ends in exit 0, or one line `distill: error: ...` and exit 2, with no
traceback, no hang and bounded memory; nothing in a file runs code (Lambda layers, foreign
modules) and no config of a few bytes makes Keras allocate gigabytes.

Keras files are damaged by truncation, bit flips, `config.json` edits (the same structural
edits as for `.distill`), a weights file replaced by junk, a `.keras` that is a zip of junk, an
empty file. The command line reads Keras files in a worker process under a time limit (HDF5 can
loop forever on a damaged file, which the long fuzz run found), so memory is the growth of the
worker's peak RSS, and a hang or a crash of the worker is one line like any other error. The
long run is `benchmarks/fuzz_models.py`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import resource
import signal
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG_SECONDS, require
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hardening_fuzz import (
    alarm,
    check_error,
    edit_json,
    mutate_bytes,
    run_cli,
    zip_bytes,
)

require("keras")  # tensorflow-cpu is part of the [test] extra
MAX_RSS_GROWTH = 200 << 20
# sha256 of the .h5 on which libhdf5 loops (tensorflow-cpu 2.21, Keras 3.15, h5py as installed).
LOOPING_H5 = "168943e538cfdc0d98f0b19ac121a31ab793b47e396bd14d4bccb934a6717fa9"


def peak_rss() -> int:
    """The peak RSS of the process reading Keras files: the CLI's worker once it runs."""
    from distill.backends import keras as reader
    if reader._WORKER.pid:
        status = Path(f"/proc/{reader._WORKER.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def keras_models(folder: Path) -> dict[str, Path]:
    """A small Sequential saved both ways, and one holding a Lambda (never to be run)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    sentinel = folder / "LAMBDA_RAN"
    # The path is a constant in the lambda's code (a closure would not serialize).
    touch = eval(f"lambda x: (open({str(sentinel)!r}, 'w').write('ran'), x)[1]")
    lam = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(touch),
                            keras.layers.Dense(2)])
    paths = {}
    for name, m in (("m", model), ("lam", lam)):
        for suffix in (".keras", ".h5"):
            paths[name + suffix] = folder / f"{name}{suffix}"
            m.save(paths[name + suffix])
    sentinel.unlink(missing_ok=True)  # saving traced the lambda once
    return paths


@pytest.fixture(scope="module")
def kfiles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras")
    with alarm(HANG_SECONDS):
        paths = keras_models(folder)
    code, _, err, _ = run_cli(["inspect", str(paths["m.keras"])])  # warm up: import TF once
    assert code == 0, err
    return folder, paths


def entries(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def replace(items: list[tuple[str, bytes]], name: str, data: bytes) -> list[tuple[str, bytes]]:
    return [(n, data if n == name else d) for n, d in items]


def mutate_keras(kind: str, paths: dict[str, Path], rng: random.Random) -> tuple[str, bytes]:
    """(suffix, bytes) of one damaged Keras file."""
    keras_bytes = paths["m.keras"].read_bytes()
    h5_bytes = paths["m.h5"].read_bytes()
    items = entries(paths["m.keras"])
    if kind == "keras_bytes":
        return ".keras", mutate_bytes(keras_bytes, rng)
    if kind == "keras_config":
        doc = json.loads(dict(items)["config.json"])
        return ".keras", zip_bytes(replace(items, "config.json", edit_json(doc, rng).encode(
            "utf-8", "surrogatepass")))
    if kind == "keras_weights":  # past the zip CRC, into HDF5
        weights = dict(items)["model.weights.h5"]
        return ".keras", zip_bytes(replace(items, "model.weights.h5",
                                           mutate_bytes(weights, rng)))
    if kind == "keras_junk":
        junk = [(rng.choice(["config.json", "metadata.json", "model.weights.h5", "x"]),
                 rng.choice([b"", b"{}", b"null", b"[]", os.urandom(rng.randint(1, 4096)),
                             b'{"class_name": "Sequential"}', h5_bytes[:rng.randrange(4096)]]))
                for _ in range(rng.randint(0, 4))]
        return ".keras", zip_bytes(junk)
    if kind == "h5_bytes":
        return ".h5", mutate_bytes(h5_bytes, rng)
    if kind == "h5_truncate":
        return ".h5", h5_bytes[:rng.randrange(len(h5_bytes))]
    raise ValueError(kind)


KINDS = ["keras_bytes", "keras_config", "keras_weights", "keras_junk", "h5_bytes",
         "h5_truncate"]


def check_keras_file(path: Path, work: Path, seconds: float = HANG_SECONDS) -> dict[str, int]:
    """inspect, import and export a Keras file; returns the exit code of each."""
    codes = {}
    with alarm(seconds):
        for name, argv in (("inspect", ["inspect", str(path)]),
                           ("import", ["import", str(path), "-o", str(work / "k.distill")]),
                           ("export", ["export", str(path), "--lang", "c", "-o",
                                       str(work / "kout"), "--samples", "2"])):
            code, _, err, _ = run_cli(argv)
            check_error(code, err, argv)
            codes[name] = code
            if code == 2:
                break  # the same file fails the same way through every command
    return codes


@settings(max_examples=50, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), rng=st.randoms(use_true_random=False))
def test_fuzz_keras_files(kfiles, kind, rng):
    folder, paths = kfiles
    before = peak_rss()
    suffix, data = mutate_keras(kind, paths, rng)
    path = folder / f"case{suffix}"
    path.write_bytes(data)
    check_keras_file(path, folder)
    growth = peak_rss() - before
    assert growth < MAX_RSS_GROWTH + len(data), f"peak RSS grew by {growth:,} bytes"


@pytest.mark.parametrize("make, match", [
    (lambda p, f: (p.with_suffix(".h5"), b""), "empty file"),
    (lambda p, f: (p.with_suffix(".keras"), b""), "empty file"),
    (lambda p, f: (p.with_suffix(".keras"), zip_bytes([("junk.bin", os.urandom(100))])),
     "no config.json"),
    (lambda p, f: (p.with_suffix(".keras"), b"PK\x03\x04" + os.urandom(200)),
     "not a Keras model archive"),
    (lambda p, f: (p.with_suffix(".h5"), b"\x89HDF\r\n\x1a\n" + os.urandom(500)),
     "not a readable HDF5"),
    (lambda p, f: (p.with_suffix(".h5"), f["m.keras"].read_bytes()), "not a readable HDF5"),
    (lambda p, f: (p.with_suffix(".keras"), f["m.h5"].read_bytes()), "not a Keras model"),
    (lambda p, f: (p.with_suffix(".keras"), f["m.keras"].read_bytes()[:300]),
     "not a Keras model archive"),
])
def test_damaged_keras_files(kfiles, make, match):
    folder, paths = kfiles
    path, data = make(folder / "named", paths)
    path.write_bytes(data)
    for argv in (["inspect", path], ["import", path, "-o", folder / "n.distill"],
                 ["export", path, "--lang", "c", "-o", folder / "nout"]):
        code, _, err, _ = run_cli([str(a) for a in argv])
        line = check_error(code, err, argv)
        assert code == 2 and match in line, line
    assert not (folder / "n.distill").exists() and not (folder / "nout").exists()


def test_keras_zip_bomb_is_refused_unread(kfiles):
    """A `.keras` whose weights entry inflates to 256 MiB: refused from its headers."""
    folder, paths = kfiles
    items = entries(paths["m.keras"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in items:
            if name == "model.weights.h5":
                info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with z.open(info, "w", force_zip64=True) as f:
                    block = b"\0" * (1 << 20)
                    for _ in range(256):
                        f.write(block)
            else:
                z.writestr(name, data)
    path = folder / "bomb.keras"
    path.write_bytes(buf.getvalue())
    assert path.stat().st_size < 4 << 20
    before = peak_rss()
    code, _, err, peak = run_cli(["inspect", str(path)])
    assert code == 2 and "zip bomb" in err, err
    assert peak < 16 << 20
    assert peak_rss() - before < 64 << 20


@pytest.mark.parametrize("units, width", [(10 ** 7, 10 ** 5), (10 ** 5, 10 ** 5), (8, 10 ** 8)])
def test_keras_config_declaring_huge_layers_allocates_nothing(kfiles, units, width):
    """Keras builds (and randomly fills) every declared weight before reading the file's: a
    15 KB file declaring a 10**5 x 10**5 Dense would cost 40 GB; refused from the config."""
    folder, paths = kfiles
    items = entries(paths["m.keras"])
    doc = json.loads(dict(items)["config.json"])
    layers = doc["config"]["layers"]
    layers[0]["config"]["batch_shape"] = [None, width]
    layers[1]["config"]["units"] = units
    layers[1]["build_config"]["input_shape"] = [None, width]
    path = folder / "huge.keras"
    path.write_bytes(zip_bytes(replace(items, "config.json", json.dumps(doc).encode())))
    before = peak_rss()
    with alarm(HANG_SECONDS):
        code, _, err, _ = run_cli(["inspect", str(path)])
    assert code == 2 and "distill imports small models only" in err, err
    assert peak_rss() - before < 64 << 20


@pytest.mark.parametrize("name", ["lam.keras", "lam.h5"])
def test_lambda_layers_are_never_run(kfiles, name):
    folder, paths = kfiles
    for argv in (["inspect", paths[name]], ["import", paths[name], "-o", folder / "l.distill"]):
        code, _, err, _ = run_cli([str(a) for a in argv])
        line = check_error(code, err, argv)
        assert code == 2 and "Lambda" in line, line
    assert not (folder / "LAMBDA_RAN").exists()


def test_configs_naming_foreign_modules_are_never_imported(kfiles, tmp_path, monkeypatch):
    """Keras's safe mode deserializes only Keras's own classes and functions: a config naming
    a module on sys.path neither imports it nor calls into it."""
    folder, paths = kfiles
    (tmp_path / "evil_mod.py").write_text(
        f"open({str(tmp_path / 'IMPORTED')!r}, 'w').write('x')\n"
        f"def act(x):\n    open({str(tmp_path / 'CALLED')!r}, 'w').write('x')\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    items = entries(paths["m.keras"])
    edits = [
        lambda d: d["config"]["layers"][1]["config"].update(activation={
            "module": "evil_mod", "class_name": "function", "config": "act",
            "registered_name": "act"}),
        lambda d: d["config"]["layers"].__setitem__(1, {
            "module": "evil_mod", "class_name": "act", "config": {}, "registered_name": "act"}),
        lambda d: d.update(module="evil_mod", class_name="act"),
        lambda d: d["config"]["layers"][1]["config"].update(activation={
            "module": "os", "class_name": "function", "config": "system",
            "registered_name": "system"}),
    ]
    for i, edit in enumerate(edits):
        doc = json.loads(dict(items)["config.json"])
        edit(doc)
        path = tmp_path / f"evil{i}.keras"
        path.write_bytes(zip_bytes(replace(items, "config.json", json.dumps(doc).encode())))
        code, _, err, _ = run_cli(["inspect", str(path)])
        assert code == 2 and check_error(code, err, ["inspect", path]), err
    assert "evil_mod" not in sys.modules
    assert not (tmp_path / "IMPORTED").exists() and not (tmp_path / "CALLED").exists()


def test_tensorflow_chatter_stays_off_stderr(kfiles):
    """A subprocess, as a user runs it: TensorFlow's native start-up logging (oneDNN, absl)
    would make a one-line error several lines."""
    import subprocess
    folder, paths = kfiles
    for path, want in ((paths["lam.h5"], 2),):
        proc = subprocess.run([sys.executable, "-m", "distill.cli", "inspect", str(path)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == want, proc.stderr
        assert len(proc.stderr.splitlines()) == (1 if want else 0), proc.stderr


def test_a_clean_keras_file_imports_and_exports(kfiles):
    folder, paths = kfiles
    for name in ("m.keras", "m.h5"):
        codes = check_keras_file(paths[name], folder)
        assert codes == {"inspect": 0, "import": 0, "export": 0}
        x = np.zeros((1, 4), np.float32)
        np.save(folder / "x.npy", x)
        code, out, err, _ = run_cli(["predict", str(folder / "k.distill"), "--input",
                                     str(folder / "x.npy")])
        assert code == 0 and out.count(",") == 2, err


def test_a_file_that_makes_hdf5_loop_is_one_line_within_the_time_limit(kfiles, monkeypatch):
    """The case benchmarks/fuzz_models.py found (seed 1, case 958): a bit-flipped `.h5` on
    which libhdf5 spins forever reading the model config. The worker is killed at the limit."""
    from distill.backends import keras as reader
    folder, paths = kfiles
    suffix, data = mutate_keras("h5_bytes", paths, random.Random("1:keras:958"))
    path = folder / f"loops{suffix}"
    path.write_bytes(data)
    monkeypatch.setattr(reader, "KERAS_SECONDS", 5.0)  # the file loops: any limit is reached
    with alarm(HANG_SECONDS):
        code, _, err, _ = run_cli(["inspect", str(path)])
    line = check_error(code, err, ["inspect", path])
    if hashlib.sha256(data).hexdigest() == LOOPING_H5:  # the file as the fuzzer made it
        assert code == 2 and "did not finish reading it within 5 s" in line, line
    # (Another Keras may save other bytes; any one-line outcome is still the promise.)
    monkeypatch.undo()  # the clean file is read under the default limit: a busy machine is slow
    code, _, err, _ = run_cli(["inspect", str(paths["m.h5"])])  # a fresh worker takes over
    assert code == 0, err


def test_a_crashing_reader_is_one_line(kfiles, monkeypatch):
    """A worker that dies while it has a request (a segfault in native code) is reported, and
    replaced. It dies once the request is sent: not after some seconds, which a busy machine
    might spend before sending it."""
    from distill.backends import keras as reader
    folder, paths = kfiles
    suffix, data = mutate_keras("h5_bytes", paths, random.Random("1:keras:958"))
    path = folder / f"crash{suffix}"
    path.write_bytes(data)
    run_cli(["inspect", str(paths["m.h5"])])  # a running worker
    pid = reader._WORKER.pid
    fill = reader._Worker._fill

    def crash_first(self, path, deadline, what, seconds):
        if what == "read" and self.proc.pid == pid and self.proc.poll() is None:
            os.kill(pid, signal.SIGSEGV)
        return fill(self, path, deadline, what, seconds)
    monkeypatch.setattr(reader._Worker, "_fill", crash_first)
    with alarm(HANG_SECONDS):
        code, _, err, _ = run_cli(["inspect", str(path)])
    line = check_error(code, err, ["inspect", path])
    assert code == 2 and "Keras crashed reading it (killed by signal 11)" in line, line
    code, _, err, _ = run_cli(["inspect", str(paths["m.h5"])])
    assert code == 0 and reader._WORKER.pid != pid, err


@pytest.mark.parametrize("value", ["abc", "1e400", "-1", "0", "nan", ""])
def test_a_bad_keras_time_limit_is_one_line(kfiles, monkeypatch, value):
    folder, paths = kfiles
    monkeypatch.setenv("DISTILL_KERAS_TIMEOUT", value)
    argv = ["inspect", str(paths["m.keras"])]
    code, _, err, _ = run_cli(argv)
    line = check_error(code, err, argv)
    assert code == 2 and "DISTILL_KERAS_TIMEOUT must be a number of seconds" in line, line
    monkeypatch.setenv("DISTILL_KERAS_TIMEOUT", "90.5")
    assert run_cli(argv)[0] == 0
