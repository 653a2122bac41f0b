"""The TensorFlow backend and Keras import: workloads trained with Keras reach their bars and
export everywhere; Keras models of every supported shape import, export and match
`model.predict` three ways (Keras, the reference, the exported code).

CI installs TensorFlow, and there nothing here may skip; elsewhere the file skips without it.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import require  # noqa: E402

import distill
from distill import codegen, ir
from distill.verify import verify

keras = require("keras")

from conftest import WORKLOADS  # noqa: E402

from distill.backends.keras import import_keras, load_keras  # noqa: E402

LANGS = codegen.languages()


@pytest.fixture(scope="module")
def tf_workload():
    from conftest import ROOT

    from distill.backends import train
    from distill.config import load_config
    cache = {}

    def get(name):
        if name not in cache:
            config = load_config(ROOT / "examples" / f"{name}.toml")
            cache[name] = (config, train(config, "tensorflow", verbose=0))
        return cache[name]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_on_tensorflow_reaches_its_bar_and_exports(tf_workload, name):
    from test_workloads import BARS
    config, result = tf_workload(name)
    assert result.model.metadata["training"]["backend"] == "tensorflow"
    BARS[name](config, result)
    for r in verify(result.model, LANGS, samples=64):
        assert r.ok, r.line()


def three_way(model, tmp_path, suffix=".keras", x=None):
    """Save, load through distill, export everywhere, and compare each with Keras (on `x`, or
    on normal random inputs)."""
    path = tmp_path / f"m{suffix}"
    model.save(path)
    imported = load_keras(path)
    if x is None:
        x = np.random.default_rng(3).normal(size=(32, *imported.input_shape)).astype(np.float32)
    want = keras_packed(model, imported, x)
    np.testing.assert_allclose(distill.run(imported, x), want, rtol=1e-3, atol=1e-5)
    for r in verify(imported, LANGS, samples=32):
        assert r.ok, r.line()
    out = tmp_path / "numpy"
    codegen.export(imported, ["numpy"], out)
    sys.path.insert(0, str(out))
    try:
        import importlib
        module = importlib.import_module(imported.name)
        np.testing.assert_allclose(module.predict(x), want, rtol=1e-3, atol=1e-5)
    finally:
        sys.path.remove(str(out))
        sys.modules.pop(imported.name, None)
    return imported


def keras_packed(model, imported, x):
    """Keras's predictions for the packed batch `x`, packed as distill packs them."""
    cuts = np.cumsum([int(np.prod(s)) for s in imported.input_shapes])[:-1]
    xs = [part.reshape(len(x), *s) for part, s in zip(np.split(x, cuts, axis=1),
                                                        imported.input_shapes)]
    want = model.predict(xs if len(xs) > 1 else x, verbose=0)
    if isinstance(want, (list, tuple)):
        want = np.concatenate([np.asarray(w).reshape(len(x), -1) for w in want], axis=1)
    return want


def every_activation_sequential():
    return keras.Sequential([
        keras.Input((6,)),
        keras.layers.Normalization(mean=np.arange(6.0), variance=np.arange(1.0, 7.0)),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(8, activation="tanh"),
        keras.layers.Dense(8, activation="leaky_relu"),        # the string: slope 0.2
        keras.layers.LeakyReLU(negative_slope=0.07),            # the layer: a custom slope
        keras.layers.Dense(8),
        keras.layers.LeakyReLU(),                               # the layer's default, 0.3
        keras.layers.ReLU(negative_slope=0.01),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(8, activation="linear"),
        keras.layers.Activation("sigmoid"),
        keras.layers.Reshape((2, 4)),
        keras.layers.Flatten(),
        keras.layers.Dense(4, activation="softmax", use_bias=False),
    ], name="every")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_sequential_with_every_activation(tmp_path, suffix):
    imported = three_way(every_activation_sequential(), tmp_path, suffix)
    slopes = [n.attrs["alpha"] for n in imported.nodes if n.op == "leaky_relu"]
    assert slopes == [float(np.float32(s)) for s in (0.2, 0.07, 0.3, 0.01)]
    assert [n.op for n in imported.nodes][:3] == ["normalize", "dense", "relu"]


