"""Layers, losses, optimizers, callbacks and Sequential: hand-computed expectations."""

import math

import numpy as np
import pytest

import distill
import distill.autodiff as ad
from distill import nn, ops, optim
from distill.autodiff import Tape, Variable


def test_one_weight_linear_model_by_hand():
    w, b = Variable([[0.5]]), Variable([0.25])
    x, t = np.float32(2.0), np.float32(3.0)
    with Tape() as tape:
        y = ad.matmul(np.array([[x]]), w) + b
        loss = ad.sum((y - t) ** 2)
    dw, db = tape.gradient(loss, [w, b])
    yv = 0.5 * 2.0 + 0.25
    assert dw.numpy()[0, 0] == pytest.approx(2 * (yv - 3.0) * 2.0)
    assert db.numpy()[0] == pytest.approx(2 * (yv - 3.0))
    w0, b0 = w.numpy().copy(), b.numpy().copy()
    optim.SGD(0.1).apply_gradients(zip([dw, db], [w, b]))
    assert w.numpy()[0, 0] == np.float32(w0[0, 0] - np.float32(0.1) * dw.numpy()[0, 0])
    assert b.numpy()[0] == np.float32(b0[0] - np.float32(0.1) * db.numpy()[0])


GRADS = [np.array([0.5, -1.0]), np.array([0.1, 2.0]), np.array([-0.3, 0.4])]


def run_three_steps(opt):
    v = Variable(np.array([1.0, -2.0]))
    for g in GRADS:
        opt.apply_gradients([(g, v)])
    return v.numpy()


def by_hand_sgd(lr, momentum=0.0, nesterov=False):
    w, m = np.array([1.0, -2.0]), np.zeros(2)
    for g in GRADS:
        m = momentum * m - lr * g
        w = w + (momentum * m - lr * g if nesterov else m)
    return w


