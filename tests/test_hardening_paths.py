"""Where outputs go, and what they may replace: links, devices, earlier exports, read-only files,
the config itself; and the memory a deep model may take.

Each case was a hole found by trying distill as a new user and as an attacker: a link replaced
by a file (as root, `-o /dev/stdout` replaced /dev/stdout), a re-export that deleted the user's
files beside it, `-o .` ending in a traceback, names the go tool reads as build constraints, a
header named math.h shadowing the system's, 6 GB to export a 372 KB model of 2,000 nodes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG_SECONDS
from test_hardening import fails
from test_hardening_fuzz import alarm, check_error, run_cli

from distill import codegen, ir, verify


@pytest.fixture(autouse=True)
def samples(tmp_path) -> None:
    """x.npy: three samples for conftest's `small` model, beside it."""
    np.save(tmp_path / "x.npy", np.array([[0, 1], [1, 0], [2, 0]], np.float32))


def traced_peak(run):
    """(run(), the peak bytes Python allocated while it ran)."""
    tracemalloc.start()
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def ok(argv: list) -> str:
    code, out, err, _ = run_cli([str(a) for a in argv])
    assert code == 0, err
    return out


# ------------------------------------------------------------------------ links and devices

def test_predict_writes_through_a_link_to_a_file_and_keeps_the_link(small, tmp_path):
    target, link = tmp_path / "y.csv", tmp_path / "link.csv"
    target.write_text("old\n")
    link.symlink_to(target.name)
    ok(["predict", small, "--input", tmp_path / "x.npy", "-o", link])
    assert link.is_symlink() and os.readlink(link) == "y.csv"
    assert target.read_text().count("\n") == 3
    dangling = tmp_path / "new.csv"
    dangling.symlink_to("made.csv")  # a link to a file that does not exist yet: created
    ok(["predict", small, "--input", tmp_path / "x.npy", "-o", dangling])
    assert dangling.is_symlink() and (tmp_path / "made.csv").read_text().count("\n") == 3


def test_predict_to_a_link_to_standard_output_writes_the_stream(small, tmp_path):
    """`-o` a link to /proc/self/fd/1 (or /dev/stdout) with stdout sent to a file: the
    predictions reach that file, and the link and /dev/stdout stay what they were."""
    link = tmp_path / "so"
    link.symlink_to("/proc/self/fd/1")
    for target in (link, Path("/dev/stdout")):
        with open(tmp_path / "captured.txt", "wb") as out:
            proc = subprocess.run([sys.executable, "-m", "distill.cli", "predict", str(small),
                                   "--input", str(tmp_path / "x.npy"), "-o", str(target)],
                                  stdout=out, stderr=subprocess.PIPE, timeout=HANG_SECONDS)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "captured.txt").read_text().count("\n") == 3
    assert link.is_symlink() and os.readlink(link) == "/proc/self/fd/1"
    assert Path("/dev/stdout").is_symlink()


def test_export_into_a_link_to_a_folder_replaces_the_folder_and_keeps_the_link(small, tmp_path):
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to("real")
    for _ in range(2):  # into an empty folder, then over the earlier export
        ok(["export", small, "--lang", "c", "-o", link])
        assert link.is_symlink() and os.readlink(link) == "real"
        assert sorted(p.name for p in real.iterdir()) == [".distill-export", "s.c", "s.h",
                                                          "s_test.c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real", "s.distill", "x.npy"]


