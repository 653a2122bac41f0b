"""The command line as a user runs it: real subprocesses, exit codes, files on disk."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG_SECONDS
from test_hardening_crash import DRIVER, run_until_killed

import distill

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def cli(*args, cwd=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "distill.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=HANG_SECONDS)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


def fails(*args, match: str, cwd=None):
    proc = cli(*args, cwd=cwd, check=False)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert match in err, err
    return err


def write_config(tmp_path, text: str, name="c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = """
name = "small"
[data]
source = "blobs"
n = 100
[[model.layers]]
type = "dense"
units = 3
activation = "tanh"
[[model.layers]]
type = "dense"
units = 1
activation = "sigmoid"
[training]
loss = "binary_crossentropy"
optimizer = "adam"
epochs = 3
metrics = ["accuracy"]
"""


def test_train_inspect_predict(tmp_path):
    out = tmp_path / "blobs.distill"
    proc = cli("train", EXAMPLES / "blobs.toml", "-o", out)
    assert "test: loss" in proc.stdout and "accuracy" in proc.stdout
    assert "epoch 20/20" in proc.stderr  # the progress bar
    history = json.loads((tmp_path / "blobs.history.json").read_text())
    assert len(history["epochs"]["loss"]) == 20 and len(history["steps"]) == 20 * 25
    assert (tmp_path / "blobs.loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "blobs.distill.ckpt").exists()  # removed after a complete run
    model = distill.load(out)
    assert model.metadata["training"]["backend"] == "numpy"

    info = cli("inspect", out).stdout
    assert "parameters        9" in info and "mult-adds/sample  6" in info
    assert "dense_1_sigmoid" in info and "test metrics: accuracy 1, loss" in info
    doc = json.loads(cli("inspect", out, "--json").stdout)
    assert doc["parameters"] == 9 and doc["macs"] == 6 and len(doc["hash"]) == 64

    x = np.array([[3.0, 2.0], [-3.0, -2.0]], np.float32)
    np.save(tmp_path / "x.npy", x)
    printed = np.loadtxt(cli("predict", out, "--input", tmp_path / "x.npy").stdout.splitlines(),
                         delimiter=",")
    np.testing.assert_allclose(printed, distill.run(model, x).ravel(), rtol=1e-6)
    assert cli("predict", out, "--input", tmp_path / "x.npy", "--classes").stdout == "0\n1\n"
    np.savetxt(tmp_path / "x.csv", x, delimiter=",")
    cli("predict", out, "--input", tmp_path / "x.csv", "-o", tmp_path / "y.npy")
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), distill.run(model, x), rtol=1e-6)


@pytest.mark.parametrize("text,match", [
    (BASE.replace('name = "small"', 'nmae = "small"'), 'did you mean "name"'),
    (BASE.replace("epochs = 3", "epocs = 3"), 'did you mean "epochs"'),
    (BASE.replace("units = 3", 'units = "three"'), "units, a positive integer"),
    (BASE.replace('"tanh"', '"tahn"'), 'did you mean "tanh"'),
    (BASE.replace('optimizer = "adam"', 'optimizer = "adma"'), 'did you mean "adam"'),
    (BASE.replace('source = "blobs"\nn = 100', 'source = "csv"\npath = "missing.csv"'),
     "missing.csv"),
    (BASE.replace("units = 1\n", "units = 4\n"), "has 4 outputs but the data needs one output"),
    (BASE.replace("binary_crossentropy", "mean_squared_error"), "for regression"),
    (BASE + "[extra]\n", 'unknown key \'extra\''),
    ("this is not toml", "not valid TOML"),
    (BASE.replace('type = "dense"\nunits = 3', 'type = "conv2d"\nfilters = 3\nkernel_size = 3'),
     "do not fit the data (2,): Conv2D takes inputs of 2 spatial axes"),
    (BASE.replace('type = "dense"\nunits = 3', 'type = "conv1d"\nkernel_size = 3'),
     "needs filters, a positive integer"),
    (BASE.replace('type = "dense"\nunits = 3', 'type = "conv1d"\nfilters = 2\nkernel_size = 0'),
     "key 'kernel_size' must be a positive integer or a list of them"),
    (BASE.replace('type = "dense"\nunits = 3',
                  'type = "conv1d"\nfilters = 4\nkernel_size = 3\ngroups = 3'),
     "groups must be a positive integer dividing filters"),
    (BASE.replace('type = "dense"\nunits = 3', 'type = "conv2d"\nfilters = 4\n'
                  'kernel_size = [3, 3, 3]'), "kernel_size must be a positive integer or 2"),
    (BASE.replace('type = "dense"\nunits = 3\nactivation = "tanh"',
                  'type = "max_pooling2d"\npadding = "causal"'),
     "padding must be valid or same"),
    (BASE.replace('type = "dense"\nunits = 3\nactivation = "tanh"',
                  'type = "global_max_pooling1d"\npool_size = 2'), "unknown key 'pool_size'"),
    (BASE.replace('type = "dense"\nunits = 3', 'type = "conv1d_transpose"\nfilters = 2\n'
                  'kernel_size = 2\noutput_padding = -1'),
     "output_padding must be an integer of at least 0"),
    (BASE.replace('type = "dense"\nunits = 3', 'type = "conv1d_transpose"\nfilters = 2\n'
                  'kernel_size = 2\npadding = "causal"'), "padding must be one of valid, same"),
    (BASE.replace('type = "dense"\nunits = 3\nactivation = "tanh"',
                  'type = "embedding"\ninput_dim = 0'),
     "needs input_dim, a positive integer"),
    (BASE.replace('type = "dense"\nunits = 3', 'type = "lstm"\nunits = 3'),
     "LSTM takes inputs of (steps, features), got shape (2,)"),
    (BASE.replace('type = "dense"\nunits = 3\nactivation = "tanh"',
                  'type = "gru"\nunits = 3\nrecurrent_activation = "elu"'),
     "recurrent_activation 'elu' is not one of tanh, sigmoid, relu, hard_sigmoid"),
    (BASE.replace('type = "dense"\nunits = 3\nactivation = "tanh"',
                  'type = "simple_rnn"\nunits = 3\nreset_after = true'),
     "unknown key 'reset_after'"),
    (BASE.replace('type = "dense"\nunits = 3\nactivation = "tanh"',
                  'type = "gru"\nunits = 3\nbidirectional = "max"'),
     "bidirectional 'max' is not one of concat, sum, mul, ave"),
    (BASE.replace('type = "dense"\nunits = 3\nactivation = "tanh"',
                  'type = "gru"\nunits = 3\nbidirectional = true'),
     "key 'bidirectional' must be a string"),
    (BASE.replace('type = "dense"\nunits = 3', 'type = "lstm"\nunits = 3\nbidirectional = "sum"'),
     "LSTM takes inputs of (steps, features), got shape (2,)"),
])
def test_config_errors_are_one_line_before_training(tmp_path, text, match):
    config = write_config(tmp_path, text)
    fails("train", config, "-o", tmp_path / "m.distill", match=match)
    assert not (tmp_path / "m.distill").exists()


def test_file_errors(tmp_path):
    fails("train", tmp_path / "nope.toml", match="no such config file")
    fails("inspect", tmp_path / "nope.distill", match="no such file")
    (tmp_path / "empty.distill").write_bytes(b"")
    fails("inspect", tmp_path / "empty.distill", match="not a distill model file")
    fails("inspect", tmp_path, match="is a directory")
    config = write_config(tmp_path, BASE)
    cli("train", config, "-o", tmp_path / "m.distill", "-q")
    np.save(tmp_path / "bad.npy", np.zeros((2, 5), np.float32))
    fails("predict", tmp_path / "m.distill", "--input", tmp_path / "bad.npy",
          match="takes (2,)")
    fails("train", config, "--strategy", "mirrored", "-o", tmp_path / "t.distill",
          match="--strategy is for --backend tensorflow")


def test_debug_shows_the_traceback(tmp_path):
    proc = cli("inspect", tmp_path / "nope.distill", "--debug", check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_seed_override_and_determinism(tmp_path):
    config = write_config(tmp_path, BASE)
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        cli("train", config, "-o", tmp_path / f"{name}.distill", "--seed", seed, "-q")
    weights = {n: distill.load(tmp_path / f"{n}.distill").nodes[0].weights["kernel"]
               for n in "abc"}
    assert np.array_equal(weights["a"], weights["b"])
    assert not np.array_equal(weights["a"], weights["c"])


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path):
    text = (EXAMPLES / "exp.toml").read_text().replace("epochs = 300", "epochs = 12")
    text = text.replace("[training]", "[training]\ncheckpoint_every = 40")
    config = write_config(tmp_path, text)
    cli("train", config, "-o", tmp_path / "ref.distill", "-q")
    out = tmp_path / "run.distill"
    ckpt = tmp_path / "run.distill.ckpt"
    # Killed at its 50th step, after the checkpoint of step 40: counted in steps, not seconds.
    argv = [sys.executable, "-c", DRIVER, "train", str(config), "-o", str(out), "-q"]
    _, steps = run_until_killed(argv, "step:50")
    assert steps[-1] == 50 and ckpt.exists()
    assert not out.exists()
    cli("train", config, "-o", out, "--resume", "-q")
    ref, run = distill.load(tmp_path / "ref.distill"), distill.load(out)
    for a, b in zip(ref.nodes, run.nodes):
        for key in a.weights:
            assert np.array_equal(a.weights[key], b.weights[key])


def test_predict_reads_the_csv_that_training_read(tmp_path):
    """A header, quoted cells, a byte-order mark and the label column in the middle: the
    model's recorded feature names pick the columns, in the order it was trained on."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    labels = np.where(x[:, 0] > 0, "up", "down")
    lines = ['"b","kind","a","c"'] + [f'{r[1]!r},"{k}",{r[0]!r},{r[2]!r}'
                                      for r, k in zip(x.tolist(), labels)]
    data = tmp_path / "d.csv"
    data.write_bytes(b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode())
    config = write_config(tmp_path, f'''
[data]
source = "csv"
path = "{data}"
label = "kind"
features = ["a", "b", "c"]
[[model.layers]]
type = "dense"
units = 2
activation = "softmax"
[training]
loss = "categorical_crossentropy"
optimizer = "adam"
epochs = 2
''')
    model = tmp_path / "m.distill"
    cli("train", config, "-o", model, "-q")
    assert distill.load(model).metadata["features"] == ["a", "b", "c"]
    np.save(tmp_path / "x.npy", x)
    want = cli("predict", model, "--input", tmp_path / "x.npy").stdout
    assert cli("predict", model, "--input", data).stdout == want
    # Without a header the columns are the inputs, as they are.
    plain = tmp_path / "plain.csv"
    plain.write_text("".join(",".join(map(repr, r)) + "\n" for r in x.tolist()))
    assert cli("predict", model, "--input", plain).stdout == want
    other = tmp_path / "other.csv"
    other.write_text("x,y,z,w\n1,2,3,4\n")
    fails("predict", model, "--input", other, match="4 columns, but model 'c' takes 3 features "
          "(a, b, c)")
