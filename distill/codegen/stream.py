"""The streaming API: a recurrent model run one time step at a time, its state held by the caller.

A model streams when its one input is a sequence (time first) that every op reads step by step
until the recurrent layers: ops that act on each step on its own (`STEPWISE_OPS`) keep the
time axis, a recurrent layer read forwards carries its state from one step to the next and
gives that step's output (return_sequences) or the output so far (the last step's), and ops
after a last-step output see no time axis at all. `step_model` is then the same graph with
one step where the sequence had T; emitted code runs its plan once per call, with each
recurrent layer's state (h, and c for an LSTM) read from and written back to the caller's
state instead of starting at zero. The operations are those of the whole-sequence plan, in
the same order, so feeding a sequence step by step gives the same bits as predicting it
whole: each step's row of a sequence output, and after the last step every other output.
The step does not stop at T: a stream may run as long as its caller likes.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

from .. import ir
from ..ops import GATES, MERGES

# Ops whose every output step is a function of the same step of their inputs.
STEPWISE_OPS = frozenset({"sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu",
                          "gelu_tanh", "silu", "softplus", "softsign", "hard_sigmoid",
                          "exponential", "clipped_relu", "linear", "dense", "embedding",
                          "normalize", "prelu", "softmax", "layer_norm", *MERGES})


NO_RECURRENT_LAYER = "it has no recurrent layer"  # so nothing to stream; the others are refusals


@dataclass(frozen=True)
class Stream:
    model: ir.Model                # one time step; recurrent layers start from the state
    state: dict[str, int]          # recurrent node -> where its state starts, in floats
    state_size: int                # floats of state: U per layer, 2U per LSTM
    outputs: list[bool]            # per output: a step's row of a sequence, or its value so far
    sequences: frozenset[str]      # the values that are sequences


def _stepwise(node: ir.Node) -> bool:
    """Whether `node`, reading sequences, acts on each step on its own."""
    if node.op not in STEPWISE_OPS:
        return False
    rank = len(node.input_shape)
    if node.op == "dense":
        return rank >= 2  # on the features of each step, not across the steps
    if node.op == "softmax":
        return node.attrs.get("axis", rank - 1) >= 1
    if node.op == "layer_norm":
        return node.attrs["axis"] >= 1
    if node.op == "concatenate":
        return node.attrs["axis"] >= 1
    if node.op in ("normalize", "prelu"):  # the same values at every step
        return all(np.array_equal(full, full[:1].repeat(len(full), 0)) for full in (
            np.broadcast_to(w, node.input_shape) for w in node.weights.values()))
    return True


def step_model(model: ir.Model) -> Stream | str:
    """The model one step at a time (see the module docstring), or why it cannot stream."""
    if not any(node.op in GATES for node in model.nodes):
        return NO_RECURRENT_LAYER
    if len(model.inputs) != 1:
        return "it has more than one input"
    if not model.input_shape:
        return "its input has no time axis"
    sequence = {model.input_names[0]}  # the values that are sequences, time first
    state, offset, layers = {}, 0, []
    for node in model.nodes:
        reads = [name in sequence for name in node.inputs]
        weights = dict(node.weights)
        if any(reads) and not all(reads):
            return f"node {node.name!r} mixes a sequence with a value that has no time axis"
        if any(reads):
            if node.op in GATES:
                if node.attrs.get("go_backwards"):
                    return f"node {node.name!r} reads its steps last to first"
                state[node.name] = offset
                units = node.weights["recurrent_kernel"].shape[0]
                offset += 2 * units if node.op == "lstm" else units
                if node.attrs["return_sequences"]:
                    sequence.add(node.name)
            elif _stepwise(node):
                sequence.add(node.name)
                if node.op in ("normalize", "prelu"):  # per value, so one step's values
                    weights = {k: np.broadcast_to(w, node.input_shape)[:1]
                               for k, w in weights.items()}
            else:
                return f"node {node.name!r} ({node.op}) reads across the time steps"
        layers.append((node.name, node.op, dict(node.attrs), weights, list(node.inputs)))
    if not state:
        return "no recurrent layer reads the sequence"
    one = ir.make_model(model.name, (1, *model.input_shape[1:]), layers, outputs=model.outputs)
    return Stream(one, state, offset, [out in sequence for out in model.outputs],
                  frozenset(sequence))


def figures(stream: Stream, model: ir.Model) -> list[dict]:
    """Per output, for self-tests: where it sits in a step's output and in a prediction's,
    its floats per step, and whether it is a sequence (a row per step) or not."""
    out, step_at, whole_at = [], 0, 0
    for k, seq in enumerate(stream.outputs):
        size = prod(stream.model.output_shapes[k])
        shape = stream.model.output_shapes[k]
        out.append({"step_offset": step_at, "offset": whole_at, "size": size, "seq": seq,
                    "shape": list(shape[1:] if seq else shape)})  # a sequence's: one row
        step_at += size
        whole_at += prod(model.output_shapes[k])
    return out
