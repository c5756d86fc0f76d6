"""LiteRT (TensorFlow Lite) flatbuffers of fleetops models, for the light serving runtime.

A Keras model takes hundreds of milliseconds and megabytes to load; its flatbuffer, in LiteRT's
interpreter (`fleetops.serving.lite`), a fraction of a millisecond and tens of kilobytes. Each
exported flatbuffer is self-contained: imputation and normalisation, the vocabulary lookups (TFLite's
builtin HASHTABLE ops on string inputs, no Flex delegate), the Dense layers and the head, with the
Keras model's named inputs.

The serving graph is written here from the Keras model's layer constants, with the layers' own
arithmetic (the regression head's rescaling folded into its weights, as the converter would fold
it), and converted by TensorFlow's converter: ~0.25-0.6 s a model, minutes for a fleet of 1,000 that
is exported in ~40 s. So models of one layout (task, features, vocabularies, layer sizes) share a
`Template`: one conversion with distinct sentinel constants, whose buffers are then found by their
contents; a model's flatbuffer is the template with its own constants written into those buffers,
in microseconds. A template whose buffers cannot all be found (a converter that folded or merged
them) is not used; each model is then converted on its own.

Every flatbuffer, patched or converted, is compared with the Keras model on the segment's validation
rows plus two probe rows (every numeric feature missing, every category unseen). The largest
difference is recorded in the artifact's metadata (`litert`), and the server serves a flatbuffer only
when it is within `AGREEMENT_TOLERANCE` (the float32 variant) or, for the quantized variant, when the
spec allows it and its validation metric dropped by at most `serving.quantized_max_metric_drop`.

Variants:

- `float32`: the Keras model's arithmetic; differences are float rounding (~1e-7).
- `int8`: dynamic-range quantization (int8 weights per output channel, float activations) as the
  converter does it. The converter quantizes only weight tensors of at least 1,024 elements, so a
  small model (the sample churn DNN's largest kernel has 288) gets none; its int8 file would be the
  float32 file again, and is not written (the metadata says why).

float16 weights were measured and are not exported: no faster than float32 (0.024 against 0.023 ms
for one instance), scores off by 2-3e-4 (beyond the agreement tolerance), and the file larger for
the sample DNN (9.1 KB against 8.9 KB: DEQUANTIZE ops come with it) or, for a 64x32 DNN, between
float32 and int8 (14.8 KB against 20.4 and 12.1 KB).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fleetops.serving.lite import OUTPUT  # noqa: E402

FLOAT32 = "float32"
INT8 = "int8"
FILES = {FLOAT32: "model.tflite", INT8: "model_int8.tflite"}
# A float32 flatbuffer is served when its scores are within this of the Keras model's (relative
# beyond 1, so a regression value of 5,000, whose float32 spacing is ~5e-4, is judged fairly).
AGREEMENT_TOLERANCE = 1e-4
# The converter's dynamic-range quantization leaves weight tensors under this many elements in float.
MIN_QUANTIZED_ELEMENTS = 1024
_ACTIVATIONS = ("relu", "sigmoid", "softmax", "linear")
_SENTINEL_SEED = 20_240_610


@dataclass(frozen=True)
class Layout:
    """What fixes a model's flatbuffer apart from its constants: models of one layout share a template."""

    task: str
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    vocabularies: tuple[tuple[str, ...], ...]
    layers: tuple[tuple[int, int, str], ...]  # (inputs, units, activation) of each Dense layer

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each constant's shape: per-feature vectors, then (units, inputs) kernels and (units,) biases."""
        k = len(self.numeric)
        shapes: dict[str, tuple[int, ...]] = {"fill": (k,), "mean": (k,), "inv_std": (k,)} if k else {}
        for i, (fan_in, units, _) in enumerate(self.layers):
            shapes[f"kernel_{i}"] = (units, fan_in)
            shapes[f"bias_{i}"] = (units,)
        return shapes


