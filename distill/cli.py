"""The `distill` command line: thin wrappers that parse, call the library and print.

Every user error (a `DistillError`, a missing or unreadable file) is one line on stderr and exit
code 2; `--debug` shows the traceback instead. Outputs are written atomically, so a failed or
interrupted command leaves no partial file behind.

Everything read from files is hostile until checked: text from a model (labels, metadata) is
printed escaped on one line, what the exporters take from its metadata is checked on load, and
work a small file could make huge (golden vectors of a 2**28-value input) is bounded first. An
output location is checked for writability before any work, so a read-only folder is found
before hours of training, not after; a full disk names the file that could not be written.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, ir
from .errors import DataError, DistillError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("distill: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        if args.debug:
            raise
        print("distill: error: out of memory: the model or the data is too large for this "
              "machine", file=sys.stderr)
        return 2
    except (DistillError, OSError) as e:
        if args.debug:
            raise
        msg = str(e) if isinstance(e, DistillError) else _os_error(e)
        print(f"distill: error: {_text(msg, 2000)}", file=sys.stderr)
        return 2


def _os_error(e: OSError) -> str:
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}"


def _text(value: Any, limit: int = 300) -> str:
    """`value` as one printable line for the terminal, cut to `limit` characters.

    Labels, metadata and messages come from files: a newline would break the one-line error
    promise, an escape sequence would reach the terminal, a lone surrogate cannot be encoded.
    """
    text = str(value)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _number(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.4g}"
    return _text(value, 60)


def _output_file(path: Path, what: str = "output") -> None:
    """Refuse an output path that cannot receive a file, before any work is done."""
    if path.is_dir():
        raise DistillError(f"{path}: is a directory; give a file name for the {what}")
    if _stream(path):
        return  # written through, as it is
    target = Path(os.path.realpath(path)) if path.is_symlink() and ir.may_follow(path) else path
    if not target.parent.is_dir():
        raise DistillError(f"{target.parent}: no such directory")
    _replaceable(target)
    _writable_dir(target.parent)


def _replaceable(path: Path) -> None:
    """A read-only file is not replaced: renaming over it would ignore its permissions."""
    if path.is_file() and (not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222):
        raise DistillError(f"{path}: is read-only; make it writable or choose another name")


def _stream(path: Path) -> bool:
    """A FIFO, a device, /dev/stdout or a link into /dev or /proc (/proc/self/fd/1): written
    through, never replaced, since replacing one with a regular file would destroy it."""
    if path.exists() and not path.is_file():
        return True
    hops, p = 0, Path(os.path.abspath(path))
    while hops < 40:
        if str(p).startswith(("/proc/", "/dev/fd/", "/dev/std")):
            return True
        if not p.is_symlink():
            return False
        link = Path(os.readlink(p))
        p, hops = Path(os.path.abspath(p.parent / link)), hops + 1
    return False


def _writable_dir(folder: Path) -> None:
    """Create and remove a file in `folder`: the only test of writability that holds for root,
    read-only mounts and ACLs alike (os.access does not)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".distill-probe."):
            pass
    except OSError as e:
        raise DistillError(f"{folder}: cannot write here ({e.strerror or e})") from None


@contextlib.contextmanager
def _writing(path: Path, what: str = "output") -> Iterator[None]:
    """Name the file being written, not a temporary file, when the disk refuses it."""
    try:
        yield
    except OSError as e:
        raise DistillError(f"{path}: cannot write the {what} ({e.strerror or e}); nothing "
                           "was changed") from None


def _write_output(path: Path, data: bytes, what: str = "output") -> None:
    """Atomically replace a regular file; write a FIFO, a device or /dev/stdout directly
    (replacing one with a regular file would destroy it)."""
    with _writing(path, what):
        if _stream(path):
            with open(path, "wb") as f:
                f.write(data)
        else:
            ir.atomic_write(path, data)  # through a symbolic link to its target


