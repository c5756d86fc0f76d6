"""A TensorFlow SavedModel inside a model artifact, for Vertex's prebuilt TensorFlow serving container.

Vertex co-hosts models (a deployment resource pool, `serving.cohosting: pool`)
only when its prebuilt TensorFlow (or PyTorch) container serves them, not our
custom container; that container serves a SavedModel with TF Serving. The
export goes into `savedmodel/` of the artifact, so the artifact stays one
folder (one sha256, one lineage) and Vertex's `artifactUri` names the
subfolder.

The `serving_default` signature takes what our server takes: one value per
instance and feature (`{"instances": [{"plan": "basic", "tenure_months": 3}]}`)
and answers in the same shape, `{"classes": [...], "scores": [...]}` for
classifiers and `{"value": v}` for regressors. The preprocessing is inside the
model, so the scores are the artifact's. What TF Serving does not do as our
server does: a missing number must be sent as NaN (TF Serving's JSON takes
`NaN`; `null` is refused) and a missing category as "", there is no check that
scores are finite, and the artifact's sha256 is not verified before serving.

Exporting costs about 0.3-0.5 s per model (traced and written once, measured
on 2 cores), so it runs only for fleets with `serving.cohosting: pool`, at
registration (`training_steps.register_shard`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

SAVEDMODEL_DIR = "savedmodel"
SIGNATURE = "serving_default"


def has_savedmodel(artifact_dir: str | Path) -> bool:
    return (Path(artifact_dir) / SAVEDMODEL_DIR / "saved_model.pb").is_file()


def export_savedmodel(artifact_dir: str | Path) -> Path:
    """Write the artifact's model as a SavedModel into `<artifact_dir>/savedmodel` (kept if already there).

    The folder is written beside and renamed into place, so a crash never leaves a half export
    that a rerun would take for a finished one.
    """
    import keras
    import tensorflow as tf

    from fleetops.training.artifact import load_artifact

    artifact_dir = Path(artifact_dir)
    target = artifact_dir / SAVEDMODEL_DIR
    if has_savedmodel(artifact_dir):
        return target
    artifact = load_artifact(artifact_dir)
    model, task, classes = artifact.model, artifact.task, list(artifact.classes)
    signature = {name: tf.TensorSpec([None], tf.float32, name=name) for name in artifact.features["numeric"]}
    signature |= {name: tf.TensorSpec([None], tf.string, name=name) for name in artifact.features["categorical"]}

    def serve(instances: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        # One value per instance and feature in; the model's inputs are (n, 1).
        outputs = model({name: tf.reshape(values, (-1, 1)) for name, values in instances.items()}, training=False)
        if task == "regression":
            return {"value": tf.reshape(outputs, (-1,))}
        if task == "binary_classification":
            positive = tf.reshape(outputs, (-1,))
            scores = tf.stack([1.0 - positive, positive], axis=1)  # as `shape_outputs` makes them
        else:
            scores = outputs
        labels = tf.tile(tf.constant([classes], tf.string), [tf.shape(scores)[0], 1])
        return {"classes": labels, "scores": scores}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, serve, input_signature=[signature])
    partial = artifact_dir / f".{SAVEDMODEL_DIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    archive.write_out(str(partial), verbose=False)
    partial.rename(target)
    return target
