"""The autodiff core: every primitive and fused op against central differences (float64),
broadcasting, ties, fan-out, dtypes, and the tape's contract."""

from math import prod

import numpy as np
import pytest

import distill.autodiff as ad
from distill import ops
from distill.autodiff import Tape, Tensor, Variable, check_gradients

rng = np.random.default_rng(1234)


def r(*shape, low=-2.0, high=2.0):
    return rng.uniform(low, high, shape)


def pos(*shape):
    return rng.uniform(0.5, 2.0, shape)


onehot = np.eye(5)[[0, 3, 1, 4]]
W234, W34, W27, W35, W45, B32 = r(4, 2, 3), r(3, 4), r(2, 7), r(3, 5), r(4, 5), r(3, 2) > 0
W2324, W254, W244 = r(2, 3, 2, 4), r(2, 5, 4), r(2, 4, 4)

# (name, function of Tensors, input arrays). Shapes include broadcasting and keepdims.
CASES = [
    ("add", lambda a, b: a + b, [r(3, 4), r(4)]),
    ("add_bcast_both", lambda a, b: ad.add(a, b), [r(3, 1), r(1, 4)]),
    ("add_scalar_tensor", lambda a, b: a + b, [r(2, 3), r()]),
    ("sub", lambda a, b: a - b, [r(2, 3, 4), r(3, 1)]),
    ("rsub_const", lambda a: 3.0 - a, [r(3)]),
    ("mul", lambda a, b: a * b, [r(3, 4), r(1, 4)]),
    ("mul_same", lambda a: a * a, [r(5)]),
    ("div", lambda a, b: a / b, [r(3, 4), pos(4)]),
    ("rdiv_const", lambda a: 1.0 / a, [pos(2, 2)]),
    ("neg", lambda a: -a, [r(3, 2)]),
    ("pow_const", lambda a: a ** 3, [r(4)]),
    ("pow_both", lambda a, b: ad.pow(a, b), [pos(3, 2), r(2)]),
    ("matmul_2d", lambda a, b: a @ b, [r(3, 4), r(4, 5)]),
    ("matmul_vec_mat", lambda a, b: a @ b, [r(4), r(4, 3)]),
    ("matmul_mat_vec", lambda a, b: a @ b, [r(3, 4), r(4)]),
    ("matmul_vec_vec", lambda a, b: a @ b, [r(4), r(4)]),
    ("matmul_batched_bcast", lambda a, b: a @ b, [r(2, 3, 4), r(4, 2)]),
    ("affine", lambda a, b, c: ad.affine(a, b, c), [r(3, 4), r(4, 5), r(5)]),
    ("affine_3d", lambda a, b, c: ad.affine(a, b, c), [r(2, 3, 4), r(4, 5), r(5)]),
    ("exp", lambda a: ad.exp(a), [r(3, 3)]),
    ("log", lambda a: ad.log(a), [pos(3, 3)]),
    ("tanh", lambda a: ad.tanh(a), [r(3, 3)]),
    ("maximum", lambda a, b: ad.maximum(a, b), [r(3, 4), r(4)]),
    ("where", lambda a, b: ad.where(np.arange(4) % 2 == 0, a, b), [r(3, 4), r(3, 1)]),
    ("sum_all", lambda a: ad.sum(a), [r(3, 4)]),
    ("sum_axis", lambda a: ad.sum(a, axis=1) * np.arange(3.0), [r(3, 4)]),
    ("sum_axes_keepdims", lambda a: ad.sum(a, axis=(0, 2), keepdims=True) * a,
     [r(2, 3, 4)]),
    ("mean_axis", lambda a: ad.mean(a, axis=0) ** 2, [r(3, 4)]),
    ("mean_keepdims", lambda a: a - ad.mean(a, axis=-1, keepdims=True), [r(3, 4)]),
    ("max_axis", lambda a: ad.max(a, axis=1) * np.arange(1.0, 4.0), [r(3, 4)]),
    ("max_keepdims", lambda a: a * ad.max(a, axis=0, keepdims=True), [r(3, 4)]),
    ("reshape", lambda a: ad.reshape(a, (4, 3)) @ np.arange(3.0), [r(2, 6)]),
    ("transpose", lambda a: ad.transpose(a) @ np.arange(3.0), [r(3, 4)]),
    ("transpose_axes", lambda a: ad.transpose(a, (2, 0, 1)) * W234, [r(2, 3, 4)]),
    ("getitem_slice", lambda a: a[1:, ::2] * 2.0, [r(3, 4)]),
    ("getitem_repeated", lambda a: a[[0, 0, 2]] * W34, [r(3, 4)]),
    # A window table (distinct positions per column, added back column by column) and an
    # index with a position twice in one column (add.at).
    ("take_windows", lambda a: ad.take(a, [[0, 1], [1, 2], [2, 3]], axis=1) * W2324,
     [r(2, 4, 4)]),
    ("take_repeated", lambda a: ad.take(a, [[0, 1], [0, 3]], axis=1) * W2324[:, :2],
     [r(2, 4, 4)]),
    ("scatter_windows", lambda a: ad.scatter(a, [[0, 1], [1, 2], [2, 3]], 5, axis=1) * W254,
     [r(2, 3, 2, 4)]),
    ("scatter_repeated", lambda a: ad.scatter(a, [[0, 0], [0, 3]], 4, axis=1) * W244,
     [r(2, 2, 2, 4)]),
    ("concatenate", lambda a, b: ad.concatenate([a, b, a], axis=1) * W27, [r(2, 3), r(2, 1)]),
    ("cast", lambda a: ad.cast(a, np.float64) * 2.0, [r(3)]),
    ("sigmoid", lambda a: ad.sigmoid(a), [r(3, 4, low=-8, high=8)]),
    ("relu", lambda a: ad.relu(a), [r(3, 4)]),
    ("leaky_relu", lambda a: ad.leaky_relu(a, 0.2), [r(3, 4)]),
    ("softmax", lambda a: ad.softmax(a) * W35, [r(3, 5)]),
    ("softmax_axis0", lambda a: ad.softmax(a, axis=0) * W35, [r(3, 5)]),
    ("log_softmax", lambda a: ad.log_softmax(a) * W45, [r(4, 5)]),
    ("leaky_relu_steep", lambda a: ad.leaky_relu(a, 1.5), [r(3, 4)]),
    ("softmax_ce", lambda a: ad.softmax_cross_entropy(a, onehot), [r(4, 5)]),
    ("softmax_ce_mean", lambda a: ad.softmax_cross_entropy(a, onehot * 0.7, reduction="mean"),
     [r(4, 5)]),
    ("mean_squared_error", lambda a: ad.mean_squared_error(a, W35), [r(3, 5)]),
    ("mean_squared_error_bcast", lambda a: ad.mean_squared_error(a, W35), [r(3, 1)]),
    ("half_sum_squared_error", lambda a: ad.half_sum_squared_error(a, W35), [r(3, 5)]),
    ("sigmoid_ce", lambda a: ad.sigmoid_cross_entropy(a, B32), [r(3, 2)]),
]


