"""`distill train --resume` against hostile and foreign checkpoints, and two runs of one output.

A checkpoint is a file on disk like any other input: every damaged field must end in one line
(exit 2) and leave the checkpoint as it was; one written by a run of another config or seed is
refused, not silently continued; a second `distill train` of the same output is refused while
the first one runs.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG_SECONDS
from test_hardening_crash import CONFIG, DRIVER, run_until_killed
from test_hardening_fuzz import alarm, check_error, run_cli

import distill

SHORT = CONFIG.replace("epochs = 100", "epochs = 3")


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> tuple[Path, bytes]:
    """A config and the checkpoint a run of it left when it was killed at step 30."""
    import sys
    folder = tmp_path_factory.mktemp("resume")
    config = folder / "c.toml"
    config.write_text(SHORT)
    argv = [sys.executable, "-c", DRIVER, "train", str(config), "-o", str(folder / "m.distill"),
            "-q"]
    run_until_killed(argv, "step:30")
    return config, (folder / "m.distill.ckpt").read_bytes()


def tampered(data: bytes, change) -> bytes:
    """The checkpoint with `change(doc)` applied to its checkpoint.json."""
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            body = src.read(info)
            if info.filename == "checkpoint.json":
                doc = json.loads(body)
                change(doc)
                body = json.dumps(doc).encode()
            out.writestr(info, body)
    return buf.getvalue()


def setter(key, value):
    def change(doc):
        doc[key] = value
    return change


def dropper(key):
    def change(doc):
        del doc[key]
    return change


CASES = {f"{key}={value!r}": setter(key, value)
         for key in ("batch", "epoch", "global_step", "seen", "weights")
         for value in ("3", None, -1, 1.5, True, 10**30)}
CASES |= {f"{key}={value!r}": setter(key, value)
          for key in ("steps", "history", "sums", "optimizer", "rng")
          for value in ("x", None, -1, [], {"loss": ["a"]}, [1e400])}
CASES |= {f"no {key}": dropper(key)
          for key in ("batch", "epoch", "global_step", "steps", "history", "rng", "optimizer",
                      "format", "format_version", "weights")}
CASES |= {
    "format=other": setter("format", "distill-model"),
    "format_version=2": setter("format_version", 2),
    "format_version='1'": setter("format_version", "1"),
    "batch past the epoch": setter("batch", 10_000),
    "steps one short": lambda doc: doc["steps"].pop(),
    "history of another length": lambda doc: doc["history"].update(loss=[0.5] * 7),
    "run of another config": setter("run", "0" * 64),
    "rng out of range": lambda doc: doc["rng"].update(uinteger=1 << 40),  # found by the fuzzer
    "rng of another kind": lambda doc: doc["rng"].update(bit_generator="MT19937"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_damaged_checkpoint_is_one_line(killed, tmp_path, case):
    config, data = killed
    out, ckpt = tmp_path / "m.distill", tmp_path / "m.distill.ckpt"
    bad = tampered(data, CASES[case])
    ckpt.write_bytes(bad)
    argv = ["train", str(config), "-o", str(out), "--resume", "-q"]
    with alarm(HANG_SECONDS):
        code, _, err, _ = run_cli(argv)
    # One line, after the announcement the run prints before it reads the checkpoint.
    lines = err.strip().splitlines()
    assert code == 2 and lines[0].startswith("training '"), err
    line = check_error(code, "\n".join(lines[1:]), argv)
    assert "m.distill.ckpt: checkpoint" in line and ("is unusable" in line
                                                     or "is unreadable" in line), line
    assert ckpt.read_bytes() == bad and not out.exists()  # nothing lost, nothing half-written


def test_a_checkpoint_of_another_config_or_seed_is_refused(killed, tmp_path):
    config, data = killed
    out, ckpt = tmp_path / "m.distill", tmp_path / "m.distill.ckpt"
    other = tmp_path / "other.toml"
    for text, extra in ((SHORT.replace("seed = 11", "seed = 12"), []),
                        (SHORT.replace('name = "adam"', 'name = "rmsprop"'), []),
                        (SHORT.replace("batch_size = 8", "batch_size = 9"), []),
                        (SHORT, ["--seed", "3"])):
        other.write_text(text)
        ckpt.write_bytes(data)
        code, _, err, _ = run_cli(["train", str(other), "-o", str(out), "--resume", "-q",
                                   *extra])
        assert code == 2 and "written by a run of another config or seed" in err, err
        assert ckpt.read_bytes() == data
    # More epochs (or another checkpoint interval) is the same run, extended: it resumes.
    other.write_text(SHORT.replace("epochs = 3", "epochs = 4").replace(
        "checkpoint_every = 13", "checkpoint_every = 7"))
    code, _, err, _ = run_cli(["train", str(other), "-o", str(out), "--resume", "-q"])
    assert code == 0, err
    assert len(json.loads(out.with_suffix(".history.json").read_text())["epochs"]["loss"]) == 4


@pytest.mark.parametrize("slot", [np.zeros(7, np.float32), np.zeros(1, np.float32),
                                  np.full((2, 16), np.nan, np.float32)])
def test_a_damaged_optimizer_slot_is_one_line(killed, tmp_path, slot):
    config, data = killed
    src, buf = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            body = src.read(info)
            if info.filename == "optimizer/0/m.npy":
                slot_buf = io.BytesIO()
                np.save(slot_buf, slot)
                body = slot_buf.getvalue()
            out.writestr(info, body)
    ckpt = tmp_path / "m.distill.ckpt"
    ckpt.write_bytes(buf.getvalue())
    code, _, err, _ = run_cli(["train", str(config), "-o", str(tmp_path / "m.distill"),
                               "--resume", "-q"])
    assert code == 2 and "optimizer slot '0/m' does not fit its weight" in err, err


def test_a_checkpoint_from_before_fingerprints_still_resumes(killed, tmp_path):
    """Checkpoints of the release before this one hold no "run": they are taken as they are,
    and give the uninterrupted run's weights."""
    config, data = killed
    out, ckpt = tmp_path / "m.distill", tmp_path / "m.distill.ckpt"
    ckpt.write_bytes(tampered(data, dropper("run")))
    code, _, err, _ = run_cli(["train", str(config), "-o", str(out), "--resume", "-q"])
    assert code == 0, err
    ref = tmp_path / "ref.distill"
    assert run_cli(["train", str(config), "-o", str(ref), "-q"])[0] == 0
    for a, b in zip(distill.load(out).nodes, distill.load(ref).nodes):
        assert all(a.weights[k].tobytes() == b.weights[k].tobytes() for k in a.weights)


