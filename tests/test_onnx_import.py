"""ONNX import: models written as PyTorch's exporter writes them (NCHW, Gemm with transB, the
Shape -> Gather -> Unsqueeze -> Concat -> Reshape flatten, BatchNormalization, Constant
nodes) imported and compared with onnxruntime; distill's own ONNX exports imported back;
every unsupported op listed at once; an imported CNN compiled as C; the command line."""

import subprocess
import sys

import numpy as np
import onnx  # the test extra installs onnx and onnxruntime: a missing one is a failure
import onnxruntime as ort
import pytest
from conftest import graph_models
from onnx import TensorProto, helper, numpy_helper

from distill import codegen, ir
from distill.backends.onnx import import_onnx
from distill.errors import DistillError

RNG = np.random.default_rng(0)


def w(*shape, scale=0.5):
    return (RNG.normal(size=shape) * scale).astype(np.float32)


class Builder:
    """An ONNX graph built node by node, named as torch.onnx.export names things."""

    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def init(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def const(self, value):
        """A Constant node, as PyTorch writes for literals."""
        self.count += 1
        out = f"/Constant_{self.count}_output_0"
        self.nodes.append(helper.make_node("Constant", [], [out], name=f"/Constant_{self.count}",
                                           value=numpy_helper.from_array(np.asarray(value))))
        return out

    def op(self, op_type, inputs, name=None, outputs=1, **attrs):
        self.count += 1
        name = name or f"/{op_type}_{self.count}"
        outs = [f"{name}_output_{k}" for k in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def conv(self, x, name, cin, cout, k, bias=True, **attrs):
        kernel = k if isinstance(k, tuple) else (k, k)
        group = attrs.get("group", 1)
        inputs = [x, self.init(f"{name}.weight", w(cout, cin // group, *kernel))]
        if bias:
            inputs.append(self.init(f"{name}.bias", w(cout)))
        return self.op("Conv", inputs, f"/{name}/Conv", kernel_shape=list(kernel), **attrs)

    def batch_norm(self, x, name, c):
        inputs = [x, self.init(f"{name}.weight", w(c) + 1), self.init(f"{name}.bias", w(c)),
                  self.init(f"{name}.running_mean", w(c)),
                  self.init(f"{name}.running_var", np.abs(w(c)) + 0.5)]
        return self.op("BatchNormalization", inputs, f"/{name}/BatchNormalization",
                       epsilon=1e-5, momentum=0.9)

    def linear(self, x, name, cin, cout):
        return self.op("Gemm", [x, self.init(f"{name}.weight", w(cout, cin)),
                                self.init(f"{name}.bias", w(cout))], f"/{name}/Gemm",
                       alpha=1.0, beta=1.0, transB=1)

    def torch_flatten(self, x):
        """x.view(x.size(0), -1) as PyTorch exports it."""
        shape = self.op("Shape", [x])
        batch = self.op("Gather", [shape, self.const(np.array(0, np.int64))], axis=0)
        batch = self.op("Unsqueeze", [batch, self.const(np.array([0], np.int64))])
        target = self.op("Concat", [batch, self.const(np.array([-1], np.int64))], axis=0)
        return self.op("Reshape", [x, target])

    def model(self, inputs, outputs, opset=13, batch="batch_size"):
        graph = helper.make_graph(
            self.nodes, "torch_jit",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, *s]) for n, s in inputs],
            [helper.make_empty_tensor_value_info(n) for n in outputs],
            initializer=self.inits)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="pytorch", producer_version="2.3.0")
        proto.ir_version = 8
        return with_output_types(proto)


def with_output_types(proto):
    """`proto` with its outputs' types filled in by shape inference, checked."""
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(proto).graph.value_info}
    for out in proto.graph.output:
        out.CopyFrom(inferred[out.name])
    onnx.checker.check_model(proto)
    return proto


