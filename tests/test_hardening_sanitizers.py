"""The C exports of all six reference workloads under AddressSanitizer, UndefinedBehavior-
Sanitizer, LeakSanitizer and valgrind memcheck (zero reports), and their stack use per predict
call from `-fstack-usage`, compared with the workspace size the header documents.

Each export's own self-test runs, and so does a harness that passes NULL pointers and NaN and
infinite inputs. valgrind is part of the test machine (CI installs it): its absence fails here
rather than skipping. Each tool is first shown a program with the bug it looks for, so a run
that reports nothing means something.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import WORKLOADS
from test_hardening_names import C_HARNESS, special_inputs

from distill import codegen, ir

SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer", "-g", "-O1"]
SAN_ENV = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:abort_on_error=0",
           "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
VALGRIND = ["valgrind", "--error-exitcode=99", "--leak-check=full", "--show-leak-kinds=all",
            "--errors-for-leak-kinds=all", "--track-origins=yes", "-q"]
# What predict's frame may hold beyond the workspace: saved registers, alignment, a canary.
STACK_SLACK = 256
REPORTS = re.compile(r"ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: \w+Sanitizer")


def test_valgrind_and_the_sanitizers_are_installed():
    assert shutil.which("valgrind"), "valgrind is missing: CI must `apt-get install valgrind`"
    assert shutil.which("gcc")


def run(cmd: list[str], cwd: Path, stdin: bytes = b"", env=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True, env=env, timeout=600)


def test_each_tool_catches_its_bug(tmp_path):
    (tmp_path / "bugs.c").write_text(
        "#include <stdlib.h>\n#include <stdio.h>\n"
        "int main(int argc, char **argv) {\n"
        "    int *a = malloc(4 * sizeof *a);\n    int k = atoi(argv[1]);\n"
        "    if (k == 0) { a[4] = 1; free(a); return 0; }          /* heap overflow */\n"
        "    if (k == 1) { return a[1] ? 3 : 4; }                  /* leak, uninit */\n"
        "    if (k == 2) { int s = 0x7fffffff; s += argc; printf(\"%d\", s); free(a); }\n"
        "    return 0;\n}\n")
    subprocess.run(["gcc", *SANITIZE, "-o", "san", "bugs.c"], cwd=tmp_path, check=True)
    subprocess.run(["gcc", "-g", "-O0", "-o", "plain", "bugs.c"], cwd=tmp_path, check=True)
    for k in ("0", "1", "2"):  # overflow (ASan), leak (LSan), signed overflow (UBSan)
        proc = run(["./san", k], tmp_path, env=SAN_ENV)
        assert proc.returncode != 0 and REPORTS.search(proc.stderr.decode()), k
    for k in ("0", "1"):  # invalid write, uninitialised read and leak (memcheck)
        proc = run([*VALGRIND, "./plain", k], tmp_path)
        assert proc.returncode == 99, (k, proc.stderr.decode()[-2000:])


def export_c(model: ir.Model, folder: Path) -> tuple[str, int]:
    """Export to C with a runtime harness beside it; (name, NAME_WORKSPACE_SIZE)."""
    codegen.export(model, ["c"], folder, samples=16)
    name = next(p.stem for p in folder.glob("*.h"))
    header = (folder / f"{name}.h").read_text()
    workspace = int(re.search(rf"#define {name.upper()}_WORKSPACE_SIZE (\d+)", header).group(1))
    c_class = (f"    bad += check({name}_predict_class(NULL) < 0, 1, \"predict_class(NULL)\");"
               if model.labels else "")
    (folder / "harness.c").write_text(C_HARNESS.format(name=name, N=name.upper(),
                                                       classifier=c_class))
    return name, workspace


def check_clean(proc: subprocess.CompletedProcess, what: str) -> None:
    text = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0 and not REPORTS.search(text), f"{what}: {text[-3000:]}"


def sanitized_and_valgrind(model: ir.Model, folder: Path) -> dict[str, int]:
    name, workspace = export_c(model, folder)
    specials = special_inputs(model).astype("<f4").tobytes()
    for exe, main in (("test", f"{name}_test.c"), ("harness", "harness.c")):
        subprocess.run(["gcc", "-std=c99", *SANITIZE, "-o", f"{exe}_san", main, f"{name}.c",
                        "-lm"], cwd=folder, check=True)
        check_clean(run([f"./{exe}_san"], folder, specials, SAN_ENV), f"{exe} under sanitizers")
        subprocess.run(["gcc", "-std=c99", "-O2", "-g", "-o", f"{exe}_vg", main, f"{name}.c",
                        "-lm"], cwd=folder, check=True)
        proc = run([*VALGRIND, f"./{exe}_vg"], folder, specials)
        check_clean(proc, f"{exe} under valgrind")
        assert proc.stderr.decode().strip() == "", proc.stderr.decode()  # -q: silent unless bad
    return stack_usage(name, workspace, folder)


def stack_usage(name: str, workspace: int, folder: Path) -> dict[str, int]:
    """Frame sizes from gcc -fstack-usage at the README's -O2; checked against the header."""
    subprocess.run(["gcc", "-std=c99", "-O2", "-fstack-usage", "-c", f"{name}.c", "-o",
                    f"{name}.o"], cwd=folder, check=True)
    frames = {}
    for line in (folder / f"{name}.su").read_text().splitlines():
        where, size, kind = line.rsplit(None, 2)
        function = where.rsplit(":", 1)[-1]
        assert kind == "static", f"{function} has a {kind} frame (a VLA or alloca)"
        frames[function] = int(size)
    ws_bytes = 4 * workspace
    header = (folder / f"{name}.h").read_text()
    documented = int(re.search(r"RAM:\s+(\d+) bytes of workspace", header).group(1))
    assert documented == ws_bytes, (documented, ws_bytes)
    tile = re.search(r"(\d+) bytes of stack for a convolution's tile", header)
    tile_bytes = int(tile.group(1)) if tile else 0
    predict = frames[f"{name}_predict"]
    assert ws_bytes <= predict <= ws_bytes + tile_bytes + STACK_SLACK, (predict, ws_bytes)
    assert frames[f"{name}_predict_ws"] <= tile_bytes + STACK_SLACK, frames
    # predict_batch may hand tiles of samples to a helper with a documented stack of its own;
    # its deepest use is its frame plus the largest helper frame (a bound: the helpers are
    # static functions it calls, and none calls another).
    batch = re.search(rf"#define {name.upper()}_BATCH_WORKSPACE_SIZE (\d+)", header)
    batch_bytes = 4 * int(batch.group(1)) if batch else 0
    helpers = [v for k, v in frames.items() if not k.startswith(f"{name}_predict")]
    deepest = frames[f"{name}_predict_batch"] + max(helpers, default=0)
    assert deepest <= ws_bytes + batch_bytes + 2 * STACK_SLACK, (deepest, frames)
    return {"workspace_bytes": ws_bytes, "tile_bytes": tile_bytes,
            "batch_workspace_bytes": batch_bytes,
            "predict_batch_deepest": deepest, **frames}


def every_op_model() -> ir.Model:
    from test_hardening_fuzz import base_model
    return base_model()


def test_every_op_model_is_clean_under_sanitizers_and_valgrind(tmp_path, record_property):
    figures = sanitized_and_valgrind(every_op_model(), tmp_path)
    record_property("stack", figures)


@pytest.mark.slow
@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_c_is_clean_under_sanitizers_and_valgrind(workload, name, tmp_path,
                                                           record_property):
    model = workload(name)[1].model
    figures = sanitized_and_valgrind(model, tmp_path)
    record_property("stack", figures)
    print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))


def test_a_model_without_workspace_has_a_minimal_frame(tmp_path):
    model = ir.make_model("flat", (2, 3), [("f", "flatten", {}, {})])
    name, workspace = export_c(model, tmp_path)
    assert workspace == 0
    frames = stack_usage(name, workspace, tmp_path)
    assert frames[f"{name}_predict"] <= STACK_SLACK
    x = np.arange(6, dtype=np.float32)
    assert np.array_equal(ir.run(model, x.reshape(2, 3)), x)