def by_hand_adam(lr, b1=0.9, b2=0.999, eps=1e-7):
    w, m, v = np.array([1.0, -2.0]), np.zeros(2), np.zeros(2)
    for t, g in enumerate(GRADS, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
    return w


def by_hand_rmsprop(lr, rho=0.9, momentum=0.0, eps=1e-7):
    w, v, m = np.array([1.0, -2.0]), np.zeros(2), np.zeros(2)
    for g in GRADS:
        v = rho * v + (1 - rho) * g * g
        step = lr * g / np.sqrt(v + eps)
        m = momentum * m + step
        w = w - m
    return w


@pytest.mark.parametrize("opt,expected", [
    (optim.SGD(0.1), by_hand_sgd(0.1)),
    (optim.SGD(0.1, momentum=0.9), by_hand_sgd(0.1, 0.9)),
    (optim.SGD(0.1, momentum=0.9, nesterov=True), by_hand_sgd(0.1, 0.9, True)),
    (optim.Adam(0.01), by_hand_adam(0.01)),
    (optim.Adam(0.05, beta_1=0.5, beta_2=0.9, epsilon=1e-3),
     by_hand_adam(0.05, 0.5, 0.9, 1e-3)),
    (optim.RMSprop(0.01), by_hand_rmsprop(0.01)),
    (optim.RMSprop(0.01, rho=0.8, momentum=0.5), by_hand_rmsprop(0.01, 0.8, 0.5)),
], ids=["sgd", "momentum", "nesterov", "adam", "adam_opts", "rmsprop", "rmsprop_momentum"])
def test_optimizer_matches_update_rule_for_three_steps(opt, expected):
    np.testing.assert_allclose(run_three_steps(opt), expected, rtol=1e-12, atol=1e-14)
    assert opt.iterations == 3


OPTIMIZERS = [lambda: optim.SGD(0.1), lambda: optim.SGD(0.1, momentum=0.9),
              lambda: optim.SGD(0.1, momentum=0.9, nesterov=True), lambda: optim.Adam(0.01),
              lambda: optim.RMSprop(0.01), lambda: optim.RMSprop(0.01, momentum=0.5)]
SHAPES = [(3, 4), (4,), (4, 2), (2,)]


def packed_variables(values):
    vs = [Variable(v) for v in values]
    nn._pack(vs)
    return vs


@pytest.mark.parametrize("make", OPTIMIZERS)
def test_one_pass_over_packed_variables_gives_the_same_bits(make):
    # Variables sharing one buffer are updated with one pass of the rule; variables of their
    # own, one by one. Elementwise rules must give the same bits either way.
    gen = np.random.default_rng(0)
    values = [gen.normal(size=s).astype(np.float32) for s in SHAPES]
    grads = [[gen.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(4)]
    separate, packed = [Variable(v) for v in values], packed_variables(values)
    assert packed[0].data.base is packed[3].data.base
    opt_s, opt_p = make(), make()
    for gs in grads:
        opt_s.apply_gradients(zip(gs, separate))
        opt_p.apply_gradients(zip(gs, packed))
    assert opt_p._packed is not None and opt_s._packed is None
    for a, b in zip(separate, packed):
        assert np.array_equal(a.numpy(), b.numpy())
    for (_, a), (_, b) in zip(sorted(opt_s.get_state(separate)[1].items()),
                              sorted(opt_p.get_state(packed)[1].items())):
        assert np.array_equal(a, b)


def test_gradients_of_another_dtype_are_cast_first():
    # A float64 gradient for a float32 variable is rounded to float32, then the rule runs in
    # float32, packed or not.
    gen = np.random.default_rng(2)
    values = [gen.normal(size=s).astype(np.float32) for s in SHAPES]
    grads = [gen.normal(size=s) for s in SHAPES]
    for vs in ([Variable(v) for v in values], packed_variables(values)):
        optim.SGD(0.1).apply_gradients(zip(grads, vs))
        for v, w, g in zip(vs, values, grads):
            assert v.dtype == np.float32
            assert np.array_equal(v.numpy(), w - np.float32(0.1) * g.astype(np.float32))


def test_packed_updates_survive_skipped_gradients_state_restore_and_rebinding():
    gen = np.random.default_rng(1)
    values = [gen.normal(size=s) for s in SHAPES]  # float64 this time
    steps = [[gen.normal(size=s) for s in SHAPES] for _ in range(6)]
    steps[2][1] = None  # a variable the loss did not reach: skipped, so one by one this step
    ref, vs = [Variable(v) for v in values], packed_variables(values)
    opt_ref, opt = optim.Adam(0.05), optim.Adam(0.05)
    for i, gs in enumerate(steps):
        opt_ref.apply_gradients(zip(gs, ref))
        opt.apply_gradients(zip(gs, vs))
        if i == 3:  # checkpoint and resume into fresh packed variables and a fresh optimizer
            facts, arrays = opt.get_state(vs)
            weights = [v.numpy().copy() for v in vs]
            vs = packed_variables(weights)
            opt = optim.Adam(0.05)
            opt.set_state(vs, facts, {k: a.copy() for k, a in arrays.items()})
        if i == 4:  # something rebinds a variable's array: that variable leaves the buffer
            vs[0].data = vs[0].data.copy()
    assert opt.iterations == 6
    for a, b in zip(ref, vs):
        assert np.array_equal(a.numpy(), b.numpy())


def test_a_built_model_keeps_its_weights_in_one_buffer():
    m = nn.Sequential([nn.Dense(3, input_shape=(2,)), nn.Dense(2, activation="relu")], seed=0)
    m.build()
    kernel = m.layers[0].kernel
    assert all(v.data.base is kernel.data.base for v in m.trainable_variables)
    weights = [w + 1 for w in m.get_weights()]
    m.set_weights(weights)
    for got, want in zip(m.get_weights(), weights):
        assert np.array_equal(got, want)
    assert kernel.data.base is m.layers[1].bias.data.base  # assigned in place, still packed


def test_packed_and_unpacked_models_train_to_the_same_bits():
    x, y = blobs()
    runs = []
    for packed in (True, False):
        m = small_model(seed=5)
        m.build((2,))
        if not packed:
            for v in m.trainable_variables:
                v.data = v.data.copy()  # each variable an array of its own again
        m.fit(x, y, epochs=2, batch_size=32)
        assert (m.optimizer._packed is not None) == packed
        runs.append(m.get_weights())
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


def test_schedules():
    exp = optim.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    assert exp(0) == 0.1 and exp(10) == pytest.approx(0.05) and exp(5) == pytest.approx(
        0.1 * 0.5**0.5)
    stair = optim.ExponentialDecay(0.1, 10, 0.5, staircase=True)
    assert stair(9) == 0.1 and stair(10) == pytest.approx(0.05)
    step = optim.StepDecay(1.0, step_size=3, factor=0.1)
    assert [step(i) for i in range(7)] == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01])
    pw = optim.PiecewiseConstantDecay([2, 4], [1.0, 0.5, 0.1])
    assert [pw(i) for i in range(6)] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.1]
    # The optimizer reads the schedule at its step count.
    opt = optim.SGD(optim.StepDecay(1.0, 1, 0.5))
    v = Variable(np.array([0.0]))
    for _ in range(3):
        opt.apply_gradients([(np.array([1.0]), v)])
    assert v.numpy()[0] == pytest.approx(-(1 + 0.5 + 0.25))
    assert optim.get({"name": "sgd", "learning_rate": {"name": "step_decay",
                                                       "initial_learning_rate": 0.2,
                                                       "step_size": 5}}).current_learning_rate \
        == pytest.approx(0.2)


