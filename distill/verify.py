"""Verification: build every export with its real toolchain, run it, compare with `ir.run`.

Where it sits: the end of the flow. An export carries its own self-test with golden vectors
computed by the reference interpreter (C `NAME_test.c`, Go `NAME_test.go`, Python
`test_NAME.py`); verification exports with a few hundred golden vectors, builds and runs those
self-tests with the commands in each `templates/<lang>/target.toml`, and reads back the line
each prints: max abs error, max rel error, max ULP distance, PASS or FAIL. ONNX runs in
onnxruntime, in process. The tolerance is `codegen.ABS_TOL + codegen.REL_TOL * |reference|`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from . import codegen, ir
from .errors import DistillError

_LINE = re.compile(r"(\d+) samples, max abs error (\S+), max rel error (\S+), max ULP (\d+): "
                   r"(PASS|FAIL)")


@dataclass
class Result:
    lang: str
    ok: bool
    samples: int = 0
    max_abs: float = float("nan")
    max_rel: float = float("nan")
    max_ulp: int = -1
    detail: str = ""

    def line(self) -> str:
        if not self.samples:
            return f"{self.lang:6} FAIL  {self.detail}"
        return (f"{self.lang:6} {'pass' if self.ok else 'FAIL'}  {self.samples} samples  "
                f"max abs {self.max_abs:.3g}  max rel {self.max_rel:.3g}  "
                f"max ULP {self.max_ulp}" + (f"  {self.detail}" if self.detail else ""))


def tools() -> dict[str, str]:
    """The toolchain commands, from the environment where set (CC, GO, PYTHON)."""
    return {"cc": os.environ.get("CC", "cc"), "go": os.environ.get("GO", "go"),
            "python": shlex.quote(sys.executable)}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOTOOLCHAIN", "local")  # never fetch a toolchain: build with what is here
    env.setdefault("GOFLAGS", "-mod=mod")
    env.pop("PYTHONPATH", None)
    return env


def run_self_test(lang: str, folder: Path, name: str, timeout: float = 600) -> Result:
    """Build and run one text target's exported self-test in `folder`."""
    target = codegen.text_targets()[lang]
    values = {**tools(), "name": name}
    output = []
    for command in (*target.build, *target.run):
        cmd = command.format(**values)
        exe = shlex.split(cmd)[0]
        if not exe.startswith("./") and shutil.which(exe) is None:
            return Result(lang, False, detail=f"{exe} is not installed (needed for {lang})")
        try:
            proc = subprocess.run(cmd, shell=True, cwd=folder, env=_env(), capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Result(lang, False, detail=f"`{cmd}` took longer than {timeout:.0f} s")
        output.append(proc.stdout + proc.stderr)
        if proc.returncode != 0 and not _LINE.search(proc.stdout + proc.stderr):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
            return Result(lang, False, detail=f"`{cmd}` failed: " + " | ".join(tail))
    match = _LINE.search("\n".join(output))
    if not match:
        return Result(lang, False, detail="the self-test printed no result line")
    n, max_abs, max_rel, max_ulp, verdict = match.groups()
    return Result(lang, verdict == "PASS", int(n), float(max_abs), float(max_rel), int(max_ulp))


def check_onnx(model: ir.Model, path: Path, samples: int) -> Result:
    try:
        import onnxruntime as ort
    except ImportError:
        return Result("onnx", False, detail="onnxruntime is not installed "
                      "(pip install 'distill[onnx]')")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = codegen.golden_samples(model, samples)
    with np.errstate(all="ignore"):
        want = ir.run(model, x).astype(np.float32)
    keep = np.isfinite(want.reshape(len(x), -1)).all(axis=1)
    x, want = x[keep], want[keep]
    # the graph takes each input on its own and gives each output on its own: pack them
    cuts = np.cumsum([prod(shape) for shape in model.input_shapes])[:-1]
    feed = {name: part.reshape(len(x), *shape) for (name, shape), part in
            zip(model.inputs, np.split(x.reshape(len(x), -1), cuts, axis=1))}
    outs = session.run(None, feed)
    got = outs[0] if len(outs) == 1 else \
        np.concatenate([o.reshape(len(x), -1) for o in outs], axis=1)
    return compare("onnx", got, want)


def compare(lang: str, got: np.ndarray, want: np.ndarray) -> Result:
    got, want = got.astype(np.float32), want.astype(np.float32)
    err = np.abs(got.astype(np.float64) - want)
    ok = bool(np.all(err <= codegen.ABS_TOL + codegen.REL_TOL * np.abs(want.astype(np.float64))))
    nz = want != 0
    rel = float((err[nz] / np.abs(want[nz].astype(np.float64))).max(initial=0.0))

    def ordered(a):
        bits = a.view(np.int32).astype(np.int64)
        return np.where(bits < 0, np.int64(-(2**31)) - bits, bits)
    ulp = int(np.abs(ordered(got) - ordered(want)).max(initial=0))
    return Result(lang, ok, len(got), float(err.max(initial=0.0)), rel, ulp)


WORK_PREFIX = "distill-verify-"  # then the PID: a killed run's folder is found and removed


def _remove_stale_work(root: Path) -> None:
    """Remove the build folders of killed `verify` runs (their process is gone), ours only."""
    for path in root.glob(f"{WORK_PREFIX}*"):
        found = re.fullmatch(re.escape(WORK_PREFIX) + r"(\d+)-\w+", path.name)
        try:
            ours = path.is_dir() and not path.is_symlink() and path.stat().st_uid == os.getuid()
        except OSError:
            continue
        if found and ours and not ir.process_running(int(found[1])):
            shutil.rmtree(path, ignore_errors=True)


def verify(model: ir.Model, langs: list[str], samples: int = 256,
           name: str | None = None, weights: str = "auto") -> list[Result]:
    """Export `model` to each language with `samples` golden vectors, build, run, compare."""
    problems = codegen.unsupported(model, langs)
    if problems:
        raise DistillError("cannot export: " + "; ".join(problems))
    _remove_stale_work(Path(tempfile.gettempdir()))
    work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-"))
    try:
        results = []
        for lang in langs:
            folder = work / lang
            files = codegen.render(model, lang, name, samples, weights=weights)
            for rel, data in files.items():
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                (folder / rel).write_bytes(data)
            if lang == "onnx":
                results.append(check_onnx(model, folder / next(iter(files)), samples))
            else:
                target = codegen.text_targets()[lang]
                results.append(run_self_test(lang, folder,
                                             codegen.export_name(model, target, name)))
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)