def _parser() -> argparse.ArgumentParser:
    from .codegen import AUTO_BLOB_PARAMETERS

    p = argparse.ArgumentParser(prog="distill", description="Train small neural networks and "
                                "compile them to standalone C, Go, NumPy and ONNX.")
    p.add_argument("--version", action="version", version=f"distill {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", parents=[common], help="train a model from a TOML config",
                       description="Train a model from a TOML config and write it as a "
                       ".distill file, with OUT.history.json and a loss plot OUT.loss.png.")
    t.add_argument("config", help="the training config (.toml)")
    t.add_argument("-o", "--output", help="model file to write (default: NAME.distill)")
    t.add_argument("--backend", default="numpy", choices=["numpy", "tensorflow"])
    t.add_argument("--epochs", type=int, help="override the config's epochs")
    t.add_argument("--seed", type=int, help="override the config's seed")
    t.add_argument("--strategy", choices=["default", "mirrored"],
                   help="tensorflow only: mirrored trains on all local GPUs")
    t.add_argument("--resume", action="store_true",
                   help="continue from OUT.ckpt, the checkpoint of a run that was stopped")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    t.set_defaults(run=cmd_train)

    i = sub.add_parser("inspect", parents=[common], help="show a model's layers and figures")
    i.add_argument("model", help="a .distill file")
    i.add_argument("--json", action="store_true", help="print machine-readable JSON")
    i.set_defaults(run=cmd_inspect)

    langs = ", ".join(["c", "go", "numpy", "onnx"])
    e = sub.add_parser("export", parents=[common], help="emit standalone code for a model",
                       description="Emit standalone inference code with the weights baked in, "
                       f"for each of: {langs}. The output folder is replaced in one step.")
    e.add_argument("model", help="a .distill file, a Keras .keras/.h5 file or an .onnx file")
    e.add_argument("--lang", required=True, help=f"{langs}, a comma-separated list, or all")
    e.add_argument("-o", "--output", required=True, help="output folder (created or replaced)")
    e.add_argument("--name", help="name for the emitted symbols and files (default: model's)")
    e.add_argument("--samples", type=int, default=16,
                   help="golden vectors in the shipped self-tests (default 16)")
    e.add_argument("--weights", choices=["auto", "literal", "blob"], default="auto",
                   help="C and Go: weights as array literals or as a blob of bytes (much faster "
                   "to compile for large models; still bit-exact); auto (default): literals up "
                   f"to {AUTO_BLOB_PARAMETERS:,} parameters, a blob above")
    e.add_argument("--verify", action="store_true", help="verify after exporting")
    e.set_defaults(run=cmd_export)

    v = sub.add_parser("verify", parents=[common],
                       help="build and run each export, compare with the reference",
                       description="Export to a temporary folder with many golden vectors, "
                       "build each target with its real toolchain, run its self-test and "
                       "compare with the reference interpreter. Exit 1 on any mismatch.")
    v.add_argument("model", help="a .distill file, a Keras .keras/.h5 file or an .onnx file")
    v.add_argument("--lang", default="all", help=f"{langs}, a comma-separated list, or all")
    v.add_argument("--name", help="name for the emitted symbols and files")
    v.add_argument("--samples", type=int, default=256, help="inputs compared (default 256)")
    v.add_argument("--weights", choices=["auto", "literal", "blob"], default="auto",
                   help="how C and Go store the weights (see export)")
    v.set_defaults(run=cmd_verify)

    k = sub.add_parser("import", parents=[common],
                       help="convert a Keras or ONNX model to .distill",
                       description="Read a Keras model (.keras or .h5) or an ONNX model "
                       "(.onnx), convert it to the distill IR, check it against Keras's own "
                       "predictions or onnxruntime's, and save it.")
    k.add_argument("model", help="a .keras, .h5 or .onnx file")
    k.add_argument("-o", "--output", help="model file to write (default: NAME.distill)")
    k.set_defaults(run=cmd_import)

    r = sub.add_parser("predict", parents=[common], help="run the reference interpreter")
    r.add_argument("model", help="a .distill file")
    r.add_argument("--input", required=True, help="samples as .npy (N, ...) or .csv (N, F)")
    r.add_argument("-o", "--output", help="write .npy or .csv instead of printing")
    r.add_argument("--classes", action="store_true", help="print class labels, not outputs")
    r.set_defaults(run=cmd_predict)
    return p


def _load(path: str) -> ir.Model:
    """A .distill file, or a Keras (.keras, .h5) or ONNX (.onnx) file imported on the fly."""
    from .backends.keras import load_any
    return load_any(path, isolate=True)


# ---------------------------------------------------------------------------------- train