def blobs(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(size=(n, 2)) + [3, 2], rng.normal(size=(n, 2)) - [3, 2]])
    return x.astype(np.float32), np.repeat([0.0, 1.0], n).reshape(-1, 1).astype(np.float32)


def small_model(seed=0, **kw):
    m = nn.Sequential([nn.Dense(4, activation="tanh"), nn.Dropout(0.1),
                       nn.Dense(1, activation="sigmoid")], seed=seed, **kw)
    m.compile("binary_crossentropy", optim.Adam(0.01), ["accuracy"])
    return m


def test_names_layers_and_weights():
    m = nn.Sequential([nn.Dense(3, input_shape=(2,)), nn.Dense(2, name="out"),
                       nn.Activation("relu")])
    m.build()
    assert [layer.name for layer in m.layers] == ["dense", "out", "activation"]
    assert m.get_layer("out").get_weights()[0].shape == (3, 2)
    with pytest.raises(KeyError, match="no layer named"):
        m.get_layer("nope")
    with pytest.raises(ValueError, match="used twice"):
        nn.Sequential([nn.Dense(1, name="a"), nn.Dense(1, name="a")])
    kernel, bias = m.get_layer("dense").get_weights()
    m.get_layer("dense").set_weights([kernel * 0 + 1, bias + 2])
    np.testing.assert_allclose(m(np.ones((1, 2))).numpy(),
                               np.maximum(np.full((1, 3), 4.0) @ m.layers[1].kernel.numpy()
                                          + m.layers[1].bias.numpy(), 0), rtol=1e-6,
                               atol=1e-6)  # float32 against float64: an output near 0.01 cancels
    text = m.summary(print_fn=None)
    assert "out" in text and "total parameters: 17" in text
    assert m.count_params() == 3 * 2 + 3 + 3 * 2 + 2


def test_initializers_are_seeded_and_scaled():
    a = nn.GlorotUniform(seed=3)((100, 50))
    assert np.array_equal(a, nn.GlorotUniform(seed=3)((100, 50)))
    assert np.abs(a).max() <= math.sqrt(6 / 150)
    h = nn.HeNormal(seed=1)((400, 300))
    assert h.std() == pytest.approx(math.sqrt(2 / 400), rel=0.05)
    assert nn.get_initializer("zeros")((2, 2)).tolist() == [[0, 0], [0, 0]]
    assert a.dtype == np.float32


def test_dropout_only_in_training():
    layer = nn.Dropout(0.5)
    x = ad.Tensor(np.ones((1000,), np.float32))
    rng = np.random.default_rng(0)
    assert np.array_equal(layer(x, training=False, rng=rng).numpy(), x.numpy())
    y = layer(x, training=True, rng=rng).numpy()
    assert set(np.unique(y)) == {0.0, 2.0} and 400 < (y == 0).sum() < 600


def test_same_seed_bit_identical_weights():
    x, y = blobs()
    runs = []
    for _ in range(2):
        m = small_model(seed=7)
        m.fit(x, y, epochs=3, batch_size=16)
        runs.append(m.get_weights())
    for a, b in zip(*runs):
        assert np.array_equal(a, b)
    other = small_model(seed=8)
    other.fit(x, y, epochs=1, batch_size=16)
    assert not np.array_equal(other.get_weights()[0], runs[0][0])