@pytest.mark.parametrize("name,fn,arrays", CASES, ids=[c[0] for c in CASES])
def test_gradient_matches_central_difference(name, fn, arrays):
    assert check_gradients(fn, *arrays) < 1e-5


def test_every_primitive_and_composite_is_covered():
    covered = {c[0].split("_")[0] for c in CASES} | {c[0] for c in CASES}
    for op in ["add", "sub", "mul", "div", "neg", "pow", "matmul", "affine", "exp", "log", "tanh",
               "maximum", "where", "sum", "mean", "max", "reshape", "transpose", "getitem",
               "take", "scatter", "concatenate", "sigmoid", "relu", "leaky_relu", "softmax",
               "log_softmax"]:
        assert op in covered, op


def test_checker_catches_a_wrong_gradient():
    def broken(a):
        out = ad.exp(a)
        return ad._record(out.data, (a,), lambda g: (2 * g * out.data,))  # wrong by 2x
    with pytest.raises(AssertionError, match="differs"):
        check_gradients(broken, r(3))


def grad_of(fn, *arrays):
    xs = [Tensor(np.array(a, dtype=np.float64)) for a in arrays]
    with Tape() as tape:
        tape.watch(xs)
        out = fn(*xs)
    return [g.numpy() for g in tape.gradient(out, xs)]


