"""Tests for distill.data: generators, bundled sets, CSV/NPZ/IDX loaders, split and helpers."""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from distill.data import (
    DATA_KEYS,
    Dataset,
    load_data,
    one_hot,
    read_idx,
    split,
    standardization,
    write_idx,
)
from distill.errors import ConfigError, DataError

# --- generators ------------------------------------------------------------------------------


@pytest.mark.parametrize("source, x_shape, y_shape, task", [
    ("blobs", (1000, 2), (1000,), "classification"),
    ("linear", (100, 1), (100, 3), "regression"),
    ("exp", (1000, 1), (1000, 1), "regression"),
    ("sumprod", (1500, 2), (1500, 2), "regression"),
    ("signals", (1000, 128, 1), (1000,), "classification"),
])
def test_generator_defaults(source, x_shape, y_shape, task):
    ds = load_data({"source": source})
    assert ds.x.shape == x_shape and ds.x.dtype == np.float32
    assert ds.y.shape == y_shape
    assert ds.y.dtype == (np.int64 if task == "classification" else np.float32)
    assert ds.task == task and len(ds) == x_shape[0]
    assert source in ds.description


@pytest.mark.parametrize("table", [
    {"source": "blobs", "n": 50},
    {"source": "linear", "m": 20, "inputs": 2, "outputs": 2},
    {"source": "exp", "n": 30},
    {"source": "sumprod", "n": 30},
    {"source": "signals", "n": 5, "length": 16},
])
def test_generators_are_deterministic(table):
    a, b = load_data(table, seed=3), load_data(table, seed=3)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    c = load_data(table, seed=4)
    assert not np.array_equal(a.x, c.x)
    # The table's own seed wins over the config's.
    d = load_data({**table, "seed": 4}, seed=3)
    np.testing.assert_array_equal(c.x, d.x)


def test_blobs_centres_and_variance():
    ds = load_data({"source": "blobs"})
    assert ds.class_names == ("0", "1")
    for label, centre in ((0, (3, 2)), (1, (-3, -2))):
        cloud = ds.x[ds.y == label]
        assert len(cloud) == 500
        np.testing.assert_allclose(cloud.mean(axis=0), centre, atol=0.2)
        np.testing.assert_allclose(cloud.var(axis=0), (1, 1), atol=0.2)


def test_blobs_n_is_per_class():
    ds = load_data({"source": "blobs", "n": 7})
    assert np.bincount(ds.y).tolist() == [7, 7]


def test_linear_truth_is_recoverable():
    ds = load_data({"source": "linear", "m": 400, "inputs": 3, "outputs": 2}, seed=1)
    w, b = ds.truth["W"], ds.truth["B"]
    assert w.shape == (3, 2) and b.shape == (2,)
    design = np.hstack([ds.x, np.ones((len(ds), 1), np.float32)]).astype(np.float64)
    fit, *_ = np.linalg.lstsq(design, ds.y.astype(np.float64), rcond=None)
    np.testing.assert_allclose(fit[:3], w, atol=0.5)
    np.testing.assert_allclose(fit[3], b, atol=0.5)


def test_linear_weight_scale_is_variance_ten():
    w = load_data({"source": "linear", "inputs": 50, "outputs": 40}).truth["W"]
    assert 2.8 < w.std() < 3.5  # sqrt(10) = 3.16, not 10


def test_linear_without_noise_is_exact():
    ds = load_data({"source": "linear", "noise": 0})
    np.testing.assert_allclose(ds.y, ds.x @ ds.truth["W"] + ds.truth["B"], rtol=1e-5, atol=1e-5)


def test_exp_and_sumprod_targets_are_exact():
    ds = load_data({"source": "exp"})
    assert ds.x.min() >= 0 and ds.x.max() < 1
    np.testing.assert_allclose(ds.y, np.exp(ds.x.astype(np.float64)), rtol=1e-7)
    ds = load_data({"source": "sumprod"})
    x = ds.x.astype(np.float64)
    np.testing.assert_allclose(ds.y[:, 0], x[:, 0] + x[:, 1], rtol=1e-7)
    np.testing.assert_allclose(ds.y[:, 1], x[:, 0] * x[:, 1], rtol=1e-7)


