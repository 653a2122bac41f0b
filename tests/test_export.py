"""Exporters: every workload and every op in every language, built with the real toolchain,
run, and compared with the reference; weights bit for bit; hostile names; golden files."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, WORKLOADS, graph_models, load_module

import distill
from distill import codegen, ir, ops
from distill.codegen.onnx import LOWERINGS
from distill.ops import OPS
from distill.verify import verify

LANGS = codegen.languages()
GOLDEN = Path(__file__).resolve().parent / "golden"


def test_toolchains_are_present():
    # CI must not silently skip a language: the toolchains are part of the machine.
    for tool in ("cc", "go", "gofmt"):
        assert shutil.which(tool), f"{tool} is not installed"
    import onnxruntime  # noqa: F401


def test_every_op_has_a_template_in_every_language():
    assert set(LANGS) >= {"c", "go", "numpy", "onnx"}
    assert set(LOWERINGS) == set(OPS)
    for lang, target in codegen.text_targets().items():
        have = {p.stem for p in (target.folder / "ops").glob("*.j2")}
        missing = set(OPS) - set(codegen.NO_DATA_OPS) - have
        assert not missing, f"{lang} has no template for {sorted(missing)}"


def every_op_models():
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.normal(size=shape).astype(np.float32)
    return [
        ir.make_model("chain", (5,), [
            ("norm", "normalize", {}, {"mean": r(5), "std": np.abs(r(5)) + 0.5}),
            ("d1", "dense", {}, {"kernel": r(5, 8), "bias": r(8)}),
            ("t", "tanh", {}, {}),
            ("d2", "dense", {}, {"kernel": r(8, 6)}),
            ("lr", "leaky_relu", {"alpha": 0.1234567}, {}),
            ("d3", "dense", {}, {"kernel": r(6, 6), "bias": r(6)}),
            ("re", "relu", {}, {}),
            ("lin", "linear", {}, {}),
            ("d4", "dense", {}, {"kernel": r(6, 3), "bias": r(3)}),
            ("s", "sigmoid", {}, {}),
        ]),
        ir.make_model("ranked", (2, 3, 4), [
            ("norm", "normalize", {}, {"mean": r(4), "std": np.abs(r(4)) + 0.5}),
            ("per_row", "dense", {}, {"kernel": r(4, 5), "bias": r(5)}),
            ("rows_softmax", "softmax", {}, {}),
            ("flat", "flatten", {}, {}),
            ("back", "reshape", {"shape": [5, -1]}, {}),
            ("d", "dense", {}, {"kernel": r(6, 4)}),
            ("sm", "softmax", {}, {}),
            ("out", "reshape", {"shape": [-1]}, {}),
        ], labels=["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o",
                   "p", "q", "r", "s", "t"]),
        ir.make_model("identity", (3,), [("f", "flatten", {}, {})]),
        *graph_models(rng),
    ]


@pytest.mark.parametrize("model", every_op_models(), ids=lambda m: m.name)
def test_every_op_in_every_language(model):
    used = {n.op for m in every_op_models() for n in m.nodes}
    assert used == set(OPS)  # the models above cover the whole registry
    for result in verify(model, LANGS, samples=32):
        assert result.ok, result.line()


def numpy_module(model, folder):
    codegen.export(model, ["numpy"], folder)
    return load_module(folder / f"{model.name}.py", f"np_{model.name}")


def test_numpy_module_equals_the_reference_bit_for_bit(tmp_path, workload):
    """The NumPy module does the reference's float32 operations in the reference's order, so
    its outputs are the same bits (NaN where the reference has NaN), at every batch size: one
    sample, a few, and more rows than its constant tiles hold."""
    rng = np.random.default_rng(5)
    sigmoid_wide = ir.make_model("wide", (40,), [
        ("d", "dense", {}, {"kernel": rng.normal(size=(40, 300)).astype(np.float32),
                            "bias": rng.normal(size=300).astype(np.float32)}),
        ("s", "sigmoid", {}, {}), ("d2", "dense", {}, {
            "kernel": rng.normal(size=(300, 7)).astype(np.float32)}),
        ("lr", "leaky_relu", {"alpha": 0.3}, {}), ("sm", "softmax", {}, {})])
    # one input: the module multiplies instead of matmul, and must still turn -0.0 into +0.0
    one_input = [ir.make_model(f"one_input_{k}", (1,), [("d", "dense", {}, {
        "kernel": np.array([[1.5, -0.0, 2.0, -3.0, 0.0]], np.float32), **bias})])
        for k, bias in enumerate([{}, {"bias": np.array([-0.0, 1, -0.0, 0, 2], np.float32)},
                                  {"bias": np.array([0.0, 1, 3, 0, 2], np.float32)}])]
    models = [*every_op_models(), sigmoid_wide, *one_input, workload("digits")[1].model,
              workload("exp")[1].model, workload("blobs")[1].model]
    for model in models:
        module = numpy_module(model, tmp_path / model.name)
        shape = tuple(model.input_shape)
        x = (rng.normal(size=(20000, *shape)) * 30).astype(np.float32)
        x.reshape(len(x), -1)[:12, 0] = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -1e-45,
                                        3e38, -3e38, 1e-30, -1e-30, 88.0]
        for batch in (x[0], x[:3], x[:256], x):
            with np.errstate(all="ignore"):  # the reference warns on inf and NaN
                want = distill.run(model, batch)
            got = module.predict(batch)
            assert got.shape == want.shape and got.dtype == np.float32, model.name
            nan = np.isnan(want)
            assert np.array_equal(np.isnan(got), nan), model.name
            assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32)), \
                (model.name, len(batch))


@pytest.mark.slow
@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_matrix(workload, name):
    _, result = workload(name)
    for r in verify(result.model, LANGS, samples=128):
        assert r.ok and r.samples == 128, r.line()


# ------------------------------------------------------------------------ weights bit for bit

EDGE = np.array([-0.0, 0.0, 1e-45, -1e-45, 1.17549435e-38, 1e-38, 3.4028235e38, -3.4028235e38,
                 0.1, 1 / 3, 16777217.0, -2.5e-12, 1.0000001, 7.006492e-46, 123456.789],
                np.float32)


def weight_bits_c(folder: Path, name: str, idents: list[str]) -> dict[str, np.ndarray]:
    """Compile the emitted C with a harness that prints every weight array's bits."""
    lines = [f'#include "{name}.c"', "#include <stdio.h>", "#include <string.h>",
             "static void dump(const float *a, size_t n) {", "    size_t i; unsigned int u;",
             "    for (i = 0; i < n; ++i) { memcpy(&u, &a[i], 4); printf(\"%08x \", u); }",
             '    printf("\\n");', "}", "int main(void) {"]
    lines += [f"    dump({i}, sizeof {i} / sizeof {i}[0]);" for i in idents]
    lines += ["    return 0;", "}"]
    (folder / "bits.c").write_text("\n".join(lines) + "\n")
    subprocess.run(["cc", "-std=c99", "-o", "bits", "bits.c", "-lm"], cwd=folder, check=True)
    out = subprocess.run(["./bits"], cwd=folder, capture_output=True, text=True, check=True)
    return {i: np.array([int(h, 16) for h in line.split()], np.uint32)
            for i, line in zip(idents, out.stdout.splitlines())}


