"""Convolution and recurrent speed: the emitted C against onnxruntime (one thread), at batch 1.

Where it sits: outside the package and the tests; run by hand when the conv, pooling or
recurrent templates change:

    python benchmarks/speed_vs_onnxruntime.py [--repeats N]

Four models with random weights: a digits-sized 2-D CNN (28x28x1 -> conv 3x3x16 same, relu,
max pool 2 -> conv 3x3x32 same, relu, max pool 2 -> global average -> dense 10, softmax), a
1-D signal classifier (128x1 -> conv 7x16 stride 2, relu -> conv 5x32, relu -> global max
-> dense 4), an LSTM (50 steps of 16 -> LSTM 64, last step -> dense 4) and a GRU stack (50
steps of 16 -> GRU 64 reset_after, every step -> GRU 32, last step -> dense 4). The C is
built with `-std=c99 -O2` and `-O3 -march=native` and timed on `NAME_predict` in a loop of
at least 0.2 s; onnxruntime runs the exported ONNX with one intra-op thread on the same
inputs. Each figure is the median of the repeats, the contenders interleaved; the last two
columns are onnxruntime's time over the C's (above 1: C is faster).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distill import codegen, ir  # noqa: E402

HARNESS = r"""#define _POSIX_C_SOURCE 199309L
#include "NAME.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(void)
{
    static float in[NAME_U_INPUT_SIZE], out[NAME_U_OUTPUT_SIZE];
    double start, spent = 0.0, sink = 0.0;
    long calls = 0, i;

    for (i = 0; i < NAME_U_INPUT_SIZE; ++i) {
        in[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    }
    start = now();
    while (spent < 0.2) {
        for (i = 0; i < 50; ++i) {
            NAME_predict(in, out);
            sink += out[0];
        }
        calls += 50;
        spent = now() - start;
    }
    printf("%.9f %g\n", spent / (double)calls, sink);
    return 0;
}
"""


def models() -> list[ir.Model]:
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
    same = {"strides": [1, 1], "pads": [1, 1, 1, 1], "groups": 1}
    pool = {"pool": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0]}
    cnn = ir.make_model("cnn", (28, 28, 1), [
        ("c1", "conv", same, {"kernel": w(3, 3, 1, 16), "bias": w(16)}), ("r1", "relu", {}, {}),
        ("p1", "max_pool", pool, {}),
        ("c2", "conv", same, {"kernel": w(3, 3, 16, 32), "bias": w(32)}), ("r2", "relu", {}, {}),
        ("p2", "max_pool", pool, {}), ("g", "global_avg_pool", {}, {}),
        ("d", "dense", {}, {"kernel": w(32, 10), "bias": w(10)}), ("s", "softmax", {}, {})])
    signal = ir.make_model("signal", (128, 1), [
        ("c1", "conv", {"strides": [2], "pads": [3, 3], "groups": 1},
         {"kernel": w(7, 1, 16), "bias": w(16)}), ("r1", "relu", {}, {}),
        ("c2", "conv", {"strides": [1], "pads": [2, 2], "groups": 1},
         {"kernel": w(5, 16, 32), "bias": w(32)}), ("r2", "relu", {}, {}),
        ("g", "global_max_pool", {}, {}), ("d", "dense", {}, {"kernel": w(32, 4)})])
    lstm = ir.make_model("lstm", (50, 16), [
        ("l", "lstm", {"return_sequences": False},
         {"kernel": w(16, 256), "recurrent_kernel": w(64, 256), "bias": w(256)}),
        ("d", "dense", {}, {"kernel": w(64, 4), "bias": w(4)})])
    gru = ir.make_model("gru", (50, 16), [
        ("g1", "gru", {"return_sequences": True, "reset_after": True},
         {"kernel": w(16, 192), "recurrent_kernel": w(64, 192), "bias": w(2, 192)}),
        ("g2", "gru", {"return_sequences": False, "reset_after": True},
         {"kernel": w(64, 96), "recurrent_kernel": w(32, 96), "bias": w(2, 96)}),
        ("d", "dense", {}, {"kernel": w(32, 4), "bias": w(4)})])
    return [cnn, signal, lstm, gru]


def build_c(model: ir.Model, folder: Path, flags: list[str]) -> Path:
    codegen.export(model, ["c"], folder, name="m")
    name = "m"
    (folder / "bench.c").write_text(HARNESS.replace("NAME_U", name.upper())
                                    .replace("NAME", name))
    binary = folder / f"bench{len(flags)}"
    subprocess.run(["cc", "-std=c99", *flags, "-o", str(binary), "bench.c", f"{name}.c",
                    "-lm"], cwd=folder, check=True)
    return binary


def onnx_session(model: ir.Model, folder: Path):
    import onnxruntime as ort
    (path,) = codegen.export(model, ["onnx"], folder / "onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_onnx(session, x: np.ndarray) -> float:
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.2:
        for _ in range(50):
            session.run(None, {"input": x})
        calls += 50
    return (time.perf_counter() - start) / calls


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    print(f"{'model':8} {'MACs':>9} {'C -O2':>10} {'C -O3 native':>13} {'onnxruntime':>12} "
          f"{'ort / C -O2':>12} {'ort / C -O3':>12}")
    for model in models():
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            o2 = build_c(model, folder / "o2", ["-O2"])
            o3 = build_c(model, folder / "o3", ["-O3", "-march=native"])
            session = onnx_session(model, folder)
            x = np.linspace(-0.5, 0.5, int(np.prod(model.input_shape)), dtype=np.float32)
            x = x.reshape(1, *model.input_shape)
            times: dict[str, list[float]] = {"o2": [], "o3": [], "ort": []}
            for _ in range(args.repeats):
                times["o2"].append(float(subprocess.run(
                    [str(o2)], capture_output=True, text=True, check=True).stdout.split()[0]))
                times["o3"].append(float(subprocess.run(
                    [str(o3)], capture_output=True, text=True, check=True).stdout.split()[0]))
                times["ort"].append(time_onnx(session, x))
        med = {k: statistics.median(v) for k, v in times.items()}
        macs = ir.stats(model)["macs"]
        print(f"{model.name:8} {macs:>9,} {med['o2'] * 1e6:>8.1f}us {med['o3'] * 1e6:>11.1f}us "
              f"{med['ort'] * 1e6:>10.1f}us {med['ort'] / med['o2']:>12.2f} "
              f"{med['ort'] / med['o3']:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