def test_upper_case_suffixes_are_read(tmp_path):
    model = every_activation_sequential()
    for suffix in (".H5", ".Keras"):
        path = tmp_path / f"m{suffix}"
        model.save(tmp_path / f"m{suffix.lower()}")
        (tmp_path / f"m{suffix.lower()}").rename(path)
        out = subprocess.run([sys.executable, "-m", "distill.cli", "inspect", str(path)],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "leaky_relu" in out.stdout


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_functional_chain(tmp_path, suffix):
    inp = keras.Input((5,))
    h = keras.layers.Dense(7, activation="sigmoid", name="hidden")(inp)
    h = keras.layers.Softmax(axis=-1)(keras.layers.Dense(3, name="logits")(h))
    three_way(keras.Model(inp, h, name="functional"), tmp_path, suffix)


@keras.saving.register_keras_serializable(package="distill_tests")
class TwoLayers(keras.Model):
    """The tutorials' subclassed model: layers declared out of order, called as a chain."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.out = keras.layers.Dense(2, activation="softmax")
        self.hidden = keras.layers.Dense(9, activation="relu")

    def call(self, x):
        h = self.hidden(x)
        return self.out(h)


def test_subclassed_chain(tmp_path):
    model = TwoLayers(name="sub")
    model(np.zeros((1, 4), np.float32))
    imported = three_way(model, tmp_path)
    assert [n.op for n in imported.nodes] == ["dense", "relu", "dense", "softmax"]
    assert imported.nodes[0].weights["kernel"].shape == (4, 9)


def test_a_subclassed_model_file_points_to_import_keras(tmp_path):
    """Its class lives in the program that saved it, not in the file: the command line (which
    reads Keras files in a worker of its own) cannot load it, and says where to go instead, in
    one whole sentence."""
    model = TwoLayers(name="sub")
    model(np.zeros((1, 4), np.float32))
    model.save(tmp_path / "sub.keras")
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "import",
                           str(tmp_path / "sub.keras"), "-o", str(tmp_path / "sub.distill")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and "TwoLayers" in line, line
    assert line.endswith("distill.backends.keras.import_keras(model)"), line


@keras.saving.register_keras_serializable(package="distill_tests")
class NotAChain(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.a = keras.layers.Dense(3)

    def call(self, x):
        return self.a(x) * 2.0  # an op distill cannot see


def test_subclassed_model_that_is_not_a_chain_is_refused():
    model = NotAChain()
    model(np.zeros((1, 3), np.float32))
    with pytest.raises(distill.DistillError, match="differs from Keras's predictions"):
        import_keras(model)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_functional_graph(tmp_path, suffix):
    """Two inputs, three outputs (one an intermediate), every merge layer, a shared layer, a
    nested model called twice, and residual connections, read as a DAG."""
    a, b = keras.Input((2, 4), name="left"), keras.Input((2, 4), name="right")
    shared = keras.layers.Dense(4, activation="tanh", name="shared")
    inner_in = keras.Input((2, 4))
    inner = keras.Model(inner_in, keras.layers.Add()([
        inner_in, keras.layers.Dense(4, activation="relu", name="block")(inner_in)]),
        name="residual")
    sa, sb = shared(a), shared(b)
    merged = [layer()([sa, sb]) for layer in (
        keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply, keras.layers.Average,
        keras.layers.Maximum, keras.layers.Minimum)]
    deep = inner(inner(keras.layers.Add()(merged)))
    rows = keras.layers.Concatenate(axis=1)([deep, sa])
    cols = keras.layers.Concatenate()([deep, a, sb])
    head = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(cols))
    imported = three_way(keras.Model([a, b], [head, rows, sa], name="graph"), tmp_path, suffix)
    assert imported.input_names == ("left", "right")
    assert len(imported.outputs) == 3
    shared_nodes = [n for n in imported.nodes if n.op == "dense" and n.name.startswith("shared")]
    assert len(shared_nodes) == 2  # one node per call, one kernel for both
    assert shared_nodes[0].weights["kernel"] is shared_nodes[1].weights["kernel"]
    assert sum(n.name.startswith("residual") for n in imported.nodes) == 6  # inlined twice


# .keras only: reloaded from Keras 3's legacy .h5 format, the LayerNormalization over axes
# [1, 2] comes back as axis -1 (Keras's own predictions differ; distill's
# import matches the reloaded model, which is what it checks).
@pytest.mark.parametrize("suffix", [".keras"])
def test_every_activation_and_normalization_layer(tmp_path, suffix):
    """Keras's string activations, ELU, PReLU (shared axes), LayerNormalization (with and
    without gamma and beta, over one axis and two), ReLU with its options, Softmax on an inner
    axis and BatchNormalization, each on its own output."""
    inp = keras.Input((2, 4))
    h = keras.layers.Dense(4, activation="elu")(inp)
    outs = [keras.layers.Dense(4, activation=a)(h) for a in (
        "selu", "gelu", "silu", "swish", "softplus", "softsign", "hard_sigmoid", "exponential",
        "relu6")]
    outs += [
        keras.layers.ELU(alpha=0.5)(h),
        keras.layers.PReLU(alpha_initializer=keras.initializers.RandomUniform(0.1, 0.5),
                           shared_axes=[1])(h),
        keras.layers.LayerNormalization(beta_initializer="random_normal",
                                        gamma_initializer="random_normal")(h),
        keras.layers.LayerNormalization(axis=[1, 2], center=False, scale=False)(h),
        keras.layers.ReLU(max_value=0.8, threshold=0.1, negative_slope=0.2)(h),
        keras.layers.ReLU(threshold=0.3)(h),
        keras.layers.Softmax(axis=1)(h),
        keras.layers.Activation("gelu")(h),
        keras.layers.BatchNormalization(  # inference-time statistics: a standardization
            beta_initializer="random_normal",
            gamma_initializer=keras.initializers.RandomUniform(-2, 2),
            moving_mean_initializer="random_normal",
            moving_variance_initializer=keras.initializers.RandomUniform(0.1, 3))(h),
    ]
    imported = three_way(keras.Model(inp, outs, name="activations"), tmp_path, suffix)
    assert {"elu", "selu", "gelu", "silu", "softplus", "softsign", "hard_sigmoid",
            "exponential", "clipped_relu", "prelu", "layer_norm", "softmax"} <= \
        {n.op for n in imported.nodes}


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_convolutions_and_pooling(tmp_path, suffix):
    """Conv1D/2D (strides, same, valid and causal padding, dilation, groups), depthwise and
    separable convolutions, max and average pooling (same padding: padding not counted), zero
    padding, nearest and bilinear upsampling, both global poolings and Permute, on two
    inputs."""
    inp = keras.Input((9, 8, 3))
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu", strides=(2, 1))(inp)
    h = keras.layers.ZeroPadding2D(((1, 0), (0, 2)))(h)
    h = keras.layers.DepthwiseConv2D(2, depth_multiplier=2, dilation_rate=(1, 2))(h)
    h = keras.layers.MaxPooling2D(2, padding="same")(h)
    h = keras.layers.SeparableConv2D(4, 3, padding="same")(h)
    h = keras.layers.AveragePooling2D((2, 2), strides=1, padding="same")(h)
    h = keras.layers.Conv2D(4, 1, groups=2)(h)
    h = keras.layers.Cropping2D(((1, 0), (0, 1)))(keras.layers.UpSampling2D((2, 1))(h))
    h = keras.layers.UpSampling2D((3, 2), interpolation="bilinear")(h)
    pooled = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(h),
                                         keras.layers.GlobalMaxPooling2D()(h)])
    signal = keras.Input((30, 2))
    c = keras.layers.Conv1D(4, 3, padding="causal", dilation_rate=2)(signal)
    c = keras.layers.Conv1D(4, 3, padding="same", strides=2)(c)
    c = keras.layers.ZeroPadding1D((1, 2))(c)
    c = keras.layers.MaxPooling1D(2)(c)
    c = keras.layers.AveragePooling1D(3, strides=2, padding="same")(c)
    c = keras.layers.SeparableConv1D(3, 2)(c)
    c = keras.layers.DepthwiseConv1D(2)(c)
    c = keras.layers.Cropping1D((1, 0))(keras.layers.UpSampling1D(3)(c))
    c = keras.layers.GlobalAveragePooling1D()(c)
    channels_first = keras.layers.Flatten()(keras.layers.Permute((3, 1, 2))(h))
    model = keras.Model([inp, signal], [keras.layers.Dense(3, activation="softmax")(pooled), c,
                                        keras.layers.Flatten()(h), channels_first], name="convs")
    imported = three_way(model, tmp_path, suffix)
    assert {"conv", "max_pool", "avg_pool", "zero_pad", "crop", "upsample", "global_avg_pool",
            "global_max_pool", "transpose"} <= {n.op for n in imported.nodes}


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_transposed_convolutions(tmp_path, suffix):
    """Conv1DTranspose/Conv2DTranspose: "same" and "valid", strides beyond the window (the
    rest is output padding), explicit output_padding, with a bias or none. (TensorFlow has
    no dilated transposed convolution on CPU; the IR op's dilation is tested on its own.)"""
    bias = {"bias_initializer": "random_normal"}
    inp = keras.Input((4, 5, 3))
    h = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu",
                                     **bias)(inp)
    h = keras.layers.Conv2DTranspose(3, (2, 3), strides=(3, 1), padding="valid", **bias)(h)
    h = keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same", output_padding=(0, 1),
                                     **bias)(h)
    g = keras.layers.Conv2DTranspose(2, 2, use_bias=False)(inp)
    signal = keras.Input((6, 2))
    c = keras.layers.Conv1DTranspose(3, 4, strides=2, padding="same", **bias)(signal)
    c = keras.layers.Conv1DTranspose(2, 1, strides=3, **bias)(c)
    model = keras.Model([inp, signal], [h, g, c], name="transposed")
    imported = three_way(model, tmp_path, suffix)
    nodes = [n for n in imported.nodes if n.op == "conv_transpose"]
    assert len(nodes) == 6
    assert [n.output_shape for n in nodes] == [(8, 10, 4), (24, 12, 3), (47, 24, 2), (5, 6, 2),
                                               (12, 3), (36, 2)]
    assert any("output_padding" in n.attrs for n in nodes)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_recurrent_layers(tmp_path, suffix):
    """SimpleRNN, LSTM and GRU (reset_after both ways): every step's output or the last,
    go_backwards, the step activations Keras offers that the targets have, with a bias or
    none."""
    bias = {"bias_initializer": "random_normal"}
    inp = keras.Input((7, 3))
    h = keras.layers.SimpleRNN(4, return_sequences=True, activation="relu", **bias)(inp)
    h = keras.layers.LSTM(5, return_sequences=True, go_backwards=True,
                          recurrent_activation="hard_sigmoid", **bias)(h)
    h = keras.layers.GRU(3, return_sequences=True, **bias)(h)
    last = keras.layers.GRU(4, reset_after=False, go_backwards=True, use_bias=False,
                            name="gru_v1")(h)
    other = keras.layers.LSTM(2, activation="sigmoid", **bias)(inp)
    model = keras.Model(inp, [keras.layers.Dense(2)(last), other, h], name="recurrent")
    imported = three_way(model, tmp_path, suffix)
    assert [n.op for n in imported.nodes].count("gru") == 2
    assert imported.node("gru_v1").attrs == {"return_sequences": False, "go_backwards": True,
                                            "reset_after": False, "activation": "tanh",
                                            "recurrent_activation": "sigmoid"}


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_embedding_into_recurrent_layers(tmp_path, suffix):
    """Integer ids (the exported code takes them as floats) through an Embedding into an LSTM
    and a GRU; exported ids outside the table give zero rows where Keras would fail."""
    inp = keras.Input((9,), dtype="int32")
    h = keras.layers.Embedding(12, 4)(inp)
    h = keras.layers.LSTM(3, return_sequences=True)(h)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GRU(2)(h)), name="tokens")
    x = np.random.default_rng(0).integers(0, 12, (32, 9)).astype(np.float32)
    imported = three_way(model, tmp_path, suffix, x=x)
    assert [n.op for n in imported.nodes][:2] == ["embedding", "lstm"]
    table = imported.node(imported.nodes[0].name).weights["embeddings"]
    odd = np.array([[-0.5, 2.9, 11, 12, -1, np.nan, np.inf, 3, 0]], np.float32)
    rows = distill.run(ir.make_model("rows", (9,), [("e", "embedding", {}, {"embeddings": table})]),
                       odd)[0]
    np.testing.assert_array_equal(rows[:3], table[[0, 2, 11]])
    assert not rows[3:7].any()


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_bidirectional_and_time_distributed(tmp_path, suffix):
    """Bidirectional LSTM/GRU/SimpleRNN with every merge mode (the backward steps put back in
    time order), and a TimeDistributed Dense between them."""
    bias = {"bias_initializer": "random_normal"}
    inp = keras.Input((6, 3))
    h = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True, **bias))(inp)
    h = keras.layers.TimeDistributed(keras.layers.Dense(3, activation="relu"))(h)
    outs = [keras.layers.Bidirectional(keras.layers.GRU(2, **bias), merge_mode="sum")(h),
            keras.layers.Bidirectional(keras.layers.SimpleRNN(2, return_sequences=True, **bias),
                                       merge_mode="ave")(h),
            keras.layers.Bidirectional(keras.layers.GRU(2, reset_after=False),
                                       merge_mode="mul")(h)]
    imported = three_way(keras.Model(inp, outs, name="bidirectional"), tmp_path, suffix)
    ops_ = [n.op for n in imported.nodes]
    assert ops_.count("reverse") == 2 and {"concatenate", "add", "average", "multiply"} <= set(
        ops_)
    assert imported.nodes[4].name.startswith("time_distributed")


