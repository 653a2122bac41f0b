"""Text rendering for exporters: the jinja2 environment, the filters, and literal formatting.

Where it sits: `codegen.export` builds a language-neutral context from the IR and renders each
target's templates (`templates/<lang>/`) with the environment made here. Filters are registered
in one place (`make_env`), and every piece of model-derived text that reaches emitted code goes
through one of them: numbers as exact literals, identifiers already sanitized by the IR, and
labels as escaped string literals that cannot end a string or a comment.
"""

from __future__ import annotations

import base64
import bisect
import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import jinja2


def templates_dir() -> Path:
    """`templates/` beside the package in a checkout, or inside it in an installed wheel."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "templates", here.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("distill's templates folder is missing from this installation")


def float_literal(value: Any) -> str:
    """The shortest decimal that reads back as exactly this float32 (no suffix).

    NumPy's float32 repr is the shortest round-trip string; we only make sure it parses as a
    floating literal in every language (a '.' or an exponent is present).
    """
    text = np.format_float_positional(np.float32(value), unique=True, trim="0") \
        if 1e-4 <= abs(float(value)) < 1e7 or value == 0 else \
        np.format_float_scientific(np.float32(value), unique=True, trim="0", exp_digits=2)
    if text.endswith("."):
        text += "0"
    return text


def float_literals(values: Any) -> list[str]:
    """`float_literal` of every value of an array, all at once.

    NumPy's own float32-to-text conversion (Dragon4, shortest round-trip, in C) writes the same
    text as `float_literal` for magnitudes in [1e-4, 1e6), where it uses positional notation;
    the few values outside that range (and zeros) go through `float_literal` one by one. This
    takes about half the time of formatting every value on its own.
    """
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    texts = flat.astype(str).tolist()
    magnitude = np.abs(flat.astype(np.float64))
    for i in np.flatnonzero(~((magnitude >= 1e-4) & (magnitude < 1e6))).tolist():
        texts[i] = float_literal(flat[i])
    return texts


def _wrap_items(items: list[str], width: int, indent: str, suffix: str = "") -> str:
    """`item<suffix>, item<suffix>, ...` in lines of at most `width` characters, each line
    ending in a comma. Greedy, as a person would wrap it; found a line at a time by bisection
    over the running total of item widths, so a million items cost a fraction of a second."""
    # ends[k]: the width of items[:k], each with its suffix, comma and following space
    ends = [0, *itertools.accumulate(len(item) + len(suffix) + 2 for item in items)]
    room = width - len(indent)
    lines, start, joiner = [], 0, suffix + ", "
    while start < len(items):
        stop = max(bisect.bisect_right(ends, ends[start] + room) - 1, start + 1)
        lines.append(indent + joiner.join(items[start:stop]) + suffix + ",")
        start = stop
    return "\n".join(lines)


def float_lines(values: Any, suffix: str = "", width: int = 96, indent: str = "    ",
                neg_zero: str | None = None) -> str:
    """Comma-separated float literals wrapped into lines of at most `width` characters.

    `neg_zero` replaces -0.0 for languages whose constants have no negative zero (Go).
    """
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    texts = float_literals(flat)
    negative_zeros = np.flatnonzero((flat == 0) & np.signbit(flat)).tolist()
    if neg_zero and negative_zeros:
        texts = [t + suffix for t in texts]
        for i in negative_zeros:
            texts[i] = neg_zero
        suffix = ""
    return _wrap_items(texts, width, indent, suffix)


def hex_words(values: Any, width: int = 96, indent: str = "    ") -> str:
    """The bit patterns of float32 values as `0x%08x` integer literals, wrapped like
    `float_lines`: exact by construction, and cheap for a compiler to read. Every item has
    the same width, so the lines are laid out as rows of one byte matrix."""
    words = np.ascontiguousarray(values, dtype=">f4").reshape(-1)
    if not words.size:
        return ""
    per_line = max((width - len(indent)) // 12, 1)  # "0x" + 8 digits + ", "
    items = np.empty((words.size, 12), np.uint8)
    items[:, :2] = np.frombuffer(b"0x", np.uint8)
    items[:, 2:10] = np.frombuffer(words.tobytes().hex().encode(), np.uint8).reshape(-1, 8)
    items[:, 10:] = np.frombuffer(b", ", np.uint8)
    full = words.size - words.size % per_line
    lines = []
    for chunk, rows in ((items[:full], full // per_line), (items[full:], int(full < words.size))):
        if rows:
            text = np.empty((rows, len(indent) + chunk.size // rows), np.uint8)
            text[:, :len(indent)] = np.frombuffer(indent.encode(), np.uint8)
            text[:, len(indent):] = chunk.reshape(rows, -1)
            text[:, -1] = ord("\n")  # in place of the space after each line's last comma
            lines.append(text.tobytes().decode())
    return "".join(lines)[:-1]


_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _.,:;+=-()[]")


def c_string(text: str) -> str:
    """A C string literal: anything but plain characters as octal escapes (never `?`, `*`,
    `/`, quotes or backslashes raw, so neither trigraphs nor comment ends can form)."""
    return '"' + "".join(chr(b) if chr(b) in _SAFE else f"\\{b:03o}"
                         for b in text.encode("utf-8")) + '"'


def go_string(text: str) -> str:
    """A Go interpreted string literal with every unusual byte as a `\\xHH` escape."""
    return '"' + "".join(chr(b) if chr(b) in _SAFE else f"\\x{b:02x}"
                         for b in text.encode("utf-8")) + '"'


def py_string(text: str) -> str:
    """A Python string literal, ASCII only, every unusual character escaped."""
    return '"' + "".join(c if c in _SAFE else f"\\u{ord(c):04x}" if ord(c) < 0x10000
                         else f"\\U{ord(c):08x}" for c in text) + '"'


def b64_float32(values: Any) -> str:
    """Little-endian float32 bytes as base64: exact, and compact to embed."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode()


def b64_int32(values: Any) -> str:
    """Little-endian int32 bytes as base64 (index tables)."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<i4").tobytes()).decode()


def wrap(text: str, width: int = 88, indent: str = "    ") -> str:
    """Hard-wrap an unbreakable string (base64) into indented lines."""
    step = width - len(indent) - 2
    return "\n".join(f'{indent}"{text[i:i + step]}"' for i in range(0, len(text), step))


def camel(name: str, upper: bool = False) -> str:
    """`dense_1_kernel` -> `dense1Kernel` (or `Dense1Kernel`), for Go."""
    parts = [p for p in name.split("_") if p]
    out = parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])
    return out[:1].upper() + out[1:] if upper else out


def negative_zero(values: np.ndarray) -> bool:
    """Whether any of values is -0.0."""
    return bool(np.any(np.signbit(values) & (values == 0)))


def make_env(lang_dir: Path) -> jinja2.Environment:
    import jinja2  # here, not at the top: the command line reads codegen's constants without it
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(lang_dir)]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # we emit code, not HTML
    )
    env.filters.update(
        float=float_literal, float_lines=float_lines, hex_words=hex_words, c_string=c_string,
        go_string=go_string,
        py_string=py_string, b64_float32=b64_float32, b64_int32=b64_int32, wrap=wrap, camel=camel,
        upper=lambda s: s.upper(), negative_zero=negative_zero,
    )
    return env
