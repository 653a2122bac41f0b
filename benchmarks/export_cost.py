"""Export cost: how export time, build time and code size grow with the parameter count.

Where it sits: outside the package and outside the tests; run by hand when the code generator
or the templates change:

    python benchmarks/export_cost.py [--quick] [--json PATH]

For dense ReLU networks of h-h-h-10 units with about 1k to 4M parameters, and for both weight
storages (`weights="literal"`: shortest round-trip decimals; `weights="blob"`: raw bits, C as
32-bit words in a union, Go as an embedded little-endian file), it measures:

- export time: `codegen.export` to one language, golden vectors included;
- C: `cc -std=c99 -O2 -c NAME.c` time, the object's size and a linked program's size;
- Go: `go build` time of a program importing the package (standard library already built, the
  package itself never cached) and the program's size;
- emitted source size: NAME.c + NAME.h, or NAME.go + NAME.weights (the self-tests excluded).

It prints one table per storage with bytes per parameter and seconds per million parameters,
and the growth exponent of each figure between the two largest sizes of the run (1.0 is
linear: twice the parameters, twice the cost). The figures for the targets are those of the
model with about a million parameters: export + C compile under 5 s, go build under 10 s,
source under 14 bytes per parameter.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from distill import codegen, ir  # noqa: E402

SIZES = (1_000, 4_000, 16_000, 64_000, 256_000, 1_000_000, 4_000_000)
GO_ENV = {"GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}

C_MAIN = """#include "{name}.h"
#include <stdio.h>
int main(void)
{{
    static float in[{upper}_INPUT_SIZE], out[{upper}_OUTPUT_SIZE];
    {name}_predict(in, out);
    printf("%g\\n", (double)out[0]);
    return 0;
}}
"""

GO_MAIN = """package main

import (
\t"fmt"

\tmodel "{name}"
)