def test_unsupported_recurrent_options_are_listed_at_once():
    inp = keras.Input((4, 2))
    model = keras.Model(inp, keras.layers.LSTM(3, activation="softsign",
                                               recurrent_activation="elu", stateful=False)(inp))
    with pytest.raises(distill.DistillError,
                       match=r"activation='softsign'.*recurrent_activation='elu'"):
        import_keras(model)


def test_a_shared_layer_on_inputs_of_two_sizes_gets_each_its_own_options():
    """A shared Conv2D with "same" padding pads a 5x5 and a 6x6 input differently, and a shared
    LayerNormalization normalizes the last axis of a rank-1 and a rank-2 input; the kernels
    stay one array."""
    conv = keras.layers.Conv2D(2, 3, strides=2, padding="same")
    norm = keras.layers.LayerNormalization(gamma_initializer="random_normal")
    a, b = keras.Input((5, 5, 1)), keras.Input((6, 6, 1))
    c, d = keras.Input((4,)), keras.Input((2, 4))
    model = keras.Model([a, b, c, d], [conv(a), conv(b), norm(c), norm(d)])
    imported = import_keras(model)
    convs = [n for n in imported.nodes if n.op == "conv"]
    assert [n.attrs["pads"] for n in convs] == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert convs[0].weights["kernel"] is convs[1].weights["kernel"]
    norms = [n for n in imported.nodes if n.op == "layer_norm"]
    assert [n.attrs["axis"] for n in norms] == [0, 1]
    assert norms[0].weights["gamma"] is norms[1].weights["gamma"]


