"""The TensorFlow/Keras backend: not built yet.

It will train the same configs with Keras 3 and convert the result to the IR; until then it
fails with one clear line instead of half-working.
"""

from __future__ import annotations

from ..config import Config
from ..errors import ConfigError


def train(config: Config, **options) -> None:
    raise ConfigError("the tensorflow backend is not available in this version of distill; "
                      "use --backend numpy")
