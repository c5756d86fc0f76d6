"""Packed fleet training: the models of many segments fitted at once, in one TensorFlow graph.

Every weight carries a leading segment axis, so segment `s` has its own
parameters, its own preprocessing statistics (imputation and normalisation;
the vocabularies are shared across the pack), its own loss term, its own Adam
state and its own early stopping. Each step takes one mini-batch *from every
segment* (`batch_size` rows each) and multiplies them with a batched matmul:
the work per step is a few thousand rows, and a fleet of 1,000 segments costs
about as many steps as one segment does.

Why this is the same training as one model at a time:

- The loss is the sum of the segments' mean losses, so the gradient of
  segment `s`'s weights comes from its rows only.
- Adam is elementwise; the update here is Keras' own formula, applied only to
  segments that have a batch at this step (a small segment runs out of
  batches before a big one; it is then left untouched, with its own step
  count for bias correction, as if it had trained alone).
- Early stopping follows Keras' `EarlyStopping(monitor="val_loss",
  restore_best_weights=True)` per segment: a stopped segment is frozen, and
  its best epoch's weights are kept.

Afterwards each segment is exported as a standalone Keras model
(`fleetops.training.model.build_model` with that segment's statistics and
weights), the same artifact that the one-at-a-time trainer writes; the
registry, serving, `:explain`, batch prediction and monitoring see no
difference. Its LiteRT flatbuffers come from one converter call per
architecture (`fleetops.training.litert.Template`), each segment's constants
written into a copy: microseconds a segment instead of ~0.3 s.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from fleetops.data.split import SPLIT_COLUMN, TEST, TRAIN, VALIDATION  # noqa: E402
from fleetops.data.validation import coerce_features  # noqa: E402
from fleetops.spec import Architecture, FleetSpec, Task, TrainingSpec  # noqa: E402
from fleetops.training.model import Preprocessing, fit_vocabularies  # noqa: E402

# Keras' defaults, so a packed segment trains as `model.fit` would train it alone.
ADAM_BETA_1, ADAM_BETA_2, ADAM_EPSILON = 0.9, 0.999, 1e-7
NORMALIZATION_EPSILON = 1e-7  # keras.backend.epsilon(): Normalization divides by max(sqrt(var), eps)
# Rows evaluated at once when scoring every segment's validation or test rows.
_SCORE_ROWS = 1 << 18


@dataclass
class PackedData:
    """A shard's rows encoded once for every segment: features preprocessed with that segment's statistics."""

    segments: list[str]
    classes: list[str]
    preprocessing: list[Preprocessing]
    features: np.ndarray  # (rows, width) float32: normalised numerics, then one-hot categoricals
    labels: np.ndarray  # (rows,) int32 class index or float32 value
    segment_index: np.ndarray  # (rows,) int32
    split: np.ndarray  # (rows,) str: train / validation / test
    rows: dict[str, pd.DataFrame] = field(repr=False)  # each segment's typed rows (statistics, metadata)

    @property
    def width(self) -> int:
        return int(self.features.shape[1])

    def rows_of(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


@dataclass
class PackedFit:
    """One architecture fitted on every segment of a pack."""

    architecture: Architecture
    layers: list[tuple[np.ndarray, np.ndarray]]  # (kernel (S, in, out), bias (S, out)) per Dense layer
    epochs_trained: np.ndarray  # (S,)
    best_val_loss: np.ndarray  # (S,)
    seconds: float

    def segment_layers(self, s: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(kernel[s], bias[s]) for kernel, bias in self.layers]


def encode(
    rows: pd.DataFrame,
    spec: FleetSpec,
    segment_column: str,
    classes: list[str],
    shared: Preprocessing | None = None,
    encoded: bool = True,
) -> PackedData:
    """Fit each segment's preprocessing on its train rows and encode every row with its segment's statistics.

    `rows` holds the shard's segments (column `segment_column`) with the split column; `classes` are the
    class names for classification (shared by the pack, so every exported model has the same outputs).
    With `shared` (the global model's statistics, for a warm start) every segment uses those instead, so
    the global weights see the inputs they were trained on. With `encoded=False` (no Keras model to fit:
    trees only) the rows are only typed, labelled and grouped: no statistics and no encoded matrix.
    """
    from fleetops.training.segments import encode_labels

    typed = coerce_features(rows, spec.features.numeric, spec.features.categorical).reset_index(drop=True)
    segments = sorted(typed[segment_column].astype(str).unique())
    position = {name: i for i, name in enumerate(segments)}
    seg = typed[segment_column].astype(str).map(position).to_numpy(dtype="int32")
    split = typed[SPLIT_COLUMN].to_numpy(dtype=str)
    is_train = split == TRAIN
    if not encoded:
        labels = typed[spec.label].to_numpy(dtype="float32") if spec.task is Task.REGRESSION else None
        if labels is None:
            labels = encode_labels(typed[spec.label], classes)
        by_segment = {str(name): frame for name, frame in typed.groupby(segment_column, sort=True)}
        empty = np.zeros((len(typed), 0), dtype="float32")
        return PackedData(segments, classes, [], empty, labels, seg, split, by_segment)
    if shared is None:
        vocabularies = fit_vocabularies(typed[is_train], spec)  # one for the whole pack
        means, variances = _segment_moments(typed, spec.features.numeric, seg, is_train, len(segments))
    else:
        vocabularies = shared.vocabularies
        means = np.tile([shared.means[c] for c in spec.features.numeric], (len(segments), 1)).astype("float64")
        variances = np.tile([shared.variances[c] for c in spec.features.numeric], (len(segments), 1))
    blocks = []
    for j, column in enumerate(spec.features.numeric):
        x = typed[column].to_numpy(dtype="float32")
        mean = means[seg, j].astype("float32")
        filled = np.where(np.isnan(x), mean, x)
        scale = np.maximum(np.sqrt(variances[seg, j].astype("float32")), np.float32(NORMALIZATION_EPSILON))
        blocks.append(((filled - mean) / scale).reshape(-1, 1))
    for column in spec.features.categorical:
        lookup = {value: i + 1 for i, value in enumerate(vocabularies[column])}  # index 0: out of vocabulary
        index = typed[column].map(lookup).fillna(0).to_numpy(dtype="int64")
        blocks.append(np.eye(len(lookup) + 1, dtype="float32")[index])
    features = np.concatenate(blocks, axis=1).astype("float32")

    label_mean = np.zeros(len(segments))
    label_std = np.ones(len(segments))
    if spec.task is Task.REGRESSION and shared is not None:
        labels = typed[spec.label].to_numpy(dtype="float32")
        label_mean[:], label_std[:] = shared.label_mean, shared.label_std
    elif spec.task is Task.REGRESSION:
        labels = typed[spec.label].to_numpy(dtype="float32")
        y = pd.Series(labels[is_train].astype("float64"))
        grouped = y.groupby(seg[is_train])
        mean = grouped.mean()
        label_mean[mean.index] = mean.to_numpy()
        std = grouped.std(ddof=0).fillna(0.0)
        label_std[std.index] = np.where(std.to_numpy() > 0, std.to_numpy(), 1.0)
    else:
        labels = encode_labels(typed[spec.label], classes)

    preprocessing = [
        Preprocessing(
            means={c: float(means[s, j]) for j, c in enumerate(spec.features.numeric)},
            variances={c: float(variances[s, j]) for j, c in enumerate(spec.features.numeric)},
            vocabularies=vocabularies,
            label_mean=float(label_mean[s]),
            label_std=float(label_std[s]),
        )
        for s in range(len(segments))
    ]
    by_segment = {str(name): frame for name, frame in typed.groupby(segment_column, sort=True)}
    return PackedData(segments, classes, preprocessing, features, labels, seg, split, by_segment)


def fit_packed(
    data: PackedData,
    spec: FleetSpec,
    architecture: Architecture,
    params: TrainingSpec,
    initial: list[tuple[np.ndarray, np.ndarray]] | None = None,
    log: Any = None,
) -> PackedFit:
    """Fit `architecture` on every segment of `data` at once (see the module docstring).

    `initial` (one segment's layers, e.g. a global model's) starts every segment from the same weights:
    the warm start for fine-tuning; without it each segment gets its own Glorot-uniform draw, seeded by
    the spec's seed and the segment's name (so a segment's start does not depend on its shard).
    """
    started = time.perf_counter()
    n_segments = len(data.segments)
    n_out = _output_units(spec.task, data.classes)
    sizes = [data.width, *(params.hidden_units if architecture is Architecture.DNN else []), n_out]
    if initial is None:
        layers = [
            _glorot(data.segments, params.seed, i, fan_in, fan_out)
            for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
        ]
    else:
        layers = [(np.repeat(k[None], n_segments, 0), np.repeat(b[None], n_segments, 0)) for k, b in initial]
    net = _PackedNet(layers, spec.task, params, data)

    train_rows = data.rows_of(TRAIN)
    # Train rows grouped by segment: each segment's rows are start[s] .. start[s] + count[s] in `grouped`.
    grouped = train_rows[np.argsort(data.segment_index[train_rows], kind="stable")]
    counts = np.bincount(data.segment_index[grouped], minlength=n_segments)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    if (counts == 0).any():
        empty = [data.segments[s] for s in np.flatnonzero(counts == 0)[:5]]
        raise ValueError(f"segments {empty} have no train rows; packed training needs at least one per segment")
    val_index, val_mask = _padded(data.rows_of(VALIDATION), data.segment_index, n_segments)

    b = params.batch_size
    steps_per_epoch = int(np.ceil(counts.max() / b))
    batches = np.ceil(counts / b).astype(int)
    slots = np.arange(b)
    keys = _segment_keys(data.segments, params.seed)
    rank = np.arange(len(grouped)) - starts[data.segment_index[grouped]]  # a row's place in its segment
    best_loss = np.full(n_segments, np.inf)
    wait = np.zeros(n_segments, dtype=int)
    running = np.ones(n_segments, dtype=bool)
    epochs_trained = np.zeros(n_segments, dtype=int)
    best = net.snapshot()
    for epoch in range(params.epochs):
        # A fresh shuffle of every segment's rows each epoch (as tf.data's reshuffle_each_iteration), drawn
        # from the segment's own key: a segment trains the same whichever pack it is in.
        noise = _mix(keys[data.segment_index[grouped]], np.int64(epoch), np.int64(0), rank)
        order = np.lexsort((noise, data.segment_index[grouped]))
        shuffled = grouped[order]
        for k in range(steps_per_epoch):
            active = running & (k < batches)
            if not active.any():
                continue
            position = k * b + slots[None, :]
            valid = position < counts[:, None]
            index = shuffled[starts[:, None] + np.minimum(position, counts[:, None] - 1)]
            net.train_step(index, valid, active)
        epochs_trained += running
        val_loss = net.segment_loss(val_index, val_mask)
        # Keras EarlyStopping: count the epoch, reset on improvement, stop once `patience` epochs passed.
        wait += running
        improved = running & (val_loss < best_loss)
        best_loss = np.where(improved, val_loss, best_loss)
        wait[improved] = 0
        net.keep(best, improved)
        if epoch > 0:
            running &= ~(wait >= params.early_stopping_patience)
        if log is not None:
            log(f"  {architecture.value} epoch {epoch + 1}: {int(running.sum())} of {n_segments} segments improving")
        if not running.any():
            break
    return PackedFit(architecture, best, epochs_trained, best_loss, time.perf_counter() - started)


def predict_packed(fit: PackedFit, data: PackedData, spec: FleetSpec, rows: np.ndarray) -> np.ndarray:
    """Outputs of each row's own segment model (sigmoid column, softmax rows or values), in `rows` order."""
    net = _PackedNet(fit.layers, spec.task, None, data)
    return net.predict(rows)


class SegmentExporter:
    """Segment models of one packed fit as standalone Keras models, the same as `build_model` makes.

    Building a Keras model costs tens of milliseconds, more than the whole packed fit of one
    segment; so one model is built per architecture and, for each segment, its preprocessing
    constants (fill value, mean, variance, label scale) and Dense weights are set in place. The
    saved config and weights are then exactly those of `build_model` with that segment's
    statistics (the tests compare both).
    """

    def __init__(self, fit: PackedFit, data: PackedData, spec: FleetSpec, params: TrainingSpec):
        from fleetops.training.model import build_model

        self.fit, self.data, self.spec = fit, data, spec
        self.model = build_model(spec, fit.architecture, params, data.preprocessing[0], len(data.classes))
        self.dense = [layer for layer in self.model.layers if type(layer).__name__ == "Dense"]
        # Built once, so the saved model loads without a "skipping optimizer variables" warning.
        self.model.optimizer.build(self.model.trainable_variables)

    def model_of(self, s: int) -> Any:
        """The template model holding segment `s`: valid until the next call."""
        prep = self.data.preprocessing[s]
        for column in self.spec.features.numeric:
            self.model.get_layer(f"fill_{column}").value = prep.means[column]
            norm = self.model.get_layer(f"norm_{column}")
            norm.input_mean, norm.input_variance = prep.means[column], prep.variances[column]
            norm.build(norm._build_input_shape)  # recomputes the in-memory constants from the new statistics
        if self.spec.task is Task.REGRESSION:
            head = self.model.get_layer("value")
            head.scale, head.offset = prep.label_std, prep.label_mean
        for layer, (kernel, bias) in zip(self.dense, self.fit.segment_layers(s), strict=True):
            layer.set_weights([kernel, bias])
        return self.model


def _output_units(task: Task, classes: list[str]) -> int:
    return len(classes) if task is Task.MULTICLASS else 1


def _segment_moments(
    typed: pd.DataFrame, numeric: list[str], seg: np.ndarray, is_train: np.ndarray, n_segments: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each segment's mean and variance of each numeric feature over its finite train values (0 and 1 if none)."""
    means = np.zeros((n_segments, len(numeric)))
    variances = np.ones((n_segments, len(numeric)))
    if not numeric:
        return means, variances
    values = typed.loc[is_train, numeric].to_numpy(dtype="float64")
    values = np.where(np.isfinite(values), values, np.nan)
    frame = pd.DataFrame(values).groupby(seg[is_train])
    mean, var = frame.mean(), frame.var(ddof=0)
    present = frame.count().to_numpy() > 0
    index = mean.index.to_numpy()
    means[index] = np.where(present, mean.to_numpy(), 0.0)
    variances[index] = np.where(present, var.fillna(0.0).to_numpy(), 1.0)
    return means, variances


def _glorot(segments: list[str], seed: int, layer: int, fan_in: int, fan_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Keras' default Dense initialisation (Glorot uniform kernel, zero bias), drawn per segment."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    kernels = np.stack(
        [
            np.random.default_rng([seed, layer, zlib.crc32(name.encode())]).uniform(-limit, limit, (fan_in, fan_out))
            for name in segments
        ]
    ).astype("float32")
    return kernels, np.zeros((len(segments), fan_out), dtype="float32")


def _segment_keys(segments: list[str], seed: int) -> np.ndarray:
    """A random-stream key per segment, from the seed and the segment's name only."""
    return np.array([zlib.crc32(f"{seed}:{name}".encode()) for name in segments], dtype="int64")


def _mix(a: Any, b: Any, c: Any, d: Any, ops: Any = np) -> Any:
    """A 32-bit hash of four integers (murmur3's finaliser), elementwise on int64 numpy arrays or tensors.

    Counter-based noise: the value for (segment key, step, row, unit) needs no shared random state,
    so each segment's shuffles and dropout masks are its own. `ops` is `np` or `tf.bitwise`
    (products wrap around in int64; only the low 32 bits are kept).
    """
    mask = 0xFFFFFFFF

    def shift_xor(x: Any, bits: int) -> Any:
        return ops.bitwise_xor(x, ops.right_shift(x, bits))

    x = ops.bitwise_and(a * 0x9E3779B1 + b * 0x85EBCA77 + c * 0xC2B2AE3D + d * 0x27D4EB2F, mask)
    x = ops.bitwise_and(shift_xor(x, 16) * 0x85EBCA6B, mask)
    x = ops.bitwise_and(shift_xor(x, 13) * 0xC2B2AE35, mask)
    return shift_xor(x, 16)


def _padded(rows: np.ndarray, segment_index: np.ndarray, n_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """`rows` laid out as (segments, most rows of a segment), padded by repeating a row; the mask marks real ones."""
    seg = segment_index[rows]
    order = np.argsort(seg, kind="stable")
    rows, seg = rows[order], seg[order]
    counts = np.bincount(seg, minlength=n_segments)
    width = max(int(counts.max()) if counts.size else 0, 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(width)[None, :]
    mask = position < counts[:, None]
    source = np.minimum(
        starts[:, None] + np.minimum(position, np.maximum(counts[:, None] - 1, 0)), max(len(rows) - 1, 0)
    )
    index = rows[source] if len(rows) else np.zeros((n_segments, width), dtype=int)
    return index.astype("int64"), mask & (counts[:, None] > 0)


_INDEX = tf.TensorSpec([None, None], tf.int64)
_MASK = tf.TensorSpec([None, None], tf.float32)
_PER_SEGMENT = tf.TensorSpec([None], tf.float32)
_IDS = tf.TensorSpec([None], tf.int64)


class _PackedNet:
    """The packed weights as TensorFlow variables, with Adam's moments per segment."""

    def __init__(
        self, layers: list[tuple[np.ndarray, np.ndarray]], task: Task, params: TrainingSpec | None, data: PackedData
    ):
        self.task = task
        self.params = params
        self.x = tf.constant(data.features)
        self.y = tf.constant(data.labels)
        self.n_segments = len(data.segments)
        self.segment_index = data.segment_index
        self.keys = tf.constant(_segment_keys(data.segments, params.seed if params is not None else 0))
        self.label_mean = tf.constant([p.label_mean for p in data.preprocessing], dtype="float32")
        self.label_std = tf.constant([p.label_std for p in data.preprocessing], dtype="float32")
        self.weights = [tf.Variable(a) for layer in layers for a in layer]
        if params is not None:
            self.m = [tf.Variable(tf.zeros_like(w)) for w in self.weights]
            self.v = [tf.Variable(tf.zeros_like(w)) for w in self.weights]
            self.t = tf.Variable(tf.zeros(self.n_segments))
            self.lr = tf.constant(params.learning_rate, dtype="float32")
            self._step = tf.function(self._train_step, input_signature=[_INDEX, _MASK, _PER_SEGMENT])
        # Shapes vary with the split and the chunk: one trace each, whatever the shapes.
        self._loss = tf.function(self._segment_loss, input_signature=[_INDEX, _MASK, _IDS])
        self._forward_rows = tf.function(self._forward_padded, input_signature=[_INDEX, _IDS])

    # -- training -------------------------------------------------------------------------------
    def train_step(self, index: np.ndarray, valid: np.ndarray, active: np.ndarray) -> None:
        self._step(tf.constant(index), tf.constant(valid, dtype="float32"), tf.constant(active, dtype="float32"))

    def _train_step(self, index: tf.Tensor, valid: tf.Tensor, active: tf.Tensor) -> None:
        t = self.t.assign_add(active)
        with tf.GradientTape() as tape:
            out = self._forward(tf.gather(self.x, index), training=True, step=tf.cast(t, "int64"))
            loss = tf.reduce_sum(self._mean_loss(out, tf.gather(self.y, index), valid) * active)
        grads = tape.gradient(loss, self.weights)
        safe_t = tf.maximum(t, 1.0)
        # Keras Adam: alpha = lr * sqrt(1 - b2^t) / (1 - b1^t); m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2).
        alpha = self.lr * tf.sqrt(1.0 - ADAM_BETA_2**safe_t) / (1.0 - ADAM_BETA_1**safe_t)
        for w, m, v, g in zip(self.weights, self.m, self.v, grads, strict=True):
            on = tf.reshape(active, [-1] + [1] * (len(w.shape) - 1))
            m_new = m + (g - m) * (1.0 - ADAM_BETA_1)
            v_new = v + (tf.square(g) - v) * (1.0 - ADAM_BETA_2)
            m.assign(on * m_new + (1.0 - on) * m)
            v.assign(on * v_new + (1.0 - on) * v)
            update = tf.reshape(alpha, tf.shape(on)) * m / (tf.sqrt(v) + ADAM_EPSILON)
            w.assign_sub(on * update)

    def snapshot(self) -> list[tuple[np.ndarray, np.ndarray]]:
        arrays = [w.numpy().copy() for w in self.weights]
        return [(arrays[i], arrays[i + 1]) for i in range(0, len(arrays), 2)]

    def keep(self, best: list[tuple[np.ndarray, np.ndarray]], improved: np.ndarray) -> None:
        """Copy the current weights of the `improved` segments into `best` (in place)."""
        if not improved.any():
            return
        current = self.snapshot()
        for (best_k, best_b), (k, bias) in zip(best, current, strict=True):
            best_k[improved] = k[improved]
            best_b[improved] = bias[improved]

    # -- forward and losses ---------------------------------------------------------------------
    def _forward(
        self, x: tf.Tensor, training: bool, step: tf.Tensor | None = None, ids: tf.Tensor | None = None
    ) -> tf.Tensor:
        """x (S, rows, width) -> outputs before the head's activation (S, rows, units).

        `ids` picks the segments `x` belongs to (all of them, in order, when None).
        """
        n_layers = len(self.weights) // 2
        for i in range(n_layers):
            kernel, bias = self.weights[2 * i], self.weights[2 * i + 1]
            if ids is not None:
                kernel, bias = tf.gather(kernel, ids), tf.gather(bias, ids)
            x = tf.linalg.matmul(x, kernel) + bias[:, None, :]
            if i < n_layers - 1:
                x = tf.nn.relu(x)
                rate = self.params.dropout if self.params is not None else 0.0
                if training and rate:
                    x = tf.where(self._uniform(tf.shape(x), step, i) >= rate, x / (1.0 - rate), 0.0)
        return x

    def _uniform(self, shape: tf.Tensor, step: tf.Tensor, layer: int) -> tf.Tensor:
        """Dropout noise in [0, 1) of `shape` (S, rows, units) from each segment's key and its own step count."""
        keys = tf.reshape(self.keys, [-1, 1, 1])
        steps = tf.reshape(step, [-1, 1, 1]) * 1024 + layer
        slot = tf.reshape(tf.range(shape[1], dtype="int64"), [1, -1, 1])
        unit = tf.reshape(tf.range(shape[2], dtype="int64"), [1, 1, -1])
        noise = _mix(keys, steps, slot, unit, ops=tf.bitwise)
        return tf.cast(noise, "float32") / float(1 << 32)

    def _mean_loss(self, out: tf.Tensor, y: tf.Tensor, valid: tf.Tensor, ids: tf.Tensor | None = None) -> tf.Tensor:
        """Each segment's mean loss over its valid rows: (S,)."""
        if self.task is Task.BINARY:
            per_row = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(y, "float32"), logits=out[..., 0])
        elif self.task is Task.MULTICLASS:
            per_row = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(y, "int32"), logits=out)
        else:
            std, mean = (
                (self.label_std, self.label_mean)
                if ids is None
                else (tf.gather(self.label_std, ids), tf.gather(self.label_mean, ids))
            )
            value = out[..., 0] * std[:, None] + mean[:, None]
            per_row = tf.square(value - tf.cast(y, "float32"))
        return tf.reduce_sum(per_row * valid, axis=1) / tf.maximum(tf.reduce_sum(valid, axis=1), 1.0)

    def segment_loss(self, index: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Each segment's mean loss over the rows `index`/`mask` lay out (inf where it has none): (S,)."""
        losses = []
        for chunk in _segment_chunks(index.shape[0], index.shape[1]):
            ids = tf.constant(chunk, dtype="int64")
            loss = self._loss(tf.constant(index[chunk]), tf.constant(mask[chunk], dtype="float32"), ids)
            losses.append(loss.numpy().astype("float64"))
        return np.concatenate(losses)

    def _segment_loss(self, index: tf.Tensor, mask: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
        out = self._forward(tf.gather(self.x, index), training=False, ids=ids)
        loss = self._mean_loss(out, tf.gather(self.y, index), mask, ids)
        # A segment without rows here has no loss to improve on.
        return tf.where(tf.reduce_sum(mask, axis=1) > 0, loss, float("inf"))

    def _forward_padded(self, index: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
        out = self._forward(tf.gather(self.x, index), training=False, ids=ids)
        if self.task is Task.BINARY:
            return tf.sigmoid(out)
        if self.task is Task.MULTICLASS:
            return tf.nn.softmax(out)
        return out * tf.gather(self.label_std, ids)[:, None, None] + tf.gather(self.label_mean, ids)[:, None, None]

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Outputs for `rows` (any order), each through its own segment's weights: (rows, units)."""
        index, mask = _padded(rows, self.segment_index, self.n_segments)
        position = np.zeros(int(rows.max()) + 1 if len(rows) else 0, dtype="int64")
        position[rows] = np.arange(len(rows))
        result = None
        for chunk in _segment_chunks(index.shape[0], index.shape[1]):
            out = self._forward_rows(tf.constant(index[chunk]), tf.constant(chunk, dtype="int64")).numpy()
            if result is None:
                result = np.zeros((len(rows), out.shape[-1]), dtype="float32")
            keep = mask[chunk]
            result[position[index[chunk][keep]]] = out[keep]
        assert result is not None
        return result


def _segment_chunks(n_segments: int, width: int) -> list[np.ndarray]:
    """Consecutive groups of segments whose padded rows stay under `_SCORE_ROWS` (memory bound for skewed packs)."""
    per_chunk = max(1, _SCORE_ROWS // max(width, 1))
    return [np.arange(start, min(start + per_chunk, n_segments)) for start in range(0, n_segments, per_chunk)]


GLOBAL_SEGMENT = "__global__"
GLOBAL_FILE = "global.json"
# The global model sees every segment's rows: it takes bigger batches (the spec's batch size per
# segment, up to this) so that an epoch costs about as many steps as one segment's.
GLOBAL_MAX_BATCH = 4096


@dataclass
class GlobalModel:
    """The fleet's global model, one standalone artifact per architecture, and the best on validation."""

    directory: Path
    architecture: str
    layers: dict[str, list[tuple[np.ndarray, np.ndarray]]]
    preprocessing: dict[str, Preprocessing]
    classes: list[str]

    @property
    def best_dir(self) -> Path:
        return self.directory / self.architecture


def _fleet_wide(
    rows: pd.DataFrame, spec: FleetSpec, params: TrainingSpec | None, classes: list[str] | None
) -> tuple[int, TrainingSpec, list[str]]:
    """A model on every segment's rows: the segment count, the settings with its bigger batch, the classes."""
    from fleetops.training.segments import SEGMENT_COLUMN, class_names

    params = params or spec.training
    segments = int(rows[SEGMENT_COLUMN].nunique())
    batch = min(GLOBAL_MAX_BATCH, max(params.batch_size, params.batch_size * segments))
    if classes is None:
        classes = class_names(rows[spec.label]) if spec.task.is_classification else []
    return segments, params.model_copy(update={"batch_size": batch}), classes


def train_global(
    rows: pd.DataFrame,
    spec: FleetSpec,
    output_dir: str | Path,
    params: TrainingSpec | None = None,
    architectures: list[Architecture] | None = None,
    classes: list[str] | None = None,
    log: Any = print,
) -> GlobalModel:
    """Train the fleet's global model on every segment's rows (all of `rows`, as one segment).

    It is what a segment falls back to (`segment_failures.policy: global`) and where a warm start
    (`training.warm_start: global`) begins. Each architecture is exported to `output_dir/<architecture>/`
    (the warm start needs each one's weights); `global.json` names the best on validation.
    """
    from fleetops.training.segments import SEGMENT_COLUMN

    # Its Keras models' weights are what a warm start starts from: the spec's Keras architectures
    # (linear alone for a fleet of trees, so that a fallback segment still has a model).
    architectures = [a for a in architectures or spec.architectures if a.is_keras] or [Architecture.LINEAR]
    segments, global_params, classes = _fleet_wide(rows, spec, params, classes)
    batch = global_params.batch_size
    frame = rows.assign(**{SEGMENT_COLUMN: GLOBAL_SEGMENT})
    data = encode(frame, spec, SEGMENT_COLUMN, classes)
    variants = [_Variant(a, "scratch", data, fit_packed(data, spec, a, global_params)) for a in architectures]
    results = _export_every_variant(frame, spec, global_params, variants, classes, Path(output_dir), log)
    best = results[0]
    summary = {"architecture": best.architecture, "segments": segments, "batch_size": batch}
    (Path(output_dir) / GLOBAL_FILE).write_text(json.dumps(summary | {"candidates": best.candidates}))
    log(f"global model: {best.architecture} on {len(frame)} rows of {segments} segments, {best.candidates}")
    return load_global(output_dir)


def load_global(directory: str | Path) -> GlobalModel:
    """The global model written by `train_global`: each architecture's weights and statistics."""
    from fleetops.training.artifact import load_artifact

    directory = Path(directory)
    summary = json.loads((directory / GLOBAL_FILE).read_text())
    layers, preprocessing, classes = {}, {}, []
    for folder in sorted(p for p in directory.iterdir() if p.is_dir() and p.name != CANDIDATE_DIR):
        artifact = load_artifact(folder)
        dense = [layer for layer in artifact.model.layers if type(layer).__name__ == "Dense"]
        layers[folder.name] = [tuple(layer.get_weights()) for layer in dense]
        preprocessing[folder.name] = Preprocessing(**artifact.metadata["preprocessing"])
        classes = artifact.classes
    return GlobalModel(directory, summary["architecture"], layers, preprocessing, classes)


CANDIDATE_DIR = "candidate"
CANDIDATE_SEGMENT = "__fleet__"


@dataclass
class GlobalCandidate:
    """The fleet's global model as a candidate of every segment: trained once, the segment as a feature.

    It is scored on each segment's own validation and test rows; a segment it wins for serves it as a
    one-member ensemble with the segment column fixed (`fleetops.training.ensemble`).
    """

    path: Path
    architecture: str
    segment_feature: str
    predictor: Any

    def outputs(self, segment: str, typed: pd.DataFrame) -> np.ndarray:
        """Shaped outputs on typed rows of `segment` (the value its segment feature takes)."""
        from fleetops.training.artifact import frame_arrays

        if typed.empty:
            return np.zeros((0, len(self.predictor.classes))) if self.predictor.classes else np.zeros(0)
        frame = typed.assign(**{self.segment_feature: segment})
        features = {"numeric": self.predictor.numeric, "categorical": self.predictor.categorical}
        return self.predictor.predict_arrays(frame_arrays(frame, features))

    def copy_into(self, directory: Path) -> dict[str, Any]:
        import shutil

        from fleetops.training.artifact import read_metadata

        if directory.exists():
            shutil.rmtree(directory)
        shutil.copytree(self.path, directory)
        return read_metadata(directory)


def candidate_spec(spec: FleetSpec) -> FleetSpec:
    """The spec the global candidate trains with: the segment column as one more categorical feature."""
    column = spec.data.segment_column
    if column is None:
        raise ValueError("training.candidates: global needs data.segment_column (the segment is its feature)")
    features = spec.features.model_copy(update={"categorical": [*spec.features.categorical, column]})
    return spec.model_copy(update={"features": features})


def train_global_candidate(
    rows: pd.DataFrame,
    spec: FleetSpec,
    output_dir: str | Path,
    params: TrainingSpec | None = None,
    architectures: list[Architecture] | None = None,
    classes: list[str] | None = None,
    log: Any = print,
) -> GlobalCandidate:
    """Train the global candidate on every segment's rows (one model, the segment as a feature).

    The spec's architectures compete for it on the pooled validation rows, as for one segment; its
    Keras models take bigger batches, as the global model's do (`GLOBAL_MAX_BATCH`).
    """
    from fleetops.names import segment_slug
    from fleetops.training.segments import SEGMENT_COLUMN

    segments, global_params, classes = _fleet_wide(rows, spec, params, classes)
    wide = candidate_spec(spec)
    frame = rows.assign(**{SEGMENT_COLUMN: CANDIDATE_SEGMENT})
    frame[spec.data.segment_column] = frame[spec.data.segment_column].astype(str)
    directory = Path(output_dir) / CANDIDATE_DIR
    results = train_pack(frame, wide, directory, global_params, architectures, log=log, classes=classes)
    if not results:
        raise ValueError("the global candidate did not train: every architecture diverged")
    result = results[0]
    (directory / GLOBAL_FILE).write_text(
        json.dumps({"architecture": result.architecture, "segments": segments, "candidates": result.candidates})
    )
    log(f"global candidate: {result.architecture} on {len(frame)} rows of {segments} segments, {result.candidates}")
    assert result.artifact_dir == directory / segment_slug(CANDIDATE_SEGMENT)
    return load_global_candidate(output_dir, spec)


def load_global_candidate(directory: str | Path, spec: FleetSpec) -> GlobalCandidate | None:
    """The global candidate written by `train_global_candidate`, or None when there is none."""
    from fleetops.names import segment_slug
    from fleetops.serving.predictor import Predictor

    root = Path(directory) / CANDIDATE_DIR
    if not (root / GLOBAL_FILE).is_file():
        return None
    summary = json.loads((root / GLOBAL_FILE).read_text())
    path = root / segment_slug(CANDIDATE_SEGMENT)
    return GlobalCandidate(path, summary["architecture"], str(spec.data.segment_column), Predictor.load(path))


def export_fallback(global_model: GlobalModel, segment: str, reason: str, output_dir: str | Path) -> Path:
    """The global model as `segment`'s artifact, its metadata saying so (the registry records it as lineage)."""
    import shutil

    from fleetops.names import MODEL_METADATA_FILE, segment_slug

    target = Path(output_dir) / segment_slug(segment)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(global_model.best_dir, target)
    metadata = json.loads((target / MODEL_METADATA_FILE).read_text())
    metadata |= {
        "segment": segment,
        "fallback": {"model": "global", "architecture": global_model.architecture, "reason": reason},
    }
    (target / MODEL_METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
    return target


def train_pack(
    rows: pd.DataFrame,
    spec: FleetSpec,
    output_dir: str | Path,
    params: TrainingSpec | None = None,
    architectures: list[Architecture] | None = None,
    tuning: dict[str, Any] | None = None,
    log: Any = print,
    classes: list[str] | None = None,
    warm_start: GlobalModel | None = None,
    failures: dict[str, str] | None = None,
    global_candidate: GlobalCandidate | None = None,
) -> list[Any]:
    """Train every segment in `rows` (column `__segment`) packed; write one standalone artifact per segment.

    For each segment, each architecture is fitted and the best on the validation split is kept, as
    `trainer.train_segment` does for one segment. With `warm_start` (the global model) each
    architecture is also fine-tuned from the global weights, and the validation split chooses between
    from-scratch and warm-started too; both variants' validation and test values are recorded in the
    artifact (`transfer`). Returns a `TrainResult` per segment, in name order; a segment whose every
    fit diverged (no finite validation loss) gets none, and its reason goes into `failures`.
    """
    from fleetops.training.segments import SEGMENT_COLUMN, class_names

    params = params or spec.training
    architectures = architectures or list(spec.architectures)
    if classes is None:
        classes = class_names(rows[spec.label]) if spec.task.is_classification else []
    data = encode(rows, spec, SEGMENT_COLUMN, classes, encoded=any(a.is_keras for a in architectures))
    variants = []
    for architecture in [a for a in architectures if a.is_keras]:
        fit = fit_packed(data, spec, architecture, params)
        variants.append(_Variant(architecture, "scratch", data, fit))
        log(_fitted(fit, data, "from scratch"))
        if warm_start is not None:
            shared = warm_start.preprocessing[architecture.value]
            warm_data = encode(rows, spec, SEGMENT_COLUMN, classes, shared=shared)
            warm = fit_packed(warm_data, spec, architecture, params, initial=warm_start.layers[architecture.value])
            variants.append(_Variant(architecture, "warm_start", warm_data, warm))
            log(_fitted(warm, warm_data, "warm-started from the global model"))
    trees = None
    if Architecture.GBT in architectures:
        from fleetops.training.candidates import fit_tree_segments

        started = time.perf_counter()
        trees = fit_tree_segments(data.rows, spec, params, classes)
        rounds = [t.rounds for t in trees.values() if t.model is not None]
        span = f"rounds {min(rounds)}-{max(rounds)}" if rounds else "none trained"
        log(f"gbt: {len(data.segments)} segment(s) in {time.perf_counter() - started:.1f}s, {span}")
    return _choose_and_export_segments(
        rows,
        spec,
        params,
        variants,
        trees,
        Architecture.ENSEMBLE in architectures,
        global_candidate,
        data,
        classes,
        Path(output_dir),
        tuning,
        log,
        failures,
    )


@dataclass
class _Variant:
    """One packed fit: an architecture trained from scratch or warm-started, with the data it saw."""

    architecture: Architecture
    start: str  # scratch | warm_start
    data: PackedData
    fit: PackedFit

    @property
    def name(self) -> str:
        return self.architecture.value if self.start == "scratch" else f"{self.architecture.value}+warm_start"


def _fitted(fit: PackedFit, data: PackedData, how: str) -> str:
    epochs = f"epochs {int(fit.epochs_trained.min())}-{int(fit.epochs_trained.max())}"
    return f"packed {fit.architecture.value} {how}: {len(data.segments)} segment(s) in {fit.seconds:.1f}s, {epochs}"


def _export_every_variant(
    rows: pd.DataFrame,
    spec: FleetSpec,
    params: TrainingSpec,
    variants: list[_Variant],
    classes: list[str],
    output_dir: Path,
    log: Any,
) -> list[Any]:
    """The global model: every variant exported to `output_dir/<architecture>/` (a warm start needs each one's
    weights), and the best on validation first in the returned list (`TrainResult`, one segment)."""
    from fleetops.data.validation import statistics
    from fleetops.training.artifact import save_artifact
    from fleetops.training.litert import LiteExporter
    from fleetops.training.segments import SEGMENT_COLUMN, TrainResult, beats, export_litert, segment_metadata

    data = variants[0].data
    (segment,) = data.segments
    validation = {v.name: _per_segment(v, spec, VALIDATION, classes)[0] for v in variants}
    values = {v.name: validation[v.name].get(spec.primary_metric) for v in variants}
    typed = data.rows[segment]
    stats = statistics(typed[typed[SPLIT_COLUMN] == TRAIN], spec, typed=True)
    lite = LiteExporter()
    results = []
    for v in variants:
        if not np.isfinite(v.fit.best_val_loss[0]):
            log(f"global model: {v.name} diverged (no finite validation loss); not exported")
            continue
        details: dict[str, Any] = {
            "epochs_trained": int(v.fit.epochs_trained[0]),
            "validation_metrics": validation[v.name],
            "trainer": {"kind": "packed", "segments_in_pack": 1, "start": v.start},
            "preprocessing": asdict(v.data.preprocessing[0]),
        }
        raw = rows[rows[SEGMENT_COLUMN] == segment]
        architecture = v.architecture.value
        metadata = segment_metadata(spec, segment, raw, typed, classes, architecture, params, None, details)
        model = SegmentExporter(v.fit, v.data, spec, params).model_of(0)
        where = output_dir / architecture
        validation_rows = typed[typed[SPLIT_COLUMN] == VALIDATION]
        metadata["litert"] = export_litert(lite, model, where, spec, validation_rows, classes, metadata, stats)
        save_artifact(model, metadata, stats, where)
        result = TrainResult(segment, where, architecture, spec.primary_metric, values[v.name], values, metadata)
        better = not results or beats(values[v.name], results[0].validation_value, spec.metric_goal)
        results.insert(0 if better else len(results), result)
    if not results:
        raise ValueError("the global model diverged: no architecture reached a finite validation loss")
    return results


def _choose_and_export_segments(
    rows: pd.DataFrame,
    spec: FleetSpec,
    params: TrainingSpec,
    variants: list[_Variant],
    trees: dict[str, Any] | None,
    with_ensemble: bool,
    global_candidate: GlobalCandidate | None,
    data: PackedData,
    classes: list[str],
    output_dir: Path,
    tuning: dict[str, Any] | None,
    log: Any,
    failures: dict[str, str] | None,
) -> list[Any]:
    """Per segment, score every candidate (`fleetops.training.candidates`), keep the best on validation, export it."""
    from fleetops.data.validation import statistics
    from fleetops.fingerprints import frame_sha256_by
    from fleetops.names import segment_slug
    from fleetops.training.candidates import (
        Built,
        SegmentRows,
        add_ensemble,
        add_global,
        choose,
        export_choice,
        score,
        selection_record,
    )
    from fleetops.training.litert import LiteExporter
    from fleetops.training.segments import SEGMENT_COLUMN, TrainResult

    started = time.perf_counter()
    outputs = {v.name: {split: _outputs_by_segment(v, spec, split) for split in (VALIDATION, TEST)} for v in variants}
    labels = {split: _labels_by_segment(data, split) for split in (VALIDATION, TEST)}
    transfer = any(v.start == "warm_start" for v in variants)
    exporters: dict[str, SegmentExporter] = {}
    lite = LiteExporter()  # one LiteRT template per layout: each variant's segments share theirs
    hashes = frame_sha256_by(rows, SEGMENT_COLUMN, drop=(SPLIT_COLUMN,))
    results = []
    for s, segment in enumerate(data.segments):
        typed = data.rows[segment]
        split = typed[SPLIT_COLUMN].to_numpy()
        y_val, y_test = labels[VALIDATION][s], labels[TEST][s]
        scored, built, failed = [], {}, {}
        for v in variants:
            if not np.isfinite(v.fit.best_val_loss[s]):
                failed[v.name] = "packed training diverged: no finite validation loss"
                continue  # diverged: never exported
            scored.append(
                score(v.name, spec, classes, y_val, y_test, outputs[v.name][VALIDATION][s], outputs[v.name][TEST][s])
            )
            details: dict[str, Any] = {
                "epochs_trained": int(v.fit.epochs_trained[s]),
                "trainer": {"kind": "packed", "segments_in_pack": len(data.segments), "start": v.start},
                "preprocessing": asdict(v.data.preprocessing[s]),
            }
            built[v.name] = Built(_template(exporters, v, spec, params, s), v.architecture.value, details)
        if trees is not None:
            tree = trees[segment]
            if tree.failure:
                failed["gbt"] = tree.failure
            else:
                scored.append(score("gbt", spec, classes, y_val, y_test, tree.validation, tree.test))
                details = {"rounds_trained": tree.rounds, "trainer": {"kind": "gbt", "segments_in_pack": 1}}
                built["gbt"] = Built(tree.model, "gbt", details)
        weights = None
        if with_ensemble:
            members = _best_per_architecture(spec, [c for c in scored if c.name in built], built)
            weights = add_ensemble(spec, classes, y_val, y_test, scored, members, failed)
        if global_candidate is not None:
            validation_rows, test_rows = typed[split == VALIDATION], typed[split == TEST]
            add_global(spec, classes, y_val, y_test, scored, global_candidate, segment, validation_rows, test_rows)
        chosen = choose(spec, scored)
        if chosen is None:
            reason = "no candidate trained (" + "; ".join(f"{k}: {v}" for k, v in sorted(failed.items())) + ")"
            if failures is None:
                raise ValueError(f"segment {segment!r}: {reason}")
            failures[segment] = reason
            log(f"segment {segment}: {reason}")
            continue
        record = selection_record(spec, scored, chosen, failed, global_candidate)
        common: dict[str, Any] = {}
        if transfer:
            metric = spec.primary_metric
            by_name = {c.name: c for c in scored}
            arch = built[chosen.name].architecture if chosen.name in built else None
            if arch is not None and Architecture(arch).is_keras:
                common["transfer"] = {"metric": metric, "architecture": arch, "chosen": _start(chosen.name)} | {
                    _start(name): {
                        "validation": by_name[name].validation_metrics.get(metric),
                        "test": by_name[name].test_metrics.get(metric),
                    }
                    for name in (arch, f"{arch}+warm_start")
                    if name in by_name
                }
        stats = statistics(typed[split == TRAIN], spec, typed=True)
        segment_rows = SegmentRows(segment, typed, classes, stats, hashes[segment])
        directory = output_dir / segment_slug(segment)
        architecture, metadata = export_choice(
            directory,
            chosen,
            built,
            weights,
            global_candidate,
            record,
            spec,
            segment_rows,
            params,
            tuning,
            lite,
            common,
        )
        value = chosen.validation_metrics.get(spec.primary_metric)
        values = {c.name: c.validation_metrics.get(spec.primary_metric) for c in scored}
        results.append(TrainResult(segment, directory, architecture, spec.primary_metric, value, values, metadata))
    log(f"chose and exported {len(results)} model(s) in {time.perf_counter() - started:.1f}s")
    return results


def _start(name: str) -> str:
    return "warm_start" if name.endswith("+warm_start") else "scratch"


def _template(exporters: dict[str, SegmentExporter], v: _Variant, spec: FleetSpec, params: TrainingSpec, s: int) -> Any:
    """A function giving variant `v`'s Keras model of segment `s` (one template model per variant, re-filled)."""

    def model() -> Any:
        if v.name not in exporters:
            exporters[v.name] = SegmentExporter(v.fit, v.data, spec, params)
        return exporters[v.name].model_of(s)

    return model


def _best_per_architecture(spec: FleetSpec, members: list[Any], built: dict[str, Any]) -> list[Any]:
    """The ensemble's members: per architecture, the variant (from scratch or warm-started) best on validation."""
    from fleetops.training.candidates import choose

    by_architecture: dict[str, list[Any]] = {}
    for member in members:
        by_architecture.setdefault(built[member.name].architecture, []).append(member)
    best = [choose(spec, group) for group in by_architecture.values()]
    return [m for m in best if m is not None]


def _outputs_by_segment(variant: _Variant, spec: FleetSpec, split: str) -> list[np.ndarray]:
    """Each segment's shaped outputs on its `split` rows (in its rows' order), from one packed prediction."""
    from fleetops.training.artifact import shape_outputs

    data = variant.data
    rows = data.rows_of(split)
    raw = predict_packed(variant.fit, data, spec, rows) if len(rows) else np.zeros((0, 1), dtype="float32")
    shaped = shape_outputs(spec.task.value, raw)
    owner = data.segment_index[rows]
    return [shaped[owner == s] for s in range(len(data.segments))]


def _labels_by_segment(data: PackedData, split: str) -> list[np.ndarray]:
    rows = data.rows_of(split)
    owner = data.segment_index[rows]
    return [data.labels[rows[owner == s]] for s in range(len(data.segments))]


def _per_segment(variant: _Variant, spec: FleetSpec, split: str, classes: list[str]) -> list[dict[str, Any]]:
    """Each segment's Vertex metrics on `split` ({} for a segment without rows there)."""
    from fleetops.training.segments import evaluate_predictions

    data = variant.data
    rows = data.rows_of(split)
    outputs = predict_packed(variant.fit, data, spec, rows) if len(rows) else np.zeros((0, 1))
    owner = data.segment_index[rows]
    metrics = []
    for s in range(len(data.segments)):
        mine = owner == s
        usable = mine.any() and np.isfinite(outputs[mine]).all()  # a diverged fit has no metrics
        metrics.append(
            evaluate_predictions(spec.task, data.labels[rows[mine]], outputs[mine], classes) if usable else {}
        )
    return metrics