func main() {{
\tout, err := model.Predict(make([]float32, model.InputSize))
\tfmt.Println(out[0], err)
}}
"""


def network(params: int) -> ir.Model:
    """h-h-h-10 ReLU/softmax with h chosen for about `params` parameters (2h^2 + 13h + 10)."""
    h = max(2, round((-13 + math.sqrt(169 + 8 * (params - 10))) / 4))
    rng = np.random.default_rng(h)
    sizes = (h, h, h, 10)
    layers: list[tuple[str, str, dict, dict]] = []
    for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append((f"dense_{k}", "dense", {}, {
            "kernel": rng.normal(0, math.sqrt(2 / a), (a, b)).astype(np.float32),
            "bias": rng.normal(0, 0.01, b).astype(np.float32)}))
        layers.append((f"act_{k}", "softmax" if k == 2 else "relu", {}, {}))
    label = f"{params // 1_000_000}m" if params >= 1_000_000 else f"{params // 1000}k"
    return ir.make_model(f"net_{label}", (h,), layers)


def timed(cmd: Sequence[str], cwd: Path, env: dict | None = None) -> float:
    started = time.perf_counter()
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode:
        raise RuntimeError(f"`{' '.join(cmd)}` failed in {cwd}:\n{proc.stderr}")
    return time.perf_counter() - started


def size_of(folder: Path, names: Sequence[str]) -> int:
    return sum((folder / n).stat().st_size for n in names if (folder / n).exists())


def measure(model: ir.Model, storage: str, work: Path) -> dict:
    name = model.name
    out: dict = {"params": ir.stats(model)["parameters"]}
    c = work / f"{name}_{storage}_c"
    started = time.perf_counter()
    codegen.export(model, ["c"], c, weights=storage)
    out["c_export"] = time.perf_counter() - started
    out["c_compile"] = timed(["cc", "-std=c99", "-O2", "-c", f"{name}.c"], c)
    out["c_object"] = (c / f"{name}.o").stat().st_size
    (c / "main.c").write_text(C_MAIN.format(name=name, upper=name.upper()))
    timed(["cc", "-std=c99", "-O2", "-o", "app", "main.c", f"{name}.o", "-lm"], c)
    out["c_binary"] = (c / "app").stat().st_size
    out["c_source"] = size_of(c, [f"{name}.c", f"{name}.h"])
    if shutil.which("go"):
        pkg = work / f"{name}_{storage}_go" / "model"
        pkg.parent.mkdir()
        started = time.perf_counter()
        codegen.export(model, ["go"], pkg, weights=storage)
        out["go_export"] = time.perf_counter() - started
        app = pkg.parent
        (app / "go.mod").write_text(f"module app\n\ngo 1.21\n\nrequire {name} v0.0.0\n\n"
                                    f"replace {name} => ./model\n")
        (app / "main.go").write_text(GO_MAIN.format(name=name))
        out["go_build"] = timed(["go", "build", "-o", "app", "."], app, GO_ENV)
        out["go_binary"] = (app / "app").stat().st_size
        out["go_source"] = size_of(pkg, [f"{name}.go", f"{name}.weights"])
    return out


def warm_go(work: Path) -> None:
    """Build the standard library packages an export imports, so no timing includes them."""
    if not shutil.which("go"):
        return
    warm = work / "warm"
    warm.mkdir()
    (warm / "go.mod").write_text("module warm\n\ngo 1.21\n")
    (warm / "main.go").write_text('package main\n\nimport (\n\t_ "embed"\n\t"encoding/binary"\n'
                                  '\t"errors"\n\t"fmt"\n\t"math"\n)\n\nfunc main() {\n'
                                  '\tfmt.Println(errors.New("x"), math.Pi, '
                                  'binary.LittleEndian.Uint32([]byte{1, 2, 3, 4}))\n}\n')
    timed(["go", "build", "-o", "app", "."], warm, GO_ENV)


COLUMNS = [("params", "params", "{:>10,}"), ("c_export", "C export s", "{:>10.2f}"),
           ("c_compile", "cc -O2 s", "{:>10.2f}"), ("c_total", "C total s", "{:>10.2f}"),
           ("c_source_pp", "C B/param", "{:>10.2f}"), ("c_object_pp", "C .o B/p", "{:>10.2f}"),
           ("c_binary", "C binary", "{:>10,}"), ("go_export", "Go export", "{:>10.2f}"),
           ("go_build", "go build s", "{:>10.2f}"), ("go_source_pp", "Go B/param", "{:>10.2f}"),
           ("go_binary", "Go binary", "{:>10,}")]


def derived(r: dict) -> dict:
    r = dict(r)
    r["c_total"] = r["c_export"] + r["c_compile"]
    r["c_source_pp"] = r["c_source"] / r["params"]
    r["c_object_pp"] = r["c_object"] / r["params"]
    if "go_source" in r:
        r["go_source_pp"] = r["go_source"] / r["params"]
    return r


def table(rows: list[dict]) -> str:
    head = " ".join(f"{title:>10}" for _, title, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(" ".join(fmt.format(r[key]) if key in r else f"{'-':>10}"
                              for key, _, fmt in COLUMNS))
    return "\n".join(lines)


def growth(rows: list[dict]) -> str:
    """log(cost ratio) / log(parameter ratio) between the two largest models."""
    if len(rows) < 2:
        return ""
    a, b = rows[-2], rows[-1]
    parts = []
    for key in ("c_export", "c_compile", "c_source", "c_object", "go_export", "go_build",
                "go_source", "go_binary"):
        if key in a and key in b and a[key] > 0:
            slope = math.log(b[key] / a[key]) / math.log(b["params"] / a["params"])
            parts.append(f"{key} {slope:.2f}")
    return (f"growth exponent from {a['params']:,} to {b['params']:,} parameters "
            f"(1.00 = linear): " + ", ".join(parts))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="sizes up to 1M parameters only")
    p.add_argument("--json", type=Path, help="write the measurements here")
    args = p.parse_args(argv)
    sizes = [s for s in SIZES if not args.quick or s <= 1_000_000]
    print(f"distill export cost: {platform.platform()}, {os.cpu_count()} CPUs")
    if hasattr(os, "getloadavg"):
        print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="distill-cost-"))
    results: dict[str, list[dict]] = {"literal": [], "blob": []}
    try:
        warm_go(work)
        for size in sizes:
            model = network(size)
            for storage in results:
                print(f"  {model.name} ({ir.stats(model)['parameters']:,} parameters), "
                      f"{storage} ...", flush=True)
                results[storage].append(derived(measure(model, storage, work)))
        for storage, rows in results.items():
            print(f"\nweights={storage!r}")
            print(table(rows))
            print(growth(rows))
        print("\ntargets, model of about 1M parameters:")
        for storage, rows in results.items():
            r = min(rows, key=lambda r: abs(r["params"] - 1_000_000))
            go = (f"go build {r['go_build']:.2f} s (< 10), source {r['go_source_pp']:.2f} "
                  "B/param" if "go_build" in r else "no Go")
            print(f"  {storage:8} export + cc -O2 {r['c_total']:.2f} s (< 5), C source "
                  f"{r['c_source_pp']:.2f} B/param (< 14); {go}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
