"""Shared fixtures: the six reference workloads, each trained once per test session."""

import importlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("blobs", "linear", "exp", "sumprod", "digits", "tabular", "digits_cnn", "signals")
# The one time limit a test may set: a guard against a hang, never a judge of speed. Minutes,
# so that a machine busy with other work never trips it.
HANG_SECONDS = 300


@pytest.fixture(scope="session")
def workload():
    """`workload(name)` -> (config, TrainResult) of examples/NAME.toml, trained on first use."""
    from distill.backends import train
    from distill.config import load_config
    cache = {}

    def get(name: str):
        if name not in cache:
            config = load_config(ROOT / "examples" / f"{name}.toml")
            cache[name] = (config, train(config, verbose=0))
        return cache[name]
    return get


@pytest.fixture
def small(tmp_path) -> Path:
    """A two-class model `s.distill` (dense 2 -> 2, softmax; labels no and yes) in tmp_path."""
    from distill import ir
    path = tmp_path / "s.distill"
    ir.save(ir.make_model("s", (2,), [("d", "dense", {}, {"kernel": np.eye(2),
                                                          "bias": np.zeros(2)}),
                                      ("p", "softmax", {}, {})], labels=["no", "yes"]), path)
    return path


def require(module: str):
    """Import an optional test dependency. In CI (CI set) it must be there: a missing one fails
    the run instead of skipping quietly; elsewhere the tests that need it skip."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


def load_module(path: Path, name: str):
    """Import the Python file at path (an exported NumPy module) as a module called name."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def graph_models(rng):
    """DAGs: every merge, a shared layer, several inputs and outputs (one output twice, one
    an intermediate), residual connections, and a model whose outputs are its inputs."""
    from distill import ir
    def r(*shape):
        return rng.normal(size=shape).astype(np.float32)
    shared = {"kernel": r(4, 4), "bias": r(4)}
    prelu_alpha, norm_mean, norm_std = np.abs(r(1, 4)), r(4), np.abs(r(4)) + 0.5
    return [
        ir.make_model("graph", {"a": (2, 4), "b": (2, 4), "c": (3, 4)}, [
            ("da", "dense", {}, shared, "a"),
            ("db", "dense", {}, shared, "b"),  # a shared layer: one kernel for both
            ("sum", "add", {}, {}, ["da", "db", "a"]),
            ("diff", "subtract", {}, {}, ["sum", "b"]),
            ("prod", "multiply", {}, {}, ["diff", "da"]),
            ("mean", "average", {}, {}, ["prod", "db", "sum"]),
            ("hi", "maximum", {}, {}, ["mean", "a"]),
            ("lo", "minimum", {}, {}, ["hi", "b", "diff"]),
            ("t", "tanh", {}, {}, "lo"),
            ("rows", "concatenate", {"axis": 0}, {}, ["t", "c"]),
            ("cols", "concatenate", {"axis": 1}, {}, ["lo", "a", "t"]),
            ("flat", "flatten", {}, {}, "cols"),
            ("head", "dense", {}, {"kernel": r(24, 3)}, "flat"),
            ("sm", "softmax", {}, {}, "head"),
        ], outputs=["sm", "rows", "da", "sm"]),
        ir.make_model("residual", (6,), [
            ("d1", "dense", {}, {"kernel": r(6, 6), "bias": r(6)}),
            ("r1", "relu", {}, {}),
            ("skip", "add", {}, {}, ["r1", "input"]),
            ("d2", "dense", {}, {"kernel": r(6, 6)}),
            ("skip2", "add", {}, {}, ["d2", "skip", "input"]),
            ("s", "sigmoid", {}, {}),
        ]),
        activations(rng),
        *convolutions(rng),
        *recurrent(rng),
        # an in-place merge whose first input comes again; shared broadcast weights on two
        # input shapes; one N-D output of two inputs
        ir.make_model("repeats", {"a": (2, 4), "b": (3, 4)}, [
            ("d", "dense", {}, {"kernel": r(4, 4)}, "a"),
            ("e", "dense", {}, {"kernel": r(4, 4)}, "a"),
            ("s", "add", {}, {}, ["d", "d", "d"]),
            ("m", "multiply", {}, {}, ["s", "e", "s"]),
            ("v", "average", {}, {}, ["m", "e", "m"]),
            ("p", "prelu", {}, {"alpha": prelu_alpha}, "v"),
            ("q", "prelu", {}, {"alpha": prelu_alpha}, "b"),
            ("n", "normalize", {}, {"mean": norm_mean, "std": norm_std}, "p"),
            ("o", "normalize", {}, {"mean": norm_mean, "std": norm_std}, "q"),
        ], outputs=["n", "o"]),
        ir.make_model("two_in_one_out", {"a": (2, 4), "b": (2, 4)}, [
            ("s", "add", {}, {}, ["a", "b"])]),
        ir.make_model("passthrough", {"p": (3,), "q": (2, 2)}, [
            ("f", "flatten", {}, {}, "q")], outputs=["f", "p", "q"]),
    ]