def weight_bits_go(folder: Path, idents: list[str]) -> dict[str, np.ndarray]:
    package = re.search(r"^package (\w+)", (folder / "go.mod").read_text().replace(
        "module", "package"), re.M).group(1)
    body = "\n".join(f'\tdump("{i}", {i}[:])' for i in idents)
    (folder / "bits_test.go").write_text(f"""package {package}

import (
\t"fmt"
\t"math"
\t"testing"
)

func dump(name string, a []float32) {{
\tfmt.Print("BITS ", name)
\tfor _, v := range a {{
\t\tfmt.Printf(" %08x", math.Float32bits(v))
\t}}
\tfmt.Println()
}}

func TestBits(t *testing.T) {{
{body}
}}
""")
    out = subprocess.run(["go", "test", "-count=1", "-run", "TestBits", "-v", "."], cwd=folder,
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "GOTOOLCHAIN": "local"})
    result = {}
    for line in out.stdout.splitlines():
        if line.startswith("BITS "):
            _, ident, *hexes = line.split()
            result[ident] = np.array([int(h, 16) for h in hexes], np.uint32)
    return result


def weight_bits_numpy(folder: Path, name: str, idents: list[str]) -> dict[str, np.ndarray]:
    sys.path.insert(0, str(folder))
    try:
        import importlib
        module = importlib.import_module(name)
        importlib.reload(module)
        return {i: getattr(module, f"_{i.upper()}").reshape(-1).view(np.uint32)
                for i in idents}
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)


def check_weight_bits(model: ir.Model, tmp_path: Path):
    for lang in ("c", "go", "numpy"):
        folder = tmp_path / lang
        codegen.export(model, [lang], folder, name=f"bits_{model.name}", samples=2)
        ctx = codegen.context(model, codegen.text_targets()[lang], f"bits_{model.name}", 1)
        expected = {w["ident"]: w["values"].reshape(-1).view(np.uint32) for w in ctx["weights"]}
        if lang == "c":
            got = weight_bits_c(folder, ctx["name"], list(expected))
        elif lang == "go":
            got = weight_bits_go(folder, list(expected))
        else:
            got = weight_bits_numpy(folder, ctx["name"], list(expected))
        for ident, bits in expected.items():
            assert np.array_equal(got[ident], bits), (lang, ident)
    onnx_path = codegen.render(model, "onnx")
    import onnx
    from onnx import numpy_helper
    proto = onnx.load_from_string(next(iter(onnx_path.values())))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in model.nodes:
        for key, arr in node.weights.items():
            assert np.array_equal(inits[f"{node.name}_{key}"].view(np.uint32),
                                  arr.view(np.uint32))


