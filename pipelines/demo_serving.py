"""The serving half of `fleetops demo`: serve the twin's endpoints, send traffic, promote, batch-score."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from fleetops.names import model_id


def serve_and_send_traffic(home: Path, spec: Any, data: Path, requests: int = 200) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.aiplatform_v1 import PredictionServiceClient
    from google.cloud.aiplatform_v1.services.prediction_service.transports.rest import PredictionServiceRestTransport

    from fleetops.batch import fleet_batch_predict
    from fleetops.deployment import promote_fleet
    from fleetops.platform import connect, local_uri
    from fleetops.serving.request_log import LOG_FILE, read_request_log

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "serve", "--home", str(home), "--port", str(port)],
        cwd=Path(__file__).resolve().parents[1],
        env={"FLEETOPS_SERVE_RELOAD_SECONDS": "0.3", **_env()},
        stdout=subprocess.DEVNULL,
        stderr=(home / "serve.log").open("w"),
    )
    try:
        _wait(f"http://127.0.0.1:{port}/health", server)
        client = PredictionServiceClient(
            transport=PredictionServiceRestTransport(
                host=f"127.0.0.1:{port}", credentials=AnonymousCredentials(), url_scheme="http"
            )
        )
        rows = pd.read_csv(data).sample(n=requests, random_state=0)
        features = spec.features.all
        served: Counter[tuple[str, str]] = Counter()
        shown = []
        started = time.perf_counter()
        for _, row in rows.iterrows():
            instance = {
                f: (None if pd.isna(row[f]) else row[f].item() if hasattr(row[f], "item") else row[f]) for f in features
            }
            endpoint = model_id(spec.name, row[spec.data.segment_column])
            response = client.predict(
                endpoint=f"projects/local/locations/local/endpoints/{endpoint}", instances=[instance]
            )
            served[(endpoint, response.model_version_id)] += 1
            if len(shown) < 5:
                probability = dict(response.predictions[0])["scores"][1]
                shown.append(
                    f"  {row['customer_id']} {endpoint:<14} v{response.model_version_id} "
                    f"churn probability {probability:.3f} (actual {row['churned']})"
                )
        seconds = time.perf_counter() - started
        print(f"sent {requests} predictions through the official Vertex client in {seconds:.1f}s; a few:")
        print("\n".join(shown))
        print("requests per endpoint and version (canaries get about 10%):")
        for (endpoint, version), count in sorted(served.items()):
            print(f"  {endpoint:<14} v{version}: {count}")
        platform = connect(local_uri(home))
        promoted = promote_fleet(platform, spec.name)
        print(f"\npromoted {len(promoted)} canaries; each endpoint now serves its new champion only")
        batch = fleet_batch_predict(spec, platform, str(data), home / "batch" / "demo")
        print(
            f"batch prediction of {batch.rows} rows: {batch.predicted} scored, {batch.errors} errors, "
            f"{batch.seconds:.1f}s -> {batch.predictions_path}"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    logged = read_request_log(home)
    print(f"request-response log: {len(logged)} rows in {home / LOG_FILE} (table prediction_log)\n")


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(url: str, server: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the prediction server exited with {server.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the prediction server did not start")