def test_relu_and_maximum_ties():
    # relu's subgradient at 0 is 0 (the frameworks' convention).
    assert grad_of(ad.relu, np.zeros(3))[0].tolist() == [0, 0, 0]
    # maximum splits a tie evenly, which is what a central difference measures ...
    ga, gb = grad_of(ad.maximum, np.array([1.0, 2.0, 0.0]), np.array([1.0, 1.0, 0.0]))
    assert ga.tolist() == [0.5, 1.0, 0.5] and gb.tolist() == [0.5, 0.0, 0.5]
    assert check_gradients(ad.maximum, np.zeros(3), np.zeros(3)) < 1e-9
    # ... so maximum(x, x) = x keeps derivative 1, and max over an axis splits between equals.
    assert grad_of(lambda a: ad.maximum(a, a), np.zeros(2))[0].tolist() == [1, 1]
    assert grad_of(lambda a: ad.max(a, axis=0), np.array([3.0, 3.0, 1.0]))[0].tolist() == [
        0.5, 0.5, 0.0]
    assert check_gradients(lambda a: ad.leaky_relu(a, 0.2), np.array([-1.0, 1.0])) < 1e-9


def test_diamond_graph_accumulates_both_paths():
    x = Variable(np.array(3.0, dtype=np.float64))
    with Tape() as tape:
        a = x * 2.0
        b = ad.exp(x)
        y = a * b  # x reaches y along two paths
    (g,) = tape.gradient(y, [x])
    assert g.numpy() == pytest.approx(2 * np.exp(3.0) + 6.0 * np.exp(3.0))


def test_fan_out_of_an_intermediate():
    x = Variable(np.array([1.0, 2.0]))
    with Tape() as tape:
        h = x * x
        y = ad.sum(h + h * 3.0)
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), 8 * np.array([1.0, 2.0]))


def test_gradient_structure_follows_sources():
    a, b = Variable([1.0, 2.0]), Variable([3.0])
    unused = Variable([0.0])
    with Tape(persistent=True) as tape:
        y = ad.sum(a * b)
    assert isinstance(tape.gradient(y, a), Tensor)
    ga, gb = tape.gradient(y, [a, b])
    assert ga.numpy().tolist() == [3, 3] and gb.numpy().tolist() == [3]
    d = tape.gradient(y, {"a": a, "nested": (b, unused)})
    assert set(d) == {"a", "nested"} and d["nested"][1] is None
    assert isinstance(d["nested"], tuple)


def test_tape_is_single_use_unless_persistent():
    x = Variable([1.0])
    with Tape() as tape:
        y = x * 2.0
    tape.gradient(y, x)
    with pytest.raises(RuntimeError, match="persistent"):
        tape.gradient(y, x)


def test_nothing_recorded_outside_a_tape_or_for_constants():
    x = Variable([1.0])
    y = x * 2.0
    assert not y.requires_grad
    c = Tensor([1.0])
    with Tape() as tape:
        z = c * 2.0
    assert not z.requires_grad and tape._ops == []


def test_output_gradients_seed():
    x = Variable([1.0, 2.0])
    with Tape() as tape:
        y = x * 3.0
    assert tape.gradient(y, x, output_gradients=[1.0, -1.0]).numpy().tolist() == [3, -3]


