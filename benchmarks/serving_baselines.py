"""The issue's serving baselines: FastAPI + uvicorn calling the Keras model once per request.

    naive:     model.predict(...)          (Keras' full predict loop per call)
    competent: model.predict_on_batch(...) (the compiled function, no loop)

Both build the model's named input tensors straight from the JSON (no
DataFrame on the hot path), as a competent engineer would. They stand on the
same footing as `fleetops serve` wherever a competent engineer would have done
the same: TensorFlow's thread pools sized as ours size them
(`FLEETOPS_SERVE_TF_THREADS`, one intra-op and one inter-op thread a worker by
default), orjson for the request and the response (FastAPI's stock encoder
walks the response through `jsonable_encoder`), uvloop and httptools, and the
model scored once as it loads, so no request pays for the first trace. Run by
benchmarks/bench_serving.py with uvicorn's `--factory`; the model and mode come
from environment variables.
"""

import os

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response

from fleetops.training.artifact import load_artifact


def create_app() -> FastAPI:
    # What fleetops.serving.server.create_app does before its first model loads: TensorFlow reads these when
    # its runtime starts, so each worker gets the same thread pools as ours.
    threads = os.environ.get("FLEETOPS_SERVE_TF_THREADS", "1")
    os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = threads
    import tensorflow as tf

    artifact = load_artifact(os.environ["BASELINE_MODEL_DIR"])
    naive = os.environ.get("BASELINE_MODE", "competent") == "naive"
    features = artifact.features
    classes = artifact.classes

    def score(instances: list[dict]) -> np.ndarray:
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
        return np.asarray(outputs).reshape(-1)

    # Ours scores one instance as a model loads, so does the baseline; the benchmark's client warms both up
    # at the request sizes it then measures.
    score([dict.fromkeys(features["numeric"] + features["categorical"])])
    app = FastAPI()

    @app.post("/v1/projects/{project}/locations/{location}/endpoints/{endpoint}:predict")
    async def predict(project: str, location: str, endpoint: str, request: Request) -> Response:
        p = score(orjson.loads(await request.body())["instances"])
        body = orjson.dumps({"predictions": [{"classes": classes, "scores": [float(1 - v), float(v)]} for v in p]})
        return Response(body, media_type="application/json")

    return app