def test_a_second_run_of_the_same_output_is_refused(killed, tmp_path):
    import fcntl
    import os
    config, _ = killed
    out = tmp_path / "m.distill"
    lock = tmp_path / "m.distill.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running `distill train` holds it
    try:
        code, _, err, _ = run_cli(["train", str(config), "-o", str(out), "-q"])
        assert code == 2 and "another distill train is writing it" in err, err
        assert not out.exists()
    finally:
        os.close(fd)
    code, _, err, _ = run_cli(["train", str(config), "-o", str(out), "-q"])
    assert code == 0, err
    assert distill.load(out).nodes and not lock.exists()  # the lock goes with its run


def test_adam_and_rmsprop_rates_outside_0_1_are_config_errors(tmp_path):
    for spec in ('{name = "adam", beta_1 = 1.0}', '{name = "adam", beta_2 = 2.0}',
                 '{name = "rmsprop", rho = 1.0}', '{name = "sgd", momentum = 1.5}'):
        config = tmp_path / "c.toml"
        config.write_text(SHORT.replace('{name = "adam", learning_rate = 0.01}', spec))
        argv = ["train", str(config), "-o", str(tmp_path / "m.distill"), "-q"]
        code, _, err, _ = run_cli(argv)
        line = check_error(code, err, argv)
        assert code == 2 and "must be in [0, 1)" in line, line


# ------------------------------------------------------------------------- the fuzzer's use

def mutate_checkpoint(data: bytes, rng) -> bytes:
    """A damaged copy of a checkpoint, for benchmarks/fuzz_models.py: one of the cases above,
    1-3 random edits of its checkpoint.json, or bytes flipped anywhere in the archive."""
    from test_hardening_fuzz import edit_json, mutate_bytes
    kind = rng.choice(["case", "json", "bytes"])
    if kind == "case":
        return tampered(data, CASES[rng.choice(sorted(CASES))])
    if kind == "bytes":
        return mutate_bytes(data, rng)
    edited = {}

    def change(doc):
        edited.update(json.loads(edit_json(doc, rng)))
        doc.clear()
        doc.update(edited if isinstance(edited, dict) else {})
    return tampered(data, change)


def check_resume(config: Path, out: Path, damaged: bytes) -> int:
    """`distill train --resume` over a damaged checkpoint: exit 0 (it was still usable), or one
    error line after the announcement with the checkpoint left as it was. Returns the code."""
    ckpt = out.with_name(out.name + ".ckpt")
    ckpt.write_bytes(damaged)
    argv = ["train", str(config), "-o", str(out), "--resume", "-q"]
    code, _, err, _ = run_cli(argv)
    lines = err.strip().splitlines()
    if code == 2 and lines and lines[0].startswith("training '"):
        lines = lines[1:]
    check_error(code, "\n".join(lines), argv)
    if code == 2:
        assert ckpt.read_bytes() == damaged and not out.exists(), "a refused resume changed files"
    out.unlink(missing_ok=True)
    return code


def test_random_damage_to_a_checkpoint_is_one_line_or_a_resume(killed, tmp_path):
    """A few seeded cases here; benchmarks/fuzz_models.py runs thousands."""
    import random
    config, data = killed
    codes = [check_resume(config, tmp_path / "m.distill",
                          mutate_checkpoint(data, random.Random(f"ckpt:{i}"))) for i in range(12)]
    assert 2 in codes