def test_batch_normalization_folds_into_the_conv_or_dense_before_it(tmp_path):
    """Folded where the conv or dense feeds only the normalization; kept as a node where
    another layer reads the same output."""
    def bn():
        return keras.layers.BatchNormalization(
            beta_initializer="random_normal",
            gamma_initializer=keras.initializers.RandomUniform(0.5, 2),
            moving_mean_initializer="random_normal",
            moving_variance_initializer=keras.initializers.RandomUniform(0.1, 3))
    inp = keras.Input((8, 8, 1))
    h = keras.layers.ReLU()(bn()(keras.layers.Conv2D(4, 3, use_bias=False)(inp)))
    d = keras.layers.Dense(5)(keras.layers.Flatten()(h))
    model = keras.Model(inp, [bn()(d), keras.layers.Dense(2)(d)], name="folded")
    imported = three_way(model, tmp_path)
    assert [n.op for n in imported.nodes] == ["conv", "relu", "flatten", "dense", "normalize",
                                              "dense"]
    assert "bias" in imported.nodes[0].weights  # the conv had none: the fold gave it one


def test_a_layer_with_two_inputs_that_is_no_merge_is_refused_by_name():
    inp = keras.Input((4,))
    a = keras.layers.Dense(4)(inp)
    out = keras.layers.Dot(axes=1, name="dot")([a, inp])
    with pytest.raises(distill.DistillError, match=r"'dot' \(Dot\) is not supported"):
        import_keras(keras.Model(inp, out))