def session(proto):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def assert_matches_onnxruntime(proto, model, batch=16):
    xs = [RNG.normal(size=(batch, *shape)).astype(np.float32) for _, shape in model.inputs]
    names = [i.name for i in proto.graph.input if i.name not in
             {t.name for t in proto.graph.initializer}]
    want = session(proto).run(None, dict(zip(names, xs)))
    got = ir.run(model, xs if len(xs) > 1 else xs[0], split=True)
    assert len(want) == len(got)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def lenet():
    b = Builder()
    x = b.conv("input", "conv1", 1, 6, 3, pads=[1, 1, 1, 1])
    x = b.batch_norm(x, "bn1", 6)
    x = b.op("Relu", [x], "/relu1/Relu")
    x = b.op("MaxPool", [x], "/pool1/MaxPool", kernel_shape=[2, 2], strides=[2, 2])
    x = b.conv(x, "conv2", 6, 8, 3)
    x = b.op("Relu", [x], "/relu2/Relu")
    x = b.op("AveragePool", [x], "/pool2/AveragePool", kernel_shape=[2, 2], strides=[2, 2])
    x = b.torch_flatten(x)
    x = b.op("Relu", [b.linear(x, "fc1", 8 * 2 * 2, 16)])
    x = b.linear(x, "fc2", 16, 10)
    b.op("Softmax", [x], "output", axis=1)
    return b.model([("input", (1, 12, 12))], ["output_output_0"])


def test_lenet_matches_onnxruntime_with_no_transpose_and_batchnorm_folded():
    proto = lenet()
    model = import_onnx(proto)
    assert_matches_onnxruntime(proto, model)
    used = [n.op for n in model.nodes]
    # the input (1, 12, 12) to channels last is a reshape (one channel); the flatten feeds a
    # dense whose rows were permuted; the batch normalization is in the first conv
    assert "transpose" not in used and "normalize" not in used, used
    assert used.count("conv") == 2 and used.count("dense") == 2


def test_mlp_of_matmul_and_add_becomes_dense_layers():
    b = Builder()
    x = b.op("MatMul", ["x", b.init("fc1.weight", w(5, 7))])
    x = b.op("Add", [x, b.init("fc1.bias", w(7))])
    x = b.op("Tanh", [x])
    x = b.op("MatMul", [x, b.init("fc2.weight", w(7, 3))])
    x = b.op("Add", [b.init("fc2.bias", w(3)), x])
    b.op("Sigmoid", [x], "y")
    proto = b.model([("x", (5,))], ["y_output_0"], opset=17)
    model = import_onnx(proto)
    assert [n.op for n in model.nodes] == ["dense", "tanh", "dense", "sigmoid"]
    assert_matches_onnxruntime(proto, model)


def test_residual_block_with_add_and_channel_concat():
    b = Builder()
    stem = b.op("Relu", [b.conv("x", "stem", 3, 4, 3, pads=[1, 1, 1, 1])])
    y = b.op("Relu", [b.batch_norm(b.conv(stem, "c1", 4, 4, 3, bias=False,
                                          pads=[1, 1, 1, 1]), "bn1", 4)])
    y = b.batch_norm(b.conv(y, "c2", 4, 4, 3, bias=False, pads=[1, 1, 1, 1]), "bn2", 4)
    y = b.op("Relu", [b.op("Add", [y, stem])])
    side = b.conv(stem, "side", 4, 2, 1, group=2)
    cat = b.op("Concat", [y, side], axis=1)
    scaled = b.op("Mul", [cat, b.init("scale", w(6, 1, 1) + 2)])
    shifted = b.op("Sub", [scaled, b.const(np.float32(0.25))])
    pooled = b.op("GlobalAveragePool", [shifted])
    flat = b.op("Flatten", [pooled], axis=1)
    b.linear(flat, "fc", 6, 3)
    proto = b.model([("x", (3, 8, 7))], ["/fc/Gemm_output_0", cat], opset=15)
    model = import_onnx(proto)
    assert_matches_onnxruntime(proto, model)
    # one transpose into channels last, one out of it for the concat output, none between
    assert [n.op for n in model.nodes].count("transpose") == 2


