"""Training speed: distill's core against a hand-written NumPy trainer, TensorFlow and PyTorch.

Where it sits: outside the package and outside the tests; run by hand when the autodiff core,
the layers or the optimizers change:

    python benchmarks/train_speed.py [--quick] [--json PATH] [--profile]

What it promises: every contender trains the same network from the same initial weights on the
same pre-sliced float32 batches, in one process, and a one-step check printed before the
timings shows that each computes the same loss as distill. Times are the median over several
repeats of N training steps (N chosen so a repeat takes a few tenths of a second), with the
contenders' repeats interleaved so that a slow patch of the machine hits them all alike.

The hand-written trainer is the yardstick for what any NumPy trainer can reach: textbook layer
classes (`Affine`, `Relu`, `SoftmaxWithLoss`, ...) doing the minimum NumPy work, in place, with
no autodiff bookkeeping. "hand-written, flat" is the same code with every parameter and gradient
a view into one flat buffer, so the optimizer makes one pass over all weights instead of one
per array; it shows how much of a small network's step is per-array optimizer overhead.

Thread settings are left at each library's defaults and printed, since that is what a user gets.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Run from a checkout without installing: the package sits one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import distill  # noqa: E402
from distill import autodiff as ad  # noqa: E402
from distill import nn, optim  # noqa: E402

F32 = np.float32
LEAKY_SLOPE = float(F32(0.2))  # the float32 slope distill trains with
BATCHES = 10                   # pre-sliced batches per workload, cycled through


# ------------------------------------------------------------------------------------ workloads

@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    sizes: tuple[int, ...]  # input width, then each Dense layer's units
    hidden: str             # activation after every hidden Dense
    output: str             # activation after the last Dense
    loss: str               # "mse" or "cce" (softmax output + categorical cross-entropy)
    optimizer: str          # "adam" or "sgd"
    lr: float
    batch: int

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(ord(self.key))
        n = BATCHES * self.batch
        if self.loss == "mse":
            x = rng.random((n, self.sizes[0]), dtype=F32)
            return x, np.exp(x)
        x = rng.standard_normal((n, self.sizes[0]), dtype=F32)
        labels = rng.integers(0, self.sizes[-1], n)
        return x, np.eye(self.sizes[-1], dtype=F32)[labels]

    def batches(self) -> list[tuple[np.ndarray, np.ndarray]]:
        x, y = self.data()
        b = self.batch
        # Contiguous copies, so no contender pays for strided slices.
        return [(np.ascontiguousarray(x[i:i + b]), np.ascontiguousarray(y[i:i + b]))
                for i in range(0, len(x), b)]


WORKLOADS = [
    Workload("a", "1-16-32-1, leaky_relu(0.2) everywhere, MSE, Adam(0.001), batch 100",
             (1, 16, 32, 1), "leaky_relu", "leaky_relu", "mse", "adam", 0.001, 100),
    Workload("b", "784-100-10, sigmoid, softmax + CCE, SGD(0.1), batch 100",
             (784, 100, 10), "sigmoid", "softmax", "cce", "sgd", 0.1, 100),
    Workload("c", "54-32-32-32-7, relu, softmax + CCE, Adam(0.01), batch 32",
             (54, 32, 32, 32, 7), "relu", "softmax", "cce", "adam", 0.01, 32),
]

ADAM_DEFAULTS = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}


# --------------------------------------------------------------------------------- 1. distill

def distill_model(w: Workload) -> nn.Sequential:
    layers = []
    for i, units in enumerate(w.sizes[1:]):
        act = w.output if i == len(w.sizes) - 2 else w.hidden
        spec = {"name": "leaky_relu", "alpha": LEAKY_SLOPE} if act == "leaky_relu" else act
        layers.append(nn.Dense(units, activation=spec,
                               input_shape=(w.sizes[0],) if i == 0 else None))
    model = nn.Sequential(layers, seed=0)
    model.build()
    opt = (optim.Adam(w.lr, **ADAM_DEFAULTS) if w.optimizer == "adam" else optim.SGD(w.lr))
    model.compile(loss="mse" if w.loss == "mse" else "categorical_crossentropy", optimizer=opt)
    return model


def distill_step(model: nn.Sequential) -> Callable[[np.ndarray, np.ndarray], float]:
    def step(x, y):
        return model.train_step(x, y)[0]
    return step


# ----------------------------------------------------------------- 2. hand-written NumPy trainer
# Every array is float32. Activations work in place on the fresh array the layer before made,
# and each backward multiplies the incoming gradient in place: nothing else holds those arrays.

class Affine:
    """out = x @ W + b; backward writes dW and db into the given (possibly shared) buffers."""

    def __init__(self, W, b, dW, db, need_dx: bool):
        self.W, self.b, self.dW, self.db = W, b, dW, db
        self.need_dx = need_dx  # the first layer's input gradient is never used: skip it
        self.x = None

    def forward(self, x):
        self.x = x
        out = x @ self.W
        out += self.b
        return out

    def backward(self, dout):
        np.matmul(self.x.T, dout, out=self.dW)
        np.sum(dout, axis=0, out=self.db)
        return dout @ self.W.T if self.need_dx else None


class Relu:
    def forward(self, x):
        self.mask = x > 0
        return np.maximum(x, F32(0), out=x)

    def backward(self, dout):
        dout *= self.mask
        return dout


class LeakyRelu:
    def __init__(self, slope: float):
        self.one, self.slope = F32(1), F32(slope)

    def forward(self, x):
        # One factor array serves forward and backward; x * 1 is exact, so this equals
        # where(x > 0, x, slope * x) bit for bit.
        self.scale = np.where(x > 0, self.one, self.slope)
        x *= self.scale
        return x

    def backward(self, dout):
        dout *= self.scale
        return dout


class Sigmoid:
    def forward(self, x):
        # sigmoid(x) = (1 + tanh(x/2)) / 2: as many ufunc calls as 1/(1+exp(-x)), and it cannot
        # overflow, so no errstate is needed.
        x *= F32(0.5)
        np.tanh(x, out=x)
        x *= F32(0.5)
        x += F32(0.5)
        self.out = x
        return x

    def backward(self, dout):
        s = self.out
        d = F32(1) - s
        d *= s
        dout *= d
        return dout


class SoftmaxWithLoss:
    """Softmax + mean categorical cross-entropy over one-hot (rows summing to 1) labels."""

    def forward(self, x, t):
        x -= x.max(axis=1, keepdims=True)
        tz = np.vdot(t, x)          # sum of t * z, before x is overwritten by exp
        e = np.exp(x, out=x)
        s = e.sum(axis=1, keepdims=True)
        n = x.shape[0]
        loss = (np.log(s).sum() - tz) / n
        e /= s
        self.y, self.t = e, t
        return float(loss)

    def backward(self):
        y = self.y
        y -= self.t
        y *= F32(1 / y.shape[0])
        return y


class MeanSquaredLoss:
    def forward(self, y, t):
        self.d = d = y - t
        return float(np.vdot(d, d)) / d.size

    def backward(self):
        d = self.d
        d *= F32(2 / d.size)
        return d


class SGD:
    def __init__(self, params: Sequence[np.ndarray], lr: float):
        self.lr = lr

    def update(self, params, grads):
        for p, g in zip(params, grads):
            g *= self.lr  # the gradient buffer is rewritten next step: scale it in place
            p -= g


class Adam:
    """Keras 3's rule, in place: a = lr*sqrt(1-b2^t)/(1-b1^t); m += (g-m)*(1-b1);
    v += (g*g-v)*(1-b2); w -= a*m/(sqrt(v)+eps). Two scratch arrays per parameter."""

    def __init__(self, params: Sequence[np.ndarray], lr: float, beta_1: float, beta_2: float,
                 epsilon: float):
        self.lr, self.b1, self.b2, self.eps = lr, beta_1, beta_2, epsilon
        self.t = 0
        self.slots = [(np.zeros_like(p), np.zeros_like(p), np.empty_like(p), np.empty_like(p))
                      for p in params]

    def update(self, params, grads):
        self.t += 1
        alpha = self.lr * math.sqrt(1 - self.b2 ** self.t) / (1 - self.b1 ** self.t)
        c1, c2, eps = 1 - self.b1, 1 - self.b2, self.eps
        for p, g, (m, v, s, u) in zip(params, grads, self.slots):
            np.subtract(g, m, out=s)
            s *= c1
            m += s
            np.multiply(g, g, out=s)
            s -= v
            s *= c2
            v += s
            np.sqrt(v, out=s)
            s += eps
            np.multiply(m, alpha, out=u)
            u /= s
            p -= u


class HandNet:
    def __init__(self, layers, loss, optimizer, params, grads):
        self.layers, self.loss, self.optimizer = layers, loss, optimizer
        self.backward_layers = layers[::-1]
        self.params, self.grads = params, grads

    def train_step(self, x, t) -> float:
        for layer in self.layers:
            x = layer.forward(x)
        loss = self.loss.forward(x, t)
        d = self.loss.backward()
        for layer in self.backward_layers:
            d = layer.backward(d)
        self.optimizer.update(self.params, self.grads)
        return loss


def hand_net(w: Workload, weights: Sequence[np.ndarray], flat: bool) -> HandNet:
    """The network from `weights` ([W1, b1, W2, b2, ...]); `flat` puts all of them, and all
    gradients, in one buffer each, which the optimizer then updates in one pass."""
    if flat:
        total = sum(a.size for a in weights)
        pbuf, gbuf = np.empty(total, F32), np.empty(total, F32)
        params, grads, at = [], [], 0
        for a in weights:
            params.append(pbuf[at:at + a.size].reshape(a.shape))
            grads.append(gbuf[at:at + a.size].reshape(a.shape))
            params[-1][...] = a
            at += a.size
        opt_params, opt_grads = [pbuf], [gbuf]
    else:
        params = [np.array(a, dtype=F32) for a in weights]
        grads = [np.empty_like(p) for p in params]
        opt_params, opt_grads = params, grads
    layers = []
    n = len(w.sizes) - 1
    for i in range(n):
        layers.append(Affine(params[2 * i], params[2 * i + 1], grads[2 * i], grads[2 * i + 1],
                             need_dx=i > 0))
        act = w.output if i == n - 1 else w.hidden
        if act == "softmax":
            continue  # SoftmaxWithLoss applies it, fused with the loss
        layers.append({"relu": Relu, "sigmoid": Sigmoid}.get(act, lambda: LeakyRelu(LEAKY_SLOPE))())
    loss = MeanSquaredLoss() if w.loss == "mse" else SoftmaxWithLoss()
    opt = (Adam(opt_params, w.lr, **ADAM_DEFAULTS) if w.optimizer == "adam"
           else SGD(opt_params, w.lr))
    return HandNet(layers, loss, opt, opt_params, opt_grads)


def hand_weights(net: HandNet) -> list[np.ndarray]:
    return [a for layer in net.layers if isinstance(layer, Affine) for a in (layer.W, layer.b)]


# ------------------------------------------------------------------------ 3-4. TensorFlow (Keras)

def tf_steps(w: Workload, weights: Sequence[np.ndarray], tf: Any, keras: Any,
             graph: bool) -> Callable:
    """A GradientTape step on a Keras model with a Keras optimizer; wrapped in tf.function
    when `graph`. Like distill, softmax + CCE is one fused op on logits."""
    layers: list[Any] = [keras.Input((w.sizes[0],))]
    n = len(w.sizes) - 1
    for i, units in enumerate(w.sizes[1:]):
        act = w.output if i == n - 1 else w.hidden
        if act == "softmax":
            act = None
        elif act == "leaky_relu":
            act = lambda z: tf.nn.leaky_relu(z, alpha=LEAKY_SLOPE)  # noqa: E731
        layers.append(keras.layers.Dense(units, activation=act))
    model = keras.Sequential(layers)
    model.set_weights(list(weights))
    if w.optimizer == "adam":
        opt = keras.optimizers.Adam(learning_rate=w.lr, **ADAM_DEFAULTS)
    else:
        opt = keras.optimizers.SGD(learning_rate=w.lr)
    variables = model.trainable_variables
    opt.build(variables)  # create the slots outside tf.function

    if w.loss == "mse":
        def loss_fn(y, out):
            return tf.reduce_mean(tf.square(out - y))
    else:
        def loss_fn(y, out):
            return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=out))

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        return loss

    run = tf.function(step) if graph else step
    return lambda x, y: float(run(x, y))


# ------------------------------------------------------------------------------------ 5. torch

def torch_step(w: Workload, weights: Sequence[np.ndarray], torch: Any) -> Callable:
    """The same network with torch.nn. NOTE: torch's Adam adds eps to sqrt(v_hat), Keras's to
    sqrt(v): the steps differ by eps-sized amounts, the work is the same."""
    mods: list[Any] = []
    n = len(w.sizes) - 1
    for i in range(n):
        lin = torch.nn.Linear(w.sizes[i], w.sizes[i + 1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(weights[2 * i].T)))
            lin.bias.copy_(torch.from_numpy(weights[2 * i + 1]))
        mods.append(lin)
        act = w.output if i == n - 1 else w.hidden
        if act == "relu":
            mods.append(torch.nn.ReLU())
        elif act == "sigmoid":
            mods.append(torch.nn.Sigmoid())
        elif act == "leaky_relu":
            mods.append(torch.nn.LeakyReLU(LEAKY_SLOPE))
    net = torch.nn.Sequential(*mods)
    if w.optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=w.lr, betas=(0.9, 0.999), eps=1e-7)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=w.lr)
    # CrossEntropyLoss takes class probabilities as targets, so one-hot rows work as they are.
    loss_fn = torch.nn.MSELoss() if w.loss == "mse" else torch.nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss.item()
    return step


# ------------------------------------------------------------------------------------- timing

def _run(step: Callable, batches: Sequence[tuple[Any, Any]], n: int) -> float:
    nb = len(batches)
    t0 = time.perf_counter()
    for i in range(n):
        x, y = batches[i % nb]
        step(x, y)
    return time.perf_counter() - t0


def measure(contenders: dict[str, tuple[Callable, Sequence]], target_s: float,
            repeats: int) -> dict[str, dict[str, float]]:
    """Median seconds per step for each contender; repeats are interleaved across them."""
    fastest = {}  # the fastest seconds per step seen so far, which sets each repeat's N
    for name, (step, batches) in contenders.items():
        _run(step, batches, 20)  # warm up: tf.function traces, caches and allocators settle
        n = 1
        while (t := _run(step, batches, n)) < 0.02:
            n *= 2
        fastest[name] = min(t, *(_run(step, batches, n) for _ in range(2))) / n
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    sizes: dict[str, list[int]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, (step, batches) in contenders.items():
            # N follows the fastest step seen, so a stall during calibration cannot leave a
            # contender with repeats too short to average anything.
            n = max(1, round(target_s / fastest[name]))
            per_step = _run(step, batches, n) / n
            fastest[name] = min(fastest[name], per_step)
            samples[name].append(per_step)
            sizes[name].append(n)
    out = {}
    for name, s in samples.items():
        med = statistics.median(s)
        out[name] = {"us_per_step": med * 1e6, "steps_per_s": 1 / med,
                     "best_us_per_step": min(s) * 1e6,
                     "spread_pct": 100 * (max(s) - min(s)) / med,
                     "steps_per_repeat": statistics.median(sizes[name]), "repeats": repeats}
    return out


def tape_overhead(n: int, repeats: int, chunk: int = 1000) -> dict[str, float]:
    """Microseconds per op of distill's bookkeeping on 1-element tensors, over bare NumPy.

    Recorded ops go on tapes of `chunk` ops, each a fresh Tape as in a training step: one long
    tape would measure the cyclic garbage collector walking it, which no training step does.
    """
    n = max(chunk, n - n % chunk)
    a = ad.Variable(np.ones(1, F32))
    b = ad.constant(np.ones(1, F32))
    ad_, bd = a.data, b.data

    def bare():
        t0 = time.perf_counter()
        for _ in range(n):
            ad_ + bd
        return time.perf_counter() - t0

    def untaped():
        t0 = time.perf_counter()
        for _ in range(n):
            a + b
        return time.perf_counter() - t0

    def taped():
        t0 = time.perf_counter()
        for _ in range(n // chunk):
            with ad.Tape():
                for _ in range(chunk):
                    a + b
        return time.perf_counter() - t0

    def backward():
        # A chain y = a + b + b + ...: one recorded op per link, then one gradient call.
        total = 0.0
        for _ in range(n // chunk):
            with ad.Tape() as tape:
                y = a
                for _ in range(chunk):
                    y = y + b
            t0 = time.perf_counter()
            tape.gradient(y, a)
            total += time.perf_counter() - t0
        return total

    med = {f.__name__: statistics.median(f() for _ in range(repeats)) / n * 1e6
           for f in (bare, untaped, taped, backward)}
    return {"numpy_add_us": med["bare"],
            "untaped_overhead_us": med["untaped"] - med["bare"],
            "taped_overhead_us": med["taped"] - med["bare"],
            "backward_per_op_us": med["backward"]}


# ---------------------------------------------------------------------------------- reporting

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits.toml"

# Run in a fresh interpreter: tracemalloc's peak over one training run on the NumPy backend,
# i.e. every NumPy array and Python object it allocates (data splits, weights, optimizer
# state, activations, history), after a first data load has done the imports.
TRACED_TRAIN = """
import sys, tracemalloc
sys.path.insert(0, sys.argv[1])
from distill import config
from distill.backends import numpy as backend
cfg = config.load_config(sys.argv[2])
backend.prepare(cfg, cfg.seed)
tracemalloc.start()
backend.train(cfg, epochs=int(sys.argv[3]), verbose=0)
print(tracemalloc.get_traced_memory()[1])
"""


# Appended to each measured program: its peak resident memory. VmHWM belongs to the program's
# own address space; getrusage's ru_maxrss would also count the parent's, copied at fork.
REPORT_PEAK = """
for _line in open("/proc/self/status"):
    if _line.startswith("VmHWM:"):
        print("PEAK_KIB", _line.split()[1])