def test_dtypes_float32_by_default_float64_kept_no_upcast():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(np.zeros(2)).dtype == np.float64
    w = Variable(np.ones((3, 2), np.float32))
    with Tape() as tape:
        y = ad.sum(ad.sigmoid(Tensor(np.ones((4, 3), np.float32)) @ w * 0.5 + 1.0) ** 2)
    assert y.dtype == np.float32
    assert tape.gradient(y, w).dtype == np.float32
    w64 = Variable(np.ones(2))
    with Tape() as tape:
        y = ad.sum(w64 * 2.0)
    assert tape.gradient(y, w64).dtype == np.float64


def test_fused_ops_equal_their_composition():
    x = r(4, 5)
    compositions = {
        "sigmoid": (ad.sigmoid, lambda a: 1.0 / (1.0 + ad.exp(-a))),
        "relu": (ad.relu, lambda a: ad.where(a.data > 0, a, 0.0)),
        "leaky_relu": (lambda a: ad.leaky_relu(a, 0.3), lambda a: ad.where(a.data > 0, a, a * 0.3)),
        "softmax": (ad.softmax, lambda a: ad.exp(a) / ad.sum(ad.exp(a), -1, keepdims=True)),
        "log_softmax": (ad.log_softmax,
                        lambda a: a - ad.log(ad.sum(ad.exp(a), -1, keepdims=True))),
        "softmax_ce": (lambda a: ad.softmax_cross_entropy(a, np.eye(5)[[1, 2, 0, 4]]),
                       lambda a: -ad.sum(ad.log_softmax(a) * np.eye(5)[[1, 2, 0, 4]], -1)),
        "sigmoid_ce": (lambda a: ad.sigmoid_cross_entropy(a, x > 0),
                       lambda a: -(ad.log(ad.sigmoid(a)) * (x > 0)
                                   + ad.log(1.0 - ad.sigmoid(a)) * (x <= 0))),
    }
    for name, (fused, composed) in compositions.items():
        weights = r(*fused(Tensor(x)).shape)
        gf = grad_of(lambda a, f=fused, w=weights: f(a) * w, x)[0]
        gc = grad_of(lambda a, f=composed, w=weights: f(a) * w, x)[0]
        np.testing.assert_allclose(fused(Tensor(x)).numpy(), composed(Tensor(x)).numpy(),
                                   rtol=1e-12, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(gf, gc, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_squared_errors_equal_their_composition(dtype):
    # Forward rounded exactly as the composition; the gradient too (doubling is exact).
    composed = {
        ad.mean_squared_error: lambda p, t: ad.mean((p - t) * (p - t)),
        ad.half_sum_squared_error: lambda p, t: ad.sum((p - t) * (p - t)) * (0.5 / p.shape[0]),
    }
    for shape, target_shape in [((100, 1), (100, 1)), ((7, 3), (7, 3)), ((5, 4), (4,)),
                                ((64,), (64,))]:
        pred, target = r(*shape).astype(dtype), r(*target_shape).astype(dtype)
        for fused, plain in composed.items():
            (gf,), (gc,) = (grad_of(lambda p, f=f, t=target: f(p, t), pred)
                            for f in (fused, plain))
            yf, yc = fused(Tensor(pred), target), plain(Tensor(pred), Tensor(target))
            assert yf.dtype == dtype and yf.numpy() == yc.numpy(), fused.__name__
            np.testing.assert_array_equal(gf, gc, err_msg=fused.__name__)


def test_mean_cross_entropy_equals_the_mean_of_per_sample_ones():
    x, labels = r(6, 5), np.eye(5)[[0, 3, 1, 4, 4, 2]] * 0.8  # labels need not sum to 1
    fused = lambda a: ad.softmax_cross_entropy(a, labels, reduction="mean")  # noqa: E731
    plain = lambda a: ad.mean(ad.softmax_cross_entropy(a, labels))  # noqa: E731
    assert fused(Tensor(x)).numpy() == pytest.approx(plain(Tensor(x)).numpy(), rel=1e-14)
    np.testing.assert_allclose(grad_of(fused, x)[0], grad_of(plain, x)[0], rtol=1e-14)
    with pytest.raises(ValueError, match="reduction"):
        ad.softmax_cross_entropy(x, labels, reduction="sum")


SPECIALS = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-38, -1e-38, 3e38, -3e38,
            88.7, -88.7, -104.0, 1.0, -1.0, 17.0, -17.0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_forwards_are_the_reference_formulas_bit_for_bit(dtype):
    # These forwards define what exported code must compute: a faster rewrite must not move a
    # single bit (NaN payloads aside).
    def sigmoid(x):
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)

    def leaky(x, alpha):
        return np.where(x > 0, x, x * np.asarray(alpha, x.dtype))

    def softmax(x, axis):
        e = np.exp(x - np.max(x, axis=axis, keepdims=True))
        return e / np.sum(e, axis=axis, keepdims=True)

    def same(got, want):
        assert got.dtype == want.dtype and got.shape == want.shape
        nan = np.isnan(want)
        assert np.array_equal(np.isnan(got), nan)
        bits = f"i{want.itemsize}"
        assert np.array_equal(got[~nan].view(bits), want[~nan].view(bits))

    gen = np.random.default_rng(7)
    with np.errstate(all="ignore"):
        for scale in (1.0, 30.0, 1e30):
            x = np.concatenate([gen.standard_normal(20000) * scale, SPECIALS]).astype(dtype)
            same(ad.sigmoid(x).numpy(), sigmoid(x))
            same(ad.relu(x).numpy(), np.maximum(x, 0))
            for alpha in (0.2, float(np.float32(0.2)), 0.3, 1.0, 1e-30, 0.0, -0.5, 2.0):
                same(ad.leaky_relu(x, alpha).numpy(), leaky(x, alpha))
            z = (gen.standard_normal((40, 7)) * scale).astype(dtype)
            for axis in (-1, 0):
                same(ad.softmax(z, axis).numpy(), softmax(z, axis))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_losses_stay_finite_for_huge_logits(dtype):
    logits = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 0.0]], dtype)
    labels = np.eye(3, dtype=dtype)[[1, 1]]
    for fn in (lambda a: ad.softmax_cross_entropy(a, labels),
               lambda a: ad.sigmoid_cross_entropy(a, labels),
               lambda a: ad.log_softmax(a), lambda a: ad.softmax(a), lambda a: ad.sigmoid(a)):
        x = Variable(logits)
        with np.errstate(over="raise", invalid="raise", divide="raise"), Tape() as tape:
            y = fn(x)
        g = tape.gradient(y, x).numpy()
        assert np.isfinite(y.numpy()).all() and np.isfinite(g).all()
    ce = ad.softmax_cross_entropy(Tensor(logits), labels).numpy()
    assert ce[0] == pytest.approx(2000.0) and ce[1] == pytest.approx(0.0)