def test_unsupported_layers_are_all_listed_and_the_cli_exits_2(tmp_path):
    model = keras.Sequential([keras.Input((2, 4)), keras.layers.Dense(3, activation="mish"),
                              keras.layers.UnitNormalization(name="unit"),
                              keras.layers.BatchNormalization(axis=1, name="bn"),
                              keras.layers.Softmax(axis=0, name="sm")])
    path = tmp_path / "bad.keras"
    model.save(path)
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "import", str(path), "-o",
                           str(tmp_path / "bad.distill")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    for fragment in ("'mish'", "'unit' (UnitNormalization)", "'bn' (BatchNormalization)",
                     "axis 1", "axis 0"):
        assert fragment in err, err
    assert not (tmp_path / "bad.distill").exists()


def test_keras2_alpha_is_read_when_negative_slope_is_absent():
    from distill.backends.keras import CONVERTERS

    class OldLeaky:  # what a Keras 2 config carries
        name = "old"

        def get_config(self):
            return {"alpha": 0.25}
    assert CONVERTERS["LeakyReLU"](OldLeaky(), None) == [("old", "leaky_relu", {"alpha": 0.25}, {})]


def test_cli_import_export_and_verify_take_keras_files(tmp_path):
    path = tmp_path / "every.keras"
    every_activation_sequential().save(path)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "distill.cli", *map(str, args)],
                              capture_output=True, text=True, timeout=600)
    proc = cli("import", path, "-o", tmp_path / "every.distill")
    assert proc.returncode == 0 and "matches Keras's predictions" in proc.stdout, proc.stderr
    assert distill.load(tmp_path / "every.distill").name == "every"
    proc = cli("export", path, "--lang", "c", "-o", tmp_path / "c")
    assert proc.returncode == 0 and (tmp_path / "c" / "every.c").is_file(), proc.stderr
    proc = cli("verify", path, "--lang", "go,numpy", "--samples", "20")
    assert proc.returncode == 0 and proc.stdout.count(" pass ") == 2, proc.stdout


