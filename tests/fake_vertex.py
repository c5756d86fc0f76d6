"""A loopback HTTP server speaking the slice of the Vertex AI v1 REST API that the registry uses.

The real google-cloud-aiplatform SDK (REST transport) is pointed at it, so tests
check the exact requests fleetops sends. It keeps models in memory and applies
Vertex's version and alias bookkeeping; it records every request.

Deployment resource pools (co-hosting) as Vertex has them: a pool id is
created once (a second create is a 409); a model lists SHARED_RESOURCES among
its deployment resource types only when a prebuilt TensorFlow or PyTorch
container serves it; a deploy into a pool names it in `sharedResources`, with
no `dedicatedResources`, and is refused for a model without SHARED_RESOURCES
or a pool that does not exist. `race_pool_creation` has another client
create a pool right after a read found it missing.

Faults and quotas, as Vertex answers them (a JSON error with its HTTP code and
status, which the SDK's REST transport turns into google.api_core exceptions):
`refusals` (see `Refusal`) answer the next n matching requests, or a seeded
share of them, with 429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE or 504
DEADLINE_EXCEEDED, before handling them or after (the version is created, then
the answer is lost); `write_quota` (see `WriteQuota`) admits N writes per
window and answers 429 RESOURCE_EXHAUSTED above it, as Vertex's per-minute
request quotas do. `answers` counts the answers by HTTP status. Requests are
handled one at a time (a lock), as a many-threaded client needs.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from tests.loopback import LoopbackJsonServer

_JOBS = re.compile(
    r"^/v1/(projects/[^/]+/locations/[^/]+)/"
    r"(batchPredictionJobs|modelDeploymentMonitoringJobs|hyperparameterTuningJobs)(?:/(\w+))?$"
)
# Jobs come back finished (or running, for monitoring); tuning jobs are `FakeVertex._tuning_job`'s.
_JOB_RESULTS: dict[str, dict[str, Any]] = {
    "batchPredictionJobs": {"state": "JOB_STATE_SUCCEEDED"},
    "modelDeploymentMonitoringJobs": {"state": "JOB_STATE_RUNNING"},
}
_MONITORING_SEARCH = re.compile(
    r"^/v1/(projects/[^/]+/locations/[^/]+/modelDeploymentMonitoringJobs/\w+):searchModelDeploymentMonitoringStatsAnomalies$"
)
_OBJECTIVES = {
    1: "RAW_FEATURE_SKEW",
    2: "RAW_FEATURE_DRIFT",
    3: "FEATURE_ATTRIBUTION_SKEW",
    4: "FEATURE_ATTRIBUTION_DRIFT",
}
_TUNING_JOBS = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+)/hyperparameterTuningJobs(?:/(\w+)(:cancel)?)?$")
_BATCH_JOBS = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+)/batchPredictionJobs(?:/(\w+))?(:cancel)?$")
_ENDPOINTS = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+)/endpoints$")
_ENDPOINT = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+)/endpoints/([^/:]+)(:\w+)?$")
_MODEL = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+)/models/([^/@:]+)(?:@([^/:]+))?(.*)$")
_PIPELINE_JOBS = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+)/pipelineJobs(?:/([^/:]+))?$")
_POOLS = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+)/deploymentResourcePools(?:/([^/:]+))?$")
# Vertex co-hosts the models of its prebuilt TensorFlow (GA) and PyTorch (preview) containers only.
_COHOSTABLE_IMAGE = re.compile(r"^(us|europe|asia)-docker\.pkg\.dev/vertex-ai/prediction/(tf2|pytorch)-")


@dataclass
class Refusal:
    """Answer matching requests with `status`: the next `count` of them, else a `share` drawn with `seed`.

    `after_handling` handles the request first (a create takes effect) and loses its answer, as
    when Vertex creates a version and the client then gets a 503 or a timeout.
    """

    status: int = 429
    count: int | None = None
    share: float = 0.0
    seed: int = 0
    after_handling: bool = False
    method: str | None = None
    path_suffix: str = ""
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def fires(self, method: str, path: str, after: bool) -> bool:
        if after != self.after_handling or self.method not in (None, method) or not path.endswith(self.path_suffix):
            return False
        if self.count is not None:
            self.count -= 1
            return self.count >= 0
        return self._random.random() < self.share


@dataclass
class WriteQuota:
    """At most `limit` writes (POST, PATCH, DELETE but job creations) in each `window_seconds` since the first.

    Vertex's "Resource management (CRUD) requests" quota is 600 a minute per project and region;
    tests and benchmarks scale the window down. A refused write does not count.
    """

    limit: int
    window_seconds: float
    clock: Callable[[], float] = time.monotonic
    _start: float | None = None
    _window: int = -1
    _used: int = 0

    def admit(self) -> bool:
        now = self.clock()
        self._start = now if self._start is None else self._start
        window = int((now - self._start) // self.window_seconds)
        if window != self._window:
            self._window, self._used = window, 0
        if self._used >= self.limit:
            return False
        self._used += 1
        return True


class FakeVertex(LoopbackJsonServer):
    def __init__(self) -> None:
        super().__init__()
        self.models: dict[str, dict[str, Any]] = {}  # model id -> {"versions": {id: model json}, "next": n}
        self.evaluations: dict[str, list[dict[str, Any]]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pools: dict[str, dict[str, Any]] = {}
        self.pipeline_jobs: dict[str, dict[str, Any]] = {}
        # endpoint id -> the ModelMonitoringStatsAnomalies (REST JSON) its monitoring job has produced so far
        self.monitoring_stats: dict[str, list[dict[str, Any]]] = {}
        self._next_deployed_id = 1000
        self.fail_evaluation_import = False
        self.refusals: list[Refusal] = []
        self.write_quota: WriteQuota | None = None
        self.answers: Counter[int] = Counter()
        self._lock = threading.Lock()
        # A fleet registers from many threads at once: a deeper accept queue than http.server's 5,
        # which would reset connections no Vertex front end resets.
        self._server.socket.listen(256)
        # A pool's dedicatedResources: another client creates that pool just after the next read of a missing one.
        self.race_pool_creation: dict[str, Any] | None = None
        # What a hyperparameter tuning job reports (see `_tuning_job`): the trials a test sets, in REST JSON.
        self.tuning_trials: list[dict[str, Any]] = []
        self.tuning_reads_running = 0
        self.tuning_end_state = "JOB_STATE_SUCCEEDED"
        # Batch prediction jobs: how many reads a job stays running for, and the versioned model names
        # (models/ID@VERSION) whose jobs fail, with their error message.
        self.batch_reads_running = 0
        self.failing_batch_models: dict[str, str] = {}
        # A test's stand-in for the container refusing a request: a message for an instance it refuses.
        self.refuse_batch_instance: Callable[[dict[str, Any]], str | None] = lambda instance: None

    def calls(self, method: str, suffix: str = "") -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and r["path"].endswith(suffix)]

    def versions_by_identity(self) -> Counter[tuple[str, str]]:
        """(model id, identity label) -> how many versions carry it: a duplicate upload counts 2."""
        return Counter(
            (model_id, version["labels"].get("identity-sha256", ""))
            for model_id, entry in self.models.items()
            for version in entry["versions"].values()
        )

    def handle(self, method: str, path: str, query: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            status, payload = self._handle_with_faults(method, path, query, body)
            self.answers[status] += 1
            return status, payload

    def _handle_with_faults(self, method: str, path: str, query: str, body: dict[str, Any]) -> tuple[int, dict]:
        if refusal := self._refusal(method, path, after=False):
            return refusal
        is_write = method != "GET" and not _JOBS.match(path)
        if is_write and self.write_quota is not None and not self.write_quota.admit():
            return _error(429, "Quota exceeded for aiplatform.googleapis.com/resource_management_requests")
        answer = self._api(method, path, query, body)
        return self._refusal(method, path, after=True) or answer

    def _refusal(self, method: str, path: str, after: bool) -> tuple[int, dict[str, Any]] | None:
        for refusal in self.refusals:
            if refusal.fires(method, path, after):
                lost = " (the request took effect; its answer was lost)" if after else ""
                return _error(refusal.status, f"injected {refusal.status} for {method} {path}{lost}")
        return None

    # -- the API -------------------------------------------------------------------------------

    def _pipeline_jobs(
        self, method: str, parent: str, job_id: str | None, query: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """createPipelineJob (`?pipelineJobId=`; an id in use is a 409, as on Vertex) and getPipelineJob."""
        if method == "POST" and job_id is None:
            job_id = parse_qs(query).get("pipelineJobId", [f"pipeline-{len(self.requests)}"])[0]
            name = f"{parent}/pipelineJobs/{job_id}"
            if name in self.pipeline_jobs:
                return _error(409, f"PipelineJob {name} already exists")
            self.pipeline_jobs[name] = dict(body) | {"name": name, "state": "PIPELINE_STATE_PENDING"}
            return 200, self.pipeline_jobs[name]
        name = f"{parent}/pipelineJobs/{job_id}"
        if method == "GET" and name in self.pipeline_jobs:
            return 200, self.pipeline_jobs[name]
        return _error(404, f"PipelineJob {name} not found")

    def _api(self, method: str, path: str, query: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if method == "PATCH" and (match := _JOBS.match(path)) and match.group(2) == "modelDeploymentMonitoringJobs":
            return self._update_monitoring_job(match.group(3), query, body)
        if match := _TUNING_JOBS.match(path):
            return self._tuning_job(method, *match.groups(), body)
        if match := _BATCH_JOBS.match(path):
            return self._batch_job(method, *match.groups(), body)
        if match := _JOBS.match(path):
            return self._job(method, *match.groups(), body)
        if match := _PIPELINE_JOBS.match(path):
            return self._pipeline_jobs(method, *match.groups(), query, body)
        if method == "POST" and (match := _MONITORING_SEARCH.match(path)):
            return self._search_monitoring_stats(match.group(1), body)
        if match := re.match(r"^/v1/(projects/[^/]+/locations/[^/]+)/schedules$", path):
            schedule = dict(body) | {"name": f"{match.group(1)}/schedules/{len(self.requests)}", "state": "ACTIVE"}
            return 200, schedule
        if match := _POOLS.match(path):
            return self._pools(method, *match.groups(), body)
        if match := _ENDPOINTS.match(path):
            return self._endpoints(method, match.group(1), query, body)
        if match := _ENDPOINT.match(path):
            return self._endpoint(method, *match.groups(), body)
        if method == "POST" and path.endswith("/models:upload"):
            return self._upload(path.removeprefix("/v1/").removesuffix("/models:upload"), body)
        if method == "GET" and re.match(r"^/v1/projects/[^/]+/locations/[^/]+/models$", path):
            return 200, {"models": [self._version(m, None) for m in sorted(self.models)]}
        match = _MODEL.match(path)
        if not match:
            return _error(404, f"unknown path {path}")
        parent, model_id, version, rest = match.groups()
        if model_id not in self.models:
            return _error(404, f"Model {parent}/models/{model_id} not found")
        if method == "GET" and rest == ":listVersions":
            versions = self.models[model_id]["versions"]
            return 200, {"models": [versions[v] for v in sorted(versions, key=int)]}
        resolved = self._resolve(model_id, version)
        if resolved is None:
            return _error(404, f"Model version {model_id}@{version} not found")
        if method == "GET" and rest == "":
            return 200, self._version(model_id, resolved)
        if method == "POST" and rest == ":mergeVersionAliases":
            return self._merge(model_id, resolved, body.get("versionAliases", []))
        if method == "DELETE" and rest in ("", ":deleteVersion"):
            return self._delete(parent, model_id, version if rest else None, resolved)
        if method == "POST" and rest == "/evaluations:import":
            if self.fail_evaluation_import:
                return _error(500, "injected failure")
            evaluation = dict(body["modelEvaluation"])
            key = f"{model_id}@{resolved}"
            evaluation["name"] = f"{parent}/models/{model_id}/evaluations/{len(self.evaluations.get(key, [])) + 1}"
            self.evaluations.setdefault(key, []).append(evaluation)
            return 200, evaluation
        if method == "GET" and rest == "/evaluations":
            return 200, {"modelEvaluations": self.evaluations.get(f"{model_id}@{resolved}", [])}
        return _error(404, f"unsupported {method} {path}")

    def _job(self, method: str, parent: str, kind: str, job_id: str | None, body: dict[str, Any]) -> tuple[int, dict]:
        if method == "GET" and job_id is None:  # a listing (its filter left to the caller)
            return 200, {kind: [job for (k, _), job in self.jobs.items() if k == kind]}
        if method == "POST":
            job_id = str(sum(k == kind for k, _ in self.jobs) + 1)
            self.jobs[(kind, job_id)] = dict(body) | {"name": f"{parent}/{kind}/{job_id}"} | _JOB_RESULTS[kind]
        return 200, self.jobs[(kind, job_id)]

    def _update_monitoring_job(self, job_id: str, query: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """PATCH with an updateMask (camelCase or snake_case paths): those fields replaced; an operation, done."""
        job = self.jobs.get(("modelDeploymentMonitoringJobs", job_id))
        if job is None:
            return _error(404, f"ModelDeploymentMonitoringJob {job_id} not found")
        paths = parse_qs(query.replace(";", "&")).get("updateMask", [""])[0].split(",")
        fields = {re.sub(r"_(\w)", lambda m: m.group(1).upper(), p) for p in paths if p}
        if not fields:
            return _error(400, "update_mask is required")
        job.update({f: body[f] for f in fields if f in body})
        return 200, _done(
            f"{job['name']}/operations/{len(self.requests)}",
            {"@type": "type.googleapis.com/google.cloud.aiplatform.v1.ModelDeploymentMonitoringJob", **job},
        )

    def _search_monitoring_stats(self, job_name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The stats anomalies a test set for the job's endpoint, filtered as Vertex does: by deployed
        model, objective and feature, each feature's windows limited to [startTime, endTime]."""
        job = self.jobs.get(("modelDeploymentMonitoringJobs", job_name.rsplit("/", 1)[-1]))
        if job is None:
            return _error(404, f"ModelDeploymentMonitoringJob {job_name} not found")
        if not body.get("deployedModelId"):
            return _error(400, "deployed_model_id is required")
        # The SDK's REST transport sends enums as numbers ($alt=json;enum-encoding=int); Vertex takes names too.
        objectives = {_OBJECTIVES.get(o.get("type"), o.get("type")) for o in body.get("objectives", [])}
        if not objectives:
            return _error(400, "objectives are required")
        found = []
        for stats in self.monitoring_stats.get(job["endpoint"].rsplit("/", 1)[-1], []):
            if stats["deployedModelId"] != body["deployedModelId"] or stats["objective"] not in objectives:
                continue
            features = [
                feature | {"predictionStats": _within(feature.get("predictionStats", []), body)}
                for feature in stats.get("featureStats", [])
                if body.get("featureDisplayName") in (None, "", feature["featureDisplayName"])
            ]
            found.append(stats | {"featureStats": features})
        return 200, {"monitoringStats": found}

    def _tuning_job(
        self, method: str, parent: str, job_id: str | None, verb: str | None, body: dict[str, Any]
    ) -> tuple[int, dict]:
        """A HyperparameterTuningJob: created PENDING; the next `tuning_reads_running` reads find it RUNNING with
        no trials, the one after finds it ended (`tuning_end_state`) with the trials the test set
        (`tuning_trials`); a cancel ends a job that has not ended as CANCELLED. Listing ignores its filter."""
        kind = "hyperparameterTuningJobs"
        if method == "GET" and job_id is None:
            return 200, {kind: [job for (k, _), job in self.jobs.items() if k == kind]}
        if method == "POST" and job_id is None:
            job_id = str(sum(k == kind for k, _ in self.jobs) + 1)
            job = dict(body) | {"name": f"{parent}/{kind}/{job_id}", "state": "JOB_STATE_PENDING", "trials": []}
            self.jobs[(kind, job_id)] = job | {"_reads_running": self.tuning_reads_running}
            return 200, job
        job = self.jobs.get((kind, job_id or ""))
        if job is None:
            return _error(404, f"HyperparameterTuningJob {parent}/{kind}/{job_id} not found")
        ended = job["state"] in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")
        if method == "POST" and verb == ":cancel":
            if not ended:
                job["state"] = "JOB_STATE_CANCELLED"
            return 200, {}
        if method == "GET" and not ended:
            if job["_reads_running"] > 0:
                job["_reads_running"] -= 1
                job["state"] = "JOB_STATE_RUNNING"
            else:
                job |= {"state": self.tuning_end_state, "trials": list(self.tuning_trials)}
        return 200, {k: v for k, v in job.items() if not k.startswith("_")}

    def _batch_job(
        self, method: str, parent: str, job_id: str | None, cancel: str | None, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """Batch prediction jobs: created pending, running for `batch_reads_running` reads (gets or
        listings), then finished.

        The stand-in cannot run a serving container, so a job on a JSONL file "runs" as Vertex's
        would on our container: the version's artifact (found under FLEETOPS_GCS_MOUNT from its
        artifactUri) scores the instances with our `Predictor`, `batchSize` at a time, and the
        results are written under the output prefix (the mount's folder for it) as Vertex lays them
        out: `prediction-<display name>-<time>/predictions_0001.jsonl` and `errors_0001.jsonl`, a
        line `{key|instance, prediction}` or `{key|instance, error: {status, message}}`. A
        batch of instances the container refuses is an error line for each. A job on another
        source (BigQuery) succeeds with no outputs: the stand-in has no table to read.
        """
        kind = "batchPredictionJobs"
        if method == "GET" and job_id is None:  # a listing (its filter left to the caller) reads every job
            listed = [job for (k, _), job in self.jobs.items() if k == kind]
            return 200, {kind: [_public(self._advance_batch_job(job)) for job in listed]}
        if method == "POST" and job_id is None:
            job_id = str(sum(k == kind for k, _ in self.jobs) + 1)
            job = dict(body) | {"name": f"{parent}/{kind}/{job_id}", "state": "JOB_STATE_PENDING", "reads": 0}
            job["createTime"] = "2026-11-27T09:00:00.000Z"
            self.jobs[(kind, job_id)] = job
            return 200, _public(job)
        job = self.jobs.get((kind, job_id))
        if job is None:
            return _error(404, f"BatchPredictionJob {parent}/{kind}/{job_id} not found")
        if method == "POST" and cancel:
            if job["state"] in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING"):
                job["state"] = "JOB_STATE_CANCELLED"
            return 200, {}
        return 200, _public(self._advance_batch_job(job))

    def _advance_batch_job(self, job: dict[str, Any]) -> dict[str, Any]:
        """A read of an unfinished job: it runs, and finishes after `batch_reads_running` reads."""
        if job["state"] in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING"):
            job["reads"] += 1
            job["state"] = "JOB_STATE_RUNNING"
            if job["reads"] > self.batch_reads_running:
                self._finish_batch_job(job)
        return job

    def _finish_batch_job(self, job: dict[str, Any]) -> None:
        model = job["model"].split("/models/", 1)[1]
        if model in self.failing_batch_models:
            job["state"] = "JOB_STATE_FAILED"
            job["error"] = {"code": 3, "message": self.failing_batch_models[model]}
            return
        job["state"] = "JOB_STATE_SUCCEEDED"
        source = job["inputConfig"]
        if source.get("instancesFormat") != "jsonl" or "gcsSource" not in source:
            return
        from fleetops.platform.vertex import gcs_local_path

        output_dir = f"{job['outputConfig']['gcsDestination']['outputUriPrefix']}/prediction-{job['displayName']}-"
        output_dir += job["createTime"]
        job["outputInfo"] = {"gcsOutputDirectory": output_dir}
        lines = [
            json.loads(line)
            for uri in source["gcsSource"]["uris"]
            for line in Path(gcs_local_path(uri)).read_text().splitlines()
            if line.strip()
        ]
        predictions, errors = self._score_batch_lines(job, model, lines)
        folder = Path(gcs_local_path(output_dir))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "predictions_0001.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
        if errors:
            (folder / "errors_0001.jsonl").write_text("".join(json.dumps(e) + "\n" for e in errors))

    def _score_batch_lines(
        self, job: dict[str, Any], model: str, lines: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Our container's answers to the job's instances, a batch at a time, as Vertex's output lines."""
        from fleetops.errors import UserError
        from fleetops.platform.vertex import gcs_local_path
        from fleetops.serving.predictor import Predictor

        model_id, version = model.split("@")
        registered = self.models[model_id]["versions"][self._resolve(model_id, version)]
        predictor = Predictor.load(gcs_local_path(registered["artifactUri"]), registered["labels"]["artifact-sha256"])
        key_field = job.get("instanceConfig", {}).get("keyField")
        batch_size = int(job.get("manualBatchTuningParameters", {}).get("batchSize", 64))
        predictions, errors = [], []
        for start in range(0, len(lines), batch_size):
            batch = lines[start : start + batch_size]
            inputs = [{k: v for k, v in line.items() if k != key_field} for line in batch]
            ids = [{"key": line[key_field]} if key_field else {"instance": line} for line in batch]
            try:
                if refusals := [m for m in map(self.refuse_batch_instance, inputs) if m]:
                    raise UserError(refusals[0])  # the container answers 400: the whole request fails
                columns = predictor.columns(inputs)
                outputs = predictor.predict_columns(columns)
                predictor.check_finite(outputs, columns)
            except UserError as exc:
                errors += [i | {"error": {"status": "INVALID_ARGUMENT", "message": str(exc)}} for i in ids]
                continue
            answers = predictor.format_predictions(outputs)
            predictions += [i | {"prediction": p} for i, p in zip(ids, answers, strict=True)]
        return predictions, errors

    def _pools(self, method: str, parent: str, pool_id: str | None, body: dict[str, Any]) -> tuple[int, dict]:
        if method == "GET" and pool_id is not None:
            if pool_id not in self.pools:
                if self.race_pool_creation is not None:  # another client creates it just after this read
                    name = f"{parent}/deploymentResourcePools/{pool_id}"
                    self.pools[pool_id] = {"name": name, "dedicatedResources": self.race_pool_creation}
                    self.race_pool_creation = None
                return _error(404, f"DeploymentResourcePool {parent}/deploymentResourcePools/{pool_id} not found")
            return 200, self.pools[pool_id]
        if method == "POST" and pool_id is None:
            pool_id = body["deploymentResourcePoolId"]
            if pool_id in self.pools:
                return _error(409, f"DeploymentResourcePool {pool_id} already exists")
            pool = dict(body["deploymentResourcePool"]) | {"name": f"{parent}/deploymentResourcePools/{pool_id}"}
            self.pools[pool_id] = pool
            return 200, _done(
                f"{parent}/deploymentResourcePools/{pool_id}/operations/create",
                {"@type": "type.googleapis.com/google.cloud.aiplatform.v1.DeploymentResourcePool", **pool},
            )
        return _error(404, f"unsupported {method} deploymentResourcePools/{pool_id or ''}")

    def _endpoints(self, method: str, parent: str, query: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if method == "GET":
            return 200, {"endpoints": [self.endpoints[e] for e in sorted(self.endpoints)]}
        endpoint_id = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("endpointId")
        if endpoint_id in self.endpoints:
            return _error(409, f"endpoint {endpoint_id} already exists")
        endpoint = dict(body) | {"name": f"{parent}/endpoints/{endpoint_id}", "deployedModels": [], "trafficSplit": {}}
        self.endpoints[endpoint_id] = endpoint
        return 200, _done(
            f"{parent}/endpoints/{endpoint_id}/operations/create",
            {"@type": "type.googleapis.com/google.cloud.aiplatform.v1.Endpoint", **endpoint},
        )

    def _endpoint(
        self, method: str, parent: str, endpoint_id: str, verb: str | None, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None:
            return _error(404, f"Endpoint {parent}/endpoints/{endpoint_id} not found")
        operation = f"{parent}/endpoints/{endpoint_id}/operations/{len(self.requests)}"
        if method == "GET" and verb is None:
            return 200, endpoint
        if method == "DELETE" and verb is None:
            if endpoint["deployedModels"]:
                return _error(400, "endpoint has deployed models")
            del self.endpoints[endpoint_id]
            return 200, _done(operation, {"@type": "type.googleapis.com/google.protobuf.Empty"})
        if method == "PATCH" and verb is None:
            if "trafficSplit" in body:
                endpoint["trafficSplit"] = body["trafficSplit"]
            return 200, endpoint
        if method == "POST" and verb == ":deployModel":
            deployed = dict(body["deployedModel"]) | {"id": str(self._next_deployed_id)}
            if "@" in deployed["model"]:
                deployed["model"], deployed["modelVersionId"] = deployed["model"].split("@")
            if refusal := self._refuse_shared(deployed):
                return refusal
            # Vertex stamps each deployed model (what "the newest deployed model", a canary, is found by).
            stamp = datetime(2026, 11, 27, 9, tzinfo=UTC) + timedelta(seconds=self._next_deployed_id)
            deployed["createTime"] = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
            self._next_deployed_id += 1
            endpoint["deployedModels"].append(deployed)
            split = body.get("trafficSplit", {})
            endpoint["trafficSplit"] = {(deployed["id"] if k == "0" else k): v for k, v in split.items()}
            return 200, _done(
                operation,
                {
                    "@type": "type.googleapis.com/google.cloud.aiplatform.v1.DeployModelResponse",
                    "deployedModel": deployed,
                },
            )
        if method == "POST" and verb == ":undeployModel":
            target = body["deployedModelId"]
            endpoint["deployedModels"] = [m for m in endpoint["deployedModels"] if m["id"] != target]
            split = body.get("trafficSplit") or {k: v for k, v in endpoint["trafficSplit"].items() if k != target}
            endpoint["trafficSplit"] = {k: v for k, v in split.items() if k != target}
            return 200, _done(
                operation, {"@type": "type.googleapis.com/google.cloud.aiplatform.v1.UndeployModelResponse"}
            )
        return _error(404, f"unsupported {method} endpoints/{endpoint_id}{verb or ''}")

    def _refuse_shared(self, deployed: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """Vertex's checks of a deploy into a pool: one kind of resources, a pool that exists, a co-hostable model."""
        pool = deployed.get("sharedResources")
        if not pool:
            return None
        if "dedicatedResources" in deployed or "automaticResources" in deployed:
            return _error(400, "prediction_resources is a oneof: sharedResources with dedicatedResources")
        if pool.rsplit("/", 1)[-1] not in self.pools:
            return _error(404, f"DeploymentResourcePool {pool} not found")
        model_id = deployed["model"].rsplit("/", 1)[-1]
        version = self.models[model_id]["versions"][deployed["modelVersionId"]]
        if "SHARED_RESOURCES" not in version["supportedDeploymentResourcesTypes"]:
            return _error(400, f"Model {deployed['model']} does not support SHARED_RESOURCES")
        return None

    def _upload(self, parent: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        model = dict(body["model"])
        if body.get("parentModel"):
            model_id = body["parentModel"].rsplit("/", 1)[-1]
            if model_id not in self.models:
                return _error(404, f"parent model {body['parentModel']} not found")
        else:
            model_id = body.get("modelId") or f"m{len(self.models) + 1}"
            if model_id in self.models:
                return _error(409, f"model {model_id} already exists")
            self.models[model_id] = {"versions": {}, "next": 1}
        entry = self.models[model_id]
        version_id = str(entry["next"])
        entry["next"] += 1
        aliases = list(model.get("versionAliases", []))
        if not entry["versions"] and "default" not in aliases:
            aliases.append("default")
        for other in entry["versions"].values():
            other["versionAliases"] = [a for a in other["versionAliases"] if a not in aliases]
        image = model.get("containerSpec", {}).get("imageUri", "")
        model |= {
            "supportedDeploymentResourcesTypes": ["DEDICATED_RESOURCES"]
            + (["SHARED_RESOURCES"] if _COHOSTABLE_IMAGE.match(image) else []),
            "name": f"{parent}/models/{model_id}",
            "versionId": version_id,
            "versionAliases": aliases,
            "versionCreateTime": "2026-11-26T12:00:00Z",
        }
        entry["versions"][version_id] = model
        return 200, _done(
            f"{parent}/models/{model_id}/operations/{version_id}",
            {
                "@type": "type.googleapis.com/google.cloud.aiplatform.v1.UploadModelResponse",
                "model": f"{parent}/models/{model_id}",
                "modelVersionId": version_id,
            },
        )

    def _resolve(self, model_id: str, version: str | None) -> str | None:
        versions = self.models[model_id]["versions"]
        ref = version or "default"
        if ref.isdigit():
            return ref if ref in versions else None
        return next((v for v, m in versions.items() if ref in m["versionAliases"]), None)

    def _version(self, model_id: str, version: str | None) -> dict[str, Any]:
        return self.models[model_id]["versions"][version or self._resolve(model_id, None)]

    def _merge(self, model_id: str, version: str, changes: list[str]) -> tuple[int, dict[str, Any]]:
        versions = self.models[model_id]["versions"]
        target = versions[version]
        for change in changes:
            if change.startswith("-"):
                if change == "-default":
                    return _error(400, "the default alias cannot be removed")
                target["versionAliases"] = [a for a in target["versionAliases"] if a != change[1:]]
            else:
                for other in versions.values():
                    other["versionAliases"] = [a for a in other["versionAliases"] if a != change]
                target["versionAliases"].append(change)
        return 200, target

    def _delete(self, parent: str, model_id: str, version: str | None, resolved: str) -> tuple[int, dict[str, Any]]:
        if version is None:
            del self.models[model_id]
        elif "default" in self.models[model_id]["versions"][resolved]["versionAliases"]:
            return _error(400, f"the default version of model {model_id} cannot be deleted")
        else:
            del self.models[model_id]["versions"][resolved]
        return 200, _done(
            f"{parent}/models/{model_id}/operations/delete", {"@type": "type.googleapis.com/google.protobuf.Empty"}
        )


def _within(windows: list[dict[str, Any]], body: dict[str, Any]) -> list[dict[str, Any]]:
    """The windows that end within the request's [startTime, endTime] (RFC 3339 UTC strings compare as times)."""
    start, end = body.get("startTime", ""), body.get("endTime", "9999")
    return [w for w in windows if start <= w["endTime"] <= end]


def monitoring_stats(
    deployed_model_id: str,
    objective: str,
    deviations: dict[str, float],
    threshold: dict[str, float] | float,
    start: str,
    end: str,
) -> dict[str, Any]:
    """One ModelMonitoringStatsAnomalies as Vertex's REST API answers it: `deviations` (feature -> its
    distribution_deviation) in one window, each feature with its anomaly detection threshold."""
    thresholds = threshold if isinstance(threshold, dict) else dict.fromkeys(deviations, threshold)
    features = [
        {
            "featureDisplayName": name,
            "threshold": {"value": thresholds[name]},
            "predictionStats": [
                {
                    "distributionDeviation": deviation,
                    "anomalyDetectionThreshold": thresholds[name],
                    "startTime": start,
                    "endTime": end,
                    "statsUri": f"gs://monitoring/{deployed_model_id}/{objective}/{name}/stats",
                }
            ],
        }
        for name, deviation in deviations.items()
    ]
    anomalies = sum(deviations[f] > thresholds[f] for f in deviations)
    return {
        "objective": objective,
        "deployedModelId": deployed_model_id,
        "anomalyCount": anomalies,
        "featureStats": features,
    }


def _public(job: dict[str, Any]) -> dict[str, Any]:
    """A job as the API answers it: without the stand-in's own bookkeeping."""
    return {k: v for k, v in job.items() if k != "reads"}


def _done(name: str, response: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "done": True, "response": response}


def _error(code: int, message: str) -> tuple[int, dict[str, Any]]:
    status = {
        400: "INVALID_ARGUMENT",
        404: "NOT_FOUND",
        409: "ALREADY_EXISTS",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
    }[code]
    return code, {"error": {"code": code, "message": message, "status": status}}


class FakeTime:
    """A clock that moves only when slept on, for `VertexCalls`: pacing and back-off cost no real time.

    `sleeps` records every wait, in order.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


def connect_to(fake: FakeVertex, query: str = "", *, clock: FakeTime | None = None, retry: Any = None) -> Any:
    """A Vertex platform on `fake` (`query`: more URI settings), its waits on `clock` instead of the real one."""
    from google.auth.credentials import AnonymousCredentials

    from fleetops.platform import vertex_settings
    from fleetops.platform.vertex import VertexPlatform
    from fleetops.platform.vertex.calls import VertexCalls

    settings = vertex_settings(f"vertex://proj-1/us-central1?api_endpoint={fake.endpoint}{query}")
    clock = clock or FakeTime()
    calls = VertexCalls(settings, retry=retry, clock=clock.clock, sleep=clock.sleep)
    platform = VertexPlatform(settings, credentials=AnonymousCredentials(), calls=calls)
    platform.fake, platform.time = fake, clock
    return platform