def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    config = load_config(args.config)
    if args.epochs is not None and args.epochs < 1:
        raise DistillError(f"--epochs must be at least 1, got {args.epochs}")
    if args.seed is not None and args.seed < 0:
        raise DistillError(f"--seed must be a non-negative integer, got {args.seed}")
    # The config's name is text from a file: as a file name it could be "../../x" or empty.
    out = Path(args.output or f"{ir.sanitize_name(config.name)}.distill")
    if out.is_dir():
        raise DistillError(f"{out}: is a directory; give a file name such as {out}/model.distill")
    if not out.parent.exists():
        raise DistillError(f"{out.parent}: no such directory")
    if out.exists() and not out.is_file():
        raise DistillError(f"{out}: exists and is not a regular file")
    _writable_dir(out.parent)  # find a read-only folder now, not after hours of training
    ckpt = out.with_name(out.name + ".ckpt")
    stem = out.with_suffix("")
    outputs = [out, ckpt, Path(f"{stem}.history.json"), Path(f"{stem}.loss.png")]
    for path in outputs:
        if path.exists() and Path(args.config).exists() and path.samefile(args.config):
            raise DistillError(f"{path}: is the config being trained; choose another -o")
        _replaceable(Path(os.path.realpath(path)))
    if args.strategy and args.backend != "tensorflow":
        raise DistillError("--strategy is for --backend tensorflow")
    real = Path(os.path.realpath(out)) if out.is_symlink() and ir.may_follow(out) else out
    with _locked(real.with_name(real.name + ".lock"), out):  # the file written, not a link
        _remove_temporaries(outputs)
        if args.resume and not ckpt.exists():
            print(f"distill: no checkpoint at {ckpt}; starting from the beginning",
                  file=sys.stderr)
        return _train(args, config, out, ckpt, stem)


@contextlib.contextmanager
def _locked(lock: Path, out: Path) -> Iterator[None]:
    """Hold `lock` (an flock'd file beside the output) for the run: a second `distill train`
    of the same output would write the same checkpoint and model under the first one."""
    import fcntl
    while True:
        try:  # O_NOFOLLOW: a link planted at the lock's name is not followed
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise DistillError(f"{lock}: cannot take the lock ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DistillError(f"{out}: another distill train is writing it (it holds {lock}); "
                               "wait for it to end, or choose another -o") from None
        try:  # the lock file may have been removed by the run that just ended: retry
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _train(args: argparse.Namespace, config, out: Path, ckpt: Path, stem: Path) -> int:
    from .backends import train
    options = {"strategy": args.strategy} if args.strategy else {}
    try:
        result = train(config, args.backend, epochs=args.epochs, seed=args.seed,
                       checkpoint=ckpt, resume=args.resume, verbose=0 if args.quiet else 1,
                       announce=lambda line: print(line, file=sys.stderr), **options)
    except OSError as e:
        if e.filename is not None:
            raise
        # A write that failed after its file was opened (EFBIG, ENOSPC): the checkpoint.
        raise DistillError(f"{ckpt}: cannot write the checkpoint ({e.strerror or e}); the "
                           "last complete checkpoint is kept") from None
    with _writing(out, "model"):
        ir.save(result.model, out)
    if ckpt.is_file():
        # Only now: until the model is on disk, the checkpoint is the run (a kill during the
        # final evaluation must not send `--resume` back to step 0).
        ckpt.unlink()
    history = {"epochs": result.history, "steps": result.steps, "final": result.metrics}
    _write_output(Path(f"{stem}.history.json"), (json.dumps(history, indent=1) + "\n").encode(),
                  "history")
    plot = _plot(result.steps, result.history, Path(f"{stem}.loss.png"), _text(config.name, 80))
    print(_summary(config.name, result.metrics))
    print(f"wrote {out}, {stem}.history.json" + (f", {plot}" if plot else ""))
    return 0


def _remove_temporaries(outputs: list[Path]) -> None:
    """Delete what a killed run's atomic writes left beside each output. Without this, every
    SIGKILL during a checkpoint write would add one more to the folder for good."""
    for path in outputs:
        ir.remove_stale_temporaries(path)


def _summary(name: str, metrics: dict[str, dict[str, float]]) -> str:
    parts = []
    for split in ("train", "validation", "test"):
        if split in metrics:
            vals = " ".join(f"{k} {v:.4g}" for k, v in metrics[split].items())
            parts.append(f"{split}: {vals}")
    return f"{name}: " + " | ".join(parts)