def test_signals_are_their_waveforms_plus_the_noise_asked_for():
    ds = load_data({"source": "signals", "n": 50, "length": 64, "noise": 0})
    assert ds.class_names == ("sine", "square", "triangle", "sawtooth")
    assert np.bincount(ds.y).tolist() == [50] * 4  # balanced, and shuffled:
    assert len(set(ds.y[:8].tolist())) > 1
    x = ds.x[..., 0].astype(np.float64)
    peak = np.abs(x).max(axis=1)
    assert 0.5 <= peak.min() and peak.max() <= 1.5  # the amplitudes
    square = x[ds.y == 1]
    assert np.allclose(np.abs(square), np.abs(square).max(axis=1, keepdims=True))
    # A sine's and a triangle's steps are smooth; a sawtooth jumps by twice its amplitude.
    jump = np.abs(np.diff(x, axis=1)).max(axis=1) / peak
    assert jump[ds.y == 0].max() < 0.8 and jump[ds.y == 2].max() < 0.8
    assert jump[ds.y == 3].min() > 1.2
    noisy = load_data({"source": "signals", "n": 50, "length": 64, "noise": 0.5})
    assert 0.4 < np.std(noisy.x - ds.x) < 0.6  # same seed: same waves, plus the noise
    with pytest.raises(ConfigError, match="'length' must be an integer >= 2"):
        load_data({"source": "signals", "length": 1})


# --- scikit-learn sets -----------------------------------------------------------------------


@pytest.mark.parametrize("name, rows, features, classes", [
    ("digits", 1797, 64, 10),
    ("iris", 150, 4, 3),
    ("wine", 178, 13, 3),
    ("breast_cancer", 569, 30, 2),
])
def test_sklearn_sets(name, rows, features, classes):
    ds = load_data({"source": name})
    assert ds.x.shape == (rows, features) and ds.x.dtype == np.float32
    assert ds.y.shape == (rows,) and ds.y.dtype == np.int64
    assert len(ds.class_names) == classes == len(np.unique(ds.y))
    assert len(ds.feature_names) == features
    assert ds.description.startswith(f"{name} (scikit-learn, {rows} samples")


def test_sklearn_missing_is_a_data_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(DataError, match="needs scikit-learn"):
        load_data({"source": "iris"})