def test_edge_value_weights_are_bit_exact_everywhere(tmp_path):
    model = ir.make_model("edge", (len(EDGE),), [
        ("d", "dense", {}, {"kernel": np.diag(EDGE) + 0.0, "bias": EDGE})])
    model.node("d").weights["kernel"][0, 0] = -0.0  # keep the sign the diag above dropped
    assert np.signbit(model.node("d").weights["kernel"][0, 0])
    check_weight_bits(model, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_weights_are_bit_exact_everywhere(workload, name, tmp_path):
    check_weight_bits(workload(name)[1].model, tmp_path)


# --------------------------------------------------------------------------------- names

HOSTILE = ["int", "func", "type", "lambda", "dense-1", '"; system("rm -rf /"); //', "*/",
           "main", "package", "import", "None", "__init__", "x\ny", "ünïcödé", "return"]


def test_hostile_names_compile_run_and_leak_nothing(tmp_path):
    rng = np.random.default_rng(1)
    layers = []
    for i, raw in enumerate(HOSTILE):
        layers.append((raw, "dense", {}, {"kernel": rng.normal(size=(3, 3)).astype(np.float32),
                                          "bias": rng.normal(size=3).astype(np.float32)}))
        layers.append((raw, ["tanh", "relu", "sigmoid"][i % 3], {}, {}))
    model = ir.make_model('evil */ name\n"; system("x"); //', (3,), layers,
                          labels=['a"b', "c*/d", 'e\\"); system("f");'])
    for result in verify(model, LANGS, samples=16):
        assert result.ok, result.line()
    for reserved in ("int", "func", "main", "lambda", "import"):
        m = ir.make_model(reserved, (3,), layers[:2])
        for result in verify(m, LANGS, samples=4):
            assert result.ok, result.line()
    out = tmp_path / "evil"
    codegen.export(model, LANGS, out)
    for path in out.rglob("*"):
        if path.is_file() and path.suffix != ".onnx":
            text = path.read_text()
            # Names are sanitized away; the label survives only as an escaped literal.
            assert 'system("' not in text and "rm -rf" not in text and "*/ name" not in text
            assert "evil_name_system_x" in text or path.name == ".distill-export"


# --------------------------------------------------------------------------- emitted text

def tiny_model() -> ir.Model:
    return ir.make_model("tiny", (2,), [
        ("hidden", "dense", {}, {"kernel": np.array([[0.5, -1.25, 2.0], [1e-3, 0.1, -0.0]],
                                                    np.float32),
                                 "bias": np.array([0.0, 0.25, -1.5], np.float32)}),
        ("hidden_act", "leaky_relu", {"alpha": 0.2}, {}),
        ("out", "dense", {}, {"kernel": np.array([[1.0, -1.0], [0.5, 0.5], [-2.0, 3.0]],
                                                 np.float32),
                              "bias": np.array([0.1, -0.1], np.float32)}),
        ("out_act", "softmax", {}, {}),
    ], labels=["no", "yes"], metadata={"samples": [[0.5, -0.5], [1.0, 2.0]]})


@pytest.mark.parametrize("lang", LANGS)
def test_golden_files(lang):
    """The emitted text of a tiny fixed model, checked in: template changes show as diffs.
    Regenerate with DISTILL_UPDATE_GOLDEN=1 after a deliberate change."""
    files = codegen.render(tiny_model(), lang, samples=4)
    folder = GOLDEN / lang
    if os.environ.get("DISTILL_UPDATE_GOLDEN"):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for rel, data in files.items():
            (folder / rel).write_bytes(data)
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    for rel, data in files.items():
        assert (folder / rel).read_bytes() == data, f"{lang}/{rel} differs from the golden file"


def test_export_is_deterministic():
    for lang in LANGS:
        assert codegen.render(tiny_model(), lang) == codegen.render(tiny_model(), lang)


def test_c_is_clean_c99_and_the_header_is_cxx(tmp_path):
    codegen.export(tiny_model(), ["c"], tmp_path / "c")
    flags = ["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-Wshadow",
             "-Wconversion", "-Wdouble-promotion", "-c", "tiny.c"]
    subprocess.run(["gcc", *flags], cwd=tmp_path / "c", check=True)
    text = (tmp_path / "c" / "tiny.c").read_text()
    assert "malloc" not in text and re.search(r"^static float", text, re.M) is None
    if shutil.which("g++"):
        subprocess.run(["g++", "-std=c++11", "-Wall", "-Wextra", "-pedantic", "-Werror",
                        "-fsyntax-only", "-x", "c++", "tiny.h"], cwd=tmp_path / "c",
                       check=True)


def test_go_is_gofmt_and_vet_clean(tmp_path):
    codegen.export(tiny_model(), ["go"], tmp_path / "go")
    out = subprocess.run(["gofmt", "-l", "."], cwd=tmp_path / "go", capture_output=True,
                         text=True, check=True)
    assert out.stdout == ""
    # vet checks the assembly's frame against its Go declaration; the portable file must
    # build wherever the assembly does not
    for env in ({}, {"GOFLAGS": "-tags=purego"}, {"GOARCH": "arm64"}, {"GOARCH": "386"}):
        subprocess.run(["go", "vet", "./..."], cwd=tmp_path / "go", check=True,
                       env={**os.environ, "GOTOOLCHAIN": "local", **env})


def test_go_of_every_op_is_gofmt_clean(tmp_path):
    for model in every_op_models():
        codegen.export(model, ["go"], tmp_path / model.name / "go")
    out = subprocess.run(["gofmt", "-l", "."], cwd=tmp_path, capture_output=True, text=True,
                         check=True)
    assert out.stdout == ""


def c_and_go_bits(model: ir.Model, x: np.ndarray, folder: Path, tags: str = "") -> tuple:
    """Export model to C and Go, run x through both (C -O2, Go with build tags `tags`) and
    return each one's output bits, as hex strings."""
    codegen.export(model, ["c", "go"], folder, name="m")
    (folder / "c" / "dump.c").write_text(
        '#include "m.h"\n#include <stdio.h>\n#include <string.h>\n'
        "int main(void) {\n    float in[M_INPUT_SIZE], out[M_OUTPUT_SIZE];\n"
        "    unsigned int u;\n    int i;\n"
        "    while (fread(in, sizeof in, 1, stdin) == 1) {\n"
        "        m_predict(in, out);\n"
        "        for (i = 0; i < M_OUTPUT_SIZE; ++i) {\n"
        '            memcpy(&u, &out[i], 4);\n            printf("%08x\\n", u);\n'
        "        }\n    }\n    return 0;\n}\n")
    c_dir = folder / "c"
    subprocess.run(["cc", "-std=c99", "-O2", "-o", "dump", "dump.c", "m.c", "-lm"], cwd=c_dir,
                   check=True)
    c_out = subprocess.run(["./dump"], cwd=c_dir, input=x.astype("<f4").tobytes(),
                           capture_output=True, check=True).stdout.decode().split()
    go_dir = folder / "go"
    (go_dir / "dump_test.go").write_text(
        'package m\n\nimport (\n\t"encoding/binary"\n\t"fmt"\n\t"math"\n\t"os"\n'
        '\t"testing"\n)\n\nfunc TestDump(t *testing.T) {\n'
        '\traw, err := os.ReadFile(os.Getenv("DUMP_INPUT"))\n'
        "\tif err != nil {\n\t\tt.Fatal(err)\n\t}\n"
        "\tin := make([]float32, len(raw)/4)\n"
        "\tfor i := range in {\n"
        "\t\tin[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))\n\t}\n"
        "\tout, err := PredictBatch(in)\n\tif err != nil {\n\t\tt.Fatal(err)\n\t}\n"
        '\tfor _, v := range out {\n\t\tfmt.Printf("BITS %08x\\n", math.Float32bits(v))\n'
        "\t}\n}\n")
    (folder / "x.bin").write_bytes(x.astype("<f4").tobytes())
    go_out = subprocess.run(["go", "test", "-count=1", f"-tags={tags}", "-run", "TestDump", "-v",
                             "."],
                            cwd=go_dir, capture_output=True, text=True, check=True,
                            env={**os.environ, "GOTOOLCHAIN": "local",
                                 "DUMP_INPUT": str(folder / "x.bin")}).stdout
    go_bits = [line.split()[1] for line in go_out.splitlines() if line.startswith("BITS ")]
    assert len(c_out) == len(go_bits) == len(x) * int(np.prod(model.output_shape))
    return c_out, go_bits


SPECIALS = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -1e-45, 3e38, -3e38, 1e-30, -1e-30,
            88.0, -88.0, 103.99, -104.5]


