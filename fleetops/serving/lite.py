"""The light serving runtime: a model's LiteRT (TensorFlow Lite) flatbuffer in LiteRT's interpreter.

`fleetops.training.litert` writes the flatbuffers (preprocessing inside, named inputs as the Keras
model's) and records how closely each agrees with the Keras model; `Predictor` decides which one
to serve. This module only runs them, and imports neither TensorFlow nor Keras: loading a model is
reading its bytes and building an interpreter.

Measured on the sample churn DNN (2-core x86): a model loads in ~0.46 ms and holds ~0.13 MB as an
interpreter (~0.15 MB with its predictor and metadata), against ~68 ms and ~2 MB as a Keras model;
one instance scores in ~0.023 ms through `Predictor.predict_columns` (Keras: ~0.76 ms). XNNPACK,
LiteRT's default delegate, made building an interpreter twice as slow, added memory and was no
faster on these small graphs (which it cannot take whole: string lookups), so it is left out. One
thread per interpreter: a fleet server holds many, and two threads did not speed up a 131,072-row
batch.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

# The serving signature's one output: probabilities (sigmoid column or softmax rows) or values.
OUTPUT = "output"


class LiteModel:
    """One flatbuffer in an interpreter; `predict` is thread-safe (calls are serialised).

    An interpreter is not safe to call from two threads at once; the server calls it from its
    event loop, batch prediction from its own threads, so a lock (uncontended: ~0.1 us) guards it.
    """

    def __init__(self, content: bytes):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.bytes = len(content)
        self._interpreter = Interpreter(
            model_content=content,
            num_threads=1,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        self._runner = self._interpreter.get_signature_runner()
        details = self._runner.get_input_details()
        self.inputs = sorted(details)
        self._strings = frozenset(name for name, d in details.items() if d["dtype"] in (np.bytes_, np.str_, object))
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path) -> LiteModel:
        return cls(Path(path).read_bytes())

    def predict(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Raw outputs (rows, units) for named (rows, 1) inputs: float32 numbers (NaN = missing), str categories."""
        n = len(next(iter(arrays.values())))
        if n == 0:
            return np.zeros((0, int(self._runner.get_output_details()[OUTPUT]["shape"][-1])), dtype=np.float32)
        with self._lock:
            return self._runner(**arrays)[OUTPUT]


def input_arrays(numeric: list[str], categorical: list[str], columns: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    """A flatbuffer's inputs from column-wise values (None = missing): (n, 1) float32 and (n, 1) str arrays."""
    arrays = {}
    for name in numeric:
        values = [np.nan if v is None else v for v in columns[name]]
        arrays[name] = np.array(values, dtype=np.float32).reshape(-1, 1)
    for name in categorical:
        arrays[name] = np.array(["" if v is None else v for v in columns[name]], dtype=object).reshape(-1, 1)
    return arrays


def as_arrays(inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Named inputs given as TensorFlow tensors or numpy arrays, as numpy arrays (strings as objects)."""
    arrays = {}
    for name, value in inputs.items():
        array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        arrays[name] = array if array.dtype.kind != "S" else array.astype(object)
    return arrays