# --- CSV -------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_label_by_name_with_header(tmp_path):
    write(tmp_path / "d.csv", "a,label,b\n1,0,2\n3,1,4\n5,2,6\n")
    ds = load_data({"source": "csv", "path": "d.csv", "label": "label"}, base_dir=tmp_path)
    np.testing.assert_array_equal(ds.x, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(ds.y, [0, 1, 2])
    assert ds.task == "classification"
    assert ds.feature_names == ("a", "b") and ds.class_names == ("0", "1", "2")


def test_csv_label_by_index_without_header_and_features(tmp_path):
    write(tmp_path / "d.csv", "0.5;1;7\n1.5;0;8\n")
    ds = load_data({"source": "csv", "path": str(tmp_path / "d.csv"), "header": False,
                    "label": 1, "delimiter": ";"})
    np.testing.assert_array_equal(ds.x, [[0.5, 7], [1.5, 8]])
    np.testing.assert_array_equal(ds.y, [1, 0])
    assert ds.feature_names is None
    write(tmp_path / "h.csv", "a,b,c,t\n1,2,3,0.5\n4,5,6,1.5\n")
    ds = load_data({"source": "csv", "path": "h.csv", "features": ["c", "a"]}, base_dir=tmp_path)
    np.testing.assert_array_equal(ds.x, [[3, 1], [6, 4]])
    assert ds.task == "regression" and ds.y.shape == (2, 1) and ds.class_names is None
    np.testing.assert_array_equal(ds.y[:, 0], [0.5, 1.5])


def test_csv_string_labels_become_sorted_classes(tmp_path):
    write(tmp_path / "d.csv", "x,kind\n1,dog\n2,cat\n3,dog\n4,emu\n")
    ds = load_data({"source": "csv", "path": "d.csv"}, base_dir=tmp_path)
    assert ds.class_names == ("cat", "dog", "emu")
    np.testing.assert_array_equal(ds.y, [1, 0, 1, 2])


def test_csv_integer_labels_can_be_regression(tmp_path):
    write(tmp_path / "d.csv", "x,y\n1,2\n2,4\n")
    assert load_data({"source": "csv", "path": "d.csv"}, tmp_path).task == "classification"
    ds = load_data({"source": "csv", "path": "d.csv", "task": "regression"}, tmp_path)
    assert ds.task == "regression" and ds.y.dtype == np.float32


def test_csv_bad_cell_names_line_and_column(tmp_path):
    write(tmp_path / "d.csv", "a,b,y\n1,2,0\n3,oops,1\n")
    with pytest.raises(DataError, match=r"d\.csv: 1 cell is not a finite number: "
                                        r"line 3, column 'b': 'oops'"):
        load_data({"source": "csv", "path": "d.csv"}, base_dir=tmp_path)
    write(tmp_path / "n.csv", "a,y\n1,0\ninf,1\n")
    with pytest.raises(DataError, match=r"line 3, column 'a': 'inf'"):
        load_data({"source": "csv", "path": "n.csv"}, base_dir=tmp_path)


def test_csv_lists_every_bad_cell_at_once_and_can_drop_missing_rows(tmp_path):
    rows = ["a,b,y", "1,2,0", ",2,1", "3,NA,0", "4,?,1", "5,x,0", "6,7,", "8,9,1"]
    write(tmp_path / "d.csv", "\n".join(rows) + "\n")
    with pytest.raises(DataError, match="1 cell is a missing label: line 7, column 'y'"):
        load_data({"source": "csv", "path": "d.csv"}, base_dir=tmp_path)
    write(tmp_path / "e.csv", "\n".join(rows[:6] + rows[7:]) + "\n")
    with pytest.raises(DataError) as e:
        load_data({"source": "csv", "path": "e.csv"}, base_dir=tmp_path)
    assert ("4 cells are not finite numbers: line 3, column 'a': missing; line 4, column 'b': "
            "missing; line 5, column 'b': missing; line 6, column 'b': 'x'") in str(e.value)
    # Dropping rows with missing cells leaves 'x', which is not a missing marker, an error.
    with pytest.raises(DataError, match="1 cell is not a finite number: line 6, column 'b'"):
        load_data({"source": "csv", "path": "d.csv", "missing": "drop"}, base_dir=tmp_path)
    write(tmp_path / "f.csv", "\n".join(rows[:5] + rows[6:]) + "\n")
    ds = load_data({"source": "csv", "path": "f.csv", "missing": "drop"}, base_dir=tmp_path)
    assert ds.x.tolist() == [[1, 2], [8, 9]] and ds.y.tolist() == [0, 1]
    with pytest.raises(ConfigError, match="missing"):
        load_data({"source": "csv", "path": "d.csv", "missing": "mean"}, base_dir=tmp_path)
    many = "a,y\n" + "".join(f"bad{i},0\n" for i in range(25))
    write(tmp_path / "m.csv", many)
    with pytest.raises(DataError, match=r"25 cells are not finite numbers: .*; and 15 more"):
        load_data({"source": "csv", "path": "m.csv"}, base_dir=tmp_path)


def test_integer_class_labels_are_their_distinct_values(tmp_path):
    write(tmp_path / "d.csv", "a,y\n1,1\n2,3\n3,2\n4,3\n")
    ds = load_data({"source": "csv", "path": "d.csv"}, base_dir=tmp_path)
    assert ds.class_names == ("1", "2", "3") and ds.y.tolist() == [0, 2, 1, 2]
    write(tmp_path / "n.csv", "a,y\n1,-1\n2,1\n")
    ds = load_data({"source": "csv", "path": "n.csv"}, base_dir=tmp_path)
    assert ds.class_names == ("-1", "1") and ds.y.tolist() == [0, 1]
    write(tmp_path / "h.csv", "a,y\n1,1e30\n2,2e30\n")  # would both be INT64_MIN as int64
    with pytest.raises(DataError, match="line 2: class label 1e[+]30 is not an integer of at"):
        load_data({"source": "csv", "path": "h.csv"}, base_dir=tmp_path)


def test_text_labels_that_look_like_missing_markers_are_classes(tmp_path):
    write(tmp_path / "d.csv", "a,y\n1,none\n2,mild\n3,NA\n4,severe\n5,?\n")
    for missing in ("error", "drop"):
        ds = load_data({"source": "csv", "path": "d.csv", "missing": missing},
                       base_dir=tmp_path)
        assert ds.class_names == ("?", "NA", "mild", "none", "severe") and len(ds) == 5


@pytest.mark.parametrize("source", ["csv", "npz"])
def test_data_files_must_be_regular_files(tmp_path, source):
    fifo = tmp_path / f"d.{source}"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(DataError, match="not a regular file"):  # at once: never opened
            load_data({"source": source, "path": str(path)}, base_dir=tmp_path)


def test_csv_missing_file_and_unknown_column(tmp_path):
    with pytest.raises(DataError, match=r"not found: .*nope\.csv"):
        load_data({"source": "csv", "path": "nope.csv"}, base_dir=tmp_path)
    write(tmp_path / "d.csv", "width,label\n1,0\n")
    with pytest.raises(ConfigError, match='did you mean "label"'):
        load_data({"source": "csv", "path": "d.csv", "label": "lable"}, base_dir=tmp_path)


def test_csv_ragged_row(tmp_path):
    write(tmp_path / "d.csv", "a,b,y\n1,2,0\n3,1\n")
    with pytest.raises(DataError, match="line 3: 2 columns, expected 3"):
        load_data({"source": "csv", "path": "d.csv"}, base_dir=tmp_path)


# --- NPZ -------------------------------------------------------------------------------------


def test_npz_round_trip(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.savez(tmp_path / "d.npz", feats=x, y=np.array([0, 2, 1, 2]))
    ds = load_data({"source": "npz", "path": "d.npz", "x": "feats"}, base_dir=tmp_path)
    np.testing.assert_array_equal(ds.x, x)
    assert ds.x.dtype == np.float32 and ds.task == "classification"
    np.testing.assert_array_equal(ds.y, [0, 2, 1, 2])
    np.savez(tmp_path / "r.npz", x=x, y=x[:, :2] * 0.5)
    ds = load_data({"source": "npz", "path": "r.npz"}, base_dir=tmp_path)
    assert ds.task == "regression" and ds.y.shape == (4, 2)


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.array([[1.0], [np.inf]]), y=np.array([0, 1]))
    with pytest.raises(DataError, match="row 1"):
        load_data({"source": "npz", "path": "d.npz"}, base_dir=tmp_path)
    with pytest.raises(DataError, match="no array named 'why'"):
        load_data({"source": "npz", "path": "d.npz", "y": "why"}, base_dir=tmp_path)
    np.savez(tmp_path / "m.npz", x=np.ones((3, 2)), y=np.array([0, 1]))
    with pytest.raises(DataError, match="3 rows"):
        load_data({"source": "npz", "path": "m.npz"}, base_dir=tmp_path)
    np.save(tmp_path / "lone.npy", np.ones(3))
    with pytest.raises(DataError, match="not an NPZ file"):
        load_data({"source": "npz", "path": "lone.npy"}, base_dir=tmp_path)


# --- IDX -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip_every_type(tmp_path, dtype):
    a = (np.arange(24) - 5).astype(dtype).reshape(2, 3, 4)
    if dtype == np.uint8:
        a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.idx", a)
    back = read_idx(tmp_path / "a.idx")
    assert back.dtype == a.dtype and back.shape == a.shape
    np.testing.assert_array_equal(back, a)


def test_idx_header_is_mnist_format(tmp_path):
    write_idx(tmp_path / "i", np.zeros((2, 28, 28), np.uint8))
    raw = (tmp_path / "i").read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 3]) and int.from_bytes(raw[4:8], "big") == 2
    assert len(raw) == 16 + 2 * 28 * 28