def test_cli_trains_on_tensorflow_with_the_mirrored_strategy(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "train",
                           "examples/blobs.toml", "--backend", "tensorflow", "--strategy",
                           "mirrored", "--epochs", "2", "-o", str(tmp_path / "b.distill")],
                          capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr
    assert "backend tensorflow" in proc.stderr and "devices: CPU" in proc.stderr
    assert "strategy mirrored" in proc.stderr and "epoch 2/2" in proc.stderr
    model = distill.load(tmp_path / "b.distill")
    assert model.metadata["training"]["devices"][0].startswith("CPU")
    assert (tmp_path / "b.loss.png").is_file()


def test_a_checkpoint_folder_of_another_config_is_refused(tmp_path):
    """The Keras backup folder carries the config's fingerprint in distill-run.json: --resume
    refuses another config's folder, and writes its own stamp atomically for the next one."""
    from distill.backends.tensorflow import train as tf_train
    from distill.config import parse_config
    from distill.errors import ModelFormatError
    doc = {"data": {"source": "blobs", "n": 40},
           "model": {"layers": [{"type": "dense", "units": 1, "activation": "sigmoid"}]},
           "training": {"loss": "binary_crossentropy", "optimizer": "sgd", "epochs": 1}}
    config = parse_config(doc)
    folder = tmp_path / "m.distill.ckpt"
    folder.mkdir()
    (folder / "distill-run.json").write_text('{"run": "' + "0" * 64 + '"}\n')
    with pytest.raises(ModelFormatError, match="another config or seed"):
        tf_train(config, checkpoint=folder, resume=True, verbose=0)
    (folder / "distill-run.json").write_text('{"run": "' + config.fingerprint() + '"}\n')
    tf_train(config, checkpoint=folder, resume=True, verbose=0)


def test_configs_train_the_new_activations_on_both_backends(tmp_path):
    """A config naming the activations Keras has strings for (elu with its alpha) trains on
    the NumPy core and on Keras, and both models export and verify everywhere."""
    from distill.backends import train
    from distill.config import load_config
    layers = "".join(f'[[model.layers]]\ntype = "dense"\nunits = 4\nactivation = {a}\n\n'
                     for a in ('{name = "elu", alpha = 0.5}', '"selu"', '"gelu"', '"silu"',
                               '"softplus"', '"softsign"', '"hard_sigmoid"'))
    path = tmp_path / "acts.toml"
    path.write_text(f'name = "acts"\nseed = 0\n\n[data]\nsource = "blobs"\ntest = 0.2\n\n'
                    f'{layers}[[model.layers]]\ntype = "dense"\nunits = 1\n'
                    'activation = "sigmoid"\n\n[training]\nloss = "binary_crossentropy"\n'
                    'optimizer = {name = "adam", learning_rate = 0.01}\nbatch_size = 32\n'
                    'epochs = 5\nmetrics = ["accuracy"]\n')
    config = load_config(path)
    for backend in ("numpy", "tensorflow"):
        result = train(config, backend, verbose=0)
        ops = [n.op for n in result.model.nodes]
        assert ops.count("elu") == 1 and {"selu", "gelu", "silu", "softplus", "softsign",
                                          "hard_sigmoid"} <= set(ops), (backend, ops)
        assert result.model.node("dense_elu").attrs["alpha"] == 0.5
        assert result.metrics["test"]["accuracy"] >= 0.9, (backend, result.metrics)
        for r in verify(result.model, LANGS, samples=16):
            assert r.ok, r.line()