# The ops after Keras's activations and normalization layers, each on its own output, options
# both ways (a cap and none, gamma and beta and neither, softmax on an inner and a middle axis).
ACTIVATION_CASES = [
    ("elu", {"alpha": 0.7}, {}), ("selu", {}, {}), ("gelu", {}, {}), ("gelu_tanh", {}, {}),
    ("silu", {}, {}), ("softplus", {}, {}), ("softsign", {}, {}), ("hard_sigmoid", {}, {}),
    ("exponential", {}, {}),
    ("clipped_relu", {"threshold": 0.9, "negative_slope": 0.1, "max_value": 1.4}, {}),
    ("clipped_relu", {"threshold": 0.5, "negative_slope": 0.0}, {}),
    ("prelu", {}, {"alpha": "per value"}), ("prelu", {}, {"alpha": "shared"}),
    ("layer_norm", {"axis": 2, "epsilon": 1e-3}, {"gamma": (4,), "beta": (4,)}),
    ("layer_norm", {"axis": 1, "epsilon": 1e-5}, {}),
    ("softmax", {"axis": 0}, {}), ("softmax", {"axis": 1}, {}),
]


def activations(rng):
    """Every op of ACTIVATION_CASES after one dense layer, all outputs."""
    from distill import ir

    def r(*shape):
        return rng.normal(size=shape).astype(np.float32)
    layers = [("d", "dense", {}, {"kernel": r(3, 4) * 2, "bias": r(4)})]
    for k, (op, attrs, weights) in enumerate(ACTIVATION_CASES):
        if op == "prelu":
            weights = {"alpha": np.abs(r(2, 3, 4) if weights["alpha"] == "per value"
                                       else r(1, 3, 1))}
        elif op == "layer_norm":
            weights = {key: r(*shape) for key, shape in weights.items()}
        layers.append((f"{op}_{k}", op, attrs, weights, "d"))
    return ir.make_model("activations", (2, 3, 3), layers, outputs=[n for n, *_ in layers[1:]])


def convolutions(rng):
    """2-D and 1-D: strides, padding on each side, dilation, groups and depthwise, bias or
    none, max and average pooling with padding, zero padding, upsampling, cropping, both
    global poolings, transposed convolutions (cut, output padding, dilation), linear
    upsampling, axes reordered to channels first."""
    from distill import ir

    def r(*shape):
        return rng.normal(size=shape).astype(np.float32)
    return [
        ir.make_model("conv2d", (7, 6, 4), [
            ("c", "conv", {"strides": [1, 2], "pads": [1, 1, 1, 1], "groups": 2,
                           "dilation": [1, 1]}, {"kernel": r(3, 3, 2, 6), "bias": r(6)}),
            ("r", "relu", {}, {}),
            ("mp", "max_pool", {"pool": [2, 2], "strides": [2, 1], "pads": [0, 0, 1, 1]}, {}),
            ("ap", "avg_pool", {"pool": [2, 2], "strides": [1, 1], "pads": [1, 0, 0, 1]}, {}),
            ("z", "zero_pad", {"pads": [1, 0, 0, 2]}, {}),
            ("up", "upsample", {"size": [2, 1]}, {}),
            ("cut", "crop", {"crops": [3, 0, 1, 1]}, {}),
            ("dw", "conv", {"strides": [1, 1], "pads": [0, 0, 0, 0], "groups": 6,
                            "dilation": [2, 1]}, {"kernel": r(2, 2, 1, 12)}),
            ("g", "global_avg_pool", {}, {}, "dw"), ("gm", "global_max_pool", {}, {}, "dw"),
            ("lin", "upsample", {"size": [3, 2], "interpolation": "linear"}, {}, "ap"),
            ("up2", "conv_transpose", {"strides": [2, 3], "pads": [1, 0, 0, 1],
                                       "output_padding": [1, 2], "dilation": [1, 2]},
             {"kernel": r(3, 2, 6, 3), "bias": r(3)}, "mp"),
            ("chw", "transpose", {"perm": [2, 0, 1]}, {}, "up2"),
        ], outputs=["g", "gm", "z", "chw", "lin"]),
        ir.make_model("conv1d", (9, 3), [
            ("c", "conv", {"strides": [2], "pads": [2, 0], "groups": 1, "dilation": [2]},
             {"kernel": r(3, 3, 5), "bias": r(5)}),
            ("mp", "max_pool", {"pool": [2], "strides": [1], "pads": [0, 1]}, {}),
            ("ap", "avg_pool", {"pool": [3], "strides": [2], "pads": [1, 1]}, {}),
            ("z", "zero_pad", {"pads": [1, 2]}, {}),
            ("up", "upsample", {"size": [3]}, {}),
            ("cut", "crop", {"crops": [0, 2]}, {}),
            ("g", "global_avg_pool", {}, {}),
            ("t", "conv_transpose", {"strides": [3], "pads": [0, 2]}, {"kernel": r(2, 5, 2)},
             "mp"),
            ("lin", "upsample", {"size": [2], "interpolation": "linear"}, {}, "t"),
        ], outputs=["g", "lin"]),
    ]