"""
CLI = ("import sys; sys.path.insert(0, sys.argv[1]); from distill import cli\n"
       "status = cli.main(sys.argv[2:])\n"
       "if status:\n"
       "    sys.exit(status)  # its one-line error is on stderr; no figure from a failed run\n")


def peak(program: str, *args: str) -> tuple[float, str]:
    """Run `program` (Python source) in a fresh interpreter with `args`; its peak resident
    memory in MiB, and what it printed."""
    proc = subprocess.run([sys.executable, "-c", program + REPORT_PEAK, *args], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise SystemExit(f"train_speed.py: memory run {' '.join(args)} failed: {last}")
    out = proc.stdout
    kib = [line.split()[1] for line in out.splitlines() if line.startswith("PEAK_KIB")]
    return int(kib[-1]) / 1024, out


def train_memory(epochs: int, tensorflow: bool) -> dict[str, float]:
    """Peak memory of training digits (`examples/digits.toml`, `epochs` epochs) with the command
    line, each figure from its own fresh process: the whole process's peak RSS next to that of a
    process that only imports the same modules and loads the data, and tracemalloc's peak."""
    load = ("import sys; sys.path.insert(0, sys.argv[1]); import distill.cli; "
            "from distill import config, data; "
            "data.load_data(config.load_config(sys.argv[2]).data)")
    with tempfile.TemporaryDirectory() as tmp:
        train = ["train", str(DIGITS), "-o", str(Path(tmp) / "digits.distill"), "--epochs",
                 str(epochs), "-q"]
        out = {"numpy: imports + data, RSS MiB": peak(load, str(ROOT), str(DIGITS))[0],
               "numpy: train, RSS MiB": peak(CLI, str(ROOT), *train)[0]}
        traced = peak(TRACED_TRAIN, str(ROOT), str(DIGITS), str(epochs))[1]
        out["numpy: train, tracemalloc peak MiB"] = int(traced.split()[0]) / 2**20
        if tensorflow:
            out["tensorflow: imports + data, RSS MiB"] = peak(
                load + "; import tensorflow, keras", str(ROOT), str(DIGITS))[0]
            out["tensorflow: train, RSS MiB"] = peak(CLI, str(ROOT), *train, "--backend",
                                                     "tensorflow")[0]
    return out


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu": model, "logical_cores": os.cpu_count(), "usable_cores": usable,
            "platform": platform.platform(), "python": platform.python_version()}


