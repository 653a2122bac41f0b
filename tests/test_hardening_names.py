"""Hostile names and labels, and the emitted code's run-time contract.

Names: more than 60 layer names and 30 model names (keywords of C, Go and Python, comment and
string delimiters, backslashes, newlines, NUL, unicode, 10,000 characters, names that collide
after sanitizing, names of the emitted code's own locals) and hostile labels. Every target must
still build cleanly (C with strict warnings, header as C++, gofmt and vet, Python byte-compiled)
and match the reference; no fragment of a name may appear in emitted text unless the same export
of a harmlessly named twin has it too; labels differ from a twin's only inside string literals,
and read back exactly at run time.

Run time: C returns NAME_ERR_NULL for every NULL pointer, Go wraps ErrSize for every wrong
length, the NumPy module raises ValueError for every wrong shape, and NaN or infinite inputs
give NaN or infinite outputs exactly where the reference interpreter gives them (C, Go, NumPy,
ONNX), never a crash.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import numpy as np
import pytest
from conftest import load_module
from test_hardening_fuzz import base_model

from distill import codegen, ir
from distill.verify import verify

LANGS = codegen.languages()
GO_ENV = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
C_STRICT = ["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-Wshadow",
            "-Wconversion", "-Wdouble-promotion", "-Wstrict-prototypes", "-Wmissing-prototypes",
            "-Wcast-qual", "-Wwrite-strings", "-Wundef", "-Wvla", "-Wformat=2"]

C_KEYWORDS = ["int", "return", "struct", "sizeof", "static", "void", "while", "restrict",
              "_Bool", "default", "register", "NULL", "errno", "main", "size_t"]
GO_KEYWORDS = ["func", "package", "import", "chan", "go", "defer", "select", "map", "type",
               "range", "fallthrough", "iota", "nil", "len", "make", "error"]
PY_KEYWORDS = ["lambda", "None", "True", "class", "def", "yield", "await", "async", "from",
               "nonlocal", "match", "case", "_", "__init__", "__builtins__", "self"]
TEXT = ["*/", "/*", "//", '"', "'", "\\", '\\"', "\n", "\r\n", "\x00", "a\x00b", "\t", "??/",
        "ü", "名前", "😀", "\u202e", "\ud800", "x" * 10_000, "", " ", "-", "1st", "%s%n",
        "${HOME}", "`rm -rf /`", '"; system("rm -rf /"); //', "*/ system(\"x\"); /*",
        "#include <stdio.h>", "#define int float", "\\\nint x;", "\"\"\"", "'''", "__import__",
        "<script>", "NaN", "-0"]
COLLIDING = ["a-b", "a_b", "A B", "a b", "a__b", "_a_b_", "A-B", "dense_1", "Dense-1",
             "dense 1", "a_1", "a1", "x" * 31, "x" * 40, "x" * 41]
LOCALS = ["input", "output", "ws", "ws0", "ws1", "workspace", "i", "j", "k", "r", "x", "y", "w",
          "xi", "v", "dst", "out", "best", "status", "err", "predict", "labels", "ErrSize",
          "negZero", "InputSize", "fuzz", "evil"]
MODEL_NAME = 'evil */ name\n"; system("x"); //'
# The model's own name, raw and sanitized, is a layer name too.
LAYER_NAMES = C_KEYWORDS + GO_KEYWORDS + PY_KEYWORDS + TEXT + COLLIDING + LOCALS + [
    MODEL_NAME, "evil_name_system_x"]
MODEL_NAMES = (["int", "return", "func", "package", "go", "lambda", "None", "class", "match",
                "main", "errno", "error", "len", "self", "*/", "//", '"; system("x"); //',
                "\n", "\x00", "ü", "x" * 10_000, "", "-", "1st", "input", "output", "ws0",
                "predict", "labels", "a-b"])
LABELS = ['a"b', "c*/d", 'e\\"); system("f");', "line\nbreak", "nul\x00byte", "ü名😀",
          "??/", "*/", "%s", "\\", "`x`", "\u202e"]


def hostile_model(name: str = MODEL_NAME, labels=LABELS) -> ir.Model:
    rng = np.random.default_rng(3)
    layers = []
    for i, raw in enumerate(LAYER_NAMES):
        layers.append((raw, "dense", {}, {"kernel": rng.normal(size=(3, 3)).astype(np.float32),
                                          "bias": rng.normal(size=3).astype(np.float32)}))
        op = ["tanh", "relu", "sigmoid", "leaky_relu"][i % 4]
        layers.append((raw, op, {"alpha": 0.25} if op == "leaky_relu" else {}, {}))
    layers.append(("last", "dense", {}, {"kernel": rng.normal(size=(3, len(labels)))
                                         .astype(np.float32)}))
    layers.append(("probs", "softmax", {}, {}))
    return ir.make_model(name, (3,), layers, labels=labels)


def twin(model: ir.Model, labels: list[str]) -> ir.Model:
    """The same model with other labels (and the IR's sanitized names, which it already has)."""
    return ir.Model(model.name, model.inputs, model.nodes, model.outputs, tuple(labels),
                    dict(model.metadata))


def test_there_are_enough_hostile_names():
    assert len(LAYER_NAMES) >= 30 and len(MODEL_NAMES) >= 30
    model = hostile_model()
    names = [n.name for n in model.nodes]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) and len(n) <= 48 for n in names)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The hostile model exported to every language, and its twin with plain labels."""
    root = tmp_path_factory.mktemp("hostile")
    model = hostile_model()
    plain = twin(model, [f"label{i}" for i in range(len(LABELS))])
    codegen.export(model, LANGS, root / "evil")
    codegen.export(plain, LANGS, root / "plain")
    return model, root


def test_hostile_names_verify_in_every_language(hostile):
    model, _ = hostile
    for result in verify(model, LANGS, samples=16):
        assert result.ok, result.line()


def text_files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text(encoding="utf-8")
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix != ".onnx"}


def test_no_fragment_of_a_name_reaches_the_emitted_text(hostile):
    """Any raw name (or label) text found in the hostile export must be found in the plain
    twin's too: it is then the templates' own text (a `//` comment, an `int`), not the name."""
    _, root = hostile
    evil, plain = text_files(root / "evil"), text_files(root / "plain")
    assert evil.keys() == plain.keys()
    evil_all, plain_all = "\n".join(evil.values()), "\n".join(plain.values())
    raws = [r for r in LAYER_NAMES + MODEL_NAMES + LABELS if len(r) >= 2]
    leaked = [r for r in raws if r in evil_all and r not in plain_all]
    assert not leaked, leaked
    for bad in ('system("', "rm -rf", "\x00", "\u202e", "#define int"):
        assert bad not in evil_all


STRING = {"c": r'"(?:[^"\\\n]|\\.)*"', "go": r'"(?:[^"\\\n]|\\.)*"'}


def masked(lang: str, text: str) -> str:
    """`text` with every string literal replaced by S: what is left is code and comments."""
    if lang in STRING:
        return re.sub(STRING[lang], "S", text)
    tokens = tokenize.generate_tokens(iter(text.splitlines(keepends=True)).__next__)
    return tokenize.untokenize((t.type, "S" if t.type == tokenize.STRING else t.string)
                               for t in tokens)


def test_labels_only_change_string_literals(hostile):
    """The hostile export equals its plain twin outside string literals (in code and in
    comments alike): a label can neither end a literal nor a comment."""
    _, root = hostile
    evil, plain = text_files(root / "evil"), text_files(root / "plain")
    for rel, text in evil.items():
        lang = rel.split("/")[0]
        if lang not in ("c", "go", "numpy") or rel.endswith((".mod", ".distill-export")):
            continue
        got, want = masked(lang, text), masked(lang, plain[rel])
        # The header comment and the labels array differ in literal count only if a literal
        # was split: same shape, same code.
        assert got == want, f"{rel} differs from its twin outside string literals"


def test_strict_builds_and_formatters_accept_hostile_exports(hostile):
    _, root = hostile
    c = root / "evil" / "c"
    name = next(p.stem for p in c.glob("*.h"))
    subprocess.run(["gcc", *C_STRICT, "-c", f"{name}.c", "-o", "m.o"], cwd=c, check=True)
    subprocess.run(["gcc", *C_STRICT, "-Wno-missing-prototypes", "-c", f"{name}_test.c", "-o",
                    "t.o"], cwd=c, check=True)
    subprocess.run(["g++", "-std=c++11", "-Wall", "-Wextra", "-pedantic", "-Werror",
                    "-fsyntax-only", "-x", "c++", f"{name}.h"], cwd=c, check=True)
    go = root / "evil" / "go"
    out = subprocess.run(["gofmt", "-l", "."], cwd=go, capture_output=True, text=True,
                         check=True)
    assert out.stdout == ""
    subprocess.run(["go", "vet", "./..."], cwd=go, check=True, env=GO_ENV)
    for path in (root / "evil" / "numpy").glob("*.py"):
        ast.parse(path.read_text(encoding="utf-8"), str(path))
        assert path.read_text(encoding="utf-8").isascii()


def c_labels(folder: Path, name: str) -> list[bytes]:
    (folder / "labels.c").write_text(
        f'#include "{name}.h"\n#include <stdio.h>\n#include <string.h>\n'
        "int main(void) {\n    int k;\n"
        f"    for (k = 0; k < {name.upper()}_NUM_CLASSES; ++k) {{\n"
        f"        fwrite({name}_labels[k], 1, strlen({name}_labels[k]), stdout);\n"
        '        fputc(0x1e, stdout);\n    }\n    return 0;\n}\n')
    subprocess.run(["cc", "-std=c99", "-o", "labels", "labels.c", f"{name}.c", "-lm"],
                   cwd=folder, check=True)
    out = subprocess.run(["./labels"], cwd=folder, capture_output=True, check=True).stdout
    return out.split(b"\x1e")[:-1]


def test_labels_read_back_exactly(hostile, tmp_path):
    _, root = hostile
    c = root / "evil" / "c"
    name = next(p.stem for p in c.glob("*.h"))
    # C strings end at NUL: the label reads back up to its first NUL (documented C semantics).
    assert c_labels(c, name) == [lab.encode().split(b"\0")[0] for lab in LABELS]
    go = root / "evil" / "go"
    package = re.search(r"^module (\w+)", (go / "go.mod").read_text(), re.M).group(1)
    (go / "labels_test.go").write_text(
        f'package {package}\n\nimport (\n\t"os"\n\t"strings"\n\t"testing"\n)\n\n'
        "func TestLabelsOut(t *testing.T) {\n"
        '\tos.WriteFile(os.Getenv("LABELS_OUT"), []byte(strings.Join(Labels[:], "\\x1e")), '
        "0o644)\n}\n")
    subprocess.run(["go", "test", "-count=1", "-run", "TestLabelsOut", "."], cwd=go, check=True,
                   env={**GO_ENV, "LABELS_OUT": str(tmp_path / "labels")}, capture_output=True)
    assert (tmp_path / "labels").read_bytes().split(b"\x1e") == [lab.encode() for lab in LABELS]
    module = numpy_export(root / "evil" / "numpy")
    assert list(module.LABELS) == LABELS


def numpy_export(folder: Path):
    """The NumPy module exported into folder."""
    path = next(p for p in folder.glob("*.py") if not p.name.startswith("test_"))
    return load_module(path, f"hardening_{folder.parent.name}_{path.stem}")


@pytest.mark.slow
def test_hostile_model_names_in_every_language(tmp_path):
    """Each hostile model name, and --name, exported to every language, built and run."""
    rng = np.random.default_rng(0)
    layers = [("d", "dense", {}, {"kernel": rng.normal(size=(3, 2)).astype(np.float32)}),
              ("p", "softmax", {}, {})]
    seen = set()
    for raw in MODEL_NAMES:
        model = ir.make_model(raw, (3,), layers, labels=["a", "b"])
        seen.add(model.name)
        for result in verify(model, ["c", "numpy", "onnx"], samples=4):
            assert result.ok, (raw, result.line())
    assert len(seen) > 20
    # Go builds are the slow ones: all the names in one workspace, one `go vet` and `go test`.
    work = tmp_path / "go"
    work.mkdir()
    packages = []
    for raw in MODEL_NAMES:
        model = ir.make_model(raw, (3,), layers, labels=["a", "b"])
        folder = work / f"m{len(packages)}"
        codegen.export(model, ["go"], folder, samples=4)
        packages.append(re.search(r"^module (\S+)", (folder / "go.mod").read_text(),
                                  re.M).group(1))
    unique = sorted(set(packages))
    uses = "\n".join(f"\t./m{packages.index(p)}" for p in unique)
    (work / "go.work").write_text(f"go 1.21\n\nuse (\n{uses}\n)\n")
    env = {**GO_ENV, "GOFLAGS": ""}
    proc = subprocess.run(["go", "test", "-count=1", *unique], cwd=work, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_hostile_name_option_stays_inside_the_output(tmp_path):
    from test_hardening_fuzz import run_cli
    path = tmp_path / "m.distill"
    ir.save(base_model(), path)
    for name in ("../../escape", "/etc/passwd", "\x00", "x" * 5000):
        out = tmp_path / "out"
        code, _, err, _ = run_cli(["export", str(path), "--lang", "all", "-o", str(out),
                                   "--name", name])
        assert code == 0, err
        files = [p for p in out.rglob("*") if p.is_file()]
        assert files and all(p.resolve().is_relative_to(out.resolve()) for p in files)
        assert all(re.fullmatch(r"[a-z][a-z0-9_.]*", p.name) for p in files
                   if p.name != ".distill-export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.distill", "out"]


def test_no_model_name_becomes_a_standard_library_module():
    """Every Python standard-library module name and every top-level Go standard package, as
    a model name, is exported under another name (checked without building: all of them)."""
    targets = codegen.text_targets()
    std = subprocess.run(["go", "list", "std"], capture_output=True, text=True, check=True,
                         env=GO_ENV).stdout.split()
    go_std = {p.split("/")[0] for p in std}
    for names, lang, taken in ((sys.stdlib_module_names, "numpy", sys.stdlib_module_names),
                               (go_std, "go", go_std)):
        for raw in sorted(names):
            model = ir.Model(ir.sanitize_name(raw), (("input", (1,)),), (), ("input",))
            assert codegen.export_name(model, targets[lang], None) not in taken, (lang, raw)


@pytest.mark.parametrize("name, lang", [("pickle", "numpy"), ("random", "numpy"),
                                        ("strings", "go"), ("os", "go")])
def test_model_named_after_a_standard_library_module(name, lang):
    """A NumPy export `pickle.py` would shadow what numpy imports; a Go module `strings` would
    be ambiguous with the standard library: such names are reserved per target."""
    model = ir.make_model(name, (3,), [("d", "dense", {}, {"kernel": np.ones((3, 2))})])
    (result,) = verify(model, [lang], samples=4)
    assert result.ok, result.line()


# ---------------------------------------------------------------------------- run time

def runtime_models() -> list[ir.Model]:
    rng = np.random.default_rng(5)
    return [
        base_model(),  # every op, three labels
        ir.make_model("binary", (4,), [("d", "dense", {}, {"kernel": rng.normal(size=(4, 1)),
                                                           "bias": np.zeros(1)}),
                                       ("s", "sigmoid", {}, {})], labels=["no", "yes"]),
        ir.make_model("regress", (2, 3), [("d", "dense", {}, {"kernel": rng.normal(size=(3, 4))}),
                                          ("f", "flatten", {}, {}),
                                          ("r", "relu", {}, {})]),
        ir.make_model("copy", (3,), [("f", "flatten", {}, {})]),
    ]


def special_inputs(model: ir.Model) -> np.ndarray:
    """NaN, inf and -inf in every position, alone and all at once, plus ordinary rows."""
    size = int(np.prod(model.input_shape))
    rows = [np.zeros(size), np.linspace(-2, 2, size)]
    for value in (np.nan, np.inf, -np.inf):
        for k in range(size):
            row = np.linspace(-1, 1, size)
            row[k] = value
            rows.append(row)
        rows.append(np.full(size, value))
    rows.append(np.full(size, 3.4e38))
    return np.array(rows, np.float32).reshape(-1, *model.input_shape)


def same_specials(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Bit patterns aside, NaN where the reference has NaN, the same infinities, and values
    within the export tolerance elsewhere."""
    got = got.reshape(want.shape).astype(np.float64)
    want = want.astype(np.float64)
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN positions differ"
    assert np.array_equal(np.isposinf(got), np.isposinf(want)), f"{what}: +inf differs"
    assert np.array_equal(np.isneginf(got), np.isneginf(want)), f"{what}: -inf differs"
    finite = np.isfinite(want)
    assert np.all(np.abs(got[finite] - want[finite])
                  <= codegen.ABS_TOL + codegen.REL_TOL * np.abs(want[finite])), what