def test_idx_truncated_and_bad_files(tmp_path):
    write_idx(tmp_path / "a", np.ones((5, 4, 4), np.uint8))
    (tmp_path / "a").write_bytes((tmp_path / "a").read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "a")
    # A header declaring an enormous shape fails on the size check, not on allocation.
    (tmp_path / "b").write_bytes(bytes([0, 0, 8, 3]) + b"\xff\xff\xff\xff" * 3)
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "b")
    with gzip.open(tmp_path / "c.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "c.gz")
    (tmp_path / "d").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "d")
    with pytest.raises(DataError, match="no type for int64"):
        write_idx(tmp_path / "e", np.zeros(3, np.int64))


def test_idx_source_with_gz_and_test_files(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (2, 4, 3), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(6, dtype=np.uint8))
    ds = load_data({"source": "idx", "path": "."}, base_dir=tmp_path)
    assert ds.x.shape == (6, 12) and ds.x.dtype == np.float32
    # The bytes as they are: the model's first node scales them (see the backend test).
    np.testing.assert_array_equal(ds.x, train.reshape(6, 12))
    assert ds.input_scale == 255 and ds.class_names == tuple("0123456789")
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([9, 8], np.uint8))
    ds = load_data({"source": "idx", "path": str(tmp_path), "flatten": False})
    assert ds.x.shape == (8, 4, 3)
    np.testing.assert_array_equal(ds.y, [0, 1, 2, 3, 4, 5, 9, 8])
    np.testing.assert_array_equal(ds.x[6:], test)


