"""The reference workloads: the six of ../shared/workloads.md, and two convolutional ones (a
digits CNN and a 1-D conv classifier of generated signals); each example config trains to its
bar.

Each trains in seconds on two cores. The bars are checked on the reference interpreter's
outputs (`ir.run` on the trained IR), not the trainer's; `BARS` is shared with the TensorFlow
backend's tests, so both backends meet the same bars.
"""

import numpy as np
import pytest
from conftest import WORKLOADS

import distill
from distill.backends import prepare
from distill.data import load_data

pytestmark = pytest.mark.slow


def blobs(config, result):
    assert result.metrics["test"]["accuracy"] >= 0.98
    assert result.model.labels == ("0", "1")


def linear(config, result):
    truth = load_data(config.data, seed=config.seed).truth
    dense = result.model.nodes[0]
    assert np.abs(dense.weights["kernel"] - truth["W"]).max() <= 0.3
    assert np.abs(dense.weights["bias"] - truth["B"]).max() <= 0.3
    steps = np.array(result.steps)
    assert len(steps) == 100 and np.all(np.diff(steps) < 0)
    # Full-batch gradient descent on a quadratic: the excess over the noise floor shrinks by a
    # constant factor per step, a straight line on a log scale.
    excess = np.log(steps[:50] - steps[-1])
    assert np.corrcoef(np.arange(50), excess)[0, 1] < -0.99


def exp(config, result):
    grid = np.linspace(0, 1, 100, endpoint=False, dtype=np.float32).reshape(-1, 1)
    assert np.abs(distill.run(result.model, grid) - np.exp(grid)).max() <= 0.01
    assert distill.run(result.model, [0.2])[0] == pytest.approx(1.2214, abs=0.005)
    assert [n.attrs.get("alpha") for n in result.model.nodes if n.op == "leaky_relu"] == [
        float(np.float32(0.2))] * 3


def sumprod(config, result):
    np.testing.assert_allclose(distill.run(result.model, [0.3, 0.5]), [0.8, 0.15], atol=0.02)


def digits(config, result):
    assert result.metrics["test"]["accuracy"] >= 0.95
    assert result.model.nodes[0].op == "normalize"  # standardization travels with the model
    assert result.model.input_shape == (64,)


def tabular(config, result):
    ds = load_data(config.data, seed=config.seed)
    majority = np.bincount(ds.y).max() / len(ds.y)
    assert result.metrics["test"]["accuracy"] >= majority + 0.3
    x_test = prepare(config, config.seed).x["test"]
    assert len(np.unique(distill.run(result.model, x_test).argmax(-1))) > 2


def digits_cnn(config, result):
    assert result.metrics["test"]["accuracy"] >= 0.98
    assert [n.op for n in result.model.nodes][:5] == ["normalize", "reshape", "conv", "relu",
                                                     "max_pool"]
    assert result.model.input_shape == (64,)


def signals(config, result):
    assert result.metrics["test"]["accuracy"] >= 0.95
    assert result.model.input_shape == (128, 1)
    assert {"conv", "max_pool", "global_max_pool"} <= {n.op for n in result.model.nodes}
    assert result.model.labels == ("sine", "square", "triangle", "sawtooth")


BARS = {f.__name__: f for f in (blobs, linear, exp, sumprod, digits, tabular, digits_cnn,
                                signals)}


@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_reaches_its_bar(workload, name):
    assert set(BARS) == set(WORKLOADS)
    config, result = workload(name)
    assert result.model.metadata["training"]["backend"] == "numpy"
    BARS[name](config, result)
