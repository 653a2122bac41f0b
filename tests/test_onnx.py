"""The ONNX exporter: every op lowered, files that onnxruntime runs to ir.run's outputs."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import graph_models, require  # noqa: E402

onnx = require("onnx")
ort = require("onnxruntime")

import distill  # noqa: E402
from distill import ir, ops  # noqa: E402
from distill.codegen.onnx import LOWERINGS, OPSET, export_onnx, to_onnx  # noqa: E402
from distill.errors import DistillError  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _w(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _models() -> dict[str, ir.Model]:
    rng = np.random.default_rng(7)
    acts = [(a, a, {"alpha": 0.1234567} if "alpha" in ops.OPS[a].attrs else {}, {})
            for a in ops.ACTIVATIONS]
    return {
        "chain": ir.make_model("chain", (5,), [
            ("norm", "normalize", {}, {"mean": _w(rng, 5), "std": np.abs(_w(rng, 5)) + 0.5}),
            ("dense", "dense", {}, {"kernel": _w(rng, 5, 6), "bias": _w(rng, 6)}),
            *acts,
            ("dense_nobias", "dense", {}, {"kernel": _w(rng, 6, 3)}),
        ], labels=["a", "b", "c"]),
        # dense on the last axis of a rank-3 input, then flatten and a reshape with -1
        "shapes": ir.make_model("shapes", (2, 3, 4), [
            ("norm", "normalize", {}, {"mean": _w(rng, 3, 4), "std": np.abs(_w(rng, 4)) + 0.5}),
            ("dense", "dense", {}, {"kernel": _w(rng, 4, 4), "bias": _w(rng, 4)}),
            ("leaky", "leaky_relu", {"alpha": 0.1234567}, {}),
            ("flatten", "flatten", {}, {}),
            ("reshape", "reshape", {"shape": [4, -1]}, {}),
            ("softmax", "softmax", {}, {}),
            ("back", "reshape", {"shape": [-1]}, {}),
        ]),
        # names that collide with initializer and graph names
        "clash": ir.make_model("clash", (3,), [
            ("dense", "dense", {}, {"kernel": _w(rng, 3, 3), "bias": _w(rng, 3)}),
            ("dense_kernel", "relu", {}, {}),
            ("dense_matmul", "tanh", {}, {}),
            ("output", "sigmoid", {}, {}),
            ("last", "dense", {}, {"kernel": _w(rng, 3, 2)}),
        ]),
    }


MODELS = _models()
MODELS.update((m.name, m) for m in graph_models(np.random.default_rng(8)))


def _session(path: Path) -> "ort.InferenceSession":
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _assert_matches(model: ir.Model, session, x: np.ndarray) -> float:
    """onnxruntime on the packed batch `x`, fed input by input, against ir.run output by output."""
    refs = ir.run(model, x, split=True)
    cuts = np.cumsum([int(np.prod(s)) for s in model.input_shapes])[:-1]
    feed = {name: part.reshape(len(x), *shape) for (name, shape), part in
            zip(model.inputs, np.split(x.reshape(len(x), -1), cuts, axis=1))}
    worst = 0.0
    for ref, got, shape in zip(refs, session.run(None, feed), model.output_shapes, strict=True):
        assert got.dtype == np.float32 and got.shape == ref.shape == (len(x), *shape)
        err = np.abs(got.astype(np.float64) - ref)
        assert (err <= 1e-5 + 1e-4 * np.abs(ref)).all(), f"max abs error {err.max():.3g}"
        worst = max(worst, float(err.max()))
    return worst


def test_every_op_has_a_lowering():
    assert set(LOWERINGS) == set(ops.OPS)


def test_models_cover_every_op():
    used = {n.op for m in MODELS.values() for n in m.nodes}
    assert used == set(ops.OPS)
    assert any(n.op == "dense" and "bias" not in n.weights for n in MODELS["chain"].nodes)


@pytest.mark.parametrize("key", sorted(MODELS))
def test_onnxruntime_matches_ir_run(key, tmp_path):
    model = MODELS[key]
    (path,) = export_onnx(model, tmp_path)
    assert path == tmp_path / f"{model.name}.onnx"
    session = _session(path)
    assert [(i.name, i.shape) for i in session.get_inputs()] == \
        [(name, ["N", *shape]) for name, shape in model.inputs]
    outputs = ["output"] if len(model.outputs) == 1 else \
        [f"output_{k}" for k in range(len(model.outputs))]
    assert [(o.name, o.shape) for o in session.get_outputs()] == \
        [(name, ["N", *shape]) for name, shape in zip(outputs, model.output_shapes)]
    rng = np.random.default_rng(1)
    for batch in (1, 7):
        x = (rng.standard_normal((batch, *model.input_shape)) * 3).astype(np.float32)
        _assert_matches(model, session, x)


@pytest.mark.parametrize("key", [k for k in sorted(MODELS) if any(n.weights for n in
                                                                    MODELS[k].nodes)])
def test_initializers_are_the_ir_weights_bit_for_bit(key):
    model = MODELS[key]
    proto = to_onnx(model)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    weights, seen = {}, set()
    for n in model.nodes:  # a shared layer's arrays: one initializer, named after the first node
        for k, a in sorted(n.weights.items()):
            if id(a) not in seen:
                seen.add(id(a))
                weights[f"{n.name}_{k}"] = a
    assert weights and set(weights) <= set(inits) and len(inits) >= len(weights)
    for name, arr in weights.items():
        got = inits[name]
        assert got.dtype == np.float32 and got.shape == arr.shape
        np.testing.assert_array_equal(got.view(np.uint32), arr.view(np.uint32))


def test_tensor_and_node_names_are_unique_and_derived():
    proto = to_onnx(MODELS["clash"])
    outputs = [o for n in proto.graph.node for o in n.output]
    inits = [t.name for t in proto.graph.initializer]
    assert len(set(outputs + inits)) == len(outputs) + len(inits)
    assert "input" not in outputs and outputs[-1] == "output"
    assert "dense_kernel" in inits and "dense_kernel_2" in outputs
    names = [n.name for n in proto.graph.node]
    assert len(set(names)) == len(names)
    assert names == ["dense_matmul", "dense_add", "dense_kernel", "dense_matmul_2", "output",
                     "last"]


def test_lowered_ops_and_attributes():
    proto = to_onnx(MODELS["shapes"])
    types = [n.op_type for n in proto.graph.node]
    assert types == ["Sub", "Div", "MatMul", "Add", "LeakyRelu", "Flatten", "Reshape",
                     "Softmax", "Reshape"]
    attrs = {n.op_type: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
             for n in proto.graph.node}
    assert attrs["LeakyRelu"]["alpha"] == np.float32(0.1234567)
    assert attrs["Softmax"] == {"axis": -1} and attrs["Flatten"] == {"axis": 1}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert inits["reshape_shape"].tolist() == [0, 4, -1]
    assert inits["back_shape"].tolist() == [0, -1]
    assert proto.opset_import[0].domain == "" and proto.opset_import[0].version == OPSET


def test_metadata_and_producer():
    model = MODELS["chain"]
    proto = to_onnx(model)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props == {
        "name": "chain",
        "ir_hash": ir.model_hash(model),
        "distill_version": distill.__version__,
        "labels": json.dumps(["a", "b", "c"]),
        "input_shape": "[5]",
        "output_shape": "[3]",
    }
    assert json.loads(props["labels"]) == list(model.labels)
    assert proto.producer_name == "distill" and proto.producer_version == distill.__version__
    assert "chain" in proto.doc_string and "(N, 5)" in proto.doc_string
    assert proto.graph.name == "chain"
    props = {p.key: p.value for p in to_onnx(MODELS["shapes"]).metadata_props}
    assert props["labels"] == "" and json.loads(props["input_shape"]) == [2, 3, 4]


def test_checker_passes_and_bytes_are_deterministic(tmp_path):
    for model in MODELS.values():
        onnx.checker.check_model(to_onnx(model), full_check=True)
        (a,) = export_onnx(model, tmp_path / "a")
        (b,) = export_onnx(model, tmp_path / "b", name=model.name)
        assert a.read_bytes() == b.read_bytes()
        assert onnx.load(a).SerializeToString() == a.read_bytes()


def test_name_is_sanitized_into_file_graph_and_metadata(tmp_path):
    (path,) = export_onnx(MODELS["chain"], tmp_path, name="../My Model")
    assert path == tmp_path / "my_model.onnx"
    proto = onnx.load(path)
    assert proto.graph.name == "my_model"
    assert {p.key: p.value for p in proto.metadata_props}["name"] == "my_model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_model.onnx"]


def test_model_without_nodes_is_the_identity(tmp_path):
    model = ir.make_model("empty", (3,), [])
    (path,) = export_onnx(model, tmp_path)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(_session(path).run(None, {"input": x})[0], x)


def test_op_without_lowering_names_node_and_op(monkeypatch):
    monkeypatch.delitem(LOWERINGS, "tanh")
    with pytest.raises(DistillError, match=r"'tanh'.*tanh.*supported: "):
        to_onnx(MODELS["chain"])


def test_trained_digits_workload_runs_the_same_in_onnxruntime(tmp_path):
    require("sklearn")  # the digits set ships with scikit-learn
    from distill.backends import prepare, train
    from distill.config import load_config

    config = load_config(EXAMPLES / "digits.toml")
    result = train(config, epochs=15, verbose=0)  # enough to leave the initial weights
    model = result.model
    assert [n.op for n in model.nodes] == ["normalize", "dense", "sigmoid", "dense", "softmax"]
    (path,) = export_onnx(model, tmp_path)
    session = _session(path)
    test = prepare(config, config.seed).x["test"]
    assert test.shape == (359, 64)
    _assert_matches(model, session, test)
    _assert_matches(model, session, test[:1])
    probs = session.run(None, {"input": test})[0]
    assert (probs.argmax(1) == ir.run(model, test).argmax(1)).all()
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert json.loads(props["labels"]) == [str(i) for i in range(10)]