def signals_on_both_backends(tmp_path, layers: list[tuple[str, str]], n: int,
                             length: int) -> list:
    """Train config `layers` ((type, TOML keys) pairs) on generated signals with both
    backends; assert the two IRs are the same node for node (names, ops, options, weight
    shapes) and that each exports and verifies everywhere; return the two models."""
    from distill.backends import train
    from distill.config import load_config
    text = "".join(f'[[model.layers]]\ntype = "{kind}"\n{keys}\n\n' for kind, keys in layers)
    path = tmp_path / "layers.toml"
    path.write_text(f'name = "layers"\nseed = 0\n\n[data]\nsource = "signals"\nn = {n}\n'
                    f'length = {length}\ntest = 0.25\n\n{text}[training]\n'
                    'loss = "sparse_categorical_crossentropy"\n'
                    'optimizer = {name = "adam", learning_rate = 0.01}\n'
                    'batch_size = 16\nepochs = 2\n')
    config = load_config(path)
    models = [train(config, backend, verbose=0).model for backend in ("numpy", "tensorflow")]
    numpy_nodes, keras_nodes = ([(n.name, n.op, n.attrs, {k: w.shape for k, w in
                                                          n.weights.items()})
                                 for n in m.nodes] for m in models)
    assert numpy_nodes == keras_nodes
    for model in models:
        for r in verify(model, LANGS, samples=16):
            assert r.ok, r.line()
    return models


def test_configs_train_conv_and_pooling_layers_on_both_backends(tmp_path):
    """Every conv, transposed conv and pooling layer a config names, with strides, "same" and
    "causal" padding, output padding, dilation and groups, trains on both backends into the
    same IR nodes with the same options (Keras's padding rules are the NumPy core's), and
    exports everywhere."""
    layers = [
        ('conv1d', 'filters = 4\nkernel_size = 3\npadding = "causal"\ndilation_rate = 2\n'
                   'activation = {name = "elu", alpha = 0.5}'),
        ('max_pooling1d', 'pool_size = 3\nstrides = 2\npadding = "same"'),
        ('conv1d', 'filters = 4\nkernel_size = 2\ngroups = 2\nstrides = 2\npadding = "same"'),
        ('average_pooling1d', 'pool_size = 2\npadding = "same"'),
        ('reshape', 'shape = [2, 2, 2]'),
        ('conv2d_transpose', 'filters = 3\nkernel_size = 2\nstrides = 2\npadding = "same"'),
        ('conv2d', 'filters = 6\nkernel_size = [2, 1]\npadding = "same"\nactivation = "relu"\n'
                   'kernel_initializer = "he_normal"'),
        ('max_pooling2d', 'pool_size = [1, 2]'),
        ('average_pooling2d', 'pool_size = 1'),
        ('global_average_pooling2d', ''),
        ('reshape', 'shape = [3, 2]'),
        ('conv1d_transpose', 'filters = 2\nkernel_size = 3\nstrides = 2\noutput_padding = 1\n'
                             'activation = "tanh"'),
        ('global_max_pooling1d', ''),
        ('dense', 'units = 4\nactivation = "softmax"'),
    ]
    models = signals_on_both_backends(tmp_path, layers, n=40, length=16)
    assert [n.op for n in models[0].nodes].count("conv") == 3
    assert models[0].node("conv1d_transpose").attrs == {"strides": [2], "pads": [0, 0],
                                                        "output_padding": [1]}
    assert models[0].node("conv1d").attrs == {"strides": [1], "pads": [4, 0], "groups": 1,
                                              "dilation": [2]}


def test_a_dilated_transposed_conv_on_tensorflow_without_a_gpu_is_a_config_error():
    from distill.backends.tensorflow import devices
    from distill.backends.tensorflow import train as tf_train
    from distill.config import parse_config
    from distill.errors import ConfigError
    if any(d.startswith("GPU") for d in devices()):
        pytest.skip("TensorFlow has dilated transposed convolutions on a GPU")
    doc = {"data": {"source": "signals", "n": 4, "length": 8},
           "model": {"layers": [{"type": "conv1d_transpose", "filters": 2, "kernel_size": 2,
                                 "dilation_rate": 2}, {"type": "flatten"},
                                {"type": "dense", "units": 4}]},
           "training": {"loss": "sparse_categorical_crossentropy", "epochs": 1}}
    with pytest.raises(ConfigError, match="no dilated transposed convolution on CPU"):
        tf_train(parse_config(doc), verbose=0)


def test_configs_train_recurrent_layers_on_both_backends(tmp_path):
    """simple_rnn, gru (reset_after both ways) and lstm layers of a config train on both
    backends into the same IR nodes with the same options, and export everywhere."""
    layers = [
        ('lstm', 'units = 4\nreturn_sequences = true\nrecurrent_activation = "hard_sigmoid"'),
        ('gru', 'units = 3\nreturn_sequences = true\ngo_backwards = true'),
        ('gru', 'units = 3\nreturn_sequences = true\nreset_after = false\nuse_bias = false'),
        ('simple_rnn', 'units = 2\nactivation = "relu"'),
        ('dense', 'units = 4\nactivation = "softmax"'),
    ]
    models = signals_on_both_backends(tmp_path, layers, n=20, length=12)
    assert [n.op for n in models[0].nodes] == ["lstm", "gru", "gru", "simple_rnn", "dense",
                                               "softmax"]


