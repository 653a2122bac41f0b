"""Inference speed: distill's exported code against a hand-written C loop, onnxruntime, Keras
and the machine's own limits.

Where it sits: outside the package and outside the tests; run by hand when the templates or the
code generator change:

    python benchmarks/inference.py [--quick] [--json PATH] [--png PATH] [--cpu N] [--no-keras]

What it measures, in one run, for the six reference workloads (trained from examples/*.toml),
a 784-100-10 sigmoid/softmax MLP, a 784-512-512-10 ReLU MLP and a 784-1024-192-10 ReLU MLP
(about a million parameters):

- the emitted C, built with `-std=c99 -O2` and with `-std=c99 -O3 -march=native`, one thread:
  `NAME_predict` per call (batch 1) and `NAME_predict_batch` per sample at batch 256;
- a hand-written C baseline, written below: the plain input-major triple loop a careful
  engineer would write (runtime sizes, `restrict`, the inner loop over contiguous outputs),
  built with the same flags in the same program, batch 256 being a loop over samples;
- the emitted Go (`go test -bench` on `PredictInto`), the emitted NumPy module, the reference
  interpreter (`distill.run`), onnxruntime on the exported ONNX (one intra-op thread) and
  Keras (a `tf.function`, one thread) when TensorFlow is installed;
- the machine's limits: peak multiply-add throughput (FMA, and separate multiply and add, as
  the emitted code must use) and read bandwidth at each model's weight footprint, giving a
  roofline per model: max(multiply-adds / peak FMA rate, weight bytes / bandwidth), with the
  weight term divided by 256 at batch 256.

Every figure is the median over repeats; the repeats of all contenders are interleaved in
rounds, so a busy patch of a shared machine hits them all, and a second table gives each
figure's spread (interquartile range over median). BLAS, onnxruntime and TensorFlow are held
to one thread, so every contender uses one core. It prints both tables, the ratios behind the
targets, and writes a PNG of latency against parameter count.
"""

from __future__ import annotations

import os

# One thread for every library, set before any of them loads.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTEROP_THREADS",
             "TF_NUM_INTRAOP_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from distill import codegen, ir  # noqa: E402

BATCH = 256
INPUTS = 64              # distinct single-sample inputs cycled through at batch 1
WORKLOADS = ("blobs", "linear", "exp", "sumprod", "digits", "tabular")
GO_ENV = {"GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}


# ------------------------------------------------------------------------------------- models

def mlp(name: str, sizes: Sequence[int], hidden: str, output: str, seed: int = 0) -> ir.Model:
    """A dense chain with Glorot-uniform weights and small biases (timing does not depend on
    training), inputs in [0, 1) as recorded in the metadata."""
    rng = np.random.default_rng(seed)
    layers: list[tuple[str, str, dict, dict]] = []
    for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
        limit = np.sqrt(6 / (a + b))
        layers.append((f"dense_{k}", "dense", {}, {
            "kernel": rng.uniform(-limit, limit, (a, b)).astype(np.float32),
            "bias": rng.normal(0, 0.01, b).astype(np.float32)}))
        layers.append((f"act_{k}", output if k == len(sizes) - 2 else hidden, {}, {}))
    return ir.make_model(name, (sizes[0],), layers,
                         metadata={"input_range": [[0.0] * sizes[0], [1.0] * sizes[0]]})


def models(quick: bool) -> list[ir.Model]:
    from distill.backends import train
    from distill.config import load_config
    out = []
    for name in WORKLOADS:
        print(f"  training {name} ...", end="", flush=True)
        started = time.perf_counter()
        out.append(train(load_config(ROOT / "examples" / f"{name}.toml"), verbose=0).model)
        print(f" {time.perf_counter() - started:.1f} s")
    out.append(mlp("mnist_sigmoid", (784, 100, 10), "sigmoid", "softmax"))
    out.append(mlp("mlp_512", (784, 512, 512, 10), "relu", "softmax"))
    out.append(mlp("mlp_1m", (784, 1024, 192, 10), "relu", "softmax"))
    return out


# ---------------------------------------------------------------------------- timing helpers

@dataclass
class Samples:
    """Per-call (or per-sample) seconds from every repeat of one contender on one model."""
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def spread(self) -> float:
        if len(self.values) < 4:
            return float("nan")
        q = statistics.quantiles(self.values, n=4)
        return (q[2] - q[0]) / statistics.median(self.values)


def time_python(fn: Callable[[], Any], repeats: int, target: float, per: int = 1) -> list[float]:
    """Seconds per call of fn (divided by `per`), `repeats` times, each repeat timing enough
    calls to last about `target` seconds."""
    fn()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < target / 5 or calls < 2:
        fn()
        calls += 1
    each = (time.perf_counter() - started) / calls
    calls = max(1, int(target / each))
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - started) / calls / per)
    return out