def test_user_function_with_gradient_checker():
    # The checker is for users' own functions too: a tiny MLP written by hand.
    def mlp(x, w1, w2):
        return ad.mean(ad.tanh(x @ w1) @ w2)
    assert check_gradients(mlp, r(5, 3), r(3, 4), r(4, 2)) < 1e-6


def _w(*shape):
    """Weights for the recurrent cases: spread over [-0.8, 0.8], deterministic."""
    return np.linspace(-0.8, 0.8, prod(shape)).reshape(shape)[..., ::-1].copy()


# Every op of the registry that a model trains through, by its attributes and weights: the
# activations' hand-written derivatives and the merges' compositions.
OP_GRADIENT_CASES = {
    "elu": ({"alpha": 0.7}, {}), "selu": ({}, {}), "gelu": ({}, {}), "gelu_tanh": ({}, {}),
    "silu": ({}, {}), "softplus": ({}, {}), "softsign": ({}, {}), "hard_sigmoid": ({}, {}),
    "exponential": ({}, {}),
    "clipped_relu": ({"threshold": 0.3, "negative_slope": 0.2, "max_value": 1.1}, {}),
    "prelu": ({}, {"alpha": np.array([[0.1, 0.5, 2.0, -0.3]])}),
    "layer_norm": ({"axis": 1, "epsilon": 1e-3}, {"gamma": np.arange(1.0, 5.0),
                                                   "beta": np.arange(4.0)}),
    "softmax": ({"axis": 0}, {}),
    "conv": ({"strides": [1, 2], "pads": [1, 0, 0, 1], "groups": 2, "dilation": [2, 1]},
             {"kernel": np.linspace(-1, 1, 2 * 2 * 2 * 4).reshape(2, 2, 2, 4),
              "bias": np.arange(4.0)}),
    "conv_transpose": ({"strides": [2, 1], "pads": [1, 0, 0, 1], "dilation": [1, 2],
                        "output_padding": [1, 0]},
                       {"kernel": np.linspace(-1, 1, 2 * 2 * 4 * 3).reshape(2, 2, 4, 3),
                        "bias": np.arange(3.0)}),
    "max_pool": ({"pool": [2, 2], "strides": [1, 1], "pads": [1, 0, 0, 1]}, {}),
    "reverse": ({}, {}), "transpose": ({"perm": [1, 0]}, {}),
    # recurrent ops over (2 steps, 4 features): backpropagation through time
    "simple_rnn": ({"return_sequences": True}, {"kernel": _w(4, 3), "recurrent_kernel": _w(3, 3),
                                                "bias": _w(3)}),
    "lstm": ({"return_sequences": True, "go_backwards": True},
             {"kernel": _w(4, 8), "recurrent_kernel": _w(2, 8), "bias": _w(8)}),
    "gru": ({"return_sequences": False, "reset_after": True},
            {"kernel": _w(4, 6), "recurrent_kernel": _w(2, 6), "bias": _w(2, 6)}),
    "gru:reset_before": ({"return_sequences": True, "reset_after": False},
                         {"kernel": _w(4, 6), "recurrent_kernel": _w(2, 6), "bias": _w(6)}),
    "avg_pool": ({"pool": [2, 2], "strides": [1, 2], "pads": [1, 1, 0, 1]}, {}),
    "zero_pad": ({"pads": [1, 0, 2, 1]}, {}),
    "crop": ({"crops": [1, 0, 2, 1]}, {}), "upsample": ({"size": [2, 3]}, {}),
    "upsample:linear": ({"size": [3, 2], "interpolation": "linear"}, {}),
    "global_avg_pool": ({}, {}), "global_max_pool": ({}, {}),
}


