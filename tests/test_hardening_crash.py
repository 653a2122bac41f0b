"""Crash safety: SIGKILL at random moments, read-only and full output locations.

- `distill train` killed with SIGKILL 20 times, at seeded choices of points in its progress
  (a step number, a checkpoint write, the restore), resumed with `--resume` after each: every
  checkpoint found is readable and at most one checkpoint interval behind the last step the
  run reported; the final weights and history equal an uninterrupted run's bit for bit (the
  checkpoint holds the optimizer's slots and the random generator: the config has Adam and
  dropout). A kill after the last step but before the model is written loses nothing. Where a
  run dies is counted in steps and writes, never in seconds, so a busy machine changes nothing.
- `distill export --lang all` killed at random moments, and at each step of its writes, while
  replacing an earlier export: the folder is always the old export or the new one, byte for
  byte, and the next export works.
- A read-only location (a directory without write permission, for a process without
  CAP_DAC_OVERRIDE) and a full one (RLIMIT_FSIZE, so writes fail with EFBIG) give one line and
  exit 2, and leave no partial file and no temporary behind.

Run as root, the commands run without CAP_DAC_OVERRIDE and CAP_FOWNER (dropped from the
bounding set before exec), so permissions bind them as they bind any user.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG_SECONDS

import distill
from distill import codegen, ir

KILLS = 20
CONFIG = """\
name = "crash"
seed = 11
[data]
source = "blobs"
n = 200
validation = 0.1
[[model.layers]]
type = "dense"
units = 16
activation = "tanh"
[[model.layers]]
type = "dropout"
rate = 0.25
[[model.layers]]
type = "dense"
units = 1
activation = "sigmoid"
[training]
loss = "binary_crossentropy"
optimizer = {name = "adam", learning_rate = 0.01}
batch_size = 8
epochs = 100
checkpoint_every = 13
metrics = ["accuracy"]
"""
EVERY = 13

# Steps a run takes: 360 training samples (200 a cloud, less validation) in batches of 8, for
# 100 epochs.
TOTAL_STEPS = 45 * 100

# The command line, with each finished step printed to stdout (before the checkpoint callback
# runs), killing itself with SIGKILL at the point KILL_AT names. The points are counted in
# training progress, never in time, so where a run dies does not depend on the machine's speed:
#   restore    right after the checkpoint is read, before any step
#   step:N     at the N-th step of this run, before that step's checkpoint (if it has one)
#   after:N    right after this run's N-th checkpoint of the every-EVERY-steps kind
#   write:N    in this run's N-th checkpoint write, with the temporary written, not yet renamed
#   trained    between the last step and the saved model
DRIVER = """\
import os, signal, sys
from distill import cli, nn
from distill.backends import numpy as backend
how, _, at = os.environ.get("KILL_AT", "none:0").partition(":")
at = int(at or 0)
def die(*args, **kwargs):
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
begin, batch_end, replace = (nn.BackupAndRestore.on_train_begin,
                             nn.BackupAndRestore.on_train_batch_end, os.replace)
def on_train_begin(self, logs=None):
    begin(self, logs)
    self.first = self.model._fit.global_step
    if how == "restore":
        die()
def on_train_batch_end(self, step, logs=None):
    done = self.model._fit.global_step
    sys.stdout.write(f"STEP {done}\\n")
    sys.stdout.flush()
    if how == "step" and done == self.first + at:
        die()
    batch_end(self, step, logs)
    if how == "after" and done % self.save_freq == 0:
        self.saved = getattr(self, "saved", 0) + 1
        if self.saved == at:
            die()
writes = [0]
def checkpoint_replace(src, dst, **kwargs):
    if str(dst).endswith(".ckpt"):
        writes[0] += 1
        if how == "write" and writes[0] == at:
            die()
    return replace(src, dst, **kwargs)
nn.BackupAndRestore.on_train_begin = on_train_begin
nn.BackupAndRestore.on_train_batch_end = on_train_batch_end
os.replace = checkpoint_replace
if how == "trained":
    backend.evaluate_model = die