def recurrent(rng):
    """SimpleRNN, LSTM and GRU (reset_after both ways), every step's output or the last, read
    forwards and backwards, every step activation, with and without a bias, steps reversed;
    four outputs. An
    embedding of ids (random inputs: many outside the table) into an LSTM. And a model that
    streams (`codegen.stream`): normalize, dense, merges and recurrent layers step by step
    into two last-step layers and a softmax head."""
    from distill import ir

    def r(*shape):
        return (rng.normal(size=shape) * 0.5).astype(np.float32)
    return [ir.make_model("recurrent", (6, 3), [
        ("rnn", "simple_rnn", {"return_sequences": True, "activation": "relu"},
         {"kernel": r(3, 4), "recurrent_kernel": r(4, 4), "bias": r(4)}),
        ("lstm", "lstm", {"return_sequences": True, "go_backwards": True,
                          "recurrent_activation": "hard_sigmoid"},
         {"kernel": r(4, 12), "recurrent_kernel": r(3, 12), "bias": r(12)}),
        ("gru", "gru", {"return_sequences": True, "reset_after": True},
         {"kernel": r(3, 6), "recurrent_kernel": r(2, 6), "bias": r(2, 6)}),
        ("gru_v1", "gru", {"return_sequences": False, "reset_after": False,
                           "go_backwards": True, "activation": "sigmoid"},
         {"kernel": r(2, 9), "recurrent_kernel": r(3, 9)}),
        ("last", "lstm", {"return_sequences": False, "activation": "relu"},
         {"kernel": r(3, 8), "recurrent_kernel": r(2, 8)}, "input"),
        ("in_time_order", "reverse", {}, {}, "lstm"),
    ], outputs=["gru_v1", "last", "gru", "in_time_order"]), ir.make_model("tokens", (5,), [
        ("embed", "embedding", {}, {"embeddings": r(3, 4)}),
        ("lstm", "lstm", {"return_sequences": False},
         {"kernel": r(4, 8), "recurrent_kernel": r(2, 8), "bias": r(8)}),
    ], outputs=["lstm", "embed"]), ir.make_model("stream", (5, 3), [
        ("scale", "normalize", {}, {"mean": r(3), "std": np.abs(r(3)) + 0.5}),
        ("features", "dense", {}, {"kernel": r(3, 4), "bias": r(4)}),
        ("squash", "tanh", {}, {}),
        ("rnn", "simple_rnn", {"return_sequences": True},
         {"kernel": r(4, 3), "recurrent_kernel": r(3, 3), "bias": r(3)}),
        ("gru", "gru", {"return_sequences": True, "reset_after": False,
                        "recurrent_activation": "hard_sigmoid"},
         {"kernel": r(3, 6), "recurrent_kernel": r(2, 6)}),
        ("skip", "dense", {}, {"kernel": r(4, 3)}, "squash"),
        ("sum", "add", {}, {}, ["rnn", "skip"]),
        ("gru_last", "gru", {"return_sequences": False, "reset_after": True},
         {"kernel": r(3, 6), "recurrent_kernel": r(2, 6), "bias": r(2, 6)}, "sum"),
        ("last", "lstm", {"return_sequences": False},
         {"kernel": r(2, 8), "recurrent_kernel": r(2, 8), "bias": r(8)}, "gru"),
        ("both", "concatenate", {"axis": 0}, {}, ["last", "gru_last"]),
        ("head", "dense", {}, {"kernel": r(4, 3), "bias": r(3)}),
        ("probs", "softmax", {}, {}),
    ], outputs=["probs", "gru", "sum"])]
