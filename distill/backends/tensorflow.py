"""The TensorFlow/Keras backend: trains a config with Keras 3, then imports the result.

Where it sits: beside the NumPy backend, with the same inputs and outputs: `prepare` gives the
data, Keras trains (on a GPU when TensorFlow sees one), `keras.import_keras` converts the
trained model to the IR (and checks it against Keras's own predictions), and
`evaluate_model` scores the IR on every split.

The Keras model mirrors the config layer for layer with the same names: a dense layer with a
leaky_relu activation becomes Dense + LeakyReLU named `NAME_leaky_relu`, which is the node name
the NumPy backend gives, so both backends' IRs read the same. Written against the Keras 3 API
only, so it runs on any Keras backend; TensorFlow is the one installed and tested.

Checkpoints are Keras's `BackupAndRestore` in the folder `OUT.ckpt`; `--resume` continues a
killed run from its last backup. `--strategy mirrored` trains under
`tf.distribute.MirroredStrategy` over all local GPUs (for several machines, the same code
runs under `MultiWorkerMirroredStrategy` with TF_CONFIG set on each worker).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import ir
from ..config import Config
from ..errors import ConfigError, DataError, DistillError, ModelFormatError
from . import TrainResult, check_output_width, evaluate_model, labels_for, metadata, prepare

LOSSES = {"mean_squared_error": "mean_squared_error", "mse": "mean_squared_error",
          "mean_absolute_error": "mean_absolute_error", "mae": "mean_absolute_error",
          "binary_crossentropy": "binary_crossentropy",
          "categorical_crossentropy": "categorical_crossentropy",
          "sparse_categorical_crossentropy": "sparse_categorical_crossentropy"}


def _keras():
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
    except ImportError:
        raise DistillError("the tensorflow backend needs TensorFlow: "
                           "pip install 'distill[tensorflow]'") from None
    return keras


def devices() -> list[str]:
    """Devices TensorFlow trains on, as `tf.config.list_physical_devices` reports them."""
    keras = _keras()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        return [f"{d.device_type}:{d.name.rsplit(':', 1)[-1]}"
                for d in tf.config.list_physical_devices()]
    if keras.backend.backend() == "jax":
        import jax
        return [str(d) for d in jax.devices()]
    return [keras.backend.backend()]


def _layers(keras, config: Config, prep) -> list:
    layers = [keras.Input(prep.x["train"].shape[1:])]
    if prep.standardize is not None:
        mean, std = prep.standardize
        # One mean and std per value of the sample, over all its axes (IDX images unflattened).
        axis = -1 if mean.ndim == 1 else tuple(range(1, mean.ndim + 1))
        layers.append(keras.layers.Normalization(axis=axis, mean=mean, variance=np.square(std),
                                                 name="standardize"))
    names = set()
    for i, spec in enumerate(config.layers):
        kind = spec["type"]
        name = spec.get("name") or _auto_name("bidirectional" if "bidirectional" in spec
                                              else kind, names)
        names.add(name)
        seed = config.seed * 1000 + i
        if kind == "dense" or kind in CONVS:
            act = spec.get("activation")
            act = {"name": act} if isinstance(act, str) else act
            fused = act["name"] if act and act["name"] not in SEPARATE else None
            weighted = {
                "activation": fused, "use_bias": spec.get("use_bias", True),
                "kernel_initializer": _initializer(keras, spec.get("kernel_initializer",
                                                                   "glorot_uniform"), seed),
                "bias_initializer": _initializer(keras, spec.get("bias_initializer", "zeros"),
                                                 seed + 500),
                "name": name}
            if kind == "dense":
                layers.append(keras.layers.Dense(spec["units"], **weighted))
            else:
                dilation = spec.get("dilation_rate", 1)
                if "transpose" in kind and max(np.ravel(dilation)) > 1 and not any(
                        d.startswith("GPU") for d in devices()):
                    raise ConfigError(f"layer {name!r}: TensorFlow has no dilated transposed "
                                      "convolution on CPU; train it with --backend numpy")
                extra = {"groups": spec.get("groups", 1)} if "transpose" not in kind else {
                    "output_padding": _size(spec.get("output_padding"))}
                layers.append(getattr(keras.layers, CONVS[kind])(
                    spec["filters"], _size(spec["kernel_size"]),
                    strides=_size(spec.get("strides", 1)), padding=spec.get("padding", "valid"),
                    dilation_rate=_size(spec.get("dilation_rate", 1)), **extra, **weighted))
            if act and act["name"] in SEPARATE:
                layers.append(_with_alpha(keras, act["name"], act.get("alpha"),
                                          f"{name}_{act['name']}"))
        elif kind == "embedding":
            layers.append(keras.layers.Embedding(
                spec["input_dim"], spec["output_dim"], name=name,
                embeddings_initializer=_initializer(keras, spec.get("embeddings_initializer",
                                                                    "random_uniform"), seed)))
        elif kind in RECURRENT:
            backwards = spec.get("go_backwards", False)
            if "bidirectional" in spec:  # the backward copy gets initial weights of its own
                layers.append(keras.layers.Bidirectional(
                    _recurrent(keras, spec, backwards, seed, f"{name}_forward"),
                    merge_mode=spec["bidirectional"], name=name,
                    backward_layer=_recurrent(keras, spec, not backwards, seed + 750,
                                              f"{name}_backward")))
            else:
                layers.append(_recurrent(keras, spec, backwards, seed, name))
        elif kind in POOLINGS:
            strides = spec.get("strides")
            layers.append(getattr(keras.layers, POOLINGS[kind])(
                _size(spec.get("pool_size", 2)), strides=None if strides is None else
                _size(strides), padding=spec.get("padding", "valid"), name=name))
        elif kind in GLOBAL_POOLINGS:
            layers.append(getattr(keras.layers, GLOBAL_POOLINGS[kind])(name=name))
        elif kind == "activation":
            if spec["activation"] in SEPARATE:
                layers.append(_with_alpha(keras, spec["activation"], spec.get("alpha"), name))
            else:
                layers.append(keras.layers.Activation(spec["activation"], name=name))
        elif kind == "dropout":
            layers.append(keras.layers.Dropout(spec["rate"], seed=seed, name=name))
        elif kind == "flatten":
            layers.append(keras.layers.Flatten(name=name))
        else:
            layers.append(keras.layers.Reshape(spec["shape"], name=name))
    return layers


def _recurrent(keras, spec: dict, go_backwards: bool, seed: int, name: str):
    kind = spec["type"]
    extra = {"recurrent_activation": spec.get("recurrent_activation", "sigmoid")} \
        if kind != "simple_rnn" else {}
    if kind == "gru":
        extra["reset_after"] = spec.get("reset_after", True)
    if kind == "lstm":
        extra["unit_forget_bias"] = spec.get("unit_forget_bias", True)
    return getattr(keras.layers, RECURRENT[kind])(
        spec["units"], activation=spec.get("activation", "tanh"),
        use_bias=spec.get("use_bias", True),
        return_sequences=spec.get("return_sequences", False), go_backwards=go_backwards,
        kernel_initializer=_initializer(keras, spec.get("kernel_initializer", "glorot_uniform"),
                                        seed),
        recurrent_initializer=_initializer(keras, spec.get("recurrent_initializer",
                                                           "orthogonal"), seed + 250),
        bias_initializer=_initializer(keras, spec.get("bias_initializer", "zeros"), seed + 500),
        name=name, **extra)


CONVS = {"conv1d": "Conv1D", "conv2d": "Conv2D", "conv1d_transpose": "Conv1DTranspose",
         "conv2d_transpose": "Conv2DTranspose"}
RECURRENT = {"simple_rnn": "SimpleRNN", "gru": "GRU", "lstm": "LSTM"}
POOLINGS = {"max_pooling1d": "MaxPooling1D", "max_pooling2d": "MaxPooling2D",
            "average_pooling1d": "AveragePooling1D", "average_pooling2d": "AveragePooling2D"}
GLOBAL_POOLINGS = {"global_average_pooling1d": "GlobalAveragePooling1D",
                   "global_average_pooling2d": "GlobalAveragePooling2D",
                   "global_max_pooling1d": "GlobalMaxPooling1D",
                   "global_max_pooling2d": "GlobalMaxPooling2D"}


def _size(value):
    """A config's window size (an integer or a list) as Keras takes it."""
    return tuple(value) if isinstance(value, list) else value