def test_fit_history_evaluate_predict():
    x, y = blobs()
    m = small_model()
    h = m.fit(x, y, epochs=5, batch_size=32, validation_data=(x[:50], y[:50]))
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 5 for v in h.history.values())
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert len(h.steps) == 5 * math.ceil(len(x) / 32)
    ev = m.evaluate(x, y)
    assert ev["accuracy"] > 0.95
    p = m.predict(x, batch_size=7)
    assert p.shape == (len(x), 1)
    np.testing.assert_allclose(p, m(x).numpy(), rtol=1e-6)
    # evaluate's loss is the loss of the predictions
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert ev["loss"] == pytest.approx(bce, rel=1e-4)


def test_fused_cross_entropy_equals_the_plain_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 20)
    m = nn.Sequential([nn.Dense(3, activation="softmax")], seed=0)
    m.compile("categorical_crossentropy", "sgd")
    m.build((4,))
    fused, _ = m._forward_loss(ad.Tensor(x), np.eye(3)[labels], False)
    plain = nn.CategoricalCrossentropy()(np.eye(3)[labels], m(x))
    assert float(fused.numpy()) == pytest.approx(float(plain.numpy()), rel=1e-5)
    sparse = nn.SparseCategoricalCrossentropy()(labels, m(x))
    assert float(sparse.numpy()) == pytest.approx(float(plain.numpy()), rel=1e-6)
    ce = nn.CategoricalCrossentropy(from_logits=True)(np.eye(3)[labels],
                                                       ad.Tensor(x) @ m.layers[0].kernel
                                                       + m.layers[0].bias)
    assert float(ce.numpy()) == pytest.approx(float(plain.numpy()), rel=1e-5)


def test_losses_by_hand():
    t = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    p = ad.Tensor(np.array([[0.8, 0.1], [0.3, 0.6]], np.float32))
    d = p.numpy() - t
    assert float(nn.get_loss("mse")(t, p).numpy()) == pytest.approx(np.mean(d**2))
    assert float(nn.get_loss("mae")(t, p).numpy()) == pytest.approx(np.mean(np.abs(d)))
    assert float(nn.get_loss("half_sum_squared_error")(t, p).numpy()) == pytest.approx(
        0.5 * np.sum(d**2) / 2)
    bce = -np.mean(t * np.log(p.numpy()) + (1 - t) * np.log(1 - p.numpy()))
    assert float(nn.get_loss("binary_crossentropy")(t, p).numpy()) == pytest.approx(bce, 1e-5)
    with pytest.raises(ValueError, match="unknown loss"):
        nn.get_loss("hinge_of_doom")


def test_metrics():
    assert nn.accuracy(np.array([[0], [1]]), np.array([[0.2], [0.9]])) == 1.0
    assert nn.accuracy(np.eye(3)[[0, 1]], np.array([[0.9, 0.1, 0], [0.8, 0.1, 0.1]])) == 0.5
    assert nn.accuracy(np.array([2, 0]), np.array([[0, 0, 1.0], [0, 1.0, 0]])) == 0.5
    assert nn.mean_absolute_error(np.array([1.0, 2.0]), np.array([1.5, 1.0])) == 0.75


def test_early_stopping_restores_best():
    x, y = blobs()
    m = small_model()
    stop = nn.EarlyStopping(monitor="loss", patience=0, min_delta=10.0,
                            restore_best_weights=True)
    h = m.fit(x, y, epochs=10, callbacks=[stop])
    assert len(h.history["loss"]) == 2 and stop.stopped_epoch == 1


def test_model_checkpoint_writes_loadable_ir(tmp_path):
    x, y = blobs()
    m = small_model()
    m.fit(x, y, epochs=2, batch_size=100,
          callbacks=[nn.ModelCheckpoint(str(tmp_path / "m-{step}.distill"), save_freq=3)])
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert saved == ["m-3.distill", "m-6.distill"]  # 8 steps in all
    model = distill.load(tmp_path / "m-6.distill")
    assert not np.array_equal(distill.run(model, x), m.predict(x))
    m.fit(x, y, epochs=1, batch_size=100,
          callbacks=[nn.ModelCheckpoint(str(tmp_path / "e{epoch}.distill"))])
    model = distill.load(tmp_path / "e1.distill")
    np.testing.assert_allclose(distill.run(model, x), m.predict(x), rtol=1e-6)