def test_idx_models_take_raw_bytes_and_scale_them_in_their_first_node(tmp_path):
    from distill import ir
    from distill.backends import train
    from distill.config import parse_config
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (40, 4, 3), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(40, dtype=np.uint8) % 10)
    layers = [{"type": "dense", "units": 10, "activation": "softmax"}]
    for extra in ({}, {"flatten": False}):
        doc = {"data": {"source": "idx", "path": str(tmp_path), **extra},
               "model": {"layers": ([{"type": "flatten"}] if extra else []) + layers},
               "training": {"loss": "sparse_categorical_crossentropy", "optimizer": "sgd",
                            "epochs": 1}}
        model = train(parse_config(doc), verbose=0).model
        first = model.nodes[0]
        assert first.op == "normalize" and np.all(first.weights["std"] == 255)
        assert np.all(first.weights["mean"] == 0)
        x = rng.integers(0, 256, (3, *model.input_shape)).astype(np.float32)
        rest = ir.make_model("rest", model.input_shape,
                             [(n.name, n.op, n.attrs, n.weights) for n in model.nodes[1:]])
        np.testing.assert_array_equal(ir.run(model, x), ir.run(rest, x / np.float32(255)))


def test_idx_source_missing_directory(tmp_path):
    with pytest.raises(DataError, match=r"not found: .*mnist"):
        load_data({"source": "idx", "path": "mnist"}, base_dir=tmp_path)
    with pytest.raises(DataError, match="missing train-images"):
        load_data({"source": "idx", "path": "."}, base_dir=tmp_path)


# --- split, standardization, one_hot ---------------------------------------------------------


def test_split_sizes_disjoint_and_covering():
    ds = load_data({"source": "linear", "m": 100})
    train, val, test = split(ds, validation=0.1, test=0.2, seed=5)
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    # Rows are distinct in x, so they identify themselves.
    rows = [tuple(r) for part in (train, val, test) for r in part.x]
    assert len(set(rows)) == 100 == len({tuple(r) for r in ds.x})
    assert set(rows) == {tuple(r) for r in ds.x}
    again = split(ds, validation=0.1, test=0.2, seed=5)
    np.testing.assert_array_equal(again[2].x, test.x)
    assert split(ds)[1:] == (None, None)


