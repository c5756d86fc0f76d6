"""A loopback HTTP server standing in for the Kubeflow Pipelines v2beta1 API endpoints kfp.Client calls."""

from __future__ import annotations

from typing import Any

from tests.loopback import LoopbackJsonServer


class FakeKfp(LoopbackJsonServer):
    def __init__(self) -> None:
        super().__init__()
        self.experiments: list[dict[str, Any]] = []

    @property
    def host(self) -> str:
        return self.endpoint

    def handle(self, method: str, path: str, query: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path == "/apis/v2beta1/healthz":
            return 200, {"commit_sha": "fake", "tag_name": "2.5.0", "multi_user": False}
        if path == "/apis/v2beta1/experiments" and method == "GET":
            return 200, {"experiments": self.experiments, "total_size": len(self.experiments)}
        if path == "/apis/v2beta1/experiments" and method == "POST":
            experiment = {**body, "experiment_id": f"exp-{len(self.experiments) + 1}"}
            self.experiments.append(experiment)
            return 200, experiment
        if path == "/apis/v2beta1/runs" and method == "POST":
            return 200, {**body, "run_id": "run-1", "state": "PENDING"}
        return 404, {"error": f"unsupported {method} {path}"}