def test_pooling_padding_and_resizing():
    b = Builder()
    x = b.op("Pad", ["x", b.const(np.array([0, 0, 1, 0, 0, 0, 0, 2], np.int64))],
             mode="constant")
    x = b.op("MaxPool", [x], kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1])
    a = b.op("AveragePool", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
    c = b.op("AveragePool", [x], kernel_shape=[2, 3], strides=[1, 2], pads=[0, 1, 1, 1],
             count_include_pad=0)
    up = b.op("Resize", [a, "", b.init("scales", np.array([1, 1, 2, 3], np.float32))],
              mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    # sizes as PyTorch computes them: the batch and channels from Shape, the rest constant
    kept = b.op("Slice", [b.op("Shape", [c]), b.const(np.array([0], np.int64)),
                          b.const(np.array([2], np.int64))])
    sizes = b.op("Concat", [kept, b.const(np.array([2 * 4, 3 * 4], np.int64))], axis=0)
    lin = b.op("Resize", [c, "", "", sizes], mode="linear",
               coordinate_transformation_mode="half_pixel")
    half = b.op("Resize", [a, "", b.init("twice", np.array([1, 1, 2, 2], np.float32))],
                mode="nearest")  # half_pixel, round_prefer_floor: the same repetition
    cut = b.op("Slice", [up, b.const(np.array([1, 2], np.int64)),
                         b.const(np.array([-1, 100], np.int64)),
                         b.const(np.array([2, 3], np.int64))])
    g = b.op("GlobalMaxPool", [cut])
    proto = b.model([("x", (2, 6, 5))], [lin, half, g], opset=13)
    model = import_onnx(proto)
    assert_matches_onnxruntime(proto, model)


def test_conv1d_transposed_conv_and_layer_norm():
    b = Builder()
    x = b.conv("x", "c1", 4, 6, (3,), strides=[2], group=2, auto_pad="SAME_UPPER")
    x = b.conv(x, "c2", 6, 6, (2,), dilations=[2], pads=[2, 1])
    x = b.op("LeakyRelu", [x], alpha=0.1)
    x = b.op("ConvTranspose", [x, b.init("t.weight", w(6, 3, 4)), b.init("t.bias", w(3))],
             kernel_shape=[4], strides=[3], pads=[1, 2], output_padding=[1])
    x = b.op("Transpose", [x], perm=[0, 2, 1])  # (N, L, C): the layer norm over C
    x = b.op("LayerNormalization", [x, b.init("ln.weight", w(3) + 1),
                                    b.init("ln.bias", w(3))], axis=-1, epsilon=1e-5)
    x = b.op("Softmax", [x], axis=1)
    proto = b.model([("x", (4, 11))], [x], opset=17)
    model = import_onnx(proto)
    assert_matches_onnxruntime(proto, model)


def test_activations():
    b = Builder()
    names = []
    x = b.linear("x", "fc", 4, 6)
    for op_type, inputs, attrs in [
            ("LeakyRelu", [], {"alpha": 0.3}), ("Elu", [], {"alpha": 0.7}), ("Selu", [], {}),
            ("Softplus", [], {}), ("Softsign", [], {}), ("Sigmoid", [], {}), ("Tanh", [], {}),
            ("HardSigmoid", [], {"alpha": 1 / 6, "beta": 0.5}), ("Exp", [], {}),
            ("Clip", [np.float32(0), np.float32(0.5)], {}), ("Clip", [np.float32(0)], {}),
            ("PRelu", ["slope"], {}), ("Gelu", [], {}), ("Gelu", [], {"approximate": "tanh"}),
            ("ThresholdedRelu", [], {"alpha": 0.2}), ("Identity", [], {}),
            ("Dropout", [], {})]:
        extra = [b.init(f"slope{len(names)}", np.abs(w(6))) if i == "slope" else b.const(i)
                 for i in inputs]
        names.append(b.op(op_type, [x, *extra], **attrs))
    names.append(b.op("Max", [names[0], names[1], names[2]]))
    names.append(b.op("Mean", [names[3], names[4]]))
    names.append(b.op("Div", [names[5], b.init("d", w(6) + 3)]))
    proto = b.model([("x", (4,))], names, opset=20)
    model = import_onnx(proto)
    assert_matches_onnxruntime(proto, model)


def test_fixed_batch_of_one_and_an_old_opset():
    b = Builder()
    x = b.conv("x", "c", 2, 3, 2)
    x = b.op("Reshape", [x, b.init("shape", np.array([1, -1], np.int64))])
    x = b.op("Unsqueeze", [x], axes=[1])
    x = b.op("Squeeze", [x], axes=[1])
    b.op("Softmax", [x], "y")  # opset 11: over the flattened axes from 1 on
    proto = b.model([("x", (2, 4, 4))], ["y_output_0"], opset=11, batch=1)
    model = import_onnx(proto)
    assert_matches_onnxruntime(proto, model, batch=1)
    assert model.input_shape == (2, 4, 4) and model.output_shape == (27,)


ROUND_TRIP = {m.name: m for m in graph_models(np.random.default_rng(3))}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_distill_exports_import_back(name, tmp_path):
    """Every IR op: exported as ONNX, imported back (the fused patterns of clipped_relu,
    embedding and both GELUs, the recurrent layers), the same outputs."""
    model = ROUND_TRIP[name]
    path, = codegen.export(model, ["onnx"], tmp_path / "out")
    back = import_onnx(onnx.load(str(path)))
    assert back.input_shapes == model.input_shapes
    assert back.output_shapes == model.output_shapes
    xs = [RNG.normal(size=(8, *shape)).astype(np.float32) * 2 for _, shape in model.inputs]
    xs = xs if len(xs) > 1 else xs[0]
    for got, want in zip(ir.run(back, xs, split=True), ir.run(model, xs, split=True)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the exporter's transposes around every conv vanish: no more than the model had
    assert sum(n.op == "transpose" for n in back.nodes) == \
        sum(n.op == "transpose" for n in model.nodes)
    fused = {"gelu", "gelu_tanh", "clipped_relu", "embedding", "simple_rnn", "gru", "lstm"}
    assert {n.op for n in back.nodes} & fused == {n.op for n in model.nodes} & fused


def test_keras_gate_order_inverts_the_exporters():
    from distill.backends.onnx import KERAS_GATES
    from distill.codegen.onnx import ONNX_GATES
    for op, gates in ONNX_GATES.items():
        assert list(np.argsort(gates)) == KERAS_GATES[op]


GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def torch_rnn(b, x, op_type, name, features, hidden, bidirectional=False, batch=True,
              **attrs):
    """One layer of nn.RNN / nn.GRU / nn.LSTM as torch.onnx.export writes it: the zero state
    from the input's batch size (Shape, Gather, Concat, ConstantOfShape), the weights as
    initializers, sequence_lens omitted; returns (Y, Y_h)."""
    d, g = 1 + bidirectional, GATES[op_type]
    shape = b.op("Shape", [x])
    n = b.op("Gather", [shape, b.const(np.array(1, np.int64))], axis=0)
    n = b.op("Unsqueeze", [n, b.const(np.array([0], np.int64))])
    dims = b.op("Concat", [b.const(np.array([d], np.int64)), n,
                           b.const(np.array([hidden], np.int64))], axis=0)
    zeros = b.op("ConstantOfShape", [dims], value=numpy_helper.from_array(
        np.zeros(1, np.float32)))
    inputs = [x, b.init(f"{name}.W", w(d, g * hidden, features)),
              b.init(f"{name}.R", w(d, g * hidden, hidden)),
              b.init(f"{name}.B", w(d, 2 * g * hidden)), "", zeros]
    if op_type == "LSTM":
        inputs.append(zeros)
    if op_type == "GRU":
        attrs.setdefault("linear_before_reset", 1)
    if bidirectional:
        attrs["direction"] = "bidirectional"
    outs = b.op(op_type, inputs, f"/{name}/{op_type}", outputs=3 if op_type == "LSTM" else 2,
                hidden_size=hidden, **attrs)
    return outs[0], outs[1]


def torch_sequence(b, y, bidirectional):
    """Y (T, D, N, H) as PyTorch reshapes it: (T, N, D * H)."""
    if not bidirectional:
        return b.op("Squeeze", [y, b.const(np.array([1], np.int64))])
    y = b.op("Transpose", [y], perm=[0, 2, 1, 3])
    return b.op("Reshape", [y, b.const(np.array([0, 0, -1], np.int64))])


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
def test_pytorch_batch_first_recurrent_layers(op_type):
    """Two layers, batch_first, the second bidirectional: the output sequence, and a Linear
    on h_n[-1] (the last layer's reverse direction) and on out[:, -1]."""
    b = Builder()
    attrs = {"activations": ["Relu"]} if op_type == "RNN" else {}
    x = b.op("Transpose", ["x"], perm=[1, 0, 2])
    y, _ = torch_rnn(b, x, op_type, "rnn.l0", 3, 4, **attrs)
    y = torch_sequence(b, y, False)
    y, h = torch_rnn(b, y, op_type, "rnn.l1", 4, 5, bidirectional=True,
                     **({"activations": ["Relu"] * 2} if attrs else {}))
    seq = b.op("Transpose", [torch_sequence(b, y, True)], perm=[1, 0, 2])
    last = b.op("Gather", [h, b.const(np.array(-1, np.int64))], axis=0)
    fc = b.linear(last, "fc", 5, 2)
    step = b.op("Gather", [seq, b.const(np.array(-1, np.int64))], axis=1)
    proto = b.model([("x", (6, 3))], [seq, fc, b.linear(step, "fc2", 10, 2)], opset=14)
    model = import_onnx(proto)
    assert_matches_onnxruntime(proto, model)
    ops_used = [n.op for n in model.nodes]
    assert ops_used.count({"RNN": "simple_rnn", "GRU": "gru", "LSTM": "lstm"}[op_type]) == 3
    assert "transpose" not in ops_used, ops_used
    # the bidirectional sequence is a concatenate of the two directions' layers
    seq_node = next(n for n in model.nodes if n.name == model.outputs[0])
    assert seq_node.op == "concatenate", ops_used


def test_pytorch_recurrent_layers_not_batch_first():
    """batch_first=False: the input (T, N, F) is imported as (N, T, F), the outputs batch
    first too: the sequence (T, N, H) and h_n (1, N, H) come as (N, T, H) and (N, 1, H)."""
    b = Builder()
    y, _ = torch_rnn(b, "x", "LSTM", "lstm.l0", 3, 4)
    y, h = torch_rnn(b, torch_sequence(b, y, False), "GRU", "gru.l0", 4, 3)
    seq = torch_sequence(b, y, False)
    head = b.op("Add", [b.op("MatMul", [seq, b.init("fc.weight", w(3, 2))]),
                        b.init("fc.bias", w(2))])
    graph = helper.make_graph(b.nodes, "torch_jit", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [5, "batch", 3])], [helper.make_empty_tensor_value_info(n)
                                                    for n in (head, h)], initializer=b.inits)
    proto = with_output_types(helper.make_model(graph,
                                                opset_imports=[helper.make_opsetid("", 13)]))
    model = import_onnx(proto)
    assert model.input_shape == (5, 3) and model.output_shapes == ((5, 2), (1, 3))
    x = RNG.normal(size=(7, 5, 3)).astype(np.float32)
    want = session(proto).run(None, {"x": x.transpose(1, 0, 2)})
    got = ir.run(model, x, split=True)
    for a, c in zip(got, want):
        np.testing.assert_allclose(a, np.moveaxis(c, 1, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op_type,attrs", [
    ("RNN", {"direction": "reverse", "activations": ["Sigmoid"]}),
    ("GRU", {"direction": "reverse", "linear_before_reset": 0}),
    ("GRU", {"linear_before_reset": 0, "activations": ["HardSigmoid", "Relu"],
             "activation_alpha": [1 / 6, 0.0], "activation_beta": [0.5, 0.0]}),
    ("LSTM", {"direction": "reverse"}),
    ("LSTM", {"activations": ["Sigmoid", "Relu", "Relu"]}),
])
def test_recurrent_options(op_type, attrs):
    """The reverse direction, GRU's linear_before_reset=0 (Keras's reset_after=False), the
    step activations; Y and Y_h (D, N, H) both read, Y_h as (N, D, H)."""
    b = Builder()
    x = b.op("Transpose", ["x"], perm=[1, 0, 2])
    g = GATES[op_type]
    y, h = b.op(op_type, [x, b.init("W", w(1, g * 4, 3)), b.init("R", w(1, g * 4, 4)),
                          b.init("B", w(1, 2 * g * 4))], outputs=2, hidden_size=4, **attrs)
    seq = b.op("Squeeze", [y, b.const(np.array([1], np.int64))])
    seq = b.op("Transpose", [seq], perm=[1, 0, 2])
    proto = b.model([("x", (5, 3))], [seq, h], opset=14)
    model = import_onnx(proto)
    assert model.output_shapes == ((5, 4), (1, 4))
    x = RNG.normal(size=(8, 5, 3)).astype(np.float32)
    want = session(proto).run(None, {"x": x})
    got = ir.run(model, x, split=True)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], want[1].transpose(1, 0, 2), rtol=1e-5, atol=1e-5)