def describe(model: Any, features: dict[str, list[str]], task: str) -> tuple[Layout, dict[str, np.ndarray]]:
    """A `build_model` Keras model's layout and its constants (float32, kernels as (units, inputs))."""
    numeric, categorical = list(features["numeric"]), list(features["categorical"])
    constants: dict[str, np.ndarray] = {}
    if numeric:
        fill = [float(model.get_layer(f"fill_{c}").value) for c in numeric]
        norms = [model.get_layer(f"norm_{c}") for c in numeric]
        mean = [float(np.asarray(n.mean).reshape(-1)[0]) for n in norms]
        variance = np.array([float(np.asarray(n.variance).reshape(-1)[0]) for n in norms], dtype=np.float32)
        epsilon = np.float32(1e-7)  # keras.backend.epsilon(): Normalization divides by max(sqrt(var), eps)
        constants["fill"] = np.array(fill, dtype=np.float32)
        constants["mean"] = np.array(mean, dtype=np.float32)
        constants["inv_std"] = (np.float32(1) / np.maximum(np.sqrt(variance), epsilon)).astype(np.float32)
    vocabularies = []
    for c in categorical:
        lookup = model.get_layer(f"vocab_{c}")
        if lookup.num_oov_indices != 1 or lookup.mask_token is not None or lookup.output_mode != "one_hot":
            raise ValueError(f"vocab_{c}: only one-hot StringLookup layers with one OOV index can be exported")
        vocabularies.append(tuple(str(v) for v in lookup.get_vocabulary()[1:]))
    dense = [layer for layer in model.layers if type(layer).__name__ == "Dense"]
    layers = []
    for i, layer in enumerate(dense):
        kernel, bias = (np.asarray(w, dtype=np.float64) for w in layer.get_weights())
        activation = layer.get_config()["activation"]
        if activation not in _ACTIVATIONS:
            raise ValueError(f"{layer.name}: activation {activation!r} cannot be exported")
        if i == len(dense) - 1 and task == "regression":
            head = model.get_layer("value")  # Rescaling: value = raw * scale + offset, folded into the Dense
            scale, offset = float(head.scale), float(head.offset)
            kernel, bias = kernel * scale, bias * scale + offset
        constants[f"kernel_{i}"] = np.ascontiguousarray(kernel.T, dtype=np.float32)
        constants[f"bias_{i}"] = bias.astype(np.float32)
        layers.append((kernel.shape[0], kernel.shape[1], activation))
    layout = Layout(task, tuple(numeric), tuple(categorical), tuple(vocabularies), tuple(layers))
    return layout, constants


def convert(layout: Layout, constants: dict[str, np.ndarray], quantize: bool = False) -> bytes:
    """A flatbuffer of the serving graph with these constants (TensorFlow's converter, builtin ops only)."""
    import tensorflow as tf

    module = tf.Module()
    module.tables = [
        tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(vocabulary), dtype=tf.string), tf.range(1, len(vocabulary) + 1, dtype=tf.int64)
            ),
            default_value=0,  # out of vocabulary, as StringLookup's one OOV index
        )
        for vocabulary in layout.vocabularies
    ]
    signature = {name: tf.TensorSpec([None, 1], tf.float32, name=name) for name in layout.numeric}
    signature |= {name: tf.TensorSpec([None, 1], tf.string, name=name) for name in layout.categorical}
    activations = {"relu": tf.nn.relu, "sigmoid": tf.sigmoid, "softmax": tf.nn.softmax, "linear": tf.identity}

    @tf.function(input_signature=[signature])
    def serve(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        parts = []
        if layout.numeric:
            x = tf.concat([inputs[name] for name in layout.numeric], axis=1)
            x = tf.where(tf.math.is_nan(x), tf.constant(constants["fill"]), x)  # FillMissing
            parts.append((x - tf.constant(constants["mean"])) * tf.constant(constants["inv_std"]))  # Normalization
        for name, table, vocabulary in zip(layout.categorical, module.tables, layout.vocabularies, strict=True):
            index = table.lookup(tf.reshape(inputs[name], [-1]))  # StringLookup, one-hot
            parts.append(tf.one_hot(index, len(vocabulary) + 1, dtype=tf.float32))
        h = tf.concat(parts, axis=1) if len(parts) > 1 else parts[0]
        for i, (_, _, activation) in enumerate(layout.layers):
            kernel, bias = tf.constant(constants[f"kernel_{i}"]), tf.constant(constants[f"bias_{i}"])
            h = tf.matmul(h, kernel, transpose_b=True) + bias
            h = activations[activation](h)
        return {OUTPUT: h}

    module.serve = serve
    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], module)
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return bytes(converter.convert())


@dataclass(frozen=True)
class _Slot:
    """Where one constant lives in a template: its bytes, and for an int8 weight its scales."""

    start: int
    nbytes: int
    scales: int | None = None  # start of the float32 scale vector (per output channel), int8 only