@pytest.mark.parametrize("which", ["digits", "odd"])
@pytest.mark.parametrize("tags", ["", "purego"])
def test_c_and_go_agree_bit_for_bit(tmp_path, workload, tags, which):
    """Same accumulation order, no contraction, the same exp: the same bits, NaN included,
    with Go's dense loop and sigmoid in SSE assembly (amd64) and in Go (-tags purego); odd
    sizes leave remainders."""
    model = workload("digits")[1].model if which == "digits" else odd_mlp()
    x = codegen.golden_samples(model, 64)
    x[:len(SPECIALS), 0] = SPECIALS  # through every exp in the model, and to NaN
    x[len(SPECIALS):2 * len(SPECIALS), 5] = SPECIALS
    c_bits, go_bits = c_and_go_bits(model, x, tmp_path, tags)
    assert c_bits == go_bits


@pytest.mark.parametrize("tags", ["", "purego"])
def test_elementwise_ops_give_the_reference_bits_in_c_and_go(tmp_path, tags):
    """Ops without sums or exp (standardize, relu, leaky relu) are exact: C and Go (relu in
    SSE on amd64, and in Go) give the reference's bits, -0.0 and NaN included
    (np.maximum(-0.0, 0) is +0.0)."""
    rng = np.random.default_rng(8)
    n = 7
    model = ir.make_model("elementwise", (n,), [
        ("s", "normalize", {}, {"mean": rng.normal(size=n).astype(np.float32),
                                "std": rng.uniform(0.5, 2, size=n).astype(np.float32)}),
        ("r", "relu", {}, {}), ("lr", "leaky_relu", {"alpha": 0.3}, {})])
    plain = ir.make_model("plain", (n,), [("r", "relu", {}, {}),
                                          ("lr", "leaky_relu", {"alpha": 0.3}, {})])
    for m in (model, plain):
        x = (rng.normal(size=(40, n)) * 3).astype(np.float32)  # relu on 7: SSE and a Go tail
        x.reshape(-1)[:len(SPECIALS)] = SPECIALS
        x[-3:] = -0.0
        x[-4, :3] = np.array(0xFFC00000, np.uint32).view(np.float32)  # -NaN stays NaN
        with np.errstate(all="ignore"):
            want = distill.run(m, x).reshape(-1)
        want_bits = [f"{b:08x}" for b in want.view(np.uint32)]
        nan = np.isnan(want)
        for got in c_and_go_bits(m, x, tmp_path / m.name, tags):
            assert [g for g, isnan in zip(got, nan) if not isnan] == \
                [w for w, isnan in zip(want_bits, nan) if not isnan], m.name
            assert all(np.isnan(np.uint32(int(g, 16)).view(np.float32))
                       for g, isnan in zip(got, nan) if isnan), m.name


EXP_SWEEP_C = """#include "m.c"
#include <stdio.h>

/* every 61st bit pattern of x >= 0 up to infinity, then the special values */
int main(void)
{
    static const float special[] = {0.0f, -0.0f, 1e-45f, 87.3f, 103.9f, 103.98f, 104.0f, 1e30f,
                                    -1e30f, 1.0f / 0.0f, -1.0f / 0.0f};
    unsigned long long hash = 0;
    double worst = 0.0;
    uint32_t b;
    size_t i;

    for (b = 0; b < 0x7F800000u; b += 61u) {
        float x, y, w;
        double want, ulp;
        uint32_t u;

        memcpy(&x, &b, sizeof x);
        y = exp_neg_abs(x);
        if (y != exp_neg_abs(-x)) {
            printf("not even at %08x\\n", (unsigned)b);
            return 1;
        }
        want = exp(-(double)x);
        w = (float)want;
        ulp = fabs((double)y - want) / ((double)nextafterf(w, 1.0f / 0.0f) - (double)w);
        worst = ulp > worst ? ulp : worst;
        memcpy(&u, &y, sizeof u);
        hash = hash * 1099511628211ull + u;
    }
    printf("%016llx %.3f\\n", hash, worst);
    for (i = 0; i < sizeof special / sizeof special[0]; ++i) {
        float y = exp_neg_abs(special[i]);
        uint32_t u;

        memcpy(&u, &y, sizeof u);
        printf("%08x\\n", (unsigned)u);
    }
    return exp_neg_abs(0.0f / 0.0f) == exp_neg_abs(0.0f / 0.0f);    /* NaN: 0 */
}
"""

EXP_SWEEP_GO = """package m

import (
\t"fmt"
\t"math"
\t"testing"
)

func TestExpSweep(t *testing.T) {
\tvar hash uint64
\tworst := 0.0
\tfor b := uint32(0); b < 0x7f800000; b += 61 {
\t\tx := math.Float32frombits(b)
\t\ty := expNegAbs(x)
\t\tif y != expNegAbs(-x) {
\t\t\tt.Fatalf("not even at %08x", b)
\t\t}
\t\twant := math.Exp(-float64(x))
\t\tw := float32(want)
\t\tstep := float64(math.Nextafter32(w, float32(math.Inf(1)))) - float64(w)
\t\tulp := math.Abs(float64(y)-want) / step
\t\tworst = math.Max(worst, ulp)
\t\thash = hash*1099511628211 + uint64(math.Float32bits(y))
\t}
\tfmt.Printf("SWEEP %016x %.3f\\n", hash, worst)
\tinf := float32(math.Inf(1))
\tfor _, x := range []float32{0, negZero, 1e-45, 87.3, 103.9, 103.98, 104, 1e30, -1e30, inf, -inf} {
\t\tfmt.Printf("SWEEP %08x\\n", math.Float32bits(expNegAbs(x)))
\t}
\tif v := expNegAbs(float32(math.NaN())); v == v {
\t\tt.Fatal("NaN in, a number out")
\t}
}
"""