sys.exit(cli.main(sys.argv[1:]))
"""
# The furthest a killed run gets past the step it started from: a step kill at most 3 * EVERY
# steps in, a write kill at the third write (checkpoints come every EVERY steps, and at epoch
# ends in between).
FURTHEST = 3 * EVERY


def kill_points(rng: random.Random, kills: int) -> list[str]:
    """A seeded choice of where each of `kills` runs dies, the first one fresh, each later one
    resumed from the checkpoint the one before left."""
    points = []
    for kill in range(kills):
        kind = rng.choices(["step", "after", "write", "restore"], [5, 2, 2, 1])[0]
        if kind == "restore" and not kill:
            kind = "step"  # the first run has nothing to restore
        points.append({"step": f"step:{rng.randint(1, FURTHEST)}",
                       "after": f"after:{rng.randint(1, 3)}",
                       "write": f"write:{rng.randint(1, 3)}", "restore": "restore"}[kind])
    return points


def run_until_killed(argv: list[str], point: str, env=None) -> tuple[subprocess.CompletedProcess,
                                                                      list[int]]:
    """Run the driver with KILL_AT=point; the steps it reported. It must die where it was told."""
    proc = subprocess.run(argv, capture_output=True, timeout=HANG_SECONDS,
                          env={**os.environ, **(env or {}), "KILL_AT": point})
    if proc.returncode != -signal.SIGKILL:
        pytest.fail(f"the run at {point} was not killed (exit {proc.returncode}): "
                    f"{proc.stderr.decode()[-500:]}")
    steps = [int(line.split()[1]) for line in proc.stdout.decode().splitlines()
             if line.startswith("STEP ")]
    return proc, steps


def _drop_override() -> None:
    """preexec_fn: make root subject to file permissions, as any user is."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    PR_CAPBSET_DROP = 24
    for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            os._exit(97)


def _full(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def distill_cmd(*args, preexec=None, env=None, timeout=HANG_SECONDS) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec,
                          env=env)