def test_backup_and_restore_resumes_exactly(tmp_path):
    x, y = blobs()
    ref = small_model(seed=3)
    ref_hist = ref.fit(x, y, epochs=4, batch_size=32)
    path = str(tmp_path / "state.ckpt")

    class Crash(nn.Callback):
        def on_train_batch_end(self, step, logs=None):
            if self.model._fit.global_step == 30:
                raise KeyboardInterrupt

    first = small_model(seed=3)
    with pytest.raises(KeyboardInterrupt):
        first.fit(x, y, epochs=4, batch_size=32,
                  callbacks=[nn.BackupAndRestore(path, save_freq=7), Crash()])
    resumed = small_model(seed=99)  # a fresh process would not know the seed's state
    backup = nn.BackupAndRestore(path, save_freq=7)
    hist = resumed.fit(x, y, epochs=4, batch_size=32, callbacks=[backup])
    assert backup.restored_step == 28  # the last multiple of 7 before the crash
    for a, b in zip(ref.get_weights(), resumed.get_weights()):
        assert np.array_equal(a, b)
    assert hist.history == ref_hist.history
    import os
    assert not os.path.exists(path)  # removed once training completed


def test_custom_training_loop_with_tape():
    # The style of the `exp` workload write-up: a hand-written loop with Tape and Adam.
    rng = np.random.default_rng(0)
    model = nn.Sequential([nn.Dense(16, activation="tanh"), nn.Dense(1)], seed=0)
    opt = optim.Adam(0.01)
    x = rng.uniform(0, 1, (256, 1)).astype(np.float32)
    t = np.exp(x)
    model.build((1,))
    first = None
    for _ in range(300):
        with Tape() as tape:
            loss = ad.mean((model(x, training=True) - t) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        first = first or float(loss.numpy())
    assert float(loss.numpy()) < first / 100


def test_to_ir_keeps_names_and_exact_slopes():
    m = nn.Sequential([nn.Normalization([1.0], [2.0], name="norm"),
                       nn.Dense(3, activation="leaky_relu", name="hidden"),
                       nn.LeakyReLU(0.1234567, name="leaky"), nn.Dropout(0.5),
                       nn.Dense(2, activation="softmax", name="out")],
                      input_shape=(1,), name="My Model", seed=0)
    model = m.to_ir(labels=["a", "b"])
    assert model.name == "my_model"
    assert [(n.name, n.op) for n in model.nodes] == [
        ("norm", "normalize"), ("hidden", "dense"), ("hidden_leaky_relu", "leaky_relu"),
        ("leaky", "leaky_relu"), ("out", "dense"), ("out_softmax", "softmax")]
    assert model.nodes[2].attrs["alpha"] == float(np.float32(0.2))
    assert model.nodes[3].attrs["alpha"] == float(np.float32(0.1234567))
    x = np.linspace(-3, 3, 20, dtype=np.float32).reshape(-1, 1)
    np.testing.assert_array_equal(distill.run(model, x), m.predict(x))


def test_conv_and_pooling_layers_shapes_names_and_ir():
    """Keras's padding rules and names; the IR the layers become runs to the same outputs."""
    m = nn.Sequential([nn.Conv2D(4, 3, padding="same", strides=2, activation="relu"),
                       nn.MaxPooling2D(2, padding="same"), nn.Conv2D(6, (1, 2), groups=2),
                       nn.AveragePooling2D((1, 1)), nn.GlobalAveragePooling2D(),
                       nn.Reshape([6, 1]), nn.Conv1D(3, 3, padding="causal", dilation_rate=2),
                       nn.MaxPooling1D(2, strides=1), nn.Conv1D(2, 2, use_bias=False),
                       nn.GlobalMaxPooling1D()], input_shape=(7, 5, 2), seed=0)
    m.build()
    assert [lay.name for lay in m.layers[:4]] == ["conv2d", "max_pooling2d", "conv2d_1",
                                                   "average_pooling2d"]
    assert [lay.output_shape for lay in m.layers] == [
        (4, 3, 4), (2, 2, 4), (2, 1, 6), (2, 1, 6), (6,), (6, 1), (6, 3), (5, 3), (4, 2), (2,)]
    assert m.get_layer("conv2d_1").kernel.shape == (1, 2, 2, 6)
    model = m.to_ir()
    conv = model.node("conv2d")
    # "same" with stride 2 on 7: 4 outputs need 2 zeros, one each side; on 5: 3 need 2 too.
    assert conv.attrs == {"strides": [2, 2], "pads": [1, 1, 1, 1], "groups": 1}
    assert model.node("conv1d").attrs["pads"] == [4, 0]  # causal: all before
    assert model.node("conv1d").attrs["dilation"] == [2]
    # "same" pooling of 4 x 3: the odd zero goes after the width.
    assert model.node("max_pooling2d").attrs == {"pool": [2, 2], "strides": [2, 2],
                                                 "pads": [0, 0, 0, 1]}
    assert set(model.node("conv1d_1").weights) == {"kernel"}
    x = np.random.default_rng(0).normal(size=(9, 7, 5, 2)).astype(np.float32)
    np.testing.assert_array_equal(distill.run(model, x), m.predict(x))
    assert "Conv2D(4, 3x3, relu)" in m.summary(print_fn=None)


def test_transposed_conv_layers_follow_keras_lengths_and_train_their_kernel():
    m = nn.Sequential([nn.Conv2DTranspose(3, 3, strides=2, padding="same", activation="relu"),
                       nn.Conv2DTranspose(2, (2, 3), strides=(3, 1), output_padding=(1, 0)),
                       nn.Reshape([-1, 2]), nn.Conv1DTranspose(2, 2, strides=3, padding="same"),
                       nn.GlobalAveragePooling1D(), nn.Dense(1)], input_shape=(4, 5, 2), seed=0)
    m.build()
    # Keras's lengths: "same" n * stride; valid (n - 1) * stride + window + output padding
    assert [lay.output_shape for lay in m.layers[:4]] == [(8, 10, 3), (24, 12, 2), (288, 2),
                                                          (864, 2)]
    model = m.to_ir()
    assert model.node("conv2d_transpose").attrs == {"strides": [2, 2], "pads": [0, 0, 1, 1]}
    assert model.node("conv2d_transpose_1").attrs["output_padding"] == [1, 0]
    x = np.random.default_rng(0).normal(size=(5, 4, 5, 2)).astype(np.float32)
    np.testing.assert_array_equal(distill.run(model, x), m.predict(x))
    layer = m.layers[1]
    x64 = np.random.default_rng(1).normal(size=(2, 3, 4, 3))

    def loss_of(kernel, bias):
        y = ops.conv_transpose(x64, layer.attrs, {"kernel": kernel, "bias": bias})
        return ad.mean(y ** 2)
    assert ad.check_gradients(loss_of, layer.kernel.data.astype(np.float64),
                              layer.bias.data.astype(np.float64)) < 1e-6


def test_recurrent_layers_train_through_time_and_become_their_ir():
    m = nn.Sequential([nn.LSTM(5, return_sequences=True), nn.GRU(4, go_backwards=True,
                                                                 return_sequences=True),
                       nn.GRU(3, reset_after=False), nn.Reshape([3, 1]),
                       nn.SimpleRNN(2, activation="relu"), nn.Dense(1, activation="sigmoid")],
                      input_shape=(6, 2), seed=0)
    m.build()
    assert [lay.output_shape for lay in m.layers] == [(6, 5), (6, 4), (3,), (3, 1), (2,), (1,)]
    lstm = m.get_layer("lstm")
    assert lstm.bias.data[5:10].tolist() == [1.0] * 5  # the forget gate starts open
    assert m.get_layer("gru").bias.shape == (2, 12) and m.get_layer("gru_1").bias.shape == (9,)
    rk = lstm.recurrent_kernel.data.astype(np.float64)  # orthogonal: rows orthonormal
    np.testing.assert_allclose(rk @ rk.T, np.eye(5), atol=1e-5)
    model = m.to_ir()
    assert model.node("gru").attrs == {"return_sequences": True, "activation": "tanh",
                                       "recurrent_activation": "sigmoid", "go_backwards": True,
                                       "reset_after": True}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6, 2)).astype(np.float32)
    np.testing.assert_array_equal(distill.run(model, x), m.predict(x))
    y = (x[:, :3, 0].sum(axis=1) > x[:, 3:, 1].sum(axis=1)).astype(np.float32)  # needs memory
    m.compile("binary_crossentropy", optim.Adam(0.02), ["accuracy"])
    history = m.fit(x, y, epochs=40, batch_size=16, verbose=0).history
    assert history["accuracy"][-1] >= 0.9 and history["loss"][-1] < history["loss"][0] / 3

    gru, x64 = m.get_layer("gru_1"), x[:2].astype(np.float64)

    def loss_of(kernel, recurrent, bias):
        y = ops.gru(x64[:, :, :1].repeat(4, axis=2), gru.attrs,
                    {"kernel": kernel, "recurrent_kernel": recurrent, "bias": bias})
        return ad.mean(y ** 2)
    assert ad.check_gradients(loss_of, *(w.astype(np.float64) for w in gru.get_weights())) < 1e-6