def test_exp_is_accurate_and_the_same_in_c_and_go(tmp_path):
    """exp_neg_abs (C) and expNegAbs (Go), the exp behind sigmoid and softmax: on every 61st
    float from 0 to infinity and on special values, the same bits in both languages and within
    1.3 ULP of the correctly rounded e^-|x|; 0 from 104 on, NaN for NaN."""
    codegen.export(tiny_model(), ["c", "go"], tmp_path, name="m")
    (tmp_path / "c" / "sweep.c").write_text(EXP_SWEEP_C)
    subprocess.run(["cc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-o", "sweep",
                    "sweep.c", "-lm"], cwd=tmp_path / "c", check=True)
    c_out = subprocess.run(["./sweep"], cwd=tmp_path / "c", capture_output=True, text=True,
                           check=True).stdout.split("\n")
    (tmp_path / "go" / "sweep_test.go").write_text(EXP_SWEEP_GO)
    go_out = subprocess.run(["go", "test", "-count=1", "-run", "TestExpSweep", "-v", "."],
                            cwd=tmp_path / "go", capture_output=True, text=True, check=True,
                            env={**os.environ, "GOTOOLCHAIN": "local"}).stdout
    go_out = [line[6:] for line in go_out.splitlines() if line.startswith("SWEEP ")]
    assert c_out[:12] == go_out
    hash_, worst = c_out[0].split()
    assert float(worst) <= 1.3
    specials = [np.uint32(int(h, 16)).view(np.float32) for h in c_out[1:12]]
    want = np.exp(-np.abs(np.array([0.0, -0.0, 1e-45, 87.3, 103.9, 103.98, 104.0, 1e30, -1e30,
                                    np.inf, -np.inf], np.float32).astype(np.float64)))
    ulps = np.abs(np.array(specials[:6], np.float64) - want[:6]) / np.spacing(
        want[:6].astype(np.float32)).astype(np.float64)
    assert np.all(ulps <= 1.3), ulps
    assert specials[6:] == [0.0] * 5


# ------------------------------------------------------------------------------ the command

