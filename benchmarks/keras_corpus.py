"""Keras import coverage: a corpus of small Keras models, imported and verified in every target.

Where it sits: outside the package and the tests; run by hand when the Keras importer or an
exporter changes, to see what is left:

    python benchmarks/keras_corpus.py                      # the whole corpus, about 8 minutes
    python benchmarks/keras_corpus.py --only conv --langs c,numpy
    python benchmarks/keras_corpus.py --list               # the models, no runs

It measures how much of Keras distill reads. About 170 tiny Keras 3 models (tens to a few
hundred weights, inputs of a few steps or pixels), one per layer, option or wiring that the
test suites of two peer tools exercise: keras2c's `tests/test_*.py` (core layers, advanced
activations, convolution, pooling, recurrent, merge, embedding, normalization, wrappers,
models) and frugally-deep's `keras_export/generate_test_models.py` (its wider layer set,
attention and preprocessing layers among them); and a Dense with each activation in
`keras.activations`. Models distill is not expected to read yet (Conv3D, Dot, RepeatVector,
attention, masking, ...) are in the corpus on purpose: the table shows what is left.

Every weight is drawn from a generator seeded by the model's name (kernels N(0, 1/fan-in),
biases and means N(0, 0.3), variances and scales U(0.5, 2) and U(0.5, 1.5)), so runs are
comparable and a subset (`--only`) gives the same models. Each model is imported with
`distill.backends.keras.import_keras` (with `--via-file`, saved as `.keras` and read back
with `load_keras`, as `distill import` does), which checks the IR against Keras's own
predictions; then `distill.verify.verify` exports it to each language, builds it with the
real toolchain and compares it with the reference interpreter on `--samples` golden vectors
(models that read embedding ids get valid ids for half of them).

It prints, per category, how many models import and how many match in every target; one line
per failing model with the reason (the importer's message, the target without a template for
an op, or the target that mismatched and by how much); crashes (a traceback out of distill,
not a clean error) listed apart; and the total. Exit status 0 whatever the results: this is a
measurement, not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import re
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from math import prod, sqrt
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads: no start-up chatter

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distill import codegen, ir, verify  # noqa: E402
from distill.backends.keras import import_keras, load_keras  # noqa: E402
from distill.errors import DistillError  # noqa: E402

try:
    import keras  # noqa: E402
    from keras import layers as L  # noqa: E402
except ImportError:  # pragma: no cover - the benchmark needs Keras
    sys.exit("keras_corpus.py needs Keras 3 (pip install 'distill[tensorflow]')")
logging.getLogger("tensorflow").setLevel(logging.ERROR)  # each model's predict is a new trace


# ---------------------------------------------------------------------------------- the corpus

@dataclass
class Case:
    category: str
    name: str
    build: Callable[[], keras.Model]
    vocab: int = 0  # > 0: the (single) input holds ids into an embedding of this many rows


CASES: list[Case] = []


def add(category: str, name: str, build: Callable[[], keras.Model], vocab: int = 0) -> None:
    if any(c.name == name for c in CASES):
        raise ValueError(f"two models named {name!r}")
    CASES.append(Case(category, name, build, vocab))


def seq(shape: tuple[int, ...], *layers) -> keras.Model:
    return keras.Sequential([keras.Input(shape), *layers])


def inputs(*shapes: tuple[int, ...]) -> list:
    return [keras.Input(s, name=f"in{k}") for k, s in enumerate(shapes)]


# Dense(6) with each activation keras.activations offers (swish and hard_swish are aliases of
# silu and hard_silu; threshold needs arguments a string cannot give).
ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh", "softmax", "elu", "selu", "gelu", "silu",
               "softplus", "softsign", "hard_sigmoid", "exponential", "leaky_relu", "relu6",
               "mish", "hard_silu", "log_softmax", "log_sigmoid", "celu", "glu", "hard_tanh",
               "hard_shrink", "soft_shrink", "tanh_shrink", "squareplus", "sparse_plus",
               "sparse_sigmoid", "sparsemax"]
for _act in ACTIVATIONS:
    add("activations", f"dense_{_act}",
        lambda a=_act: seq((5,), L.Dense(6, activation=a)))

# keras2c test_core_layers
add("core", "dense_no_bias", lambda: seq((5,), L.Dense(4, use_bias=False)))
add("core", "dense_on_sequence", lambda: seq((3, 4), L.Dense(5, activation="relu")))
add("core", "activation_layer", lambda: seq((3, 4), L.Activation("softmax"), L.Dense(2),
                                            L.Activation("tanh")))
add("core", "dropout", lambda: seq((5,), L.Dense(6, activation="relu"), L.Dropout(0.5),
                                   L.Dense(3)))
add("core", "noise_layers", lambda: seq(
    (6, 3), L.GaussianNoise(0.1), L.Conv1D(4, 2), L.SpatialDropout1D(0.2), L.Flatten(),
    L.AlphaDropout(0.1), L.GaussianDropout(0.2), L.ActivityRegularization(0.01), L.Dense(2)))
add("core", "flatten", lambda: seq((2, 3, 2), L.Flatten(), L.Dense(3)))
add("core", "reshape", lambda: seq((12,), L.Reshape((3, 4)), L.Dense(2)))
add("core", "reshape_minus_one", lambda: seq((12,), L.Reshape((-1, 2)), L.Dense(3)))
add("core", "permute", lambda: seq((3, 4), L.Permute((2, 1)), L.Dense(2)))
add("core", "repeat_vector", lambda: seq((4,), L.Dense(3), L.RepeatVector(3), L.Flatten()))
add("core", "identity", lambda: seq((4,), L.Identity(), L.Dense(3)))

# keras2c test_advanced_activation_layers
add("advanced_activations", "leaky_relu_default", lambda: seq((5,), L.Dense(4), L.LeakyReLU()))
add("advanced_activations", "leaky_relu_slope",
    lambda: seq((5,), L.Dense(4), L.LeakyReLU(negative_slope=0.05)))
add("advanced_activations", "prelu", lambda: seq((5,), L.Dense(4), L.PReLU()))
add("advanced_activations", "prelu_shared_axes",
    lambda: seq((5, 5, 2), L.Conv2D(3, 2), L.PReLU(shared_axes=[1, 2])))
add("advanced_activations", "elu_layer", lambda: seq((5,), L.Dense(4), L.ELU(alpha=0.5)))
add("advanced_activations", "relu_layer", lambda: seq((5,), L.Dense(4), L.ReLU()))
add("advanced_activations", "relu_max_value",
    lambda: seq((5,), L.Dense(4), L.ReLU(max_value=0.5)))
add("advanced_activations", "relu_negative_slope",
    lambda: seq((5,), L.Dense(4), L.ReLU(negative_slope=0.1)))
add("advanced_activations", "relu_all_options",
    lambda: seq((5,), L.Dense(4), L.ReLU(max_value=0.8, negative_slope=0.1, threshold=0.2)))
add("advanced_activations", "softmax_layer", lambda: seq((5,), L.Dense(4), L.Softmax()))
add("advanced_activations", "softmax_axis1", lambda: seq((3, 4), L.Softmax(axis=1)))

# keras2c test_convolution_layers (and frugally-deep's conv variants)
add("convolution", "conv1d", lambda: seq((10, 3), L.Conv1D(4, 3)))
add("convolution", "conv1d_same_stride2",
    lambda: seq((9, 3), L.Conv1D(4, 3, strides=2, padding="same")))
add("convolution", "conv1d_causal",
    lambda: seq((8, 2), L.Conv1D(3, 3, padding="causal", activation="relu")))
add("convolution", "conv1d_dilated",
    lambda: seq((10, 2), L.Conv1D(3, 3, dilation_rate=2, padding="same")))
add("convolution", "conv1d_groups", lambda: seq((8, 4), L.Conv1D(4, 3, groups=2)))
add("convolution", "conv2d", lambda: seq((6, 6, 2), L.Conv2D(3, 3, activation="relu")))
add("convolution", "conv2d_same", lambda: seq((5, 5, 2), L.Conv2D(3, 3, padding="same")))
add("convolution", "conv2d_same_stride2",
    lambda: seq((7, 7, 2), L.Conv2D(3, 3, strides=2, padding="same")))
add("convolution", "conv2d_rect_strides",
    lambda: seq((6, 7, 2), L.Conv2D(3, (2, 3), strides=(1, 2))))
add("convolution", "conv2d_dilated", lambda: seq((7, 7, 2), L.Conv2D(2, 3, dilation_rate=2)))
add("convolution", "conv2d_groups",
    lambda: seq((5, 5, 4), L.Conv2D(4, 3, groups=2, padding="same")))
add("convolution", "conv2d_1x1_no_bias", lambda: seq((4, 4, 3), L.Conv2D(2, 1, use_bias=False)))
add("convolution", "separable_conv1d",
    lambda: seq((8, 2), L.SeparableConv1D(3, 3, depth_multiplier=2)))
add("convolution", "separable_conv2d", lambda: seq(
    (6, 6, 2), L.SeparableConv2D(3, 3, padding="same", depth_multiplier=2, activation="relu")))
add("convolution", "depthwise_conv1d",
    lambda: seq((8, 3), L.DepthwiseConv1D(3, depth_multiplier=2)))
add("convolution", "depthwise_conv2d",
    lambda: seq((6, 6, 2), L.DepthwiseConv2D(3, depth_multiplier=2)))
add("convolution", "depthwise_conv2d_same_stride2",
    lambda: seq((7, 7, 3), L.DepthwiseConv2D(3, strides=2, padding="same")))
add("convolution", "conv1d_transpose", lambda: seq((5, 2), L.Conv1DTranspose(3, 3, strides=2)))
add("convolution", "conv2d_transpose",
    lambda: seq((4, 4, 2), L.Conv2DTranspose(3, 3, strides=2)))
add("convolution", "conv2d_transpose_same",
    lambda: seq((4, 3, 2), L.Conv2DTranspose(2, (3, 2), strides=(2, 1), padding="same")))
add("convolution", "conv2d_transpose_output_padding",
    lambda: seq((3, 3, 2), L.Conv2DTranspose(2, 3, strides=2, output_padding=1)))

# keras2c's 3-D layers
add("3d", "conv3d", lambda: seq((4, 4, 4, 1), L.Conv3D(2, 2)))
add("3d", "max_pooling3d", lambda: seq((4, 4, 4, 2), L.MaxPooling3D(2)))
add("3d", "upsampling3d", lambda: seq((2, 2, 2, 1), L.UpSampling3D(2)))

# keras2c test_pooling_layers
add("pooling", "max_pool1d", lambda: seq((8, 3), L.MaxPooling1D(2)))
add("pooling", "max_pool1d_same_stride2",
    lambda: seq((9, 3), L.MaxPooling1D(3, strides=2, padding="same")))
add("pooling", "avg_pool1d_same", lambda: seq((9, 3), L.AveragePooling1D(2, padding="same")))
add("pooling", "max_pool2d", lambda: seq((6, 6, 2), L.MaxPooling2D()))
add("pooling", "max_pool2d_same_stride2",
    lambda: seq((7, 7, 2), L.MaxPooling2D(3, strides=2, padding="same")))
add("pooling", "avg_pool2d_stride1", lambda: seq((5, 5, 2), L.AveragePooling2D(2, strides=1)))
add("pooling", "avg_pool2d_same_stride2",
    lambda: seq((7, 7, 2), L.AveragePooling2D(3, strides=2, padding="same")))
add("pooling", "global_avg_pool1d", lambda: seq((6, 3), L.GlobalAveragePooling1D()))
add("pooling", "global_max_pool1d", lambda: seq((6, 3), L.GlobalMaxPooling1D()))
add("pooling", "global_avg_pool2d", lambda: seq((4, 5, 3), L.GlobalAveragePooling2D()))
add("pooling", "global_max_pool2d", lambda: seq((4, 5, 3), L.GlobalMaxPooling2D()))
add("pooling", "global_avg_pool2d_keepdims",
    lambda: seq((4, 4, 3), L.GlobalAveragePooling2D(keepdims=True), L.Flatten()))

# padding, cropping, upsampling (keras2c puts them with the convolutions)
add("reshaping", "zero_padding1d", lambda: seq((5, 2), L.ZeroPadding1D((1, 2))))
add("reshaping", "zero_padding2d", lambda: seq((3, 4, 2), L.ZeroPadding2D(((1, 0), (2, 1)))))
add("reshaping", "cropping1d", lambda: seq((7, 2), L.Cropping1D((1, 2))))
add("reshaping", "cropping2d", lambda: seq((6, 6, 2), L.Cropping2D(((1, 0), (0, 2)))))
add("reshaping", "upsampling1d", lambda: seq((4, 2), L.UpSampling1D(2)))
add("reshaping", "upsampling2d", lambda: seq((3, 2, 2), L.UpSampling2D((2, 3))))
add("reshaping", "upsampling2d_bilinear",
    lambda: seq((3, 3, 2), L.UpSampling2D(2, interpolation="bilinear")))


# keras2c test_normalization_layers, frugally-deep's normalizations
def bn_unfolded() -> keras.Model:
    x, = inputs((5,))
    d = L.Dense(4)(x)
    return keras.Model(x, L.Add()([d, L.BatchNormalization()(d)]))


add("normalization", "batchnorm_after_dense",
    lambda: seq((5,), L.Dense(4), L.BatchNormalization(), L.Activation("relu")))
add("normalization", "batchnorm_after_conv2d",
    lambda: seq((5, 5, 2), L.Conv2D(3, 3), L.BatchNormalization(), L.ReLU()))
add("normalization", "batchnorm_standalone",
    lambda: seq((5,), L.BatchNormalization(epsilon=0.01), L.Dense(3)))
add("normalization", "batchnorm_on_sequence", lambda: seq((4, 3), L.BatchNormalization()))
add("normalization", "batchnorm_axis1", lambda: seq((4, 3), L.BatchNormalization(axis=1)))
add("normalization", "batchnorm_no_scale_center",
    lambda: seq((5,), L.Dense(4), L.BatchNormalization(scale=False, center=False)))
add("normalization", "batchnorm_not_foldable", bn_unfolded)
add("normalization", "layernorm", lambda: seq((5,), L.Dense(6), L.LayerNormalization()))
add("normalization", "layernorm_two_axes",
    lambda: seq((3, 4), L.LayerNormalization(axis=[-2, -1], epsilon=1e-5)))
add("normalization", "layernorm_rms_scaling",
    lambda: seq((5,), L.LayerNormalization(rms_scaling=True)))
add("normalization", "normalization_layer", lambda: seq(
    (4,), L.Normalization(mean=[0.5, -1.0, 2.0, 0.0], variance=[1.0, 4.0, 0.25, 2.0]),
    L.Dense(2)))
add("normalization", "unit_normalization", lambda: seq((5,), L.UnitNormalization()))
add("normalization", "group_normalization", lambda: seq((5, 4), L.GroupNormalization(groups=2)))
add("normalization", "rms_normalization", lambda: seq((5,), L.RMSNormalization()))


# keras2c test_recurrent_layers, frugally-deep's return_state and initial_state models
def lstm_return_state() -> keras.Model:
    x, = inputs((5, 3))
    out, _, c = L.LSTM(4, return_state=True)(x)
    return keras.Model(x, [out, c])


def lstm_initial_state() -> keras.Model:
    x, h, c = inputs((5, 3), (4,), (4,))
    return keras.Model([x, h, c], L.LSTM(4)(x, initial_state=[h, c]))


add("recurrent", "simple_rnn", lambda: seq((5, 3), L.SimpleRNN(4)))
add("recurrent", "simple_rnn_seq_relu_backwards", lambda: seq(
    (5, 3), L.SimpleRNN(4, activation="relu", return_sequences=True, go_backwards=True)))
add("recurrent", "gru", lambda: seq((5, 3), L.GRU(4)))
add("recurrent", "gru_reset_before", lambda: seq((5, 3), L.GRU(4, reset_after=False)))
add("recurrent", "gru_seq_backwards",
    lambda: seq((5, 3), L.GRU(3, return_sequences=True, go_backwards=True)))
add("recurrent", "gru_activations",
    lambda: seq((5, 3), L.GRU(4, activation="relu", recurrent_activation="hard_sigmoid")))
add("recurrent", "lstm", lambda: seq((5, 3), L.LSTM(4)))
add("recurrent", "lstm_seq", lambda: seq((5, 3), L.LSTM(3, return_sequences=True)))
add("recurrent", "lstm_backwards", lambda: seq((5, 3), L.LSTM(4, go_backwards=True)))
add("recurrent", "lstm_no_bias", lambda: seq((5, 3), L.LSTM(4, use_bias=False)))
add("recurrent", "lstm_stacked",
    lambda: seq((5, 3), L.LSTM(4, return_sequences=True), L.LSTM(3), L.Dense(2)))
add("recurrent", "lstm_return_state", lstm_return_state)
add("recurrent", "lstm_initial_state", lstm_initial_state)
add("recurrent", "masking_lstm", lambda: seq((5, 3), L.Masking(0.0), L.LSTM(4)))
add("recurrent", "rnn_of_lstm_cell", lambda: seq((5, 3), L.RNN(L.LSTMCell(4))))

# keras2c test_wrappers
add("wrappers", "bidirectional_lstm_concat", lambda: seq((5, 3), L.Bidirectional(L.LSTM(3))))
add("wrappers", "bidirectional_gru_sum",
    lambda: seq((5, 3), L.Bidirectional(L.GRU(3), merge_mode="sum")))
add("wrappers", "bidirectional_simple_rnn_mul",
    lambda: seq((5, 3), L.Bidirectional(L.SimpleRNN(3), merge_mode="mul")))
add("wrappers", "bidirectional_lstm_ave",
    lambda: seq((5, 3), L.Bidirectional(L.LSTM(3), merge_mode="ave")))
add("wrappers", "bidirectional_gru_seq_concat",
    lambda: seq((5, 3), L.Bidirectional(L.GRU(3, return_sequences=True)), L.Dense(2)))
add("wrappers", "bidirectional_merge_none",
    lambda: seq((5, 3), L.Bidirectional(L.LSTM(3), merge_mode=None)))
add("wrappers", "time_distributed_dense",
    lambda: seq((4, 3), L.TimeDistributed(L.Dense(2, activation="sigmoid"))))
add("wrappers", "time_distributed_conv1d",
    lambda: seq((3, 6, 2), L.TimeDistributed(L.Conv1D(2, 3)), L.Flatten()))

# keras2c test_embedding_layers
add("embedding", "embedding_flatten",
    lambda: seq((5,), L.Embedding(10, 3), L.Flatten(), L.Dense(2)), vocab=10)
add("embedding", "embedding_lstm", lambda: seq((5,), L.Embedding(12, 3), L.LSTM(4)), vocab=12)
add("embedding", "embedding_conv1d_pool", lambda: seq(
    (6,), L.Embedding(8, 3), L.Conv1D(4, 3), L.GlobalMaxPooling1D()), vocab=8)
add("embedding", "embedding_mask_zero",
    lambda: seq((5,), L.Embedding(10, 3, mask_zero=True), L.GRU(3)), vocab=10)


# keras2c test_merge_layers
def merge(kind: str, count: int = 2, shapes: tuple = ()) -> Callable[[], keras.Model]:
    def build() -> keras.Model:
        xs = inputs(*(shapes or [(4,)] * count))
        return keras.Model(xs, L.Dense(2)(getattr(L, kind)()(xs)))
    return build


for _kind in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"):
    add("merge", f"merge_{_kind.lower()}", merge(_kind))
add("merge", "merge_add_three", merge("Add", 3))
add("merge", "merge_concatenate", merge("Concatenate", shapes=((3,), (5,))))
add("merge", "merge_multiply_broadcast", merge("Multiply", shapes=((3, 4), (1, 4))))


def concatenate_axis1() -> keras.Model:
    a, b = inputs((2, 3), (4, 3))
    return keras.Model([a, b], L.Concatenate(axis=1)([a, b]))


def dot() -> keras.Model:
    a, b = inputs((4,), (4,))
    return keras.Model([a, b], L.Dot(axes=1)([L.Dense(3)(a), L.Dense(3)(b)]))


add("merge", "merge_concatenate_axis1", concatenate_axis1)
add("merge", "merge_dot", dot)


# keras2c test_models and frugally-deep's graph models
def multi_input() -> keras.Model:
    a, b = inputs((4,), (3, 2))
    h = L.Concatenate()([L.Dense(3, activation="relu")(a), L.Dense(2)(L.Flatten()(b))])
    return keras.Model([a, b], L.Dense(2, activation="softmax")(h))


def multi_output() -> keras.Model:
    x, = inputs((5,))
    h = L.Dense(6, activation="tanh")(x)
    return keras.Model(x, [L.Dense(3, activation="softmax")(h),
                           L.Dense(1, activation="sigmoid")(h)])


def multi_input_output() -> keras.Model:
    a, b = inputs((4,), (3,))
    ha, hb = L.Dense(3)(a), L.Dense(3)(b)
    return keras.Model([a, b], [L.Add()([ha, hb]), L.Dense(2)(L.Concatenate()([hb, a]))])


def output_and_hidden() -> keras.Model:
    x, = inputs((5,))
    h = L.Dense(4, activation="relu")(x)
    return keras.Model(x, [h, L.Dense(2)(h)])


def shared_dense() -> keras.Model:
    a, b = inputs((4,), (4,))
    shared = L.Dense(3, activation="relu")
    return keras.Model([a, b], L.Subtract()([shared(a), shared(b)]))


def siamese_submodel() -> keras.Model:
    a, b = inputs((5, 2), (5, 2))
    encoder = keras.Sequential([keras.Input((5, 2)), L.Conv1D(3, 2, activation="relu"),
                                L.GlobalAveragePooling1D()], name="encoder")
    return keras.Model([a, b], L.Dense(1, activation="sigmoid")(
        L.Concatenate()([encoder(a), encoder(b)])))


def nested_sequential() -> keras.Model:
    x, = inputs((5,))
    block = keras.Sequential([keras.Input((4,)), L.Dense(4, activation="relu"), L.Dense(3)],
                             name="block")
    return keras.Model(x, L.Dense(2)(block(L.Dense(4)(x))))


def nested_twice() -> keras.Model:
    inner = keras.Sequential([keras.Input((4,)), L.Dense(3, activation="tanh")], name="inner")
    y, = inputs((4,))
    middle = keras.Model(y, L.Add()([inner(y), L.Dense(3)(y)]), name="middle")
    return keras.Sequential([keras.Input((5,)), L.Dense(4), middle, L.Dense(2)])


def residual_conv() -> keras.Model:
    x, = inputs((6, 6, 2))
    h = L.Conv2D(3, 3, padding="same", activation="relu")(x)
    r = L.Conv2D(3, 3, padding="same")(h)
    h = L.ReLU()(L.Add()([h, r]))
    return keras.Model(x, L.Dense(2)(L.GlobalAveragePooling2D()(h)))


def inception() -> keras.Model:
    x, = inputs((6, 6, 3))
    branches = [L.Conv2D(2, 1)(x), L.Conv2D(2, 3, padding="same", activation="relu")(x),
                L.Conv2D(2, 1)(L.MaxPooling2D(3, strides=1, padding="same")(x))]
    return keras.Model(x, L.MaxPooling2D()(L.Concatenate()(branches)))


def tcn_like() -> keras.Model:
    x, = inputs((12, 2))
    h = x
    for rate in (1, 2, 4):
        c = L.Conv1D(2, 2, dilation_rate=rate, padding="causal", activation="relu")(h)
        h = L.Add()([h, c])
    return keras.Model(x, L.Dense(1)(L.Flatten()(h)))


def autoencoder_skip() -> keras.Model:
    x, = inputs((8, 8, 1))
    e1 = L.Conv2D(2, 3, padding="same", activation="relu")(x)
    e2 = L.Conv2D(3, 3, strides=2, padding="same", activation="relu")(e1)
    d = L.UpSampling2D()(L.Conv2D(2, 1)(e2))
    d = L.Concatenate()([d, e1])
    return keras.Model(x, L.Conv2DTranspose(1, 3, padding="same", activation="sigmoid")(d))


def memnet_like() -> keras.Model:
    story, question = inputs((6,), (3,))
    m = L.Embedding(10, 4)(story)
    q = L.Embedding(10, 4)(question)
    match = L.Activation("softmax")(L.Dot(axes=(2, 2))([m, q]))
    response = L.Permute((2, 1))(L.Add()([match, L.Dense(3)(m)]))
    answer = L.LSTM(4)(L.Concatenate()([response, q]))
    return keras.Model([story, question], L.Dense(10, activation="softmax")(answer))


class Chain(keras.Model):
    """A subclassed model whose call is a chain of layers."""

    def __init__(self) -> None:
        super().__init__(name="chain")
        self.hidden = L.Dense(4, activation="relu")
        self.out = L.Dense(2)

    def call(self, x):
        return self.out(self.hidden(x))


def subclassed_chain() -> keras.Model:
    model = Chain()
    model(np.zeros((1, 5), np.float32))
    return model


add("models", "sequential_mlp", lambda: seq(
    (6,), L.Dense(8, activation="relu"), L.Dense(6, activation="tanh"),
    L.Dense(3, activation="softmax")))
add("models", "multi_input", multi_input)
add("models", "multi_output", multi_output)
add("models", "multi_input_multi_output", multi_input_output)
add("models", "hidden_and_final_outputs", output_and_hidden)
add("models", "shared_dense", shared_dense)
add("models", "siamese_submodel", siamese_submodel)
add("models", "nested_sequential", nested_sequential)
add("models", "nested_twice", nested_twice)
add("models", "residual_conv", residual_conv)
add("models", "inception_block", inception)
add("models", "cnn_classifier", lambda: seq(
    (8, 8, 1), L.Conv2D(4, 3, padding="same"), L.BatchNormalization(), L.ReLU(),
    L.Conv2D(4, 3, activation="relu"), L.MaxPooling2D(), L.Dropout(0.25), L.Flatten(),
    L.Dense(8, activation="relu"), L.Dense(3, activation="softmax")))
add("models", "conv_lstm_classifier", lambda: seq(
    (12, 2), L.Conv1D(4, 3, activation="relu"), L.MaxPooling1D(2), L.LSTM(4),
    L.Dense(2, activation="softmax")))
add("models", "tcn_like", tcn_like)
add("models", "autoencoder_skip", autoencoder_skip)
add("models", "memnet_like", memnet_like)
add("models", "subclassed_chain", subclassed_chain)


# frugally-deep's attention and preprocessing layers, and operations in a functional graph
def attention(kind: str) -> Callable[[], keras.Model]:
    def build() -> keras.Model:
        q, v = inputs((3, 4), (5, 4))
        return keras.Model([q, v], getattr(L, kind)()([q, v]))
    return build


def multi_head_attention() -> keras.Model:
    x, = inputs((3, 4))
    return keras.Model(x, L.MultiHeadAttention(num_heads=2, key_dim=2)(x, x))


def ops_in_graph(scalar: bool) -> Callable[[], keras.Model]:
    """Operations on tensors in a functional graph (keras.ops nodes, not layers); the
    arithmetic ones share their class names with the merge layers (Add, Multiply)."""
    def build() -> keras.Model:
        x, = inputs((4,))
        h = L.Dense(3)(x)
        return keras.Model(x, h * 0.5 + 1.0 if scalar else keras.ops.tanh(h))
    return build


add("attention_other", "attention", attention("Attention"))
add("attention_other", "additive_attention", attention("AdditiveAttention"))
add("attention_other", "multi_head_attention", multi_head_attention)
add("attention_other", "einsum_dense",
    lambda: seq((5,), L.EinsumDense("ab,bc->ac", output_shape=3, bias_axes="c")))
add("attention_other", "rescaling", lambda: seq((4,), L.Rescaling(0.5, offset=-1.0)))
add("attention_other", "resizing_bilinear", lambda: seq((3, 3, 1), L.Resizing(5, 5)))
add("attention_other", "keras_ops_tanh", ops_in_graph(False))
add("attention_other", "keras_ops_scale_shift", ops_in_graph(True))


# ------------------------------------------------------------------------------------ running

def set_weights(model: keras.Model, rng: np.random.Generator) -> None:
    """Every float weight drawn anew: kernels N(0, 1/fan-in), vectors N(0, 0.3), variances
    U(0.5, 2), scales U(0.5, 1.5): non-trivial statistics and biases everywhere."""
    for v in model.weights:
        dtype = str(v.dtype)
        if "float" not in dtype:
            continue
        shape = tuple(int(d) for d in v.shape)
        name = v.path.rsplit("/", 1)[-1]
        if "variance" in name:
            value = rng.uniform(0.5, 2.0, shape)
        elif name in ("gamma", "scale"):
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) >= 2:
            value = rng.normal(0.0, 1.0 / sqrt(prod(shape[:-1])), shape)
        else:
            value = rng.normal(0.0, 0.3, shape)
        v.assign(value.astype(dtype))


def probe(model: keras.Model) -> None:
    """Run the model once on zeros: Keras itself must be able to run it (TensorFlow on a CPU
    cannot run everything Keras builds)."""
    try:
        shapes = [tuple(t.shape[1:]) for t in model.inputs]
    except (AttributeError, ValueError):
        return  # a subclassed model: its builder has called it
    xs = [np.zeros((1, *s), np.float32) for s in shapes]
    model(xs if len(xs) > 1 else xs[0])


@dataclass
class Outcome:
    case: Case
    imported: bool = False
    matched: bool = False
    reason: str = ""
    crash: str = ""  # a traceback out of distill, in full
    results: list = field(default_factory=list)
    seconds: float = 0.0


# Cut from the importer's messages in the table: what it says for every model alike.
NOISE = [re.compile(r"; supported layers: .*$"), re.compile(r" \(supported: [^)]*\)"),
         re.compile(r"^cannot import the Keras model: ")]


def _message(e: BaseException) -> str:
    text = " ".join(str(e).split())
    for pattern in NOISE:
        text = pattern.sub("", text)
    return text or type(e).__name__


def _crash(stage: str, e: BaseException) -> tuple[str, str]:
    """A one-line reason naming where in distill it was raised, and the whole traceback."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "/distill/" in f.filename]
    where = ""
    if frames:
        f = frames[-1]
        where = f" at {f.filename.split('/distill/', 1)[-1]}:{f.lineno}"
    text = "".join(traceback.format_exception(e))
    return f"CRASH in {stage}: {type(e).__name__}: {_message(e)[:200]}{where}", text