def test_stale_temporaries_that_are_links_are_removed_not_followed(tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious").write_text("x")
    stale = tmp_path / ".out.999999999.abcd1234"  # above any pid_max: its process is gone
    stale.symlink_to("keep")
    ir.remove_stale_temporaries(tmp_path / "out")
    assert not stale.exists() and not stale.is_symlink()
    assert (keep / "precious").read_text() == "x"


# ---------------------------------------------------------------------- what may be replaced

def test_a_reexport_never_deletes_files_it_did_not_write(small, tmp_path):
    out = tmp_path / "out"
    ok(["export", small, "--lang", "c", "-o", out])
    (out / "main.c").write_text("int main(void) { return 0; }\n")
    (out / "s.distill").write_bytes(small.read_bytes())
    line = fails(["export", out / "s.distill", "--lang", "c", "-o", out], "did not write")
    assert "main.c" in line and "s.distill" in line
    assert (out / "main.c").is_file() and (out / "s.distill").is_file()
    (out / "main.c").unlink()
    (out / "s.distill").unlink()
    # What building the export leaves is the export's: the README's `cc -o DIR/NAME_test`.
    subprocess.run(["cc", "-std=c99", "-o", str(out / "s_test"), str(out / "s_test.c"),
                    str(out / "s.c"), "-lm"], check=True, timeout=HANG_SECONDS)
    ok(["export", small, "--lang", "c", "-o", out])
    (out / ".distill-export").write_text("{not json")
    fails(["export", small, "--lang", "c", "-o", out], "is damaged")


def test_export_to_the_current_directory_is_one_line(small, tmp_path, monkeypatch):
    for folder in (tmp_path / "empty", tmp_path / "earlier"):
        folder.mkdir()
        if folder.name == "earlier":
            ok(["export", small, "--lang", "c", "-o", folder])
        monkeypatch.chdir(folder)
        before = sorted(p.name for p in folder.iterdir())
        for where in (".", "./", str(folder), ".."):
            fails(["export", small, "--lang", "c", "-o", where], "is the current directory")
        assert sorted(p.name for p in folder.iterdir()) == before


def test_export_creates_missing_parent_folders(small, tmp_path):
    ok(["export", small, "--lang", "numpy", "-o", tmp_path / "a" / "b" / "c"])
    assert (tmp_path / "a" / "b" / "c" / "s.py").is_file()


def test_a_read_only_file_is_not_replaced(small, tmp_path):
    out = tmp_path / "y.csv"
    out.write_text("keep\n")
    out.chmod(0o444)
    try:
        fails(["predict", small, "--input", tmp_path / "x.npy", "-o", out], "is read-only")
        assert out.read_text() == "keep\n"
    finally:
        out.chmod(0o644)


def test_train_refuses_to_write_over_its_own_config(tmp_path):
    from test_hardening_crash import CONFIG
    config = tmp_path / "x.toml"
    config.write_text(CONFIG.replace("epochs = 100", "epochs = 1"))
    fails(["train", config, "-o", config, "-q"], "is the config being trained")
    (tmp_path / "x.history.json").symlink_to("x.toml")  # a derived output that is the config
    fails(["train", config, "-o", tmp_path / "x.distill", "-q"], "is the config being trained")
    assert config.read_text().startswith('name = "crash"')


def test_class_labels_with_newlines_are_one_escaped_line_each_in_a_file(tmp_path):
    path = tmp_path / "m.distill"
    ir.save(ir.make_model("m", (2,), [("p", "softmax", {}, {})], labels=["a\nb", "c"]), path)
    np.save(tmp_path / "x.npy", np.array([[1, 0], [0, 1]], np.float32))
    ok(["predict", path, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.txt", "--classes"])
    assert (tmp_path / "y.txt").read_text() == "a\\nb\nc\n"


def test_predict_with_standard_output_closed_is_one_line(small, tmp_path):
    proc = subprocess.run(f"{sys.executable} -m distill.cli predict {small} --input "
                          f"{tmp_path / 'x.npy'} >&-", shell=True, capture_output=True,
                          text=True, timeout=HANG_SECONDS)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("distill: error: standard output is closed; give -o FILE "
                                   "for the predictions")


# ------------------------------------------------------------------------------- names

@pytest.mark.parametrize("name", ["model_windows", "spam_arm64", "x_js", "spam_test", "init",
                                  "sort", "time", "errors", "y_linux_amd64"])
def test_go_names_the_go_tool_reads_specially_build(small, tmp_path, name):
    out = tmp_path / "go"
    codegen.export(ir.load(small), ["go"], out, name=name)
    mod = (out / "go.mod").read_text().split()[1]
    assert mod == f"{name}_model"
    proc = subprocess.run(["go", "test", "-count=1", "."], cwd=out, capture_output=True,
                          text=True, timeout=HANG_SECONDS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["math", "string", "stdint", "stddef", "stdio", "stdlib"])
def test_c_names_of_system_headers_do_not_shadow_them(small, tmp_path, name):
    out = tmp_path / "c"
    codegen.export(ir.load(small), ["c"], out, name=name)
    assert not (out / f"{name}.h").exists() and (out / f"{name}_model.h").is_file()
    # A program of the user's that includes the export through -I and the system header too.
    (out / "user.c").write_text(f'#include <{name}.h>\n#include "{name}_model.h"\n'
                                "int main(void) { return 0; }\n")
    subprocess.run(["cc", "-std=c99", "-Wall", "-Werror", f"-I{out}", "-c", "-o",
                    str(out / "user.o"), str(out / "user.c")], check=True, timeout=HANG_SECONDS)


# ------------------------------------------------------------------------------ memory

def deep_model(nodes: int, width: int) -> ir.Model:
    return ir.make_model("deep", (width,), [(f"r{i}", "relu", {}, {}) for i in range(nodes)])


def test_the_reference_holds_two_activations_not_one_per_node(tmp_path, monkeypatch):
    """2,000 relu nodes on 131,072 values: 1 GB when every intermediate was kept."""
    model = deep_model(2000, 1 << 17)
    x = np.ones((1, 1 << 17), np.float32)
    y, peak = traced_peak(lambda: ir.run(model, x))
    assert np.array_equal(y, x)
    assert peak < 4 * x.nbytes, f"{peak:,} bytes for activations of {x.nbytes:,}"
    # A batch above RUN_VALUES runs in pieces: a wide model with one output holds a piece's
    # activations, not the batch's, and gives the same values.
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(1 << 12, 1)).astype(np.float32)
    wide = ir.make_model("wide", (1 << 12,), [*[(f"r{i}", "relu", {}, {}) for i in range(50)],
                                              ("d", "dense", {}, {"kernel": kernel})])
    xs = rng.normal(size=(64, 1 << 12)).astype(np.float32)
    want = np.maximum(xs, 0) @ kernel
    monkeypatch.setattr(ir, "RUN_VALUES", 1 << 14)
    ys, peak = traced_peak(lambda: ir.run(wide, xs))
    np.testing.assert_allclose(ys, want, rtol=1e-5, atol=1e-4)
    assert peak < xs.nbytes // 4, f"{peak:,} bytes for a batch of {xs.nbytes:,}"


def test_predict_and_export_of_a_deep_model_stay_small(tmp_path):
    path = tmp_path / "deep.distill"
    ir.save(deep_model(2000, 1 << 15), path)
    np.save(tmp_path / "x.npy", np.ones((1, 1 << 15), np.float32))
    with alarm(HANG_SECONDS):
        code, _, err, peak = run_cli(["predict", str(path), "--input", str(tmp_path / "x.npy"),
                                      "-o", str(tmp_path / "y.npy")])
    assert code == 0 and peak < 16 << 20, (err, peak)
    with alarm(HANG_SECONDS):
        code, _, err, peak = run_cli(["export", str(path), "--lang", "numpy", "-o",
                                      str(tmp_path / "out"), "--samples", "2"])
    assert code == 0 and peak < 64 << 20, (err, peak)


def test_out_of_memory_is_one_line(small, tmp_path, monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(ir, "run", exhausted)
    argv = ["predict", str(small), "--input", str(tmp_path / "x.npy")]
    code, _, err, _ = run_cli(argv)
    line = check_error(code, err, argv)
    assert code == 2 and "out of memory" in line, line


def test_an_npz_that_inflates_past_the_bound_is_refused_before_inflating(tmp_path, monkeypatch):
    from distill import data
    from distill.errors import DataError
    np.savez_compressed(tmp_path / "d.npz", x=np.zeros((200, 100), np.float32),
                        y=np.zeros(200, np.int64))
    assert (tmp_path / "d.npz").stat().st_size < 4096  # zeros compress ~200:1
    monkeypatch.setattr(data, "MAX_DATA_BYTES", 4096)
    with pytest.raises(DataError, match="inflate to 81,"):
        data.load_data({"source": "npz", "path": str(tmp_path / "d.npz")})


def test_a_killed_verify_leaves_no_build_folder_behind(small, tmp_path, monkeypatch):
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"{verify.WORK_PREFIX}999999999-abcd1234"  # its process is gone
    live = tmp_path / f"{verify.WORK_PREFIX}{os.getpid()}-live1234"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "x.c").write_text("")
    results = verify.verify(ir.load(small), ["numpy"], 4)
    assert [r.ok for r in results] == [True]
    assert not dead.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("distill-")) == [
        live.name]


@pytest.mark.parametrize("source", ["npz", "idx"])
def test_samples_of_several_axes_without_a_flatten_layer_are_one_line(tmp_path, source):
    from distill.data import write_idx
    x = np.random.default_rng(0).integers(0, 256, (30, 3, 2)).astype(np.uint8)
    y = np.arange(30) % 2
    if source == "npz":
        np.savez(tmp_path / "d.npz", x=x.astype(np.float32), y=y)
        data = f'source = "npz"\npath = "{tmp_path / "d.npz"}"'
    else:
        write_idx(tmp_path / "train-images-idx3-ubyte", x)
        write_idx(tmp_path / "train-labels-idx1-ubyte", y.astype(np.uint8))
        data = f'source = "idx"\npath = "{tmp_path}"\nflatten = false'
    config = tmp_path / "c.toml"
    config.write_text(f'[data]\n{data}\n[[model.layers]]\ntype = "dense"\nunits = 10\n'
                      'activation = "softmax"\n[training]\nloss = '
                      '"sparse_categorical_crossentropy"\noptimizer = "sgd"\nepochs = 1\n')
    units = 2 if source == "npz" else 10
    config.write_text(config.read_text().replace("units = 10", f"units = {units}"))
    fails(["train", config, "-o", tmp_path / "m.distill", "-q"], "add a flatten layer")


def test_a_link_planted_by_another_user_in_a_shared_folder_is_replaced_not_followed(
        small, tmp_path):
    """In a sticky world-writable folder (/tmp) a link of another user's is not written
    through (the kernel's protected_symlinks rule): the link itself is replaced."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    link = shared / "y.csv"
    link.symlink_to(victim)
    if os.geteuid() != 0:  # CI runs as root, so there this always runs
        pytest.skip("giving the link another owner needs root")
    os.lchown(link, 12345, 12345)  # as another user planted it
    ok(["predict", small, "--input", tmp_path / "x.npy", "-o", link])
    assert victim.read_text() == "mine\n"
    assert not link.is_symlink() and link.read_text().count("\n") == 3


def test_a_reexport_after_pytest_ran_in_it_works(small, tmp_path):
    out = tmp_path / "out"
    ok(["export", small, "--lang", "numpy", "-o", out])
    (out / ".pytest_cache" / "v").mkdir(parents=True)
    (out / ".pytest_cache" / "v" / "x").write_text("")
    (out / "__pycache__").mkdir()
    ok(["export", small, "--lang", "numpy", "-o", out])