C_HARNESS = """\
#include "{name}.h"
#include <stdio.h>

static int check(int got, int want, const char *what)
{{
    if (got != want) {{
        fprintf(stderr, "%s: got %d, want %d\\n", what, got, want);
        return 1;
    }}
    return 0;
}}

int main(void)
{{
    float in[{N}_INPUT_SIZE] = {{0}};
    float out[{N}_OUTPUT_SIZE];
    float ws[{N}_WORKSPACE_SIZE > 0 ? {N}_WORKSPACE_SIZE : 1];
    int bad = 0;

    bad += check({name}_predict(NULL, out), {N}_ERR_NULL, "predict(NULL, out)");
    bad += check({name}_predict(in, NULL), {N}_ERR_NULL, "predict(in, NULL)");
    bad += check({name}_predict(NULL, NULL), {N}_ERR_NULL, "predict(NULL, NULL)");
    bad += check({name}_predict_ws(NULL, out, ws), {N}_ERR_NULL, "predict_ws(NULL, out, ws)");
    bad += check({name}_predict_ws(in, NULL, ws), {N}_ERR_NULL, "predict_ws(in, NULL, ws)");
    bad += check({name}_predict_ws(in, out, NULL), {N}_ERR_NULL, "predict_ws(in, out, NULL)");
    bad += check({name}_predict_batch(1, NULL, out), {N}_ERR_NULL, "predict_batch(1, NULL, out)");
    bad += check({name}_predict_batch(1, in, NULL), {N}_ERR_NULL, "predict_batch(1, in, NULL)");
    bad += check({name}_predict_batch(0, in, out), {N}_OK, "predict_batch(0, in, out)");
    bad += check({name}_predict_ws(in, out, ws), {N}_OK, "predict_ws(in, out, ws)");
{classifier}
    /* Then the rows on stdin, outputs to stdout: NaN and inf must come through, not crash. */
    while (fread(in, sizeof in, 1, stdin) == 1) {{
        bad += check({name}_predict(in, out), {N}_OK, "predict(special)");
        fwrite(out, sizeof out, 1, stdout);
    }}
    return bad;
}}
"""

