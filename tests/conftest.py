"""Shared fixtures: the six reference workloads, each trained once per test session."""

import importlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("blobs", "linear", "exp", "sumprod", "digits", "tabular")
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
