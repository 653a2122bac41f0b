"""The NumPy backend: trains a config with distill's own autodiff core (`nn.Sequential`).

Checkpoints are `nn.BackupAndRestore` files: weights, optimizer slots, the random generator
and the position in the epoch, written atomically every `checkpoint_every` steps, so a killed
run resumed with `resume=True` takes exactly the steps the uninterrupted run would have. The
checkpoint is left in place when training ends: the caller removes it after saving the model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import nn, optim
from ..config import Config
from ..errors import ConfigError, DataError, DistillError
from . import (
    TrainResult,
    check_output_width,
    check_parameters,
    evaluate_model,
    labels_for,
    metadata,
    prepare,
)


def build_model(config: Config, prep, seed: int) -> nn.Sequential:
    layers = config.build_layers()
    if prep.standardize is not None:
        layers.insert(0, nn.Normalization(*prep.standardize, name="standardize"))
    model = nn.Sequential(layers, name=config.name, seed=seed)
    check_parameters(layers, prep.x["train"].shape[1:])
    try:
        model.build(prep.x["train"].shape[1:])
    except ValueError as e:
        raise DataError(f"the layers do not fit the data {prep.x['train'].shape[1:]}: {e}") \
            from None
    last = model.layers[-1]
    check_output_width(config, prep, last.output_shape, last.name)
    return model


class Diverged(nn.Callback):
    """Stop with one clear line when the loss stops being a number: the history (and so the
    checkpoint) cannot hold NaN, and the weights would be useless anyway."""

    def on_train_batch_end(self, step, logs=None):
        loss = (logs or {}).get("loss", 0.0)
        if not np.isfinite(loss):
            raise DistillError(f"training diverged at step {self.model._fit.global_step}: the "
                               f"loss is {loss}; lower the learning rate or standardize the data")

    def on_epoch_end(self, epoch, logs=None):
        bad = [k for k, v in (logs or {}).items() if not np.isfinite(v)]
        if bad:
            raise DistillError(f"training diverged in epoch {epoch + 1}: {', '.join(bad)} "
                               "is not a finite number; lower the learning rate")


def train(config: Config, *, epochs: int | None = None, seed: int | None = None,
          checkpoint: str | os.PathLike | None = None, resume: bool = False,
          verbose: int = 1, callbacks: list[nn.Callback] | None = None,
          announce: Callable[[str], None] | None = None) -> TrainResult:
    seed = config.seed if seed is None else seed
    epochs = epochs or config.epochs
    prep = prepare(config, seed)
    model = build_model(config, prep, seed)
    model.compile(config.loss, optim.get(config.optimizer), config.metrics)
    if announce:
        sizes = ", ".join(f"{len(v)} {k}" for k, v in prep.x.items())
        announce(f"training {config.name!r} ({model.count_params():,} parameters) on "
                 f"{sizes} samples of {prep.train.description}; backend numpy, device CPU "
                 f"(NumPy {np.__version__})")
    # First, so that a diverged step is never written to the checkpoint.
    cbs = [Diverged(), *(callbacks or [])]
    if checkpoint is not None:
        if not resume and Path(checkpoint).exists():
            os.remove(checkpoint)  # a fresh run must not pick up an old one
        # keep=True: the checkpoint outlives `fit`, so a kill between the last step and the
        # saved model (evaluation, conversion, writing) loses nothing; the caller removes it
        # once the model is on disk (`distill train` does).
        cbs.append(nn.BackupAndRestore(str(checkpoint), config.checkpoint_every, keep=True,
                                       run=config.fingerprint(seed)))
    if config.early_stopping:
        es = dict(config.early_stopping)
        if "val_" in es.get("monitor", "val_loss") and "validation" not in prep.x:
            raise ConfigError("early_stopping monitors a validation metric but [data] has no "
                              "validation split")
        cbs.append(nn.EarlyStopping(**es))
    n = len(prep.x["train"])
    validation = (prep.x["validation"], prep.y["validation"]) if "validation" in prep.x else None
    # Overflow shows up as a non-finite loss, which `Diverged` reports in one line.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        hist = model.fit(prep.x["train"], prep.y["train"], epochs=epochs,
                         batch_size=config.batch_size or n, validation_data=validation,
                         shuffle=config.shuffle, callbacks=cbs, verbose=verbose)
    model_ir = model.to_ir(labels=labels_for(prep))
    scores = evaluate_model(model_ir, config, prep)
    model_ir = model.to_ir(labels=labels_for(prep),
                           metadata=metadata(config, prep, "numpy", seed, epochs, scores))
    return TrainResult(model_ir, hist.history, hist.steps, scores)