def test_recurrent_refusals_are_listed():
    b = Builder()
    x = b.op("Transpose", ["x"], perm=[1, 0, 2])
    state = b.init("h0", np.ones((1, 1, 4), np.float32))
    y, _ = b.op("GRU", [x, b.init("W", w(1, 12, 3)), b.init("R", w(1, 12, 4)), "", "", state],
                "gru", outputs=2, hidden_size=4)
    _, _, c = b.op("LSTM", [x, b.init("W2", w(1, 16, 3)), b.init("R2", w(1, 16, 4))], "lstm",
                   outputs=3, hidden_size=4, clip=3.0)
    proto = b.model([("x", (5, 3))], [y, c], opset=14, batch=1)
    with pytest.raises(DistillError) as e:
        import_onnx(proto)
    text = str(e.value)
    for part in ("node 'gru' GRU: a nonzero initial_h is not supported",
                 "node 'lstm' LSTM: clip=3.0, its Y_c output (the cell state) is not supported"):
        assert part in text, text


def test_gelu_patterns_as_pytorch_writes_them():
    """nn.GELU() below opset 20 (Div, Erf, Add, Mul, Mul), the order x * 0.5 * (1 + erf),
    nn.GELU(approximate="tanh"), and nn.Threshold(0.5, 0)."""
    b = Builder()
    x = b.linear("x", "fc", 4, 6)
    erf = b.op("Erf", [b.op("Div", [x, b.const(np.float32(1.4142135))])])
    exact = b.op("Mul", [b.op("Mul", [x, b.op("Add", [erf, b.const(np.float32(1))])]),
                         b.const(np.float32(0.5))])
    erf2 = b.op("Erf", [b.op("Mul", [x, b.const(np.float32(0.70710677))])])
    other = b.op("Mul", [b.op("Mul", [x, b.const(np.float32(0.5))]),
                         b.op("Add", [b.const(np.float32(1)), erf2])])
    cube = b.op("Mul", [x, b.op("Mul", [x, x])])
    inner = b.op("Add", [x, b.op("Mul", [b.const(np.float32(0.044715)), cube])])
    t = b.op("Tanh", [b.op("Mul", [b.const(np.float32(0.7978846)), inner])])
    approx = b.op("Mul", [b.const(np.float32(0.5)),
                          b.op("Mul", [x, b.op("Add", [b.const(np.float32(1)), t])])])
    above = b.op("Greater", [x, b.const(np.float32(0.5))])
    threshold = b.op("Where", [above, x, b.const(np.float32(0))])
    proto = b.model([("x", (4,))], [exact, other, approx, threshold], opset=13)
    model = import_onnx(proto)
    assert [n.op for n in model.nodes] == ["dense", "gelu", "gelu", "gelu_tanh",
                                           "clipped_relu"]
    assert_matches_onnxruntime(proto, model)