def _auto_name(kind: str, taken: set[str]) -> str:
    # The NumPy backend's naming (dense, dense_1, ...), so both backends give the same IR names.
    name, i = kind, 0
    while name in taken:
        i += 1
        name = f"{kind}_{i}"
    return name


# Activations with an alpha are layers of their own in Keras (a string activation would fix it).
SEPARATE = ("leaky_relu", "elu")


def _with_alpha(keras, activation: str, alpha: float | None, name: str):
    if activation == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=0.2 if alpha is None else alpha, name=name)
    return keras.layers.ELU(alpha=1.0 if alpha is None else alpha, name=name)


def _initializer(keras, name: str, seed: int):
    return keras.initializers.get({"class_name": name, "config": {"seed": seed}}) \
        if name not in ("zeros", "ones") else name


def _optimizer(keras, spec: dict):
    spec = dict(spec)
    name = spec.pop("name").lower()
    lr = spec.pop("learning_rate", None)
    if isinstance(lr, dict):
        lr = dict(lr)
        kind = lr.pop("name")
        if kind == "exponential_decay":
            lr = keras.optimizers.schedules.ExponentialDecay(**lr)
        elif kind == "step_decay":
            lr = keras.optimizers.schedules.ExponentialDecay(
                lr["initial_learning_rate"], lr["step_size"], lr.get("factor", 0.1),
                staircase=True)
        else:
            lr = keras.optimizers.schedules.PiecewiseConstantDecay(lr["boundaries"],
                                                                   lr["values"])
    cls = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam,
           "rmsprop": keras.optimizers.RMSprop}[name]
    return cls(**({"learning_rate": lr} if lr is not None else {}), **spec)