class Template:
    """One conversion for every model of a layout; `flatbuffer(constants)` writes a model's constants in."""

    def __init__(self, layout: Layout, quantize: bool = False):
        self.layout, self.quantize = layout, quantize
        shapes = layout.shapes()
        rng = np.random.default_rng(_SENTINEL_SEED)
        # Distinct values away from 0 and 1 (which the graph uses), so no buffer is shared or folded away.
        draws = rng.permutation(np.linspace(0.2, 0.8, sum(int(np.prod(s)) for s in shapes.values())))
        sentinels, used = {}, 0
        for name, shape in shapes.items():
            size = int(np.prod(shape))
            sentinels[name] = draws[used : used + size].reshape(shape).astype(np.float32)
            used += size
        self.content = convert(layout, sentinels, quantize)
        self.slots = _locate(self.content, sentinels)
        self.quantized = quantized_tensors(self.content)

    def flatbuffer(self, constants: dict[str, np.ndarray]) -> bytes:
        """This model's flatbuffer: the template's bytes with its constants, or its own conversion."""
        if self.slots is None:
            return convert(self.layout, constants, self.quantize)
        content = bytearray(self.content)
        for name, slot in self.slots.items():
            values = np.ascontiguousarray(constants[name], dtype=np.float32)
            if slot.scales is None:
                content[slot.start : slot.start + slot.nbytes] = values.tobytes()
            else:
                q, scales = quantize_per_channel(values)
                content[slot.start : slot.start + slot.nbytes] = q.tobytes()
                content[slot.scales : slot.scales + 4 * len(scales)] = scales.tobytes()
        return bytes(content)


def quantized_tensors(content: bytes) -> int:
    """How many int8 tensors a flatbuffer holds (the quantized weights of a dynamic-range model)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(content, 0)
    return sum(
        model.Subgraphs(g).Tensors(t).Type() == schema.TensorType.INT8
        for g in range(model.SubgraphsLength())
        for t in range(model.Subgraphs(g).TensorsLength())
    )


def quantize_per_channel(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel (axis 0), as the converter's dynamic-range quantization does."""
    flat = weights.reshape(weights.shape[0], -1)
    peak = np.abs(flat).max(axis=1)
    # An all-zero channel gets the converter's smallest range (5e-7): its values quantize to 0 either way.
    scales = (np.where(peak > 0, peak, np.float32(5e-7)) / np.float32(127)).astype(np.float32)
    q = np.clip(np.round(flat / scales[:, None]), -127, 127).astype(np.int8)
    return q.reshape(weights.shape), scales