def _with_ids(model: ir.Model, vocab: int, samples: int, rng: np.random.Generator) -> ir.Model:
    """Half the golden vectors valid ids (the other half random values: mostly out of the
    table, which must give zeros)."""
    ids = rng.integers(0, vocab, (max(1, samples // 2), *model.input_shape))
    return dataclasses.replace(model, metadata={**model.metadata,
                                                "samples": ids.astype(np.float32).tolist()})


def run_case(case: Case, langs: list[str], samples: int, via_file: bool, work: Path) -> Outcome:
    out = Outcome(case)
    start = time.perf_counter()
    seed = zlib.crc32(case.name.encode())
    keras.backend.clear_session()  # layer names restart: the same names on every run
    keras.utils.set_random_seed(seed % 2**31)
    rng = np.random.default_rng(seed)
    try:
        km = case.build()
        set_weights(km, rng)
        probe(km)
        if via_file:
            path = work / f"{case.name}.keras"
            km.save(path)
    except Exception as e:  # the corpus's own problem: Keras refused the model
        out.reason = f"Keras could not build, run or save it: {_message(e)[:300]}"
        out.seconds = time.perf_counter() - start
        return out
    try:
        model = load_keras(path) if via_file else import_keras(km, name=case.name)
    except DistillError as e:
        out.reason = _message(e)
    except Exception as e:
        out.reason, out.crash = _crash("import", e)
    else:
        out.imported = True
        if case.vocab:
            model = _with_ids(model, case.vocab, samples, rng)
        problems = []
        for lang in langs:
            missing = codegen.unsupported(model, [lang])
            if missing:
                ops = sorted({re.search(r"uses op '([^']+)'", m)[1] for m in missing})
                problems.append(f"{lang}: no template for op {', '.join(ops)}")
                continue
            try:
                result = verify.verify(model, [lang], samples=samples)[0]
            except DistillError as e:
                problems.append(f"{lang}: {_message(e)[:300]}")
                continue
            except Exception as e:
                reason, text = _crash(f"{lang} export", e)
                problems.append(reason)
                out.crash += text
                continue
            out.results.append(result)
            if not result.ok:
                problems.append(" ".join(result.line().split())[:300])
        out.matched = not problems
        out.reason = "; ".join(problems)
    out.seconds = time.perf_counter() - start
    return out


def _machine() -> str:
    try:
        load = f"load {os.getloadavg()[0]:.2f}"
    except OSError:
        load = "load unknown"
    return (f"{platform.node() or 'this machine'}: {platform.processor() or platform.machine()}"
            f", {os.cpu_count()} CPUs, {load}; Python {platform.python_version()}, "
            f"Keras {keras.__version__}, NumPy {np.__version__}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", metavar="SUBSTRING",
                   help="run the models whose category/name contains SUBSTRING")
    p.add_argument("--langs", default=",".join(codegen.languages()),
                   help="targets to verify, comma-separated (default: all)")
    p.add_argument("--samples", type=int, default=32, help="golden vectors per model (32)")
    p.add_argument("--via-file", action="store_true",
                   help="save each model as .keras and import the file, as `distill import`")
    p.add_argument("--list", action="store_true", help="list the models and stop")
    p.add_argument("--tracebacks", action="store_true", help="print each crash's traceback")
    args = p.parse_args()
    langs = [x.strip() for x in args.langs.split(",") if x.strip()]
    unknown = [x for x in langs if x not in codegen.languages()]
    if unknown or not langs:
        p.error(f"--langs: unknown {', '.join(unknown) or 'nothing'}; expected "
                f"{', '.join(codegen.languages())}")
    cases = [c for c in CASES if args.only in f"{c.category}/{c.name}"]
    if args.list:
        for c in cases:
            print(f"{c.category}/{c.name}")
        return 0
    if not cases:
        p.error(f"--only {args.only!r} matches no model")

    print(_machine())
    print(f"{len(cases)} models; verifying in {', '.join(langs)} with {args.samples} golden "
          f"vectors each; import via {'.keras files' if args.via_file else 'import_keras'}")
    began = time.perf_counter()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="keras-corpus-") as tmp:
        for k, case in enumerate(cases, 1):
            o = run_case(case, langs, args.samples, args.via_file, Path(tmp))
            outcomes.append(o)
            verdict = "match" if o.matched else "CRASH" if o.crash else \
                "mismatch" if o.imported else "no import"
            print(f"[{k:3}/{len(cases)}] {case.category}/{case.name:34} {verdict:9} "
                  f"{o.seconds:5.1f} s", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - began

    categories = list(dict.fromkeys(c.category for c in cases))
    print()
    print(f"{'category':22} {'models':>6} {'import':>6} {'match':>6}")
    for cat in categories:
        group = [o for o in outcomes if o.case.category == cat]
        print(f"{cat:22} {len(group):>6} {sum(o.imported for o in group):>6} "
              f"{sum(o.matched for o in group):>6}")
    print(f"{'all':22} {len(outcomes):>6} {sum(o.imported for o in outcomes):>6} "
          f"{sum(o.matched for o in outcomes):>6}")

    failed = [o for o in outcomes if not o.matched]
    if failed:
        print("\nfailures:")
        for cat in categories:
            for o in failed:
                if o.case.category == cat:
                    print(f"  {cat}/{o.case.name}: {o.reason}")
    crashes = [o for o in outcomes if o.crash]
    if crashes:
        print(f"\ncrashes (a traceback out of distill, not a clean error): {len(crashes)}")
        for o in crashes:
            print(f"  {o.case.category}/{o.case.name}")
            if args.tracebacks:
                print("    " + o.crash.rstrip().replace("\n", "\n    "))
    if any(o.matched for o in outcomes):
        print("\nworst agreement with the reference over the models that match:")
    for lang in langs:
        rs = [r for o in outcomes if o.matched for r in o.results if r.lang == lang]
        if rs:
            print(f"  {lang:6} max abs {max(r.max_abs for r in rs):.3g}  max rel "
                  f"{max(r.max_rel for r in rs):.3g}  max ULP {max(r.max_ulp for r in rs)}  "
                  f"({len(rs)} models)")
    print(f"\n{elapsed:.0f} s in all ({elapsed / len(outcomes):.1f} s per model)")
    print(f"{sum(o.matched for o in outcomes)} of {len(outcomes)} models import and match in "
          f"{', '.join(langs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
