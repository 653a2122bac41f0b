"""The errors distill raises for bad input; the command line prints each as one line, exit 2.

Every message names the thing at fault (file, node, key) and what would be accepted instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DistillError(Exception):
    """Bad input from the user: a file, a config, a model. Never a bug in distill."""


class ConfigError(DistillError):
    """A training config that cannot be used as written."""


class DataError(DistillError):
    """Data that cannot be loaded or does not fit the model."""


class ModelFormatError(DistillError):
    """A model file that is not a valid distill IR (or Keras) file."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean "x"?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def check_keys(table: dict, allowed: Iterable[str], where: str) -> None:
    """Reject keys of a config table that are not in `allowed`, suggesting the closest one."""
    allowed = set(allowed)
    for key in table:
        if key not in allowed:
            raise ConfigError(f"unknown key {key!r} in {where}{did_you_mean(key, allowed)}; "
                              f"expected one of: {', '.join(sorted(allowed))}")