def test_configs_train_bidirectional_layers_on_both_backends(tmp_path):
    """A recurrent layer with `bidirectional` set is Keras's Bidirectional on both backends:
    the forward and backward nodes, the backward steps put back in time order, the merge."""
    layers = [
        ('lstm', 'units = 3\nreturn_sequences = true\nbidirectional = "concat"'),
        ('gru', 'units = 2\nreturn_sequences = true\ngo_backwards = true\n'
                'bidirectional = "ave"\nname = "both_ways"'),
        ('simple_rnn', 'units = 2\nbidirectional = "sum"'),
        ('dense', 'units = 4\nactivation = "softmax"'),
    ]
    models = signals_on_both_backends(tmp_path, layers, n=20, length=8)
    assert [(n.name, n.op, n.inputs) for n in models[0].nodes[:8]] == [
        ("bidirectional_forward", "lstm", ("input",)),
        ("bidirectional_backward", "lstm", ("input",)),
        ("bidirectional_backward_in_time_order", "reverse", ("bidirectional_backward",)),
        ("bidirectional", "concatenate", ("bidirectional_forward",
                                          "bidirectional_backward_in_time_order")),
        ("both_ways_forward", "gru", ("bidirectional",)),
        ("both_ways_backward", "gru", ("bidirectional",)),
        ("both_ways_backward_in_time_order", "reverse", ("both_ways_backward",)),
        ("both_ways", "average", ("both_ways_forward", "both_ways_backward_in_time_order"))]
    forward, backward = models[0].node("both_ways_forward"), models[0].node("both_ways_backward")
    assert forward.attrs["go_backwards"] and "go_backwards" not in backward.attrs
    for model in models:  # the two directions start from weights of their own
        assert not np.array_equal(model.node("bidirectional_1_forward").weights["kernel"],
                                  model.node("bidirectional_1_backward").weights["kernel"])


def test_configs_train_an_embedding_on_both_backends(tmp_path):
    """Ids from an NPZ file through a config's embedding and lstm layers, on both backends:
    the same IR nodes, a learned rule (is id 3 in the sequence?), exported everywhere."""
    from distill.backends import train
    from distill.config import load_config
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, (300, 5)).astype(np.float32)
    np.savez(tmp_path / "ids.npz", x=x, y=(x == 3).any(axis=1).astype(np.int64))
    path = tmp_path / "ids.toml"
    path.write_text('name = "ids"\nseed = 0\n\n[data]\nsource = "npz"\npath = "ids.npz"\n'
                    'test = 0.2\n\n[[model.layers]]\ntype = "embedding"\ninput_dim = 6\n'
                    'output_dim = 4\n\n[[model.layers]]\ntype = "lstm"\nunits = 6\n\n'
                    '[[model.layers]]\ntype = "dense"\nunits = 1\nactivation = "sigmoid"\n\n'
                    '[training]\nloss = "binary_crossentropy"\n'
                    'optimizer = {name = "adam", learning_rate = 0.03}\nbatch_size = 20\n'
                    'epochs = 25\nmetrics = ["accuracy"]\n')
    config = load_config(path)
    results = [train(config, backend, verbose=0) for backend in ("numpy", "tensorflow")]
    assert [[(n.name, n.op) for n in r.model.nodes] for r in results] == [[
        ("embedding", "embedding"), ("lstm", "lstm"), ("dense", "dense"),
        ("dense_sigmoid", "sigmoid")]] * 2
    for r in results:
        assert r.metrics["test"]["accuracy"] >= 0.9, r.metrics
        for v in verify(r.model, LANGS, samples=16):
            assert v.ok, v.line()


def test_a_model_keras_cannot_run_is_a_clean_error_not_a_traceback():
    """Keras builds a dilated Conv2DTranspose that TensorFlow on CPU cannot run: the check
    against Keras's predictions says so in one DistillError."""
    from distill.backends.tensorflow import devices
    from distill.errors import DistillError
    if any(d.startswith("GPU") for d in devices()):
        pytest.skip("TensorFlow runs dilated transposed convolutions on a GPU")
    inp = keras.Input((4, 4, 1))
    model = keras.Model(inp, keras.layers.Conv2DTranspose(2, 2, dilation_rate=2)(inp))
    with pytest.raises(DistillError, match="Keras cannot run the model to check the import"):
        import_keras(model)