GO_HARNESS = """\
package {package}

import (
\t"encoding/binary"
\t"errors"
\t"math"
\t"os"
\t"testing"
)

func TestRuntimeContract(t *testing.T) {{
\tin := make([]float32, InputSize)
\tout := make([]float32, OutputSize)
\tfor _, n := range []int{{0, InputSize - 1, InputSize + 1, 2 * InputSize}} {{
\t\tif _, err := Predict(make([]float32, n)); !errors.Is(err, ErrSize) {{
\t\t\tt.Errorf("Predict(len %d): %v, want ErrSize", n, err)
\t\t}}
\t\tif err := PredictInto(out, make([]float32, n)); !errors.Is(err, ErrSize) {{
\t\t\tt.Errorf("PredictInto(in len %d): %v, want ErrSize", n, err)
\t\t}}
\t}}
\tfor _, n := range []int{{0, OutputSize - 1, OutputSize + 1}} {{
\t\tif err := PredictInto(make([]float32, n), in); !errors.Is(err, ErrSize) {{
\t\t\tt.Errorf("PredictInto(dst len %d): %v, want ErrSize", n, err)
\t\t}}
\t}}
\tif _, err := Predict(nil); !errors.Is(err, ErrSize) {{
\t\tt.Errorf("Predict(nil): %v", err)
\t}}
\tif err := PredictInto(nil, nil); !errors.Is(err, ErrSize) {{
\t\tt.Errorf("PredictInto(nil, nil): %v", err)
\t}}
\tif _, err := PredictBatch(make([]float32, InputSize+1)); InputSize > 1 &&
\t\t!errors.Is(err, ErrSize) {{
\t\tt.Errorf("PredictBatch(len InputSize+1): %v", err)
\t}}
\tif got, err := PredictBatch(nil); err != nil || len(got) != 0 {{
\t\tt.Errorf("PredictBatch(nil) = %v, %v", got, err)
\t}}
{classifier}
\traw, err := os.ReadFile(os.Getenv("SPECIAL_IN"))
\tif err != nil {{
\t\tt.Fatal(err)
\t}}
\tx := make([]float32, len(raw)/4)
\tfor i := range x {{
\t\tx[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
\t}}
\ty, err := PredictBatch(x)
\tif err != nil {{
\t\tt.Fatal(err)
\t}}
\tbuf := make([]byte, 4*len(y))
\tfor i, v := range y {{
\t\tbinary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
\t}}
\tif err := os.WriteFile(os.Getenv("SPECIAL_OUT"), buf, 0o644); err != nil {{
\t\tt.Fatal(err)
\t}}
}}
"""