def test_every_unsupported_op_and_option_is_listed_at_once():
    b = Builder()
    x = b.op("MaxPool", ["x"], "pool", kernel_shape=[2, 2], ceil_mode=1)
    b.op("ConvTranspose", ["x", b.init("t", w(2, 1, 2, 2))], "up", kernel_shape=[2, 2],
         group=2)  # read by no output: still checked
    values, _ = b.op("TopK", [x, b.init("k", np.array([1], np.int64))], "topk", outputs=2,
                     axis=-1)
    y = b.op("LogSoftmax", [values], "logsm")
    z = b.op("Resize", ["x", "", b.init("s", np.array([1, 1, 2, 2], np.float32))], "cubic",
             mode="cubic")
    proto = b.model([("x", (2, 6, 6))], [y, z])
    with pytest.raises(DistillError) as e:
        import_onnx(proto)
    text = str(e.value)
    assert text.startswith("cannot import the ONNX model: ")
    for part in ("node 'pool' MaxPool: ceil_mode=1", "node 'up' ConvTranspose: group=2",
                 "node 'topk' TopK is not supported", "node 'logsm' LogSoftmax is not supported",
                 "node 'cubic' Resize: mode='cubic'"):
        assert part in text, text


def test_a_symbolic_dimension_after_the_batch_is_an_error():
    b = Builder()
    b.op("Relu", ["x"], "r")
    graph = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 3, "height"])],
        [helper.make_empty_tensor_value_info("r_output_0")])
    proto = with_output_types(helper.make_model(graph,
                                                opset_imports=[helper.make_opsetid("", 13)]))
    with pytest.raises(DistillError, match="input 'x' dimension 2 \\('height'\\) is symbolic"):
        import_onnx(proto)


def test_imported_cnn_compiled_as_c_matches_onnxruntime(tmp_path):
    from test_export import c_and_go_bits
    proto = lenet()
    model = import_onnx(proto)
    x = RNG.normal(size=(8, *model.input_shape)).astype(np.float32)
    want = session(proto).run(None, {"input": x})[0]
    for bits in c_and_go_bits(model, x, tmp_path):
        got = np.array([int(b, 16) for b in bits], np.uint32).view(np.float32)
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-5)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "distill.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_command_line(tmp_path):
    path = tmp_path / "lenet.onnx"
    onnx.save(lenet(), str(path))
    proc = cli("import", path, "-o", tmp_path / "m.distill")
    assert proc.returncode == 0, proc.stderr
    assert "matches onnxruntime's predictions" in proc.stdout
    assert ir.load(tmp_path / "m.distill").output_shape == (10,)
    proc = cli("inspect", path)
    assert proc.returncode == 0 and "conv" in proc.stdout, proc.stderr
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(path.read_bytes()[:200])
    for argv in (["import", damaged], ["inspect", damaged]):
        proc = cli(*argv)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("distill: error: ") and proc.stderr.count("\n") == 1, \
            proc.stderr
        assert "Traceback" not in proc.stderr