def test_bidirectional_layers_train_and_become_the_nodes_keras_imports_as():
    m = nn.Sequential([nn.Bidirectional(nn.LSTM(3, return_sequences=True)),
                       nn.Bidirectional(nn.GRU(2, go_backwards=True), "mul", name="both"),
                       nn.Dense(1, activation="sigmoid")], input_shape=(5, 2), seed=0)
    m.build()
    assert [lay.output_shape for lay in m.layers] == [(5, 6), (2,), (1,)]
    assert len(m.get_weights()) == 14 and "both_backward/kernel" in [v.name for v in m.variables]
    model = m.to_ir()
    assert [(n.name, n.op, n.inputs) for n in model.nodes] == [
        ("bidirectional_forward", "lstm", ("input",)),
        ("bidirectional_backward", "lstm", ("input",)),
        ("bidirectional_backward_in_time_order", "reverse", ("bidirectional_backward",)),
        ("bidirectional", "concatenate", ("bidirectional_forward",
                                          "bidirectional_backward_in_time_order")),
        ("both_forward", "gru", ("bidirectional",)), ("both_backward", "gru", ("bidirectional",)),
        ("both", "multiply", ("both_forward", "both_backward")),
        ("dense", "dense", ("both",)), ("dense_sigmoid", "sigmoid", ("dense",))]
    assert model.node("both_forward").attrs["go_backwards"]
    assert "go_backwards" not in model.node("both_backward").attrs
    x = np.random.default_rng(1).normal(size=(64, 5, 2)).astype(np.float32)
    np.testing.assert_array_equal(distill.run(model, x), m.predict(x))
    y = (x[:, 0, 0] > x[:, -1, 1]).astype(np.float32)  # the first and the last step matter
    m.compile("binary_crossentropy", optim.Adam(0.03), ["accuracy"])
    history = m.fit(x, y, epochs=30, batch_size=16, verbose=0).history
    assert history["accuracy"][-1] >= 0.9 and history["loss"][-1] < history["loss"][0] / 3

    layer, x64 = m.layers[0], x[:2].astype(np.float64)

    def loss_of(*weights):  # BPTT through both directions, the reverse and the merge
        f, b = (dict(zip(("kernel", "recurrent_kernel", "bias"), part))
                for part in (weights[:3], weights[3:]))
        y = layer._merged(ops.lstm(x64, layer.forward.attrs, f),
                          ops.lstm(x64, layer.backward.attrs, b),
                          lambda op, xs, attrs: ops.OPS[op].forward(xs, attrs, {}))
        return ad.mean(y ** 2)
    assert ad.check_gradients(loss_of, *(w.astype(np.float64)
                                         for w in layer.get_weights())) < 1e-6
    with pytest.raises(ValueError, match="merge_mode must be one of concat, sum, mul, ave"):
        nn.Bidirectional(nn.GRU(2), "max")
    with pytest.raises(TypeError, match="takes a recurrent layer, got Dense"):
        nn.Bidirectional(nn.Dense(2))