def one_line_error(proc: subprocess.CompletedProcess, match: str, progress: bool = False) -> str:
    """Exit 2 and one error line; `progress`: after the announcement a started run prints."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    if progress and len(lines) == 2 and lines[0].startswith("training '"):
        lines = lines[1:]
    assert len(lines) == 1 and lines[0].startswith("distill: error: "), proc.stderr
    assert "Traceback" not in proc.stderr and match in lines[0], lines[0]
    return lines[0]


def checkpoint_step(path: Path) -> int:
    doc, z = ir.read_archive(path, "checkpoint.json", "distill checkpoint")
    z.close()
    return int(doc["global_step"])


def weights(path: Path) -> list[bytes]:
    model = distill.load(path)
    return [n.weights[k].tobytes() for n in model.nodes for k in sorted(n.weights)]


def history(path: Path) -> dict:
    return json.loads(path.with_suffix(".history.json").read_text())


def test_train_survives_sigkill_at_random_moments(tmp_path, record_property):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    ref = tmp_path / "ref.distill"
    proc = distill_cmd("train", config, "-o", ref, "-q")
    assert proc.returncode == 0, proc.stderr
    assert len(history(ref)["steps"]) == TOTAL_STEPS
    points = kill_points(random.Random(20260101), KILLS)
    # Long enough by construction: each run dies at most FURTHEST steps past where it resumed,
    # which is never past where the run before it died, so the last kill comes before the end.
    assert KILLS * FURTHEST < TOTAL_STEPS
    out, ckpt = tmp_path / "run.distill", tmp_path / "run.distill.ckpt"
    lost, checkpoints, temporaries, kinds = [], 0, 0, {}
    argv = [sys.executable, "-c", DRIVER, "train", str(config), "-o", str(out), "-q"]
    before = None  # the checkpoint's step when this run started
    for kill, point in enumerate(points):
        kinds[point.split(":")[0]] = kinds.get(point.split(":")[0], 0) + 1
        _, steps = run_until_killed(argv + (["--resume"] if kill else []), point)
        assert not out.exists()
        if before is not None and steps:
            assert steps[0] == before + 1, (point, before, steps[0])  # resumed where it was
        if point == "restore":
            assert steps == [] and checkpoint_step(ckpt) == before  # the restore changes nothing
        else:
            assert steps, point  # every other kill comes after a step
        if ckpt.exists():
            step = checkpoint_step(ckpt)  # always readable: written atomically
            checkpoints += 1
            if steps:
                # Everything up to the last checkpoint is kept: at most one interval is lost
                # (the epoch-end checkpoints only make the loss smaller).
                assert steps[-1] - EVERY <= step <= steps[-1], (point, step, steps[-1])
                lost.append(steps[-1] - step)
            if point.startswith("after:"):
                assert step == steps[-1], point  # the checkpoint it was killed after is kept
            before = step
        else:
            assert kill == 0 and point.startswith("step:") and steps[-1] <= EVERY, point
            before = 0
        # What a kill mid-write leaves (the next run of the command removes it).
        left = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(left) == (1 if point.startswith("write:") else 0), (point, left)
        temporaries += len(left)
    proc = distill_cmd("train", config, "-o", out, "--resume", "-q")
    assert proc.returncode == 0, proc.stderr
    assert checkpoints >= KILLS - 1 and kinds.keys() == {"step", "after", "write", "restore"}
    assert weights(out) == weights(ref), "the resumed run's weights differ"
    assert history(out) == history(ref), "the resumed run's history differs"
    assert not ckpt.exists()
    # Temporaries a kill left mid-write are cleared by the next run of the same command.
    strays = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert strays == [], strays
    record_property("train_kills", {"kills": KILLS, "kinds": kinds,
                                    "checkpoints_read": checkpoints,
                                    "max_steps_lost": max(lost, default=0),
                                    "temporaries_left_by_kills": temporaries})
    print(f"train: {KILLS} kills survived ({kinds}), {checkpoints} checkpoints read, at most "
          f"{max(lost, default=0)} steps lost (interval {EVERY}); {temporaries} kills left a "
          "temporary file, each removed by the next run")


def test_a_kill_after_the_last_step_loses_nothing(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.replace("epochs = 100", "epochs = 3"))
    ref = tmp_path / "ref.distill"
    assert distill_cmd("train", config, "-o", ref, "-q").returncode == 0
    out = tmp_path / "run.distill"
    argv = [sys.executable, "-c", DRIVER, "train", str(config), "-o", str(out), "-q"]
    run_until_killed(argv, "trained")
    assert not out.exists() and (tmp_path / "run.distill.ckpt").exists()
    proc = subprocess.run(argv + ["--resume"], capture_output=True, text=True,
                          timeout=HANG_SECONDS)
    assert proc.returncode == 0, proc.stderr
    assert "STEP" not in proc.stdout  # nothing trained again
    assert weights(out) == weights(ref) and history(out) == history(ref)
    assert not (tmp_path / "run.distill.ckpt").exists()


def export_model(seed: int) -> ir.Model:
    from test_hardening_fuzz import base_model
    model = base_model()
    rng = np.random.default_rng(seed)
    nodes = tuple(ir.Node(n.name, n.op, n.attrs,
                          {k: (v + rng.normal(size=v.shape).astype(np.float32)
                               if k != "std" else v) for k, v in n.weights.items()},
                          n.inputs, n.input_shapes, n.output_shape) for n in model.nodes)
    return ir.Model(model.name, model.inputs, nodes, model.outputs, model.labels,
                    dict(model.metadata))


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def export_setup(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """Two different saved models, and an export folder `out` inside its own folder `work`
    (where temporary folders show up)."""
    old_model, new_model = tmp_path / "old.distill", tmp_path / "new.distill"
    ir.save(export_model(1), old_model)
    ir.save(export_model(2), new_model)
    work = tmp_path / "work"
    work.mkdir()
    return old_model, new_model, work, work / "out"


def test_export_survives_sigkill_at_random_moments(tmp_path, record_property):
    old_model, new_model, work, out = export_setup(tmp_path)
    for model, where in ((new_model, tmp_path / "want_new"), (old_model, out)):
        assert distill_cmd("export", model, "--lang", "all", "-o", where).returncode == 0
    old, new = snapshot(out), snapshot(tmp_path / "want_new")
    assert old != new and old.keys() == new.keys()
    # The kills land at moments drawn from the time one export takes here. That time decides
    # only where they land, never the verdict: whenever a kill comes, the folder must be the
    # old export or the new one. (The test below kills at each step of the replacement.)
    start = time.monotonic()
    assert distill_cmd("export", new_model, "--lang", "all", "-o", tmp_path / "timing"
                       ).returncode == 0
    full = time.monotonic() - start
    rng = random.Random(7)
    seen = {"old": 0, "new": 0}
    for _ in range(KILLS // 2):  # test_export_killed_at_every_step... covers the rest
        if snapshot(out) != old:  # start each round from the old export (set up in process)
            codegen.export(distill.load(old_model), codegen.languages(), out)
        proc = subprocess.Popen([sys.executable, "-m", "distill.cli", "export", str(new_model),
                                 "--lang", "all", "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5 * full, 1.0 * full))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = snapshot(out)
        assert now in (old, new), "the export folder is neither the old nor the new export"
        seen["old" if now == old else "new"] += 1
    strays = [p for p in work.iterdir() if p.name.startswith(".out.")]
    # Temporary folders a SIGKILL left behind never stop the next export, which removes them
    # (but not one whose process still runs).
    live = work / f".out.{os.getpid()}.abcd1234"
    live.mkdir()
    (work / ".out.999999999.dead1234").mkdir()  # above any pid_max: its process is gone
    assert distill_cmd("export", new_model, "--lang", "all", "-o", out).returncode == 0
    assert snapshot(out) == new
    assert [p for p in work.iterdir() if p.name.startswith(".out.")] == [live]
    record_property("export_kills", {"kills": KILLS // 2, **seen,
                                     "stray_temp_dirs": len(strays)})
    print(f"export: {KILLS // 2} kills, folder was the old export {seen['old']} times and the new "
          f"one {seen['new']} times, never anything else; {len(strays)} temporary folders "
          "left by the kills")


# `distill export`, killed by itself at a chosen point of replacing the folder: after the
# KILL_AT-th file written into the temporary folder, or inside the clean-up that follows the
# swap (KILL_AT=swap).
EXPORT_DRIVER = """\
import os, pathlib, shutil, signal, sys
from distill import cli
at, count = os.environ["KILL_AT"], [0]
write_bytes, rmtree = pathlib.Path.write_bytes, shutil.rmtree
def writing(self, data):
    count[0] += 1
    result = write_bytes(self, data)
    if at != "swap" and count[0] == int(at):
        os.kill(os.getpid(), signal.SIGKILL)
    return result