def _plot(steps: list[float], history: dict[str, list[float]], path: Path,
          title: str) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("distill: loss plot skipped: matplotlib is not installed "
              "(pip install 'distill[plot]')", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.semilogy(np.arange(1, len(steps) + 1), np.maximum(steps, 1e-12), lw=0.8,
                label="training loss per step")
    if "val_loss" in history and steps:
        per_epoch = len(steps) / max(len(history["val_loss"]), 1)
        xs = per_epoch * np.arange(1, len(history["val_loss"]) + 1)
        ax.semilogy(xs, history["val_loss"], "o-", ms=3, label="validation loss per epoch")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    _write_output(path, buf.getvalue(), "plot")
    return path


# -------------------------------------------------------------------------------- inspect

def describe(model: ir.Model) -> dict[str, Any]:
    """What `inspect` shows, as data."""
    from .ops import OPS
    figures = ir.stats(model)
    return {
        "name": model.name,
        "hash": ir.model_hash(model),
        "input": {"shape": list(model.input_shape), "dtype": model.input_dtype},
        "output": {"shape": list(model.output_shape), "labels": model.labels},
        # one entry each; input and output above are their packed layout
        "inputs": [{"name": name, "shape": list(shape)} for name, shape in model.inputs],
        "outputs": [{"name": name, "shape": list(shape)}
                    for name, shape in zip(model.outputs, model.output_shapes)],
        "nodes": [{"name": n.name, "op": n.op, "attrs": dict(n.attrs), "inputs": list(n.inputs),
                   "output_shape": list(n.output_shape),
                   "parameters": sum(int(a.size) for a in n.weights.values()),
                   "macs": OPS[n.op].macs(n.input_shape, n.output_shape, n.weights)}
                  for n in model.nodes],
        **figures,
        "metadata": dict(model.metadata),
    }


def cmd_inspect(args: argparse.Namespace) -> int:
    model = _load(args.model)
    info = describe(model)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    rows = [("node", "op", "output", "params", "mult-adds")]
    previous = [name for name, _ in model.inputs[:1]]
    for n in info["nodes"]:
        attrs = "".join(f" {k}={v:g}" if isinstance(v, float) else f" {k}={v}"
                        for k, v in n["attrs"].items())
        # a graph's wiring, where a node does not simply take the one before it
        wiring = "" if n["inputs"] == previous else f" <- {', '.join(n['inputs'])}"
        rows.append((n["name"], n["op"] + attrs + wiring, str(tuple(n["output_shape"])),
                     f"{n['parameters']:,}", f"{n['macs']:,}"))
        previous = [n["name"]]
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    print(f"model {info['name']}  (sha256 {info['hash'][:16]})")
    print(f"input  {tuple(info['input']['shape'])} {info['input']['dtype']}"
          + ("  packs " + ", ".join(f"{i['name']} {tuple(i['shape'])}" for i in info["inputs"])
             if len(info["inputs"]) > 1 else ""))
    labels = info["output"]["labels"]
    print(f"output {tuple(info['output']['shape'])}"
          + ("  packs " + ", ".join(f"{o['name']} {tuple(o['shape'])}" for o in info["outputs"])
             if len(info["outputs"]) > 1 else "")
          + (f"  labels: {_text(', '.join(labels), 2000)}" if labels else ""))
    print()
    for k, r in enumerate(rows):
        line = "  ".join(c.ljust(w) if j < 3 else c.rjust(w)
                         for j, (c, w) in enumerate(zip(r, widths)))
        print(line.rstrip())
        if k == 0:
            print("-" * len(line))
    print()
    print(f"parameters        {info['parameters']:,}")
    print(f"weight bytes      {info['weight_bytes']:,}")
    print(f"mult-adds/sample  {info['macs']:,}")
    print(f"peak activations  {info['peak_activation_bytes']:,} bytes")
    # Metadata is free-form JSON from the file (`_check_usable` has checked only `samples` and
    # `input_range`): print whatever shape the rest has, one safe line each.
    meta = info["metadata"]
    if meta:
        print()
        training = meta.get("training")
        training = training if isinstance(training, dict) else None
        for key, value in meta.items():
            if key == "samples":
                print(f"saved samples: {len(value)} (for the exported self-tests)")
            elif key == "input_range":
                print("input range: per-feature min and max of the training data "
                      f"(overall {min(value[0]):g} to {max(value[1]):g})")
            elif key != "training" or training is None:
                print(f"{_text(key, 60)}: {_text(value)}")
        for key, value in (training or {}).items():
            if key == "metrics" and isinstance(value, dict):
                for split, scores in value.items():
                    vals = (", ".join(f"{_text(m, 60)} {_number(v)}" for m, v in scores.items())
                            if isinstance(scores, dict) else _text(scores))
                    print(f"{_text(split, 60)} metrics: {vals}")
            else:
                print(f"trained {_text(key, 60)}: {_text(value)}")
    return 0


# --------------------------------------------------------------------------------- import

def cmd_import(args: argparse.Namespace) -> int:
    from .backends.keras import is_keras_file, load_keras
    from .backends.onnx import is_onnx_file, load_onnx
    if not is_keras_file(args.model) and not is_onnx_file(args.model):
        raise DistillError(f"{args.model}: expected a .keras, .h5 or .onnx file")
    if args.output:
        _output_file(Path(args.output), "model")
    onnx = is_onnx_file(args.model)
    model = load_onnx(args.model) if onnx else load_keras(args.model, isolate=True)
    out = Path(args.output or f"{model.name}.distill")
    _output_file(out, "model")
    with _writing(out, "model"):
        ir.save(model, out)
    figures = ir.stats(model)
    print(f"imported {args.model}: {len(model.nodes)} nodes, {figures['parameters']:,} "
          f"parameters; matches {'onnxruntime' if onnx else 'Keras'}'s predictions; wrote {out}")
    return 0


# --------------------------------------------------------------------- export and verify

def _langs(spec: str) -> list[str]:
    from .codegen import languages
    known = languages()
    if spec == "all":
        return known
    langs = list(dict.fromkeys(x.strip() for x in spec.split(",") if x.strip()))
    if not langs:
        raise DistillError(f"--lang names no language; expected {', '.join(known)} or all")
    for lang in langs:
        if lang not in known:
            from .errors import did_you_mean
            raise DistillError(f"unknown language {lang!r}{did_you_mean(lang, known)}; "
                               f"expected {', '.join(known)} or all")
    return langs


def _samples(n: int) -> int:
    if not 1 <= n <= 100_000:
        raise DistillError(f"--samples must be between 1 and 100000, got {n}")
    return n


def cmd_export(args: argparse.Namespace) -> int:
    from .codegen import export, golden_budget
    model = _load(args.model)
    langs = _langs(args.lang)
    samples = _samples(args.samples)
    golden_budget(model, max(samples, 256 if args.verify else 0))
    out = Path(args.output)
    if out.parent.is_dir():
        _writable_dir(out.parent)
    with _writing(out, "export"):
        written = export(model, langs, out, args.name, samples, weights=args.weights)
    figures = ir.stats(model)
    from .codegen import workspace_floats
    workspace = 4 * workspace_floats(model)
    print(f"{model.name}: {figures['parameters']:,} parameters, "
          f"{figures['weight_bytes']:,} bytes of weights (flash), "
          f"{workspace:,} bytes of working memory (RAM), "
          f"{figures['macs']:,} multiply-adds per sample")
    from .codegen.stream import NO_RECURRENT_LAYER, Stream, step_model
    stream = step_model(model)
    if isinstance(stream, Stream):
        name = ir.sanitize_name(args.name) if args.name else model.name
        print(f"streaming API: one time step per call (C {name}_step, Go Step, NumPy step), "
              f"{4 * stream.state_size:,} bytes of caller-owned state per stream")
    elif stream != NO_RECURRENT_LAYER:
        print(f"no streaming API: {stream}")
    for path in written:
        print(f"  wrote {path} ({path.stat().st_size:,} bytes)")
    if args.verify:
        return _report(model, langs, args.name, 256, args.weights)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .codegen import golden_budget
    model = _load(args.model)
    samples = _samples(args.samples)
    golden_budget(model, samples)
    return _report(model, _langs(args.lang), args.name, samples, args.weights)


def _report(model: ir.Model, langs: list[str], name: str | None, samples: int,
            weights: str = "auto") -> int:
    from .codegen import ABS_TOL, REL_TOL
    from .verify import verify
    print(f"verifying {model.name} against the reference: tolerance |out - ref| <= "
          f"{ABS_TOL:g} + {REL_TOL:g} * |ref|")
    results = verify(model, langs, samples, name, weights)
    for r in results:
        print("  " + r.line())
    failed = [r.lang for r in results if not r.ok]
    if failed:
        print(f"distill: verification failed for {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# -------------------------------------------------------------------------------- predict

def read_samples(path: str, model: ir.Model | None = None) -> np.ndarray:
    """Samples from a .npy file, or a CSV file as training reads one (a header, quoted cells,
    a byte-order mark, and a label column, which is left out: the model's feature names pick
    the columns when it records them, else the columns must be its inputs)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: {'not a regular file' if p.exists() else 'no such file'}")
    if p.suffix == ".csv":
        return _csv_samples(p, model)
    if p.suffix != ".npy":
        raise DataError(f"{p}: expected a .npy or .csv file")
    try:
        # Memory-mapped first: a header claiming 10**12 values is refused by the map (the file
        # is too short) instead of being allocated, and nothing is unpickled.
        x = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, UnicodeDecodeError, SyntaxError, RecursionError) as e:
        raise DataError(f"{p}: unreadable ({_first_line(e)})") from None
    except Exception as e:  # the header parser's own (tokenize.TokenError): hostile bytes
        raise DataError(f"{p}: unreadable .npy header ({type(e).__name__})") from None
    if x.dtype.kind not in "fiu":
        raise DataError(f"{p}: holds {x.dtype} values, expected numbers")
    with np.errstate(over="ignore"):  # beyond float32's range is inf, like a NaN it propagates
        return np.array(x, dtype=np.float32)


def _csv_samples(p: Path, model: ir.Model | None) -> np.ndarray:
    from .data import numeric_cells, read_csv
    names, rows, lines = read_csv(p, header=None)
    width = len(rows[0])
    wanted = prod(model.input_shape) if model is not None else width
    features = model.metadata.get("features") if model is not None else None
    if not (isinstance(features, list) and len(features) == wanted
            and all(isinstance(f, str) for f in features)):
        features = None
    if names is not None and features is not None and set(features) <= set(names):
        cols = [names.index(f) for f in features]
    elif width == wanted:
        cols = list(range(width))
    else:
        named = f" ({_text(', '.join(features), 200)})" if features else ""
        raise DataError(f"{p}: {width} columns, but model {model.name!r} takes {wanted} "
                        f"features{named}" + ("; a header naming them picks them out"
                                              if features else ""))
    x = numeric_cells(p, rows, lines, cols, names or [str(i) for i in range(width)])
    return x.reshape(len(x), *model.input_shape) if model is not None else x


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def cmd_predict(args: argparse.Namespace) -> int:
    model = _load(args.model)
    out = Path(args.output) if args.output else None
    if out is not None:
        _output_file(out)
    elif sys.stdout is None:
        raise DistillError("standard output is closed; give -o FILE for the predictions")
    x = read_samples(args.input, model)
    shape = tuple(model.input_shape)
    if x.shape == shape:
        x = x[None]  # one sample
    elif x.shape[1:] != shape:
        raise DataError(f"{args.input}: samples of shape {x.shape[1:]}, but model "
                        f"{model.name!r} takes {shape}")
    with np.errstate(all="ignore"):  # NaN and inf inputs give NaN and inf outputs
        y = ir.run(model, x).reshape(len(x), prod(model.output_shape))
    if args.classes:
        labels = model.labels or [str(i) for i in range(max(y.shape[-1], 2))]
        idx = (y[:, 0] > 0.5).astype(int) if y.shape[-1] == 1 else y.argmax(-1)
        # Labels are text from the model file: one escaped line each, in a file too.
        text = "".join(_text(labels[i], 2000) + "\n" for i in idx)
        if out is not None:
            _write_output(out, text.encode("utf-8", "backslashreplace"))
        else:
            sys.stdout.write(text)
        return 0
    if out is not None:
        buf = io.BytesIO()
        if out.suffix == ".npy":
            np.save(buf, y)
        else:
            np.savetxt(buf, y, delimiter=",", fmt="%.9g")
        _write_output(out, buf.getvalue())
    else:
        np.savetxt(sys.stdout, y, delimiter=",", fmt="%.9g")
    return 0


if __name__ == "__main__":
    sys.exit(main())