def blas_threads() -> list[dict[str, Any]] | None:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    # Only NumPy's own pools: other wheels loaded later (scipy via TF) bring their own.
    return [{k: i.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for i in threadpool_info() if "numpy" in (i.get("filepath") or "")]


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def step_rel(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray],
             start: Sequence[np.ndarray]) -> float:
    """Largest |x - y| as a share of the largest step y - start: weights alone would hide a
    wrong update under their size, and Adam's first step is about lr wherever g != 0."""
    gap = max(float(np.max(np.abs(x - y))) for x, y in zip(xs, ys))
    step = max(float(np.max(np.abs(y - s))) for y, s in zip(ys, start))
    return gap / max(step, 1e-30)


def print_table(w: Workload, results: dict[str, dict[str, float]]) -> None:
    base = results["distill"]["us_per_step"]
    print(f"  {'contender':<20} {'us/step':>9} {'steps/s':>8} {'best us':>9} {'spread':>7} "
          f"{'N':>6} {'time/distill':>13}")
    for name, r in results.items():
        print(f"  {name:<20} {r['us_per_step']:>9.1f} {r['steps_per_s']:>8.0f} "
              f"{r['best_us_per_step']:>9.1f} {r['spread_pct']:>6.0f}% "
              f"{r['steps_per_repeat']:>6.0f} {r['us_per_step'] / base:>13.2f}")