def cli(*args):
    return subprocess.run([sys.executable, "-m", "distill.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_export_command_replaces_only_its_own_folders(tmp_path):
    model_path = tmp_path / "tiny.distill"
    distill.save(tiny_model(), model_path)
    out = tmp_path / "out"
    proc = cli("export", model_path, "--lang", "c,numpy", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "bytes of weights (flash)" in proc.stdout and "working memory (RAM)" in proc.stdout
    assert (out / "c" / "tiny.c").is_file() and (out / "numpy" / "tiny.py").is_file()
    proc = cli("export", model_path, "--lang", "go", "-o", out)  # replaces the whole folder
    assert proc.returncode == 0 and sorted(p.name for p in out.iterdir()) == [
        ".distill-export", "go.mod", "tiny.go", "tiny_portable.go", "tiny_sse.go", "tiny_sse.s",
        "tiny_test.go"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    proc = cli("export", model_path, "--lang", "c", "-o", mine)
    assert proc.returncode == 2 and "not written by distill export" in proc.stderr
    assert (mine / "notes.txt").read_text() == "precious"
    proc = cli("export", model_path, "--lang", "cobol", "-o", tmp_path / "x")
    assert proc.returncode == 2 and "unknown language 'cobol'" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_unsupported_ops_are_all_listed_before_anything_is_written(tmp_path, monkeypatch):
    from distill import ops
    monkeypatch.setitem(ops.OPS, "swish", ops.OpDef("swish", lambda x, a, w: x,
                                                    lambda s, a, w: s))
    monkeypatch.setitem(LOWERINGS, "swish", lambda *a: None)
    model = ir.make_model("m", (2,), [("a", "swish", {}, {}), ("b", "swish", {}, {})])
    with pytest.raises(distill.DistillError) as e:
        codegen.export(model, ["c", "go"], tmp_path / "out")
    text = str(e.value)
    for lang in ("c", "go"):
        for node in ("a", "b"):
            assert f"{lang}: node '{node}' uses op 'swish'" in text
    assert not (tmp_path / "out").exists()


def test_verify_command(tmp_path):
    model_path = tmp_path / "tiny.distill"
    distill.save(tiny_model(), model_path)
    proc = cli("verify", model_path, "--samples", "50")
    assert proc.returncode == 0, proc.stderr
    for lang in LANGS:
        assert re.search(rf"{lang}\s+pass\s+50 samples\s+max abs \S+\s+max rel \S+\s+max ULP",
                         proc.stdout), proc.stdout


def test_verify_catches_a_wrong_template(tmp_path, monkeypatch):
    """A check that cannot fail is no check: break the C relu and watch verify fail."""
    fake = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", fake)
    relu = fake / "c" / "ops" / "relu.j2"
    text = relu.read_text()
    assert "v <= 0.0f ? 0.0f : v;" in text  # else this test would break nothing
    relu.write_text(text.replace("v <= 0.0f ? 0.0f : v;", "v <= 0.0f ? 0.0f : v * 1.01f;"))
    monkeypatch.setattr(codegen, "templates_dir", lambda: fake)
    model = ir.make_model("r", (4,), [("d", "dense", {}, {"kernel": np.eye(4, dtype=np.float32),
                                                          "bias": np.ones(4, np.float32)}),
                                      ("act", "relu", {}, {})])
    (c_result,) = verify(model, ["c"], samples=8)
    assert not c_result.ok and c_result.max_abs > 1e-3


# ---------------------------------------------------------------- big models: speed and blobs

def test_fast_float_formatting_is_float_literal_for_every_value():
    """float_lines formats whole arrays at once; it must write exactly what float_literal
    writes for each value (shortest round-trip text), at every magnitude."""
    from distill.codegen.render import float_lines, float_literal, float_literals
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    values = np.concatenate([values[np.isfinite(values)], EDGE,
                             rng.normal(0, 0.05, 50_000).astype(np.float32),
                             np.float32([1e-4, 9.99999e-5, 1e6, 999999.94, 1e7, 1.0, -1.0])])
    assert float_literals(values) == [float_literal(v) for v in values]
    for suffix, indent, neg_zero in (("f", "    ", None), ("", "\t", "negZero")):
        lines = float_lines(values[:3000], suffix, 96, indent, neg_zero).split("\n")
        assert all(len(line.expandtabs(1)) <= 96 and line.endswith(",") for line in lines)
        items = [t.strip() for line in lines for t in line.split(",") if t.strip()]
        want = [neg_zero if neg_zero and t == "-0.0" else t + suffix
                for t in map(float_literal, values[:3000])]
        assert items == want


def test_auto_weight_storage_picks_literals_for_small_models_and_a_blob_for_big_ones(tmp_path):
    def dense(n_in, n_out):
        return ir.make_model("m", (n_in,), [("d", "dense", {}, {
            "kernel": np.full((n_in, n_out), 0.5, np.float32),
            "bias": np.zeros(n_out, np.float32)})])
    small = dense(100, codegen.AUTO_BLOB_PARAMETERS // 101)
    big = dense(100, codegen.AUTO_BLOB_PARAMETERS // 101 + 1)
    assert ir.stats(small)["parameters"] <= codegen.AUTO_BLOB_PARAMETERS
    assert ir.stats(big)["parameters"] > codegen.AUTO_BLOB_PARAMETERS
    assert codegen.storage(small) == "literal" and codegen.storage(big) == "blob"
    assert codegen.storage(big, "literal") == "literal"
    assert "m.weights" not in codegen.render(small, "go", samples=1)
    assert "m.weights" in codegen.render(big, "go", samples=1)
    assert "m.weights" not in codegen.render(big, "go", samples=1, weights="literal")
    proc = cli("export", _save(big, tmp_path), "--lang", "go", "-o", tmp_path / "go")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "go" / "m.weights").stat().st_size == 4 * ir.stats(big)["parameters"]


def _save(model, folder):
    path = folder / f"{model.name}.distill"
    distill.save(model, path)
    return path


def test_unknown_weight_storage_is_an_error(tmp_path):
    with pytest.raises(distill.DistillError, match="weight storage"):
        codegen.render(tiny_model(), "c", weights="pickle")
    with pytest.raises(distill.DistillError, match="weight storage"):
        codegen.export(tiny_model(), ["c"], tmp_path / "x", weights="pickle")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("model", [*every_op_models(), tiny_model()], ids=lambda m: m.name)
def test_blob_weights_are_bit_exact_and_pass_the_self_tests(model, tmp_path):
    """weights="blob": C reads 32-bit words through a union, Go an embedded file; the same
    bits as the IR, and the same self-tests pass."""
    from distill.verify import run_self_test
    for lang in ("c", "go", "numpy"):
        folder = tmp_path / lang
        paths = codegen.export(model, [lang], folder, samples=8, weights="blob")
        target = codegen.text_targets()[lang]
        result = run_self_test(lang, folder, codegen.export_name(model, target, None))
        assert result.ok and result.samples == 8, result.line()
        if lang == "go":
            assert (folder / f"{model.name}.weights") in paths
            assert subprocess.run(["gofmt", "-l", "."], cwd=folder, capture_output=True,
                                  text=True, check=True).stdout == ""
    edge = ir.make_model("edge", (len(EDGE),), [
        ("d", "dense", {}, {"kernel": np.diag(EDGE) + 0.0, "bias": EDGE})])
    edge.node("d").weights["kernel"][0, 0] = -0.0
    for lang, dump in (("c", weight_bits_c), ("go", weight_bits_go)):
        folder = tmp_path / f"edge_{lang}"
        codegen.export(edge, [lang], folder, samples=2, weights="blob")
        ctx = codegen.context(edge, codegen.text_targets()[lang], None, 1, "blob")
        expected = {w["ident"]: w["values"].reshape(-1).view(np.uint32) for w in ctx["weights"]}
        got = dump(folder, "edge", list(expected)) if lang == "c" else dump(folder,
                                                                             list(expected))
        for ident, bits in expected.items():
            assert np.array_equal(got[ident], bits), (lang, ident)


def test_blob_c_is_clean_c99(tmp_path):
    codegen.export(tiny_model(), ["c"], tmp_path / "c", weights="blob")
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-Wshadow",
                    "-Wconversion", "-Wdouble-promotion", "-c", "tiny.c"], cwd=tmp_path / "c",
                   check=True)


def odd_mlp() -> ir.Model:
    """Sizes that fill no vector evenly: remainders everywhere in the tiled kernels."""
    rng = np.random.default_rng(3)
    sizes, acts = (37, 21, 15, 11, 5), ("tanh", "sigmoid", "leaky_relu", "softmax")
    layers = []
    for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append((f"d{k}", "dense", {}, {"kernel": rng.normal(size=(a, b)).astype(np.float32),
                                             "bias": rng.normal(size=b).astype(np.float32)}))
        layers.append((f"a{k}", acts[k], {"alpha": 0.3} if acts[k] == "leaky_relu" else {}, {}))
    return ir.make_model("odd", (sizes[0],), layers)


@pytest.mark.parametrize("flags", [["-O0"], ["-O2"], ["-O3", "-march=native"]],
                         ids=lambda f: " ".join(f))
def test_c_batch_equals_single_sample_bit_for_bit(flags, tmp_path):
    """predict_batch runs tiles of samples through vectorized loops and the rest one by one;
    the self-test compares it with predict by memcmp, here under every optimization level
    (vectorizers must not change the order of any sum) and the strictest warnings."""
    for model in [*every_op_models(), odd_mlp()]:
        folder = tmp_path / model.name
        codegen.export(model, ["c"], folder, samples=5)
        build = subprocess.run(["gcc", "-std=c99", *flags, "-Wall", "-Wextra", "-Wpedantic",
                                "-Werror", "-Wshadow", "-Wconversion", "-Wdouble-promotion",
                                "-o", "t", f"{model.name}_test.c", f"{model.name}.c", "-lm"],
                               cwd=folder, capture_output=True, text=True)
        if build.returncode and "-march=native" in flags and "march" in build.stderr:
            pytest.skip("this gcc cannot target the host CPU")
        assert build.returncode == 0, build.stderr
        run = subprocess.run(["./t"], cwd=folder, capture_output=True, text=True)
        assert run.returncode == 0 and "PASS" in run.stdout, run.stdout + run.stderr


def test_the_workspace_is_planned_by_liveness():
    """Slots are reused once their value's last reader has run, elementwise ops and merges
    write over an input nothing reads later, and an output is computed in place."""
    rng = np.random.default_rng(3)
    chain = ir.make_model("chain", (4,), [
        (f"d{k}", "dense", {}, {"kernel": rng.normal(size=(4, 4)).astype(np.float32)})
        for k in range(5)])
    steps, buffers = codegen.plan(chain)
    assert [s["dst"] for s in steps] == ["ws0", "ws1", "ws0", "ws1", "output"]
    assert codegen.workspace_floats(chain) == 8
    residual = {m.name: m for m in graph_models(np.random.default_rng(0))}["residual"]
    steps, buffers = codegen.plan(residual)
    assert [(s["op"], s["dst"]) for s in steps] == [
        ("dense", "ws0"), ("relu", "ws0"), ("add", "ws0"), ("dense", "ws1"), ("add", "ws1"),
        ("sigmoid", "output")]
    assert codegen.workspace_floats(residual) == 12
    text = codegen.render(residual, "c")["residual.h"].decode()
    assert "#define RESIDUAL_WORKSPACE_SIZE 12\n" in text


def test_merges_give_the_reference_bits_in_c_and_go(tmp_path):
    """Every merge, each output on its own, on the special values: sums and products left to
    right, NaN from any input, and of equal values (+0.0 and -0.0) the later, as NumPy's
    maximum and minimum give them."""
    n = 5
    merges = [m for m in ops.MERGES if m != "concatenate"]
    model = ir.make_model("merges", {"a": (n,), "b": (n,), "c": (n,)}, [
        *[(m, m, {}, {}, ["a", "b"] if m == "subtract" else ["a", "b", "c"]) for m in merges],
        ("cat", "concatenate", {"axis": 0}, {}, ["c", "a"]),
    ], outputs=[*merges, "cat"])
    specials = np.array(SPECIALS, np.float32)
    # every ordered pair of specials in (a, b), c from the specials too, each repeated n times
    a, b = (v.reshape(-1) for v in np.meshgrid(specials, specials))
    x = np.repeat(np.stack([a, b, np.roll(a, 3)], axis=1), n, axis=1)
    x[:len(x) // 2, [0, n, 2 * n]] = [[-0.0, 0.0, -0.0]]  # equal values of both signs
    x[len(x) // 2:, [1, n + 1, 2 * n + 1]] = [[0.0, -0.0, 0.0]]
    with np.errstate(all="ignore"):
        want = distill.run(model, x).reshape(-1)
    want_bits = [f"{v:08x}" for v in want.view(np.uint32)]
    nan = np.isnan(want)
    for got in c_and_go_bits(model, x, tmp_path / "m", ""):
        assert [g for g, isnan in zip(got, nan) if not isnan] == \
            [w for w, isnan in zip(want_bits, nan) if not isnan]
        assert all(np.isnan(np.uint32(int(g, 16)).view(np.float32))
                   for g, isnan in zip(got, nan) if isnan)


def test_activations_keep_special_values_in_c_and_go(tmp_path):
    """NaN stays NaN, infinities come out where the reference gives them, and
    every other value within the export tolerance, for every op of ACTIVATION_CASES."""
    from conftest import ACTIVATION_CASES
    layers = [(f"{op}_{k}", op, attrs, {}, "input") for k, (op, attrs, w) in
              enumerate(ACTIVATION_CASES) if not w and op not in ("layer_norm", "softmax")]
    model = ir.make_model("specials", (len(SPECIALS),), layers,
                          outputs=[name for name, *_ in layers])
    x = np.array([SPECIALS, np.negative(SPECIALS)], np.float32)
    with np.errstate(all="ignore"):
        want = distill.run(model, x).reshape(-1)
    for got in c_and_go_bits(model, x, tmp_path / "m"):
        got = np.array([int(g, 16) for g in got], np.uint32).view(np.float32)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        ok = ~np.isnan(want)
        assert np.array_equal(got[ok] == np.inf, want[ok] == np.inf)
        assert np.array_equal(got[ok] == -np.inf, want[ok] == -np.inf)
        finite = ok & np.isfinite(want)
        err = np.abs(got[finite].astype(np.float64) - want[finite])
        assert (err <= codegen.ABS_TOL + codegen.REL_TOL * np.abs(want[finite])).all()


def test_every_op_alone_builds_warning_free_in_c_and_go():
    """Each op as a model's only node (its round-trip cases): the emitted C declares nothing it
    does not use, whatever the other ops would, and the self-tests pass."""
    from test_ir import OP_CASES
    for op_name, cases in sorted(OP_CASES.items()):
        _, input_shape, layers = cases[0]
        model = ir.make_model(f"alone_{op_name}", input_shape, layers(np.random.default_rng(3)))
        for result in verify(model, ["c", "go"], samples=4):
            assert result.ok, (op_name, result.line())


# ------------------------------------------------------------------------------- streaming

def stream_model(steps: int) -> ir.Model:
    """conftest's streaming model, over `steps` time steps."""
    model = next(m for m in graph_models(np.random.default_rng(0)) if m.name == "stream")
    return ir.make_model("stream", (steps, *model.input_shape[1:]),
                         [(n.name, n.op, n.attrs, n.weights, n.inputs) for n in model.nodes],
                         outputs=model.outputs)


def test_which_models_stream_and_why_not():
    from distill.codegen.stream import step_model
    models = {m.name: m for m in graph_models(np.random.default_rng(0))}
    assert step_model(models["recurrent"]) == "node 'lstm' reads its steps last to first"
    assert step_model(models["conv1d"]) == "it has no recurrent layer"
    before = ir.make_model("late", (6, 3), [("c", "conv", {"strides": [1], "pads": [0, 0],
                                                           "groups": 1},
                                             {"kernel": np.ones((2, 3, 3), np.float32)}),
                                            ("r", "simple_rnn", {"return_sequences": False},
                                             {"kernel": np.ones((3, 2), np.float32),
                                              "recurrent_kernel": np.eye(2, dtype=np.float32)})])
    assert step_model(before) == "node 'c' (conv) reads across the time steps"
    tokens = step_model(models["tokens"])
    assert (tokens.state, tokens.state_size, tokens.outputs) == ({"lstm": 0}, 4, [False, True])
    stream = step_model(models["stream"])
    assert stream.state == {"rnn": 0, "gru": 3, "gru_last": 5, "last": 7}
    assert stream.outputs == [False, True, True] and stream.model.input_shape == (1, 3)
    for lang in ("c", "go", "numpy"):  # the API is there exactly when the model streams
        for model in models.values():
            files = b"".join(codegen.render(model, lang, samples=1).values())
            api = {"c": b"_step(", "go": b"func Step(", "numpy": b"def step("}[lang]
            assert (api in files) == (model.name in ("tokens", "stream")), (lang, model.name)


def test_a_stream_runs_past_the_trained_length_with_predicts_bits(tmp_path):
    """The C and NumPy step functions of a model trained on 5 steps, run for 12, give the bits
    the same model's predict gives over 12 steps: each step's row of the sequence outputs,
    and the last-step outputs at the end (C for one stream, NumPy for three side by side)."""
    short, long = stream_model(5), stream_model(12)
    x = np.random.default_rng(1).normal(size=(3, 12, 3)).astype(np.float32)
    codegen.export(short, ["c", "numpy"], tmp_path / "short", name="s")
    codegen.export(long, ["c", "numpy"], tmp_path / "long", name="l")
    rows = [(0, 3, False), (3, 2, True), (5, 3, True)]  # (offset, size, a sequence) per output

    def expected(whole: np.ndarray) -> np.ndarray:  # (N, 12 steps, 8 step outputs)
        out = np.zeros((len(whole), 12, 8), np.float32)
        offset = 0
        for at, size, seq in rows:
            if seq:
                out[:, :, at:at + size] = whole[:, offset:offset + 12 * size].reshape(-1, 12, size)
                offset += 12 * size
            else:
                out[:, -1, at:at + size] = whole[:, offset:offset + size]
                offset += size
        return out
    keep = np.zeros((12, 8), bool)
    keep[:, 3:] = True
    keep[-1, :3] = True  # the last-step output, compared at the end only

    short_py = load_module(tmp_path / "short" / "numpy" / "s.py", "stream_short")
    long_py = load_module(tmp_path / "long" / "numpy" / "l.py", "stream_long")
    state = short_py.reset(len(x))
    got = np.stack([short_py.step(state, x[:, t]) for t in range(12)], axis=1)
    want = expected(long_py.predict(x).reshape(len(x), -1))
    assert np.array_equal(got[:, keep].view(np.uint32), want[:, keep].view(np.uint32))

    (tmp_path / "short" / "c" / "steps.c").write_text(
        '#include "s.h"\n#include <stdio.h>\n#include <string.h>\n'
        "int main(void) {\n    float in[S_STEP_INPUT_SIZE], out[S_STEP_OUTPUT_SIZE];\n"
        "    unsigned int u;\n    int i;\n    s_state state;\n\n    s_reset(&state);\n"
        "    while (fread(in, sizeof in, 1, stdin) == 1) {\n"
        "        s_step(&state, in, out);\n"
        "        for (i = 0; i < S_STEP_OUTPUT_SIZE; ++i) {\n"
        '            memcpy(&u, &out[i], 4);\n            printf("%08x\\n", u);\n'
        "        }\n    }\n    return 0;\n}\n")
    (tmp_path / "long" / "c" / "whole.c").write_text(
        '#include "l.h"\n#include <stdio.h>\n#include <string.h>\n'
        "int main(void) {\n    float in[L_INPUT_SIZE], out[L_OUTPUT_SIZE];\n"
        "    unsigned int u;\n    int i;\n\n"
        "    if (fread(in, sizeof in, 1, stdin) != 1) {\n        return 1;\n    }\n"
        "    l_predict(in, out);\n"
        "    for (i = 0; i < L_OUTPUT_SIZE; ++i) {\n"
        '        memcpy(&u, &out[i], 4);\n        printf("%08x\\n", u);\n'
        "    }\n    return 0;\n}\n")

    def run_c(folder: Path, main: str, source: str) -> np.ndarray:
        subprocess.run(["cc", "-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror",
                        "-o", main, f"{main}.c", source, "-lm"], cwd=folder, check=True)
        out = subprocess.run([f"./{main}"], cwd=folder, input=x[0].astype("<f4").tobytes(),
                             capture_output=True, check=True).stdout.decode().split()
        return np.array([int(v, 16) for v in out], np.uint32)
    c_steps = run_c(tmp_path / "short" / "c", "steps", "s.c").reshape(12, 8)
    c_whole = run_c(tmp_path / "long" / "c", "whole", "l.c").view(np.float32)
    assert np.array_equal(c_steps[keep], expected(c_whole[None])[0][keep].view(np.uint32))


def test_export_says_whether_a_model_streams(tmp_path):
    models = {m.name: m for m in graph_models(np.random.default_rng(0))}
    said = {}
    for name in ("stream", "recurrent", "residual"):
        ir.save(models[name], tmp_path / f"{name}.distill")
        out = cli("export", str(tmp_path / f"{name}.distill"), "--lang", "c", "-o",
                  str(tmp_path / name))
        assert out.returncode == 0, out.stderr
        said[name] = [line for line in out.stdout.splitlines() if "streaming API" in line]
    assert said["stream"] == ["streaming API: one time step per call (C stream_step, Go Step, "
                              "NumPy step), 44 bytes of caller-owned state per stream"]
    assert said["recurrent"] == ["no streaming API: node 'lstm' reads its steps last to first"]
    assert said["residual"] == []
