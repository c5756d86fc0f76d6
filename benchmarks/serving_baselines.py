"""The issue's serving baselines: FastAPI + uvicorn calling the Keras model once per request.

    naive:     model.predict(...)          (Keras' full predict loop per call)
    competent: model.predict_on_batch(...) (the compiled function, no loop)

Both build the model's named input tensors straight from the JSON (no
DataFrame on the hot path), as a competent engineer would. Run by benchmarks/bench_serving.py with uvicorn's
`--factory`; the model and mode come from environment variables.
"""

import os

import numpy as np
import tensorflow as tf
from fastapi import FastAPI, Request

from fleetops.training.artifact import load_artifact


def create_app() -> FastAPI:
    artifact = load_artifact(os.environ["BASELINE_MODEL_DIR"])
    naive = os.environ.get("BASELINE_MODE", "competent") == "naive"
    features = artifact.features
    app = FastAPI()

    @app.post("/v1/projects/{project}/locations/{location}/endpoints/{endpoint}:predict")
    async def predict(project: str, location: str, endpoint: str, request: Request) -> dict:
        instances = (await request.json())["instances"]
        inputs = {
            name: tf.constant([[np.nan if i[name] is None else i[name]] for i in instances], dtype=tf.float32)
            for name in features["numeric"]
        }
        inputs |= {
            name: tf.constant([["" if i[name] is None else i[name]] for i in instances], dtype=tf.string)
            for name in features["categorical"]
        }
        if naive:
            outputs = artifact.model.predict(inputs, verbose=0)
        else:
            outputs = artifact.model.predict_on_batch(inputs)
        p = np.asarray(outputs).reshape(-1)
        return {"predictions": [{"classes": artifact.classes, "scores": [float(1 - v), float(v)]} for v in p]}

    return app