def test_labels_of_shape_n_are_one_column_not_broadcast():
    """(N,) labels for one output per sample mean (N, 1), as in Keras; broadcast against
    (N, 1) predictions they would make an (N, N) loss that barely trains."""
    x = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
    y = (x.sum(axis=1) > 0).astype(np.int64)
    losses = []
    for labels in (y, y.reshape(-1, 1)):
        for loss in ("binary_crossentropy", "mse"):
            m = nn.Sequential([nn.Dense(1, activation="sigmoid")], input_shape=(3,), seed=0)
            m.compile(loss, optim.SGD(0.5))
            losses.append(m.fit(x, labels, epochs=3, batch_size=8, verbose=0).history["loss"])
            losses[-1].append(m.evaluate(x, labels)["loss"])
    assert losses[:2] == losses[2:]


def test_conv_layers_refuse_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="kernel_size must be a positive integer or 2"):
        nn.Conv2D(3, (3, 3, 3))
    with pytest.raises(ValueError, match="groups must be a positive integer dividing"):
        nn.Conv1D(3, 2, groups=2)
    with pytest.raises(ValueError, match="padding must be one of valid, same, got 'causal'"):
        nn.Conv2D(2, 3, padding="causal")
    with pytest.raises(ValueError, match="takes inputs of 2 spatial axes and channels"):
        nn.Sequential([nn.Conv2D(2, 3)], input_shape=(8, 1)).build()
    with pytest.raises(ValueError, match="do not split into 2 groups"):
        nn.Sequential([nn.Conv1D(2, 3, groups=2)], input_shape=(8, 3)).build()
    with pytest.raises(ValueError, match="does not fit an axis"):
        nn.Sequential([nn.MaxPooling1D(9)], input_shape=(8, 3)).build()