def ratios(w: Workload, results: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The target ratios, from medians (the verdict) and from best repeats: other load only
    ever slows a repeat down, so when the two disagree the machine was busy."""
    def ratio(a: str, b: str) -> tuple[float, float]:
        return (results[a]["us_per_step"] / results[b]["us_per_step"],
                results[a]["best_us_per_step"] / results[b]["best_us_per_step"])

    out: dict[str, Any] = {}
    med, best = ratio("distill", "hand-written")
    out["distill_over_hand"] = {"median": med, "best": best}
    print(f"  distill / hand-written        = {med:.2f} (best {best:.2f})  "
          f"target <= 1.25: {'met' if med <= 1.25 else 'MISSED'}")
    med, best = ratio("distill", "hand-written, flat")
    out["distill_over_hand_flat"] = {"median": med, "best": best}
    print(f"  distill / hand-written, flat  = {med:.2f} (best {best:.2f})  for information")
    if "tf.function" in results:
        med, best = ratio("distill", "tf.function")
        out["distill_over_tf_function"] = {"median": med, "best": best}
        faster = med < 1
        verdict = (f"distill {1 / med:.2f}x faster" if faster else f"distill {med:.2f}x slower")
        target = ""
        if w.key in ("a", "c"):
            target = f"  target distill faster: {'met' if faster else 'MISSED'}"
        print(f"  distill vs tf.function: {verdict} (best repeats: {1 / best:.2f}x as fast)"
              f"{target}")
    return out


def profile_distill(steps: int) -> None:
    """cProfile of distill's train_step on workload (a), heaviest functions by own time."""
    w = WORKLOADS[0]
    model, batches = distill_model(w), w.batches()
    step = distill_step(model)
    _run(step, batches, 50)
    prof = cProfile.Profile()
    prof.enable()
    _run(step, batches, steps)
    prof.disable()
    print(f"\ncProfile of distill train_step, workload (a), {steps} steps (by own time):")
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(18)


# --------------------------------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter repeats")
    p.add_argument("--json", metavar="PATH", help="also write the numbers to PATH")
    p.add_argument("--profile", action="store_true",
                   help="end with a cProfile of distill's train_step on workload (a)")
    args = p.parse_args(argv)
    repeats, target_s = (3, 0.2) if args.quick else (11, 0.3)

    report: dict[str, Any] = {"machine": machine(), "settings": {
        "repeats": repeats, "target_s_per_repeat": target_s, "batches": BATCHES}}
    m = report["machine"]
    print(f"machine: {m['cpu']}, {m['logical_cores']} logical cores "
          f"({m['usable_cores']} usable), {m['platform']}")
    if hasattr(os, "getloadavg"):
        # Other processes on a small machine move these numbers; the load says how much.
        m["load_average"] = os.getloadavg()
        print("load average at start: " + " ".join(f"{x:.2f}" for x in m["load_average"]))
    versions = {"python": m["python"], "numpy": np.__version__, "distill": distill.__version__}
    threads: dict[str, Any] = {"numpy_blas": blas_threads()}

    # Optional contenders. Quiet TF's C++ start-up logging; it changes nothing else.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras
        import tensorflow as tf
        versions.update(tensorflow=tf.__version__, keras=keras.__version__)
        threads["tensorflow"] = {
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads()}
    except ImportError:
        tf = keras = None
    try:
        import torch
        versions["torch"] = torch.__version__
        threads["torch"] = {"intra_op": torch.get_num_threads(),
                            "inter_op": torch.get_num_interop_threads()}
    except ImportError:
        torch = None
    report["versions"], report["threads"] = versions, threads

    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    blas = threads["numpy_blas"]
    print("numpy BLAS threads: " + ("threadpoolctl not installed" if blas is None else
          ", ".join(f"{b['internal_api']} {b['version']} ({b['architecture']}): "
                    f"{b['num_threads']}" for b in blas)))
    if tf is None:
        print("tensorflow: not installed")
    else:
        t = threads["tensorflow"]
        print(f"tensorflow threads: inter_op {t['inter_op']}, intra_op {t['intra_op']} "
              "(0 = TF picks from the core count)")
    if torch is None:
        print("torch: not installed (PyTorch contender skipped)")
    else:
        print(f"torch threads: intra_op {threads['torch']['intra_op']}, "
              f"inter_op {threads['torch']['inter_op']}")
    print(f"timing: median of {repeats} interleaved repeats of N steps "
          f"(~{target_s} s each), after a warm-up; {BATCHES} pre-sliced batches cycled;\n"
          "  'best' is the fastest repeat, 'spread' is (slowest - fastest) / median, "
          "N the median steps per repeat")

    report["workloads"] = {}
    for w in WORKLOADS:
        print(f"\n({w.key}) {w.title}")
        batches = w.batches()
        model = distill_model(w)
        weights = model.get_weights()
        contenders: dict[str, tuple[Callable, Sequence]] = {
            "distill": (distill_step(model), batches)}
        hand = hand_net(w, weights, flat=False)
        flat = hand_net(w, weights, flat=True)
        contenders["hand-written"] = (hand.train_step, batches)
        contenders["hand-written, flat"] = (flat.train_step, batches)
        if tf is not None:
            tf_batches = [(tf.constant(x), tf.constant(y)) for x, y in batches]
            contenders["tf eager"] = (tf_steps(w, weights, tf, keras, graph=False), tf_batches)
            contenders["tf.function"] = (tf_steps(w, weights, tf, keras, graph=True), tf_batches)
        if torch is not None:
            torch_batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]
            contenders["torch"] = (torch_step(w, weights, torch), torch_batches)

        # Like for like: the first step from the same weights must give the same loss, and
        # the hand-written trainers must land on the same weights.
        losses = {name: float(step(*bs[0])) for name, (step, bs) in contenders.items()}
        check = {name: rel(v, losses["distill"]) for name, v in losses.items()
                 if name != "distill"}
        after = model.get_weights()
        check_w = {"hand-written": step_rel(hand_weights(hand), after, weights),
                   "hand-written, flat": step_rel(hand_weights(flat), after, weights)}
        print(f"  first-step loss {losses['distill']:.6g}; relative difference from distill: "
              + ", ".join(f"{k} {v:.1e}" for k, v in check.items()))
        print("  weights after it, largest difference from distill's / its largest step: "
              + ", ".join(f"{k} {v:.1e}" for k, v in check_w.items()))

        results = measure(contenders, target_s, repeats)
        print_table(w, results)
        report["workloads"][w.key] = {
            "title": w.title, "first_step_loss_rel_diff": check,
            "weights_diff_over_step": check_w, "results": results, "ratios": ratios(w, results)}

    oh = report["tape_overhead"] = tape_overhead(5000 if args.quick else 20000, repeats)
    print("\ndistill per-op overhead, `a + b` on 1-element float32 tensors "
          "(tapes of 1000 ops):")
    print(f"  bare NumPy add                 {oh['numpy_add_us']:.2f} us/op")
    print(f"  distill op, no tape, extra     {oh['untaped_overhead_us']:.2f} us/op")
    print(f"  distill op, on a Tape, extra   {oh['taped_overhead_us']:.2f} us/op")
    print(f"  tape.gradient, per recorded op {oh['backward_per_op_us']:.2f} us/op (a chain)")

    epochs = 20 if args.quick else 100
    if Path("/proc/self/status").is_file():
        mem = report["train_memory_digits"] = train_memory(epochs, tf is not None)
        print(f"\ntraining peak memory, digits (64-100-10, {epochs} epochs, `distill train`, "
              "each line a fresh process):")
        for key, value in mem.items():
            print(f"  {key:40} {value:8.1f}")
    else:
        print("\ntraining peak memory: not measured (it reads VmHWM from Linux's /proc)")

    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    if args.profile:
        profile_distill(1000 if args.quick else 3000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