WINDOWED = ("conv", "conv_transpose", "max_pool", "avg_pool", "zero_pad", "crop", "upsample",
            "global_avg_pool", "global_max_pool")


@pytest.mark.parametrize("op_name", sorted(OP_GRADIENT_CASES) + list(ops.MERGES))
def test_op_gradients_match_central_difference(op_name):
    opdef = ops.OPS[op_name.split(":")[0]]  # "op:variant" names a second case of an op
    rng = np.random.default_rng(3)
    # away from the kinks (0, the threshold, the cap, +-3), where a difference quotient is wrong
    shape = (2, 4, 3, 4) if opdef.name in WINDOWED else (3, 2, 4)  # 2-D and channels, or not
    x = rng.uniform(0.05, 2.5, size=shape) * rng.choice([-1, 1], size=shape)
    if op_name in ops.MERGES:
        attrs = {"axis": 1} if op_name == "concatenate" else {}
        count = 2 if op_name == "subtract" else 3
        xs = [x + k for k in range(count)]
        assert check_gradients(lambda *t: ops.forward(opdef, list(t), attrs, {}) * 1.5,
                               *xs) < 1e-5
        return
    attrs, weights = OP_GRADIENT_CASES[op_name]
    x = np.where(np.abs(x - 0.3) < 0.05, 0.5, x)
    x = np.where(np.abs(np.abs(x) - 3) < 0.05, 2.0, x)
    out = ops.output_shape(opdef, [x.shape[1:]], attrs, weights)
    spread = np.linspace(-1.0, 1.5, len(x) * prod(out)).reshape(len(x), *out)  # one each
    assert check_gradients(lambda t: ops.forward(opdef, [t], attrs, weights) * spread, x) < 1e-5