def _loss(keras, spec):
    name = spec["name"] if isinstance(spec, dict) else spec
    from_logits = spec.get("from_logits", False) if isinstance(spec, dict) else False
    if name == "half_sum_squared_error":
        def half_sum_squared_error(y_true, y_pred):
            return 0.5 * keras.ops.sum(keras.ops.square(y_pred - y_true), axis=-1)
        return half_sum_squared_error
    if from_logits:
        return keras.losses.get({"class_name": name, "config": {"from_logits": True}})
    return LOSSES[name]


class _Progress:
    """Keras callback giving the NumPy backend's output: a bar per epoch on a terminal,
    about twenty summary lines, and each step's own loss for the plot."""

    def __new__(cls, keras, epochs: int, batches: int, batch_size: int, n: int,
                verbose: int):
        class Progress(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.steps: list[float] = []

            def on_epoch_begin(self, epoch, logs=None):
                from tqdm import tqdm
                self.bar = tqdm(total=batches, file=sys.stderr, leave=False,
                                disable=None if verbose else True,
                                desc=f"epoch {epoch + 1}/{epochs}", unit="step")
                self.seen, self.mean = 0, 0.0

            def on_train_batch_end(self, batch, logs=None):
                # Keras reports the epoch's running mean; recover this batch's own loss.
                k = min(batch_size, n - self.seen)
                mean = float(logs["loss"])
                self.steps.append((mean * (self.seen + k) - self.mean * self.seen) / k)
                self.seen, self.mean = self.seen + k, mean
                self.bar.update(1)

            def on_epoch_end(self, epoch, logs=None):
                self.bar.close()
                every = max(1, epochs // 20)
                if verbose and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
                    values = "  ".join(f"{k} {v:.4g}" for k, v in (logs or {}).items()
                                       if k != "learning_rate")
                    print(f"epoch {epoch + 1}/{epochs}  {values}", file=sys.stderr, flush=True)
        return Progress()


def train(config: Config, *, epochs: int | None = None, seed: int | None = None,
          checkpoint: str | os.PathLike | None = None, resume: bool = False,
          verbose: int = 1, strategy: str | None = None,
          announce: Callable[[str], None] | None = None) -> TrainResult:
    keras = _keras()
    seed = config.seed if seed is None else seed
    epochs = epochs or config.epochs
    config = _with_seed(config, seed)
    prep = prepare(config, seed)
    keras.utils.set_random_seed(seed)
    scope = _strategy_scope(strategy)
    with scope:
        try:
            model = keras.Sequential(_layers(keras, config, prep), name=config.name)
        except ValueError as e:
            raise DataError(f"the layers do not fit the data {prep.x['train'].shape[1:]}: "
                            f"{str(e).splitlines()[0]}") from None
        last = model.layers[-1]
        check_output_width(config, prep, model.output_shape[1:], last.name)
        model.compile(loss=_loss(keras, config.loss), optimizer=_optimizer(
            keras, config.optimizer), metrics=list(config.metrics))
    n = len(prep.x["train"])
    batch = config.batch_size or n
    batches = -(-n // batch)
    if announce:
        sizes = ", ".join(f"{len(v)} {k}" for k, v in prep.x.items())
        announce(f"training {config.name!r} ({model.count_params():,} parameters) on {sizes} "
                 f"samples of {prep.train.description}; backend tensorflow (Keras "
                 f"{keras.__version__}, {keras.backend.backend()}), devices: "
                 f"{', '.join(devices())}" + (f", strategy {strategy}" if strategy else ""))
    callbacks = [_Progress(keras, epochs, batches, batch, n, verbose)]
    if checkpoint is not None:
        folder = Path(checkpoint)
        if not resume and folder.exists():
            shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
        # Which run the folder belongs to: --resume refuses one from another config or seed.
        run, stamp = config.fingerprint(seed), folder / "distill-run.json"
        if stamp.is_file():  # a folder without one is from before stamps: taken as it is
            try:
                theirs = json.loads(stamp.read_text()).get("run")
            except (OSError, ValueError, AttributeError):
                theirs = None
            if theirs != run:
                raise ModelFormatError(f"{folder}: checkpoint was written by a run of another "
                                       "config or seed; delete it to start over, or train "
                                       "without --resume")
        folder.mkdir(exist_ok=True)
        ir.atomic_write(stamp, (json.dumps({"run": run}) + "\n").encode())  # never half a stamp
        callbacks.append(keras.callbacks.BackupAndRestore(str(folder),
                                                          save_freq=config.checkpoint_every))
    if config.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(**config.early_stopping))
    validation = ((prep.x["validation"], prep.y["validation"]) if "validation" in prep.x
                  else None)
    hist = model.fit(prep.x["train"], prep.y["train"], epochs=epochs, batch_size=batch,
                     validation_data=validation, shuffle=config.shuffle, callbacks=callbacks,
                     verbose=0)
    from .keras import import_keras
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()
               if k != "learning_rate"}
    imported = import_keras(model, config.name)  # checked against Keras's predictions
    scores = evaluate_model(imported, config, prep)
    facts = metadata(config, prep, "tensorflow", seed, epochs, scores, {"devices": devices()})
    model_ir = ir.make_model(imported.name, imported.input_shape,
                             [(n.name, n.op, n.attrs, n.weights, list(n.inputs))
                              for n in imported.nodes],
                             labels_for(prep), {**imported.metadata, **facts})
    return TrainResult(model_ir, history, callbacks[0].steps, scores)


def _with_seed(config: Config, seed: int) -> Config:
    from dataclasses import replace
    return replace(config, seed=seed)


def _strategy_scope(strategy: str | None):
    import contextlib
    if strategy in (None, "default"):
        return contextlib.nullcontext()
    if strategy != "mirrored":
        raise ConfigError(f"unknown strategy {strategy!r}; expected default or mirrored")
    import tensorflow as tf
    return tf.distribute.MirroredStrategy().scope()