@pytest.mark.parametrize("model", runtime_models(), ids=lambda m: m.name)
def test_emitted_code_run_time_contract(model, tmp_path):
    x = special_inputs(model)
    with np.errstate(all="ignore"):
        want = ir.run(model, x)
    codegen.export(model, ["c", "go", "numpy", "onnx"], tmp_path)
    targets = codegen.text_targets()
    name = codegen.export_name(model, targets["c"], None)
    package = codegen.export_name(model, targets["go"], None)
    classifier = bool(model.labels)

    c = tmp_path / "c"
    c_class = (f"    bad += check({name}_predict_class(NULL) < 0, 1, \"predict_class(NULL)\");"
               if classifier else "")
    (c / "runtime.c").write_text(C_HARNESS.format(name=name, N=name.upper(),
                                                  classifier=c_class))
    subprocess.run(["cc", *C_STRICT, "-Wno-missing-prototypes", "-o", "runtime", "runtime.c",
                    f"{name}.c", "-lm"], cwd=c, check=True)
    proc = subprocess.run(["./runtime"], cwd=c, input=x.astype("<f4").tobytes(),
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    same_specials(np.frombuffer(proc.stdout, "<f4"), want, "C")

    go = tmp_path / "go"
    go_class = ("\tif _, err := PredictClass(make([]float32, InputSize+1)); "
                "!errors.Is(err, ErrSize) {\n\t\tt.Errorf(\"PredictClass: %v\", err)\n\t}"
                if classifier else "")
    (go / "runtime_test.go").write_text(GO_HARNESS.format(package=package, classifier=go_class))
    (tmp_path / "special.bin").write_bytes(x.astype("<f4").tobytes())
    proc = subprocess.run(["go", "test", "-count=1", "-run", "TestRuntimeContract", "."],
                          cwd=go, capture_output=True, text=True,
                          env={**GO_ENV, "SPECIAL_IN": str(tmp_path / "special.bin"),
                               "SPECIAL_OUT": str(tmp_path / "go.bin")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    same_specials(np.fromfile(tmp_path / "go.bin", "<f4"), want, "Go")

    module = numpy_export(tmp_path / "numpy")
    shape = tuple(model.input_shape)
    for bad in [(), (1,), (int(np.prod(shape)) + 1,), (2, int(np.prod(shape)) + 1),
                (*shape, 1), (1, 1, *shape), (0,)]:
        if bad == shape or bad[1:] == shape:
            continue
        with pytest.raises(ValueError):
            module.predict(np.zeros(bad, np.float32))
    assert module.predict(np.zeros((0, *shape), np.float32)).shape[0] == 0
    same_specials(module.predict(x), want, "NumPy")
    if classifier:
        with pytest.raises(ValueError):
            module.predict_class(np.zeros((2, 99), np.float32))

    import onnxruntime as ort
    session = ort.InferenceSession(str(next((tmp_path / "onnx").glob("*.onnx"))),
                                   providers=["CPUExecutionProvider"])
    same_specials(session.run(None, {"input": x})[0], want, "ONNX")


def test_nan_behaviour_is_documented_in_every_target(tmp_path):
    files = codegen.render(base_model(), "c") | codegen.render(base_model(), "go") \
        | codegen.render(base_model(), "numpy")
    for rel in ("fuzz.h", "fuzz.go", "fuzz.py"):
        assert "NaN" in files[rel].decode(), rel
    assert "NaN" in (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_toolchains_for_these_tests():
    for tool in ("cc", "gcc", "g++", "go", "gofmt"):
        assert shutil.which(tool), f"{tool} is not installed"
    assert sys.version_info >= (3, 11)