def test_a_small_cnn_learns_and_its_gradients_are_the_central_differences():
    rng = np.random.default_rng(0)
    # Class 1: a bright vertical bar somewhere; class 0: a horizontal one.
    x = np.zeros((64, 6, 6, 1), np.float32)
    y = np.arange(64) % 2
    for i, at in enumerate(rng.integers(0, 6, 64)):
        x[i, :, at] = 1 if y[i] else 0
        x[i, at, :] = 0 if y[i] else 1
    x += rng.normal(0, 0.1, x.shape).astype(np.float32)
    m = nn.Sequential([nn.Conv2D(4, 3, activation="relu"), nn.MaxPooling2D(2),
                       nn.Flatten(), nn.Dense(1, activation="sigmoid")],
                      input_shape=(6, 6, 1), seed=1)
    m.compile("binary_crossentropy", optim.Adam(0.05), ["accuracy"])
    history = m.fit(x, y, epochs=20, batch_size=16, verbose=0).history
    assert history["accuracy"][-1] == 1.0 and history["loss"][-1] < history["loss"][0] / 10
    conv = m.get_layer("conv2d")
    x64 = x[:4].astype(np.float64)

    def loss_of(kernel, bias):
        return ad.mean(ops.conv(x64, conv.attrs, {"kernel": kernel, "bias": bias}) ** 2)
    assert ad.check_gradients(loss_of, conv.kernel.data.astype(np.float64),
                              conv.bias.data.astype(np.float64)) < 1e-6


def test_tensorflow_gradients_agree_on_a_small_mlp():
    from conftest import require
    tf = require("tensorflow")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5)).astype(np.float32)
    labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)]
    w1, b1 = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    w2, b2 = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    tv = [tf.Variable(a) for a in (w1, b1, w2, b2)]
    with tf.GradientTape() as tape:
        h = tf.nn.leaky_relu(x @ tv[0] + tv[1], 0.2)
        loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels, h @ tv[2] + tv[3]))
    expected = [g.numpy() for g in tape.gradient(loss, tv)]
    dv = [Variable(a) for a in (w1, b1, w2, b2)]
    with Tape() as tape:
        h = ad.leaky_relu(ad.Tensor(x) @ dv[0] + dv[1], 0.2)
        loss = ad.mean(ad.softmax_cross_entropy(h @ dv[2] + dv[3], labels))
    for g, e in zip(tape.gradient(loss, dv), expected):
        np.testing.assert_allclose(g.numpy(), e, atol=1e-5, rtol=1e-5)