def run(cmd: Sequence[str], cwd: Path, env: dict | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if proc.returncode:
        raise RuntimeError(f"`{' '.join(cmd)}` failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None and shutil.which("taskset") \
        else cmd


# --------------------------------------------------------------- machine limits (C, GNU C11)

LIMITS_C = r"""
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* GNU vector types: only to measure the machine; the emitted code uses none. */
typedef float v16 __attribute__((vector_size(64)));

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#define CHAINS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) \
                  X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23)
#define DECL(k) v16 a##k = m * (float)(k + 1);
#define STEP(k) a##k = a##k * m + c;
#define SUM(k) s += a##k;

/* 24 independent chains of a = a * m + c: multiply-adds per second. Built twice, with
 * -ffp-contract=fast (one FMA each) and -ffp-contract=off (a multiply and an add). */
static double muladd(float seed, long steps)
{
    v16 m = (v16){0} + seed, c = (v16){0} + (1.0f - seed), s = (v16){0};
    long r;
    double t;
    CHAINS(DECL)
    t = now();
    for (r = 0; r < steps; ++r) {
        CHAINS(STEP)
    }
    t = now() - t;
    CHAINS(SUM)
    if (s[0] == 12345.0f) printf("#");
    return 24.0 * 16.0 * (double)steps / t;
}

/* Read bandwidth over a buffer of `bytes`, read again and again: bytes per second. */
static double bandwidth(size_t bytes, double seconds)
{
    size_t n = bytes / sizeof(v16), i, passes = 0;
    v16 *buf = aligned_alloc(64, n * sizeof(v16));
    v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
    double t;
    n -= n % 8;  /* callers ask for 4096 bytes or more */
    memset(buf, 0, n * sizeof(v16));
    for (i = 0; i < n; i += 8) { a0 += buf[i]; }   /* warm the caches */
    t = now();
    do {
        for (i = 0; i < n; i += 8) {
            a0 += buf[i]; a1 += buf[i + 1]; a2 += buf[i + 2]; a3 += buf[i + 3];
            a4 += buf[i + 4]; a5 += buf[i + 5]; a6 += buf[i + 6]; a7 += buf[i + 7];
        }
        passes++;
    } while (now() - t < seconds);
    t = now() - t;
    a0 += a1 + a2 + a3 + a4 + a5 + a6 + a7;
    if (a0[0] == 12345.0f) printf("#");
    free(buf);
    return (double)(n * sizeof(v16)) * (double)passes / t;
}

int main(int argc, char **argv)
{
    int k;
    if (argc > 1 && strcmp(argv[1], "muladd") == 0) {
        for (k = 0; k < atoi(argv[2]); ++k) printf("%.6g\n", muladd(0.999f, 20000000));
        return 0;
    }
    for (k = 2; k < argc; ++k) printf("%s %.6g\n", argv[k], bandwidth((size_t)atof(argv[k]),
                                                                       atof(argv[1])));
    return 0;
}
"""


@dataclass
class Limits:
    fma: float                   # multiply-adds per second, fused
    muladd: float                # multiply-adds per second, a multiply and an add
    bandwidth: dict[int, float]  # bytes -> bytes per second
    dram: float

    def bw(self, nbytes: int) -> float:
        return self.bandwidth[nbytes]


def machine_limits(work: Path, sizes: Sequence[int], quick: bool) -> Limits:
    (work / "limits.c").write_text(LIMITS_C)
    for variant, contract in (("fma", "fast"), ("muladd", "off")):
        run(["cc", "-std=gnu11", "-O2", "-march=native", f"-ffp-contract={contract}", "-o",
             variant, "limits.c"], work)
    reps = "3" if quick else "5"
    fma = max(float(v) for v in run(["./fma", "muladd", reps], work).split())
    muladd = max(float(v) for v in run(["./muladd", "muladd", reps], work).split())
    dram_bytes = 512 << 20
    wanted = sorted({max(int(s), 4096) for s in sizes} | {dram_bytes})
    seconds = "0.05" if quick else "0.15"
    found: dict[int, list[float]] = {}
    for _ in range(2 if quick else 3):
        for line in run(["./fma", seconds, *map(str, wanted)], work).splitlines():
            size, value = line.split()
            found.setdefault(int(size), []).append(float(value))
    best = {k: max(v) for k, v in found.items()}
    return Limits(fma, muladd, {s: best[max(int(s), 4096)] for s in sizes}, best[dram_bytes])


# ------------------------------------------------------------------- emitted C + hand-written

# The baseline: a generic dense network runtime, as a careful engineer writes it by hand. The
# layer list and weights come from a file at start-up, sizes are runtime values, and the dense
# loop is input-major with `restrict`, so its inner loop runs over contiguous outputs.
HARNESS_C = r"""
#define _POSIX_C_SOURCE 199309L
#include "@NAME@.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { OP_DENSE, OP_NORMALIZE, OP_RELU, OP_LEAKY, OP_SIGMOID, OP_TANH, OP_SOFTMAX };

typedef struct {
    int op;
    size_t in, out;
    float alpha;
    const float *w, *b;  /* dense: kernel (in x out) and bias; normalize: mean and std */
} layer;

static layer layers[64];
static int nlayers;
static size_t widest;

static void dense(const float *restrict w, const float *restrict b, size_t nin, size_t nout,
                  const float *restrict x, float *restrict y)
{
    size_t i, j;
    for (j = 0; j < nout; ++j) {
        y[j] = b ? b[j] : 0.0f;
    }
    for (i = 0; i < nin; ++i) {
        const float xi = x[i];
        const float *restrict row = w + i * nout;
        for (j = 0; j < nout; ++j) {
            y[j] += xi * row[j];
        }
    }
}

static void baseline(const float *input, float *output, float *a, float *b)
{
    const float *x = input;
    int l;
    size_t i, n = 0;
    for (l = 0; l < nlayers; ++l) {
        const layer *L = &layers[l];
        float *y = (l == nlayers - 1) ? output : (x == a ? b : a);
        n = L->out;
        switch (L->op) {
        case OP_DENSE: dense(L->w, L->b, L->in, L->out, x, y); break;
        case OP_NORMALIZE: for (i = 0; i < n; ++i) y[i] = (x[i] - L->w[i]) / L->b[i]; break;
        case OP_RELU: for (i = 0; i < n; ++i) y[i] = x[i] < 0.0f ? 0.0f : x[i]; break;
        case OP_LEAKY: for (i = 0; i < n; ++i) y[i] = x[i] > 0.0f ? x[i] : x[i] * L->alpha; break;
        case OP_SIGMOID:
            for (i = 0; i < n; ++i) {
                const float e = (float)exp(-fabs((double)x[i]));
                y[i] = x[i] >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
            }
            break;
        case OP_TANH: for (i = 0; i < n; ++i) y[i] = (float)tanh((double)x[i]); break;
        case OP_SOFTMAX: {
            float top = x[0], sum = 0.0f;
            for (i = 1; i < n; ++i) top = x[i] > top ? x[i] : top;
            for (i = 0; i < n; ++i) { y[i] = (float)exp((double)(x[i] - top)); sum += y[i]; }
            for (i = 0; i < n; ++i) y[i] /= sum;
            break;
        }
        }
        x = y;
    }
}

static void load_layers(const char *path)
{
    FILE *f = fopen(path, "rb");
    int32_t head[4];
    while (f && fread(head, sizeof head, 1, f) == 1) {
        layer *L = &layers[nlayers++];
        size_t nw = (size_t)head[2], nb = (size_t)head[3];
        float *w = malloc((nw + nb + 1) * sizeof(float));
        L->op = head[0] & 0xff;
        L->in = (size_t)(head[0] >> 8);
        L->out = (size_t)head[1];
        if (fread(&L->alpha, sizeof(float), 1, f) != 1 || fread(w, sizeof(float), nw + nb, f)
                != nw + nb) {
            fprintf(stderr, "bad layer file\n");
            exit(2);
        }
        L->w = w;
        L->b = nb ? w + nw : NULL;
        widest = L->out > widest ? L->out : widest;
    }
    if (f) fclose(f);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static volatile float sink;

#define IN @NAME_UPPER@_INPUT_SIZE
#define OUT @NAME_UPPER@_OUTPUT_SIZE

static float *inputs, *out_a, *out_b, *ws_a, *ws_b;

static void emitted_one(long calls)
{
    long c;
    for (c = 0; c < calls; ++c) {
        @NAME@_predict(inputs + (size_t)(c % @INPUTS@) * IN, out_a);
        sink = out_a[0];
    }
}

static void hand_one(long calls)
{
    long c;
    for (c = 0; c < calls; ++c) {
        baseline(inputs + (size_t)(c % @INPUTS@) * IN, out_b, ws_a, ws_b);
        sink = out_b[0];
    }
}

static void emitted_batch(long calls)
{
    long c;
    for (c = 0; c < calls; ++c) {
        @NAME@_predict_batch(@BATCH@, inputs, out_a);
        sink = out_a[0];
    }
}

static void hand_batch(long calls)
{
    long c;
    int k;
    for (c = 0; c < calls; ++c) {
        for (k = 0; k < @BATCH@; ++k) {
            baseline(inputs + (size_t)k * IN, out_b + (size_t)k * OUT, ws_a, ws_b);
        }
        sink = out_b[0];
    }
}

static double per_call(void (*fn)(long), long calls)
{
    double t = now();
    fn(calls);
    return (now() - t) / (double)calls;
}

static long calibrate(void (*fn)(long), double target)
{
    long calls = 1;
    double t;
    fn(1);
    while ((t = per_call(fn, calls) * (double)calls) < target / 10) calls *= 4;
    calls = (long)((double)calls * target / t) + 1;
    return calls;
}

int main(int argc, char **argv)
{
    const double target = atof(argv[2]);
    const int repeats = atoi(argv[3]);
    void (*fns[4])(long) = {emitted_one, hand_one, emitted_batch, hand_batch};
    const char *names[4] = {"c_1", "hand_1", "c_256", "hand_256"};
    const double per[4] = {1, 1, @BATCH@, @BATCH@};
    long calls[4];
    int r, k;
    float *single = malloc(sizeof(float) * OUT * @BATCH@);
    FILE *f = fopen(argv[1], "rb");

    load_layers(argv[4]);
    inputs = malloc(sizeof(float) * IN * @BATCH@);
    out_a = malloc(sizeof(float) * OUT * @BATCH@);
    out_b = malloc(sizeof(float) * OUT * @BATCH@);
    ws_a = malloc(sizeof(float) * (widest + IN + 1));
    ws_b = malloc(sizeof(float) * (widest + IN + 1));
    if (!f || fread(inputs, sizeof(float) * IN, @BATCH@, f) != @BATCH@) {
        fprintf(stderr, "cannot read inputs\n");
        return 2;
    }
    fclose(f);
    /* Checks before timing: the batch entry point and the hand-written loop give the same
     * bits as NAME_predict (the same sums in the same order). */
    @NAME@_predict_batch(@BATCH@, inputs, out_a);
    for (k = 0; k < @BATCH@; ++k) {
        @NAME@_predict(inputs + (size_t)k * IN, single + (size_t)k * OUT);
        baseline(inputs + (size_t)k * IN, out_b + (size_t)k * OUT, ws_a, ws_b);
    }
    printf("check batch_equals_single %d\n",
           memcmp(out_a, single, sizeof(float) * OUT * @BATCH@) == 0);
    printf("check hand_equals_emitted %d\n",
           memcmp(out_b, single, sizeof(float) * OUT * @BATCH@) == 0);
    for (k = 0; k < 4; ++k) calls[k] = calibrate(fns[k], target);
    for (r = 0; r < repeats; ++r) {
        for (k = 0; k < 4; ++k) {
            printf("%s %.6g\n", names[k], per_call(fns[k], calls[k]) / per[k]);
        }
    }
    return 0;
}
"""

OP_CODES = {"dense": 0, "normalize": 1, "relu": 2, "leaky_relu": 3, "sigmoid": 4, "tanh": 5,
            "softmax": 6}


def layer_file(model: ir.Model) -> bytes:
    """The hand-written runtime's layer list: op | inputs << 8, outputs, #w, #b, alpha, w, b."""
    out = bytearray()
    for node in model.nodes:
        if node.op in ("linear", "flatten", "reshape"):
            continue
        if node.op == "dense":
            if len(node.input_shape) != 1:
                raise ValueError("the hand-written baseline handles one-dimensional inputs")
            w = node.weights["kernel"].reshape(-1)
            b = node.weights.get("bias", np.zeros(0, np.float32))
        elif node.op == "normalize":
            w = np.broadcast_to(node.weights["mean"], node.input_shape).reshape(-1)
            b = np.broadcast_to(node.weights["std"], node.input_shape).reshape(-1)
        else:
            w = b = np.zeros(0, np.float32)
        inputs, outputs = int(np.prod(node.input_shape)), int(np.prod(node.output_shape))
        head = np.array([OP_CODES[node.op] | (inputs << 8), outputs, w.size, b.size], "<i4")
        alpha = np.float32(node.attrs.get("alpha", 0.0))
        out += head.tobytes() + np.array([alpha], "<f4").tobytes()
        out += np.ascontiguousarray(w, "<f4").tobytes() + np.ascontiguousarray(b, "<f4").tobytes()
    return bytes(out)


C_FLAGS = {"O2": ["-std=c99", "-O2"], "O3n": ["-std=c99", "-O3", "-march=native"]}


def build_c(model: ir.Model, folder: Path) -> dict[str, Path]:
    codegen.export(model, ["c"], folder / "c")
    c = folder / "c"
    name = model.name
    (c / "harness.c").write_text(
        HARNESS_C.replace("@NAME@", name).replace("@NAME_UPPER@", name.upper())
        .replace("@BATCH@", str(BATCH)).replace("@INPUTS@", str(INPUTS)))
    (c / "layers.bin").write_bytes(layer_file(model))
    out = {}
    for key, flags in C_FLAGS.items():
        run(["cc", *flags, "-o", f"bench_{key}", "harness.c", f"{name}.c", "-lm"], c)
        out[key] = c / f"bench_{key}"
    return out


def run_c(binary: Path, inputs: Path, target: float, repeats: int, cpu: int | None
          ) -> tuple[dict[str, list[float]], dict[str, bool]]:
    text = run(pinned([str(binary), str(inputs), str(target), str(repeats),
                       str(binary.parent / "layers.bin")], cpu), binary.parent)
    times: dict[str, list[float]] = {}
    checks = {}
    for line in text.splitlines():
        parts = line.split()
        if parts[0] == "check":
            checks[parts[1]] = parts[2] == "1"
        else:
            times.setdefault(parts[0], []).append(float(parts[1]))
    return times, checks


# ---------------------------------------------------------------------------------------- Go

GO_BENCH = """package @PKG@

import (
	"encoding/binary"
	"math"
	"os"
	"testing"
)

var benchIn = func() []float32 {
	raw, err := os.ReadFile(os.Getenv("DISTILL_BENCH_INPUTS"))
	if err != nil {
		panic(err)
	}
	out := make([]float32, len(raw)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	return out
}()

func BenchmarkDistillOne(b *testing.B) {
	out := make([]float32, OutputSize)
	for i := 0; i < b.N; i++ {
		k := i % @INPUTS@
		_ = PredictInto(out, benchIn[k*InputSize:(k+1)*InputSize])
	}
}

func BenchmarkDistillBatch(b *testing.B) {
	out := make([]float32, @BATCH@*OutputSize)
	for i := 0; i < b.N; i++ {
		for k := 0; k < @BATCH@; k++ {
			in := benchIn[k*InputSize : (k+1)*InputSize]
			_ = PredictInto(out[k*OutputSize:(k+1)*OutputSize], in)
		}
	}
}
"""


def build_go(model: ir.Model, folder: Path) -> Path | None:
    if not shutil.which("go"):
        return None
    # Blob weights: the same code, built in a fraction of the time for the big models.
    codegen.export(model, ["go"], folder / "go", weights="blob")
    go = folder / "go"
    package = re.search(r"^package (\w+)", (go / f"{model.name}.go").read_text(), re.M)[1]
    (go / "bench_test.go").write_text(GO_BENCH.replace("@PKG@", package)
                                      .replace("@BATCH@", str(BATCH))
                                      .replace("@INPUTS@", str(INPUTS)))
    run(["go", "test", "-c", "-o", "bench.test", "."], go, GO_ENV)
    return go / "bench.test"


def run_go(binary: Path, inputs: Path, target: float, repeats: int, cpu: int | None
           ) -> dict[str, list[float]]:
    text = run(pinned([str(binary), "-test.run", "^$", "-test.bench", "Distill",
                       "-test.benchtime", f"{target}s", "-test.count", str(repeats)], cpu),
               binary.parent, {"DISTILL_BENCH_INPUTS": str(inputs)})
    out: dict[str, list[float]] = {}
    for name, ns in re.findall(r"^BenchmarkDistill(\w+?)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op", text,
                               re.M):
        key = "go_1" if name == "One" else "go_256"
        out.setdefault(key, []).append(float(ns) * 1e-9 / (1 if name == "One" else BATCH))
    return out


# -------------------------------------------------------------------------- Python contenders

def python_contenders(model: ir.Model, folder: Path, xb: np.ndarray,
                      keras: bool) -> dict[str, Callable[[np.ndarray], Any]]:
    out: dict[str, Callable[[np.ndarray], Any]] = {}
    codegen.export(model, ["numpy"], folder / "numpy")
    spec = importlib.util.spec_from_file_location(f"bench_{model.name}",
                                                  folder / "numpy" / f"{model.name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out["numpy"] = module.predict
    out["ref"] = lambda x: ir.run(model, x)
    try:
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(codegen.render(model, "onnx")[f"{model.name}.onnx"],
                                       options, providers=["CPUExecutionProvider"])
        out["ort"] = lambda x: session.run(None, {"input": x})[0]
    except ImportError:
        pass
    if keras:
        fn = keras_function(model)
        if fn is not None:
            out["keras"] = fn
    want = ir.run(model, xb)
    for key, fn in out.items():  # every contender computes the same model
        got = np.asarray(fn(xb)).reshape(want.shape)
        if not np.allclose(got, want, rtol=1e-3, atol=1e-4):
            raise RuntimeError(f"{key} disagrees with the reference on {model.name}")
    return out


_TF: Any = None


def keras_function(model: ir.Model) -> Callable[[np.ndarray], Any] | None:
    """The IR as a Keras model, called through tf.function with a tensor input."""
    global _TF
    try:
        if _TF is None:
            import tensorflow as tf
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
            _TF = tf
        tf = _TF
        import keras
    except ImportError:
        return None
    layers: list[Any] = [keras.Input(tuple(model.input_shape))]
    weights = []
    for node in model.nodes:
        if node.op == "dense":
            layers.append(keras.layers.Dense(node.output_shape[-1],
                                             use_bias="bias" in node.weights))
            weights.append((len(layers) - 1, [node.weights["kernel"]]
                            + ([node.weights["bias"]] if "bias" in node.weights else [])))
        elif node.op == "normalize":
            mean = tf.constant(np.broadcast_to(node.weights["mean"], node.input_shape))
            std = tf.constant(np.broadcast_to(node.weights["std"], node.input_shape))
            layers.append(keras.layers.Lambda(lambda t, m=mean, s=std: (t - m) / s))
        elif node.op in ("sigmoid", "tanh", "relu", "softmax"):
            layers.append(keras.layers.Activation(node.op))
        elif node.op == "leaky_relu":
            layers.append(keras.layers.LeakyReLU(negative_slope=float(node.attrs["alpha"])))
        elif node.op == "flatten":
            layers.append(keras.layers.Flatten())
        elif node.op == "reshape":
            layers.append(keras.layers.Reshape(tuple(node.output_shape)))
    km = keras.Sequential(layers)
    for index, values in weights:
        km.layers[index - 1].set_weights(values)
    call = tf.function(lambda x: km(x, training=False))

    tensors: dict[int, Any] = {}  # inputs are converted once, outside the timing

    def predict(x: np.ndarray) -> Any:
        if id(x) not in tensors:
            tensors[id(x)] = (x, tf.constant(x))
        return call(tensors[id(x)][1])
    return predict


# --------------------------------------------------------------------------------- reporting

COLUMNS = [("roof", "roofline"), ("c_O2", "C -O2"), ("c_O3n", "C -O3nat"),
           ("hand_O2", "hand -O2"), ("hand_O3n", "hand -O3nat"), ("go", "Go"),
           ("numpy", "NumPy"), ("ref", "ref"), ("ort", "ORT"), ("keras", "Keras")]


def fmt_time(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "-"
    us = seconds * 1e6
    return f"{us:.3g}" if us < 1000 else f"{us:,.0f}"


def table(rows: list[dict], batch: str, spread: bool = False) -> str:
    head = f"{'model':15} {'params':>9} {'MACs':>9} " + " ".join(f"{t:>9}" for _, t in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = []
        for key, _ in COLUMNS:
            s = r["times"].get(f"{key}_{batch}")
            if key == "roof":
                cells.append(f"{'' if spread else fmt_time(r['roofline'][batch]):>9}")
            elif s is None or not s.values:
                cells.append(f"{'-':>9}")
            elif spread:
                cells.append(f"{s.spread * 100:>8.0f}%" if np.isfinite(s.spread) else f"{'-':>9}")
            else:
                cells.append(f"{fmt_time(s.median):>9}")
        lines.append(f"{r['name']:15} {r['params']:>9,} {r['macs']:>9,} " + " ".join(cells))
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[str]:
    def m(r: dict, key: str) -> float:
        s = r["times"].get(key)
        return s.median if s and s.values else float("nan")
    out = []
    out.append("1. emitted C / hand-written loop at batch 1 (target <= 1.00):")
    for r in rows:
        out.append(f"   {r['name']:15} -O2 {m(r, 'c_O2_1') / m(r, 'hand_O2_1'):5.2f}   "
                   f"-O3 -march=native {m(r, 'c_O3n_1') / m(r, 'hand_O3n_1'):5.2f}")
    out.append("2. emitted C batch 1 / single-sample roofline, models with >= 50k multiply-adds "
               "(target <= 2.0):")
    for r in rows:
        if r["macs"] >= 50_000:
            roof = r["roofline"]["1"]
            out.append(f"   {r['name']:15} -O2 {m(r, 'c_O2_1') / roof:5.2f}   "
                       f"-O3 -march=native {m(r, 'c_O3n_1') / roof:5.2f}   (bound: "
                       f"{r['bound']})")
    out.append("3. onnxruntime / emitted C per call at batch 1, models under 10k multiply-adds "
               "(target >= 10):")
    for r in rows:
        if r["macs"] < 10_000:
            out.append(f"   {r['name']:15} -O2 {m(r, 'ort_1') / m(r, 'c_O2_1'):7.1f}   "
                       f"-O3 -march=native {m(r, 'ort_1') / m(r, 'c_O3n_1'):7.1f}")
    out.append("4. emitted C predict_batch / onnxruntime per sample at batch 256 "
               "(target <= 1.00):")
    for r in rows:
        out.append(f"   {r['name']:15} -O2 {m(r, 'c_O2_256') / m(r, 'ort_256'):5.2f}   "
                   f"-O3 -march=native {m(r, 'c_O3n_256') / m(r, 'ort_256'):5.2f}")
    out.append("5. emitted Go / emitted C at batch 1 (target <= 2.0):")
    for r in rows:
        out.append(f"   {r['name']:15} vs -O2 {m(r, 'go_1') / m(r, 'c_O2_1'):5.2f}   "
                   f"vs -O3 -march=native {m(r, 'go_1') / m(r, 'c_O3n_1'):5.2f}")
    out.append("6. emitted NumPy / onnxruntime at batch 256 (target <= 1.5):")
    for r in rows:
        out.append(f"   {r['name']:15} {m(r, 'numpy_256') / m(r, 'ort_256'):5.2f}")
    return out


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    order = sorted(rows, key=lambda r: r["params"])
    params = [r["params"] for r in order]
    for ax, batch, title in ((axes[0], "1", "batch 1: seconds per call"),
                             (axes[1], "256", "batch 256: seconds per sample")):
        ax.plot(params, [r["roofline"][batch] for r in order], "k--", label="roofline")
        for key, label in COLUMNS[1:]:
            ys = [r["times"].get(f"{key}_{batch}", Samples()).median for r in order]
            if any(np.isfinite(ys)):
                ax.plot(params, ys, "o-", label=label, markersize=4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


# -------------------------------------------------------------------------------------- main

def measure(model: ir.Model, st: dict, folder: Path, limits: Limits, args: argparse.Namespace,
            rounds: int, repeats: int, target: float) -> dict:
    """Build every contender for one model and time them, round after round."""
    folder.mkdir()
    print(f"{model.name}: {st['parameters']:,} parameters, {st['macs']:,} multiply-adds; "
          "building ...", flush=True)
    x = codegen.golden_samples(model, BATCH, seed=1).astype(np.float32)
    np.random.default_rng(0).shuffle(x)
    inputs = folder / "inputs.bin"
    inputs.write_bytes(np.ascontiguousarray(x, "<f4").tobytes())
    c_bins = build_c(model, folder)
    go_bin = build_go(model, folder)
    py = python_contenders(model, folder, x, not args.no_keras)
    singles = [np.ascontiguousarray(x[k:k + 1]) for k in range(INPUTS)]
    times: dict[str, Samples] = {}
    checks: dict[str, bool] = {}

    def add(key: str, values: list[float]) -> None:
        times.setdefault(key, Samples()).values.extend(values)
    for _ in range(rounds):
        for flag, binary in c_bins.items():
            found, chk = run_c(binary, inputs, target, repeats, args.cpu)
            checks.update({f"{k} ({flag})": v for k, v in chk.items()})
            for key, values in found.items():
                kind, batch = key.rsplit("_", 1)
                add(f"{kind}_{flag}_{batch}", values)
        if go_bin:
            for key, values in run_go(go_bin, inputs, target, repeats, args.cpu).items():
                add(key, values)
        for key, fn in py.items():
            cycle = iter(range(1 << 62))
            add(f"{key}_1", time_python(
                lambda fn=fn, cycle=cycle: fn(singles[next(cycle) % INPUTS]), repeats, target))
            add(f"{key}_256", time_python(lambda fn=fn: fn(x), repeats, target, per=BATCH))
    compute = st["macs"] / limits.fma
    memory = st["weight_bytes"] / limits.bw(st["weight_bytes"])
    return {"name": model.name, "params": st["parameters"], "macs": st["macs"],
            "weight_bytes": st["weight_bytes"],
            "roofline": {"1": max(compute, memory), "256": max(compute, memory / BATCH)},
            "bound": "memory" if memory > compute else "compute", "times": times,
            "checks": checks}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter repeats (~2 minutes)")
    p.add_argument("--json", type=Path, help="write every repeat's timings here")
    p.add_argument("--png", type=Path, default=Path("inference.png"),
                   help="latency against parameters (default: inference.png)")
    p.add_argument("--cpu", type=int, help="pin the C and Go runs to this CPU (taskset)")
    p.add_argument("--no-keras", action="store_true", help="skip TensorFlow")
    p.add_argument("--only", help="comma-separated model names")
    p.add_argument("--keep", action="store_true", help="keep the build folder")
    args = p.parse_args(argv)

    rounds, repeats, target = (3, 2, 0.02) if args.quick else (5, 3, 0.04)
    print(f"distill inference benchmark: {platform.platform()}, {platform.processor() or '?'}, "
          f"{os.cpu_count()} CPUs; cc: {run(['cc', '--version'], ROOT).splitlines()[0]}")
    if hasattr(os, "getloadavg"):
        print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"{rounds} rounds x {repeats} repeats of ~{target * 1000:.0f} ms per contender; "
          "one thread everywhere")
    started = time.perf_counter()
    print("models:")
    chosen = models(args.quick)
    if args.only:
        keep = set(args.only.split(","))
        chosen = [m for m in chosen if m.name in keep]
    work = Path(tempfile.mkdtemp(prefix="distill-bench-"))
    try:
        stats = {m.name: ir.stats(m) for m in chosen}
        print("machine limits ...", flush=True)
        limits = machine_limits(work, [stats[m.name]["weight_bytes"] for m in chosen],
                                args.quick)
        print(f"  peak multiply-adds: {limits.fma / 1e9:.1f} G/s fused (FMA), "
              f"{limits.muladd / 1e9:.1f} G/s as a multiply and an add; "
              f"read bandwidth: {limits.dram / 1e9:.1f} GB/s from memory (512 MiB)")
        rows = []
        for model in chosen:
            rows.append(measure(model, stats[model.name], work / model.name, limits, args,
                                rounds, repeats, target))
            checks = rows[-1]["checks"]
            bad = [k for k, v in checks.items() if not v]
            print("  bit checks: " + ("all equal" if not bad else "DIFFER: " + ", ".join(bad)))

        print("\nbatch 1: microseconds per call (median)")
        print(table(rows, "1"))
        print("\nbatch 256: microseconds per sample (median)")
        print(table(rows, "256"))
        print("\nspread of the repeats, (p75 - p25) / median: batch 1")
        print(table(rows, "1", spread=True))
        print("\nspread: batch 256")
        print(table(rows, "256", spread=True))
        print("\nroofline: max(multiply-adds / peak FMA rate, weight bytes / read bandwidth at "
              "that footprint); at batch 256 the weight term is shared by 256 samples")
        print("\n".join(f"  {r['name']:15} {r['weight_bytes']:>11,} weight bytes at "
                        f"{limits.bw(r['weight_bytes']) / 1e9:6.1f} GB/s; batch 1 is "
                        f"{r['bound']}-bound" for r in rows))
        print("\ntargets:")
        print("\n".join(ratios(rows)))
        if args.png and plot(rows, args.png):
            print(f"\nwrote {args.png}")
        if args.json:
            args.json.write_text(json.dumps({
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                            "fma": limits.fma, "muladd": limits.muladd, "dram": limits.dram},
                "models": [{**{k: v for k, v in r.items() if k != "times"},
                            "times": {k: s.values for k, s in r["times"].items()}}
                           for r in rows]}, indent=1))
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