def test_split_is_stratified():
    ds = load_data({"source": "wine"})
    train, val, test = split(ds, validation=0.1, test=0.2, seed=0)
    assert len(train) + len(val) + len(test) == len(ds)
    share = np.bincount(ds.y) / len(ds)
    for part in (train, val, test):
        counts = np.bincount(part.y, minlength=3)
        assert (counts > 0).all()
        assert np.all(np.abs(counts - share * len(part)) <= 1)
    # Even a tiny class reaches a small test part.
    y = np.array([0] * 45 + [1] * 3, np.int64)
    tiny = Dataset(np.arange(48, dtype=np.float32).reshape(48, 1), y, "classification", None,
                   ("a", "b"), "tiny")
    for seed in range(5):
        assert 1 in split(tiny, test=0.2, seed=seed)[2].y


@pytest.mark.parametrize("validation, test", [(-0.1, 0), (0, 1.0), (0.5, 0.5), ("a", 0)])
def test_split_bad_fractions(validation, test):
    with pytest.raises(ConfigError):
        split(load_data({"source": "exp", "n": 10}), validation=validation, test=test)


def test_standardization_with_constant_column():
    x = np.array([[1, 5, -2], [3, 5, -2], [5, 5, -2]], np.float32)
    mean, std = standardization(x)
    assert mean.dtype == std.dtype == np.float32
    np.testing.assert_allclose(mean, [3, 5, -2])
    np.testing.assert_allclose(std, [np.std([1, 3, 5]), 1, 1])
    z = (x - mean) / std
    assert np.isfinite(z).all() and np.all(z[:, 1:] == 0)


def test_one_hot():
    out = one_hot(np.array([2, 0, 1]), 3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.eye(3)[[2, 0, 1]])
    with pytest.raises(DataError, match=r"outside 0\.\.2"):
        one_hot(np.array([3]), 3)


def test_subset_keeps_metadata():
    ds = load_data({"source": "iris"})
    part = ds.subset([0, 50, 100])
    assert len(part) == 3 and part.class_names == ds.class_names
    np.testing.assert_array_equal(part.y, [0, 1, 2])
    assert len(ds.subset(7)) == 1 and len(ds.subset([])) == 0
    assert len(ds.subset(ds.y == 2)) == 50


# --- the [data] table ------------------------------------------------------------------------


def test_data_keys_cover_every_source():
    assert {"source", "seed", "validation", "test", "standardize", "path", "n"} <= DATA_KEYS
    ds = load_data({"source": "iris", "validation": 0.1, "test": 0.2, "standardize": True})
    assert len(ds) == 150


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match='did you mean "noise"'):
        load_data({"source": "linear", "nosie": 1.0})
    with pytest.raises(ConfigError, match="'path' does not apply to source 'blobs'"):
        load_data({"source": "blobs", "path": "x.csv"})
    with pytest.raises(ConfigError, match='did you mean "digits"'):
        load_data({"source": "digit"})
    with pytest.raises(ConfigError, match="needs key 'source'"):
        load_data({})


@pytest.mark.parametrize("table, message", [
    ({"source": "blobs", "n": "ten"}, "[data] key 'n' must be a positive integer, got \"ten\""),
    ({"source": "blobs", "n": 0}, "[data] key 'n' must be a positive integer, got 0"),
    ({"source": "blobs", "n": True}, "[data] key 'n' must be a positive integer, got true"),
    ({"source": "linear", "noise": "x"}, "key 'noise' must be a number"),
    ({"source": "iris", "standardize": "yes"}, "key 'standardize' must be true or false"),
    ({"source": "iris", "test": 1.5}, "key 'test' must be a number in [0, 1)"),
    ({"source": "iris", "seed": -1}, "key 'seed' must be an integer >= 0"),
    ({"source": "csv", "path": 3}, "key 'path' must be a non-empty string"),
    ({"source": "csv"}, "source 'csv' needs key 'path'"),
])
def test_wrong_types(table, message):
    with pytest.raises(ConfigError) as info:
        load_data(table)
    assert message in str(info.value)


def test_dataset_rejects_bad_arrays():
    with pytest.raises(DataError, match="float32"):
        Dataset(np.zeros((2, 1)), np.zeros(2, np.int64), "classification", None, None, "d")
    with pytest.raises(DataError, match="2 rows of features but 3 labels"):
        Dataset(np.zeros((2, 1), np.float32), np.zeros(3, np.int64), "classification", None,
                None, "d")
