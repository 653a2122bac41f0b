"""distill: train small neural networks and compile them to standalone C, Go, NumPy and ONNX.

The flow: config + data -> backend -> `ir.Model` -> exporter -> code, verified against `ir.run`.
"""

__version__ = "0.1.0"

from .autodiff import Tape, Tensor, Variable, check_gradients, constant  # noqa: E402
from .errors import DistillError  # noqa: E402
from .ir import Model, load, run, save  # noqa: E402

__all__ = ["Tape", "Tensor", "Variable", "check_gradients", "constant", "DistillError",
           "Model", "load", "run", "save", "__version__"]