def cleaning(path, *args, **kwargs):
    if at == "swap":
        os.kill(os.getpid(), signal.SIGKILL)
    return rmtree(path, *args, **kwargs)
pathlib.Path.write_bytes = writing
shutil.rmtree = cleaning
sys.exit(cli.main(sys.argv[1:]))
"""


def test_export_killed_at_every_step_of_the_replacement(tmp_path, record_property):
    old_model, new_model, work, out = export_setup(tmp_path)
    assert distill_cmd("export", new_model, "--lang", "all", "-o", tmp_path / "new"
                       ).returncode == 0
    new = snapshot(tmp_path / "new")
    points = [str(k) for k in range(1, len(new) + 1)] + ["swap"]
    strays = 0
    for first in (True, False):  # into a new folder, then over an earlier export
        for at in points[:-1] if first else points:  # a new folder is renamed, not swapped
            if out.exists():
                subprocess.run(["rm", "-rf", str(out)], check=True)
            if not first:  # in process: the old export is set up, not under test
                codegen.export(distill.load(old_model), codegen.languages(), out)
            old = snapshot(out) if out.exists() else None
            proc = subprocess.run([sys.executable, "-c", EXPORT_DRIVER, "export", str(new_model),
                                   "--lang", "all", "-o", str(out)], capture_output=True,
                                  env={**os.environ, "KILL_AT": at})
            assert proc.returncode == -signal.SIGKILL, (at, proc.stderr[-2000:])
            now = snapshot(out) if out.exists() else None
            assert now in (old, new), f"killed at {at}: neither the old folder nor the new one"
            # A kill before the swap leaves the old state; one in the clean-up, the new one.
            assert now == (new if at == "swap" else old), at
            strays = len([p for p in work.iterdir() if p.name.startswith(".out.")])
    assert distill_cmd("export", new_model, "--lang", "all", "-o", out).returncode == 0
    assert snapshot(out) == new
    record_property("export_step_kills", {"kills": 2 * len(points) - 1,
                                           "stray_temp_dirs": strays})
    print(f"export: killed at each of {len(points)} points, into a new folder and over an old "
          f"one: always the old or the new export; {strays} temporary folders accumulated")


# ------------------------------------------------------------- read-only and full locations

@pytest.fixture
def small(tmp_path) -> Path:
    path = tmp_path / "m.distill"
    ir.save(export_model(3), path)
    np.save(tmp_path / "x.npy", np.zeros((2, 6), np.float32))
    (tmp_path / "c.toml").write_text(CONFIG.replace("epochs = 100", "epochs = 1"))
    return path


def test_read_only_location_is_one_clear_line(small, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "keep.txt").write_text("old")
    locked.chmod(0o555)
    try:
        probe = distill_cmd("export", small, "--lang", "c", "-o", locked / "probe",
                            preexec=_drop_override)
        assert probe.returncode != 97, "cannot drop CAP_DAC_OVERRIDE for the test"
        one_line_error(probe, "Permission denied")
        one_line_error(distill_cmd("export", small, "--lang", "all", "-o", locked / "out",
                                   preexec=_drop_override), "cannot write here")
        # Refused before training, not after: one line, without the "training '...'" line a
        # started run prints first.
        one_line_error(distill_cmd("train", tmp_path / "c.toml", "-o", locked / "m.distill",
                                   preexec=_drop_override), "cannot write here")
        one_line_error(distill_cmd("predict", small, "--input", tmp_path / "x.npy", "-o",
                                   locked / "y.csv", preexec=_drop_override),
                       "cannot write here")
        assert [p.name for p in locked.iterdir()] == ["keep.txt"]
    finally:
        locked.chmod(0o755)
    # A kernel file system that creates nothing, whoever asks.
    one_line_error(distill_cmd("export", small, "--lang", "c", "-o", "/sys/distill-out"),
                   "/sys")


def test_full_location_is_one_clear_line_and_keeps_the_old_files(small, tmp_path):
    out = tmp_path / "out"
    assert distill_cmd("export", small, "--lang", "c", "-o", out).returncode == 0
    before = snapshot(out)
    full = _full(4096)  # the C self-test alone is larger
    one_line_error(distill_cmd("export", small, "--lang", "all", "-o", out, preexec=full),
                   "File too large")
    assert snapshot(out) == before
    model = tmp_path / "trained.distill"
    model.write_bytes(b"old model")
    err = one_line_error(distill_cmd("train", tmp_path / "c.toml", "-o", model,
                                     preexec=_full(1024)), "File too large", progress=True)
    assert "trained.distill.ckpt: cannot write the checkpoint" in err
    assert model.read_bytes() == b"old model"
    np.save(tmp_path / "big.npy", np.zeros((5000, 6), np.float32))
    one_line_error(distill_cmd("predict", small, "--input", tmp_path / "big.npy", "-o",
                               tmp_path / "y.csv", preexec=_full(4096)), "File too large")
    assert not (tmp_path / "y.csv").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers
