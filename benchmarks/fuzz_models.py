"""The long run of the fuzzers in tests/test_hardening_fuzz.py, tests/test_hardening_keras.py
and tests/test_hardening_resume.py: 10,000+ damaged `.distill` files (and Keras files) through
`distill inspect`, `predict` and `export`, and damaged training checkpoints through `distill
train --resume`, each case checked for the command line's promise: exit 0, or one stderr line
`distill: error: ...` and exit 2; no traceback, no hang, memory bounded by the file's size plus
the tests' MEMORY_SLACK; a refused checkpoint left as it was.

    python benchmarks/fuzz_models.py          # 10,000 .distill, 1,000 Keras, 1,000 checkpoints
    python benchmarks/fuzz_models.py --cases 500 --keras-cases 0 --checkpoint-cases 0 --seed 3

Cases run in a worker process that the parent restarts if it dies (a segfault in a native
library counts as a crash, not as the end of the run) or stops answering (a hang). A failing
case's file is kept in --keep (default fuzz-crashes/) with the reason, to be replayed with
`distill inspect FILE`. Prints cases tried per mutator, crashes, and the largest memory and
time per case, and exits 1 if anything crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def worker(kind: str, seed: int, start: int, count: int, keep: Path) -> None:
    """Run cases start..start+count-1, one JSON line each on stdout."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The CLI's Keras reader gives up on a file after this many seconds (a looping HDF5).
    os.environ.setdefault("DISTILL_KERAS_TIMEOUT", "30")
    import test_hardening_fuzz as fuzz
    work = Path(tempfile.mkdtemp(prefix="distill-fuzz-"))
    if kind == "distill":
        # a chain of every single-input op, and a graph: three inputs, four outputs, every
        # merge, a shared layer (one weight file read by two nodes)
        from conftest import graph_models
        (work / "graph").mkdir()
        import numpy as np
        graph = {m.name: m for m in graph_models(np.random.default_rng(0))}["graph"]
        bases = [fuzz.make_base(work), fuzz.make_base(work / "graph", graph)]
        mutators = sorted(fuzz.MUTATORS)
    elif kind == "checkpoint":
        import test_hardening_resume as rz
        config = work / "c.toml"
        config.write_text(rz.SHORT)
        rz.run_until_killed([sys.executable, "-c", rz.DRIVER, "train", str(config), "-o",
                             str(work / "k.distill"), "-q"], "step:30")
        checkpoint = (work / "k.distill.ckpt").read_bytes()
        mutators = ["checkpoint"]
    else:
        import test_hardening_keras as kz
        paths = kz.keras_models(work)
        mutators = kz.KINDS
        fuzz.run_cli(["inspect", str(paths["m.keras"])])  # start the Keras reader once
        baseline = kz.peak_rss()
    for i in range(start, start + count):
        rng = random.Random(f"{seed}:{kind}:{i}")
        mutator = mutators[i % len(mutators)]
        try:
            if kind == "distill":
                data = fuzz.MUTATORS[mutator](bases[(i // len(mutators)) % 2], rng)
                path = work / "case.distill"
            elif kind == "checkpoint":
                data = rz.mutate_checkpoint(checkpoint, rng)
                path = work / "case.ckpt"
            else:
                suffix, data = kz.mutate_keras(mutator, paths, rng)
                path = work / f"case{suffix}"
        except Exception as e:  # the fuzzer's own bug, not distill's: say so and go on
            print(json.dumps({"i": i, "mutator": mutator, "size": 0, "seconds": 0,
                              "crash": f"fuzzer error in {mutator}: {e!r}"[:300]}), flush=True)
            continue
        path.write_bytes(data)
        (keep / "current").write_bytes(data)  # for the parent, should this process die
        record = {"i": i, "mutator": mutator, "size": len(data)}
        t0 = time.perf_counter()
        try:
            if kind == "distill":
                outcome = fuzz.check_model_file(
                    path, work, "all" if rng.random() < 0.2 else "c,numpy")
                record.update(codes=outcome.codes, peak=outcome.peak)
                if fuzz.UNPICKLED:
                    raise AssertionError("a pickle in the file was loaded")
            elif kind == "checkpoint":
                record.update(codes={"resume": rz.check_resume(config, work / "m.distill",
                                                               data)})
            else:
                record.update(codes=kz.check_keras_file(path, work))
                # The reader's peak RSS over its own after start-up (a new reader after a
                # killed one starts from its own baseline, so this is conservative).
                record.update(rss_growth=max(kz.peak_rss() - baseline, 0))
        except BaseException as e:  # a crash: an exception escaped main, a hang, a broken rule
            if isinstance(e, KeyboardInterrupt):
                raise
            lines = traceback.format_exception(e)
            first = str(e).splitlines()[0][:300] if str(e) else ""
            record.update(crash=f"{type(e).__name__}: {first}",
                          where=lines[-2].strip()[:300] if len(lines) > 1 else "")
            name = f"{kind}-{i}-{mutator}{path.suffix}"
            (keep / name).write_bytes(data)
            (keep / f"{name}.txt").write_text("".join(lines))
        record["seconds"] = time.perf_counter() - t0
        print(json.dumps(record), flush=True)
    shutil.rmtree(work, ignore_errors=True)


def run(kind: str, cases: int, seed: int, keep: Path, stall: float) -> list[dict]:
    """Drive workers over `cases` cases, restarting them when they die or stall."""
    records: list[dict] = []
    next_case = 0
    while next_case < cases:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", kind, "--seed", str(seed),
                                 "--start", str(next_case), "--count", str(cases - next_case),
                                 "--keep", str(keep)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, bufsize=1)
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        last = time.monotonic()
        while True:
            if not sel.select(timeout=1.0):
                if proc.poll() is not None:
                    break
                if time.monotonic() - last > stall:
                    proc.kill()
                    records.append({"i": next_case, "mutator": "?", "crash": "hang: the worker "
                                    f"stopped answering for {stall:.0f} s", "seconds": stall})
                    keep_current(keep, kind, next_case)
                    next_case += 1
                    break
                continue
            line = proc.stdout.readline()
            if not line:
                break
            record = json.loads(line)
            records.append(record)
            next_case = record["i"] + 1
            last = time.monotonic()
            if len(records) % 500 == 0:
                print(f"  {kind}: {len(records)} cases, "
                      f"{sum('crash' in r for r in records)} crashes", flush=True)
        proc.wait()
        if proc.returncode not in (0, None, -9) and next_case < cases:
            err = proc.stderr.read()[-500:]
            records.append({"i": next_case, "mutator": "?", "crash": f"the worker died "
                            f"(exit {proc.returncode}): {err.strip()[-300:]}", "seconds": 0})
            keep_current(keep, kind, next_case)
            next_case += 1
        sel.close()
    return records


def keep_current(keep: Path, kind: str, i: int) -> None:
    current = keep / "current"
    if current.exists():
        current.rename(keep / f"{kind}-{i}-died.bin")


def summary(kind: str, records: list[dict]) -> dict:
    crashes = [r for r in records if "crash" in r]
    times = sorted(r["seconds"] for r in records)
    out = {
        "cases": len(records),
        "per_mutator": dict(Counter(r["mutator"] for r in records)),
        "crashes": len(crashes),
        "distinct_crashes": dict(Counter(r["crash"][:120] for r in crashes)),
        "max_seconds": round(times[-1], 3) if times else 0,
        "median_seconds": round(times[len(times) // 2], 4) if times else 0,
        "exit_codes": dict(Counter(json.dumps(r.get("codes"), sort_keys=True)
                                   for r in records).most_common(8)),
    }
    if kind == "distill":
        peaks = [r.get("peak", 0) for r in records]
        out["max_traced_bytes_per_case"] = max(peaks, default=0)
        out["max_traced_minus_file_size"] = max(
            (r.get("peak", 0) - r.get("size", 0) for r in records), default=0)
    elif kind == "keras":
        out["max_rss_growth_bytes"] = max((r.get("rss_growth", 0) for r in records), default=0)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=10_000, help=".distill cases (10000)")
    p.add_argument("--keras-cases", type=int, default=1_000, help="Keras cases (1000; 0: none)")
    p.add_argument("--checkpoint-cases", type=int, default=1_000,
                   help="damaged checkpoints resumed (1000; 0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", type=Path, default=Path("fuzz-crashes"),
                   help="folder for failing cases")
    p.add_argument("--stall", type=float, default=120.0,
                   help="seconds without an answer before a worker counts as hung")
    p.add_argument("--json", type=Path, help="also write the summary here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.keep.mkdir(parents=True, exist_ok=True)
    if args.worker:
        worker(args.worker, args.seed, args.start, args.count, args.keep)
        return 0
    print(f"fuzzing model files: seed {args.seed}, {platform.machine()} "
          f"{platform.system()}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs", flush=True)
    results, t0 = {}, time.monotonic()
    for kind, cases in (("distill", args.cases), ("keras", args.keras_cases),
                        ("checkpoint", args.checkpoint_cases)):
        if cases:
            start = time.monotonic()
            results[kind] = summary(kind, run(kind, cases, args.seed, args.keep, args.stall))
            results[kind]["wall_seconds"] = round(time.monotonic() - start, 1)
    (args.keep / "current").unlink(missing_ok=True)
    total = sum(r["cases"] for r in results.values())
    crashes = sum(r["crashes"] for r in results.values())
    print(json.dumps(results, indent=1))
    print(f"{total} cases tried, {crashes} crashes, in {time.monotonic() - t0:.0f} s"
          + (f"; failing cases in {args.keep}/" if crashes else ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