def _locate(content: bytes, sentinels: dict[str, np.ndarray]) -> dict[str, _Slot] | None:
    """Each sentinel's buffer in `content` (exactly one each), or None when any is missing or shared."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(content, 0)
    found: dict[str, list[_Slot]] = {name: [] for name in sentinels}
    by_bytes = {array.tobytes(): name for name, array in sentinels.items()}
    seen = set()
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            index = tensor.Buffer()
            buffer = model.Buffers(index)
            if index in seen or buffer is None or buffer.DataLength() == 0:
                continue
            seen.add(index)
            start = buffer._tab.Vector(buffer._tab.Offset(4))  # Buffer.data: a [ubyte] vector
            data = content[start : start + buffer.DataLength()]
            if data in by_bytes:
                found[by_bytes[data]].append(_Slot(start, len(data)))
            elif tensor.Type() == schema.TensorType.INT8 and (name := _dequantized(tensor, data, sentinels)):
                quantization = tensor.Quantization()
                scales = quantization._tab.Vector(quantization._tab.Offset(8))  # QuantizationParameters.scale
                found[name].append(_Slot(start, len(data), scales))
    if any(len(slots) != 1 for slots in found.values()):
        return None
    return {name: slots[0] for name, slots in found.items()}


def _dequantized(tensor: Any, data: bytes, sentinels: dict[str, np.ndarray]) -> str | None:
    """The sentinel an int8 weight tensor quantizes (per output channel), if any."""
    quantization = tensor.Quantization()
    if quantization is None or quantization.ScaleLength() == 0 or quantization.QuantizedDimension() != 0:
        return None
    shape = tuple(int(d) for d in tensor.ShapeAsNumpy())
    q = np.frombuffer(data, dtype=np.int8).reshape(shape).astype(np.float32)
    scales = quantization.ScaleAsNumpy().astype(np.float32)
    values = q * scales.reshape((-1,) + (1,) * (len(shape) - 1))
    for name, sentinel in sentinels.items():
        if sentinel.shape == shape and np.abs(values - sentinel).max() <= scales.max():
            return name
    return None


PROBE_NUMERIC = np.nan
PROBE_CATEGORIES = ("", "\x00fleetops-unseen-category")


def probe_rows(rows: pd.DataFrame, features: dict[str, list[str]]) -> pd.DataFrame:
    """`rows` (typed) plus one row per probe: every numeric feature missing, every category unseen."""
    probes = pd.DataFrame(
        {
            **{c: [PROBE_NUMERIC] * len(PROBE_CATEGORIES) for c in features["numeric"]},
            **{c: list(PROBE_CATEGORIES) for c in features["categorical"]},
        }
    )
    columns = features["numeric"] + features["categorical"]
    return pd.concat([rows[columns], probes], ignore_index=True)


def max_difference(outputs: np.ndarray, reference: np.ndarray) -> float:
    """The largest |difference|, relative where the reference is beyond 1; inf when only one is finite."""
    outputs, reference = np.asarray(outputs, np.float64), np.asarray(reference, np.float64)
    if outputs.shape != reference.shape:
        return float("inf")
    both_nan = np.isnan(outputs) & np.isnan(reference)
    difference = np.abs(outputs - reference) / np.maximum(1.0, np.abs(reference))
    difference = np.where(both_nan, 0.0, difference)
    return float(np.nan_to_num(difference, nan=np.inf).max(initial=0.0))


class LiteExporter:
    """Writes the LiteRT variants of models into their artifact directories; one template per layout."""

    def __init__(self) -> None:
        self._templates: dict[tuple[Layout, bool], Template] = {}

    def template(self, layout: Layout, quantize: bool) -> Template:
        key = (layout, quantize)
        if key not in self._templates:
            self._templates[key] = Template(layout, quantize)
        return self._templates[key]

    def export(
        self,
        model: Any,
        directory: str | Path,
        task: str,
        features: dict[str, list[str]],
        validation: pd.DataFrame,
        labels: np.ndarray,
        classes: list[str],
        metric: str,
        goal: str,
    ) -> dict[str, Any]:
        """Write the variants into `directory` and return what the artifact's metadata records of them.

        `validation` are the segment's typed validation rows and `labels` their encoded labels: the
        flatbuffers' scores are compared with `model`'s there (and on the probe rows), and the
        quantized variant's validation `metric` is compared with the Keras model's. Nothing here
        fails a training: a model that cannot be exported gets no flatbuffer and the reason.
        """
        import tensorflow as tf

        from fleetops.serving.lite import LiteModel
        from fleetops.training.model import to_inputs
        from fleetops.training.segments import evaluate_predictions

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {"converter": f"tensorflow {tf.__version__}", "variants": {}, "skipped": {}}
        try:
            layout, constants = describe(model, features, task)
        except ValueError as exc:
            record["skipped"] = {variant: str(exc) for variant in FILES}
            _remove(directory, FILES)
            return record
        rows = probe_rows(validation, features)
        inputs = to_inputs(rows, features)
        # Called eagerly: the packed exporter swaps one Keras model's constants between segments,
        # and a traced predict function would keep the first segment's.
        reference = np.asarray(model(inputs, training=False))
        arrays = {name: tensor.numpy() for name, tensor in inputs.items()}
        n = len(validation)
        record["agreement_rows"] = len(rows)
        for variant, quantize in ((FLOAT32, False), (INT8, True)):
            largest = max(units * fan_in for fan_in, units, _ in layout.layers)
            # Known before converting (a conversion costs ~0.3 s): the converter leaves smaller weights float.
            template = self.template(layout, quantize) if not quantize or largest >= MIN_QUANTIZED_ELEMENTS else None
            if quantize and (template is None or not template.quantized):
                record["skipped"][variant] = (
                    f"the converter quantizes only weights of at least {MIN_QUANTIZED_ELEMENTS} elements and this "
                    "model has none "
                    f"(its largest has {largest}): "
                    "it would be the float32 flatbuffer again"
                )
                _remove(directory, {variant: FILES[variant]})
                continue
            assert template is not None
            content = template.flatbuffer(constants)
            outputs = LiteModel(content).predict(arrays)
            entry: dict[str, Any] = {
                "file": FILES[variant],
                "bytes": len(content),
                "max_delta": max_difference(outputs, reference),
                "patched": template.slots is not None,
            }
            if quantize:
                values = [
                    evaluate_predictions(_task(task), labels, scores[:n], classes).get(metric) if n else None
                    for scores in (reference, outputs)
                ]
                entry |= {"quantized_tensors": template.quantized, **_metric_change(metric, goal, *values)}
            (directory / FILES[variant]).write_bytes(content)
            record["variants"][variant] = entry
        return record


def _metric_change(metric: str, goal: str, keras: float | None, variant: float | None) -> dict[str, Any]:
    """A variant's validation metric next to the Keras model's; `metric_drop` > 0 is worse (None if unknown)."""
    drop = None
    if keras is not None and variant is not None:
        drop = (keras - variant) if goal == "maximize" else (variant - keras)
    return {"metric": metric, "keras_value": keras, "value": variant, "metric_drop": drop}


def _task(task: str) -> Any:
    from fleetops.spec import Task

    return Task(task)


def _remove(directory: Path, files: dict[str, str]) -> None:
    """Files of variants not written this time (a rerun into the same directory must not keep stale ones)."""
    for name in files.values():
        (directory / name).unlink(missing_ok=True)
