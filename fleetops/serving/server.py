"""The prediction server: the local twin's endpoints, and the Vertex custom serving container.

One ASGI app, two sources of models:

- `TwinModels(home)`: every endpoint of the local twin, routed by its traffic
  split. It polls the endpoints' revision and picks up deploys, undeploys and
  split changes without a restart. Models load on their first request (or at
  start, those `prewarm` names) into a `ModelCache` bounded by count and by
  memory, least recently used first out (see `fleetops.serving.model_cache`),
  so one server serves a fleet of thousands of endpoints.
- `ContainerModels(storage_uri)`: the Vertex custom-container contract, one
  model from `AIP_STORAGE_URI` at `AIP_PREDICT_ROUTE` on `AIP_HTTP_PORT`.

Routes: `POST /v1/projects/{p}/locations/{l}/endpoints/{e}:predict`,
`:explain` and `:rawPredict`, and `GET /v1/projects/{p}/locations/{l}/endpoints/{e}`
(GetEndpoint), answered as Vertex's REST API answers them (`fleetops.serving.rest`),
so the Vertex SDK's `aiplatform.Endpoint` and PredictionServiceClient work
against them; the twin answers only for its own project and location, so a
client aimed at the wrong resource learns it. Then the health route, `GET /ready`
and `GET /metrics` (Prometheus, see `fleetops.serving.metrics`; it needs the
token when one is set, as scrapers can send one). `/ready` is 200 once the
server is up and its prewarmed models are loaded, 503 while they load or if
one failed; either way it lists the models that failed to load. A model that
cannot be loaded (missing, corrupt, its sha256 changed, too large for the
cache) is a 503 naming it and the reason, remembered until the endpoints
change. Requests for one deployed model are micro-batched: while the model
scores a batch, new requests queue and go together into the next one. Errors
come back as google.rpc statuses (`{"error": {"code", "message", "status"}}`)
with a 4xx for the caller's mistakes, a wrong method included (405, with
`Allow`), and so does a request too malformed for the HTTP parser; the server
keeps serving. A WebSocket handshake gets a 403 (uvicorn hands it
to the app; left unanswered it became a 500).

Connections are timed: uvicorn closes a keep-alive connection idle between
requests, and `HeaderDeadlineProtocol` (uvicorn has no such timeout) closes one
whose request headers are not complete in time, so slow or silent clients
cannot hold connections open.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import ipaddress
import os
import random
import re
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fleetops.errors import NotFoundError, UserError
from fleetops.serving.metrics import ServingMetrics
from fleetops.serving.model_cache import (
    ModelCache,
    ModelTooLarge,
    ModelUnavailable,
    directory_bytes,
    format_bytes,
    parse_size,
)
from fleetops.serving.predictor import Predictor
from fleetops.serving.rest import endpoint_resource, error_body, error_payload, header_value, rpc_status

if TYPE_CHECKING:  # the serving container never imports the platform
    from fleetops.platform.endpoints import DeployedModel

DEFAULT_MAX_BODY_BYTES = 1_572_864  # Vertex's online prediction payload limit (1.5 MB)
MAX_BATCH_ROWS = 1024
# Allocations between young garbage collections in a serving worker (Python's default: 700). Measured with
# bench_serving (LiteRT, 3 interleaved runs against the server before the cache): the default with the
# frozen runtime gave ~6% fewer single-instance requests/s (one run), 10,000 ~6%, 50,000 ~3.6% (within the runs'
# +-5% spread), and 100-instance requests p99 8.7 ms against 54-130 ms (full collections of an unfrozen
# heap). Request garbage is freed by reference counting; what waits is cyclic (evicted Keras models).
GC_YOUNG_THRESHOLD = 50_000
# Batch shapes a model is scored at once as it loads (`TwinModels._load_model`): the micro-batches
# a fleet's traffic forms are mostly this small; the buckets above are traced when first needed.
WARM_UP_ROWS = (2, 4, 8)
WARM_UP_SLOW_SECONDS = 0.005
# Explanations computed at once, per worker: each holds a chunk's integration path and gradient tape
# (see explain.py); more share the same cores and multiply the memory (measured: README).
DEFAULT_CONCURRENT_EXPLAINS = 1
DEFAULT_HEADER_TIMEOUT_SECONDS = 10.0  # from connecting (or a request's first byte) to the end of its headers
DEFAULT_KEEP_ALIVE_SECONDS = 5.0  # uvicorn's default: an idle keep-alive connection is closed after this
# An endpoint (GetEndpoint) or one of its custom methods (:predict, :explain, :rawPredict).
_ROUTE = re.compile(r"^/v1/projects/([^/]+)/locations/([^/]+)/endpoints/([^/:]+)(?::(predict|explain|rawPredict))?$")
_ROUTES_HELP = (
    "GET /v1/projects/P/locations/L/endpoints/E, POST /v1/projects/P/locations/L/endpoints/E:predict "
    "(or :explain, :rawPredict)"
)


class HttpError(Exception):
    """An answer in google.rpc's error shape; `allow` names the methods a 405's resource takes."""

    def __init__(self, code: int, message: str, status: str | None = None, allow: str | None = None):
        super().__init__(message)
        self.code = code
        self.status = status or rpc_status(code)
        self.allow = allow


@dataclass
class Served:
    """A deployed model as a route holds it: its registry identity; its `key` is what the model cache loads.

    `explain_refusal` is why Vertex would not explain it ("" if it would): a co-hosted model.
    """

    deployed_model_id: str
    model_id: str
    version_id: str
    model_resource_name: str
    explain_refusal: str = ""
    key: tuple[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.key = (self.model_id, self.version_id)

    def unavailable(self, reason: str) -> HttpError:
        return HttpError(
            503,
            f"deployed model {self.deployed_model_id} ({self.model_id}@{self.version_id}) is not being served: "
            f"{reason}",
        )


@dataclass
class Loaded:
    """A loaded model: its predictor, the batcher its requests go through, and its display name.

    The display name is the registered version's (Vertex's `Model.display_name`, which answers
    carry as `modelDisplayName`); it is read with the version when the model loads.
    """

    predictor: Predictor
    batcher: Batcher
    model_display_name: str


@dataclass
class Route:
    endpoint_id: str
    models: dict[str, Served]
    ids: list[str] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)
    logging_rate: float = 0.0


class StartupError(UserError):
    """The server cannot start as configured (the app tells uvicorn its startup failed)."""


class Batcher:
    """Adaptive micro-batching for one predictor, on the event loop.

    Requests parsed in the same turn of the loop queue here and go to the model
    together; the model runs inline (measured faster than a thread hand-off on
    2 cores: less switching, no GIL ping-pong), and whatever arrives meanwhile
    waits in the socket buffers and forms the next batch.
    """

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self._pending: list[tuple[dict[str, list[Any]], int, asyncio.Future[Any]]] = []
        self._scheduled = False

    async def predict(self, columns: dict[str, list[Any]], n: int) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((columns, n, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._drain)
        return await future

    def _drain(self) -> None:
        self._scheduled = False
        while self._pending:
            batch, rows = [], 0
            while self._pending and (not batch or rows + self._pending[0][1] <= MAX_BATCH_ROWS):
                item = self._pending.pop(0)
                batch.append(item)
                rows += item[1]
            merged = {name: [v for cols, _, _ in batch for v in cols[name]] for name in self.predictor.features}
            try:
                outputs = self.predictor.predict_columns(merged)
            except Exception as exc:  # a model failure fails its requests, not the server
                for _, _, future in batch:
                    future.set_exception(exc)
                continue
            start = 0
            for _, n, future in batch:
                future.set_result(outputs[start : start + n])
                start += n


class TwinModels:
    """The local twin's endpoints, reloaded when they change, and their models, loaded when first needed.

    `cache_models` and `cache_bytes` limit the models kept loaded (None: no limit); `prewarm`
    names the models loaded at start (`parse_prewarm`). Routes are rebuilt in a thread
    (`refresh`); everything that touches the cache runs on the event loop.
    """

    def __init__(
        self,
        home: str | Path,
        *,
        cache_models: int | None = None,
        cache_bytes: int | None = None,
        prewarm: str = "",
        metrics: ServingMetrics | None = None,
    ):
        from fleetops.platform import connect, local_uri
        from fleetops.platform.local.registry import LOCATION, PROJECT

        self.home = Path(home)
        self.resource_prefix = f"projects/{PROJECT}/locations/{LOCATION}"
        self.platform = connect(local_uri(self.home))
        self.routes: dict[str, Route] = {}
        self._revision: int | None = None
        self.metrics = metrics or ServingMetrics()
        self.cache = ModelCache(cache_models, cache_bytes, self.metrics)
        self.prewarm_items = parse_prewarm(prewarm)
        self.prewarm_keys: list[tuple[str, str]] = []
        self._prewarming: asyncio.Task[None] | None = None

    def refresh(self) -> bool:
        """Rebuild the routes if the endpoints changed; returns whether anything changed. Loads nothing."""
        revision = self.platform.endpoints.revision()
        if revision == self._revision:
            return False
        routes = {}
        for endpoint in self.platform.endpoints.list():
            models = {
                m.deployed_model_id: Served(
                    m.deployed_model_id,
                    m.model_id,
                    m.version_id,
                    m.model_resource_name,
                    _explain_refusal(endpoint.endpoint_id, m),
                )
                for m in endpoint.deployed_models
            }
            live = [(i, p) for i, p in endpoint.traffic_split.items() if p > 0]
            routes[endpoint.endpoint_id] = Route(
                endpoint.endpoint_id, models, [i for i, _ in live], [p for _, p in live], endpoint.request_logging_rate
            )
        self.routes = routes
        self._revision = revision
        return True

    def refreshed(self) -> None:
        """On the event loop, after `refresh` changed the routes: drop what is no longer deployed, retry failures."""
        deployed = {s.key for r in self.routes.values() for s in r.models.values()}
        failed_prewarm = [k for k in self.prewarm_keys if k in self.cache.failed and k in deployed]
        self.cache.retain(deployed)
        self.metrics.retain({(r.endpoint_id, i) for r in self.routes.values() for i in r.models})
        if failed_prewarm and (self._prewarming is None or self._prewarming.done()):
            self._prewarming = asyncio.get_running_loop().create_task(self._prewarm(failed_prewarm))

    def route(self, endpoint_id: str, deployed_model_id: str = "") -> Served:
        """The deployed model that serves a request: `deployed_model_id` if given (as :explain may name one,
        overriding the traffic split, as on Vertex), else one chosen by the endpoint's traffic split."""
        route = self.routes.get(endpoint_id)
        if route is None:
            raise HttpError(404, f"endpoint {endpoint_id!r} does not exist; endpoints: {sorted(self.routes)[:20]}")
        if deployed_model_id:
            if deployed_model_id not in route.models:
                raise HttpError(
                    404,
                    f"deployed model {deployed_model_id!r} does not exist on endpoint {endpoint_id!r}; "
                    f"deployed: {sorted(route.models)}",
                )
            return route.models[deployed_model_id]
        if not route.ids:
            raise HttpError(
                400,
                f"endpoint {endpoint_id!r} has no deployed model with traffic; deploy a model first",
                "FAILED_PRECONDITION",
            )
        chosen = route.ids[0] if len(route.ids) == 1 else random.choices(route.ids, route.weights)[0]
        return route.models[chosen]

    def loaded(self, served: Served) -> Loaded | None:
        """The served model if it is loaded (a cache hit), else None: then `await load(served)`."""
        entry = self.cache.get(served.key)
        if entry is None:
            self.metrics.cache_misses += 1
            return None
        self.metrics.cache_hits += 1
        return entry.value

    async def load(self, served: Served) -> Loaded:
        """Load the served model (once, however many requests wait for it); a 503 naming it if it cannot be."""
        try:
            return (await self.cache.load(served.key, self._loader(served.key))).value
        except ModelUnavailable as exc:
            raise served.unavailable(exc.reason) from None

    def logging_rate(self, endpoint_id: str) -> float:
        route = self.routes.get(endpoint_id)
        return route.logging_rate if route else 0.0

    def endpoint(self, endpoint_id: str) -> dict[str, Any]:
        """The endpoint as Vertex's GetEndpoint answers it, read from the twin's records (in a thread: SQLite)."""
        try:
            return endpoint_resource(self.platform.endpoints.get(endpoint_id))
        except NotFoundError as exc:
            raise HttpError(404, str(exc)) from None

    def problems(self) -> list[str]:
        """The deployed models that failed to load, and why."""
        failed = self.cache.failed
        return [
            f"{r.endpoint_id}/{s.deployed_model_id} ({s.model_id}@{s.version_id}): {failed[s.key]}"
            for r in self.routes.values()
            for s in r.models.values()
            if s.key in failed
        ]

    def readiness(self) -> dict[str, Any]:
        """Ready: started, the prewarmed models loaded (none failed). With the models loaded and failed."""
        prewarming = self._prewarming is not None and not self._prewarming.done()
        failed = [k for k in self.prewarm_keys if k in self.cache.failed]
        return {
            "ready": not prewarming and not failed,
            "prewarm": {
                "models": len(self.prewarm_keys),
                "loaded": sum(k in self.cache for k in self.prewarm_keys),
                "failed": len(failed),
                "done": not prewarming,
            },
            "models_loaded": len(self.cache),
        }

    async def start(self) -> None:
        """At start, after the first `refresh`: load one model, then prewarm the rest in the background.

        The first model (the first to prewarm, or the first deployed with traffic) loads before the
        server answers: it imports its runtime, so no request pays for that, and its measured memory
        checks the cache's limit up front (`StartupError` if one model does not fit).
        """
        loop = asyncio.get_running_loop()
        self.prewarm_keys = await loop.run_in_executor(None, self._resolve_prewarm)
        candidates = list(self.prewarm_keys or self._deployed_keys())
        for key in candidates[:3]:  # a model that fails to load is listed by /ready; the next one is tried
            try:
                await self.cache.load(key, self._loader(key))
                break
            except ModelTooLarge as exc:
                raise StartupError(
                    f"--cache-memory {format_bytes(exc.limit)} is smaller than one model: {'@'.join(key)} takes "
                    f"{format_bytes(exc.size)} once loaded; give a larger limit"
                ) from None
            except ModelUnavailable:
                continue
        # The runtime is set up: what is allocated from now on is models and requests. Frozen, the runtime's
        # objects (TensorFlow's: ~400k) are left out of every later full collection, which frees evicted Keras
        # models (they hold reference cycles) and holds the GIL: 133 ms more each without this (measured).
        # With little left to scan, the default thresholds would collect more often: fewer, larger young
        # collections (see GC_YOUNG_THRESHOLD).
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
        self._prewarming = loop.create_task(self._prewarm(self.prewarm_keys))

    async def stop(self) -> None:
        if self._prewarming is not None:
            self._prewarming.cancel()
        self.cache.close()

    async def _prewarm(self, keys: list[tuple[str, str]]) -> None:
        started = time.perf_counter()
        for index, key in enumerate(keys):
            if key in self.cache:
                continue
            if self.cache.full():
                print(
                    f"fleetops serve: prewarm stopped after {index} of {len(keys)} models: the cache is full "
                    "(--cache-models, --cache-memory); the others load on their first request",
                    file=sys.stderr,
                    flush=True,
                )
                break
            try:
                await self.cache.load(key, self._loader(key))
            except ModelUnavailable:
                pass  # remembered by the cache; /ready lists it
        print(
            f"fleetops serve: worker {os.getpid()} ready: {len(self.cache)} model(s) loaded, "
            f"{sum(k in self.cache.failed for k in keys)} failed, prewarm took {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
            flush=True,
        )

    def _loader(self, key: tuple[str, str]) -> Any:
        return lambda: self._load_model(*key)

    def _load_model(self, model_id: str, version_id: str) -> tuple[Loaded, int]:
        """In the cache's thread: the model's predictor (its sha256 checked) warmed up; its size on disk."""
        version = self.platform.registry.get_version(model_id, version_id)
        path = self.platform.registry.artifact_path(version)
        predictor = Predictor.load(path, version.artifact_sha256)
        # Predictions here, not on the event loop: a runtime may build its kernels on the first call for a
        # batch shape (Keras traces a graph per shape, ~50 ms: measured, it put 50 ms stalls in the warm p99
        # of a fleet), and that memory is the model's too. When the first call is fast, the runtime does not.
        started = time.perf_counter()
        predictor.predict_columns(predictor.columns([dict.fromkeys(predictor.features)]))
        if time.perf_counter() - started > WARM_UP_SLOW_SECONDS:
            for rows in WARM_UP_ROWS:
                predictor.predict_columns(predictor.columns([dict.fromkeys(predictor.features)] * rows))
        return Loaded(predictor, Batcher(predictor), version.display_name), directory_bytes(path)

    def _deployed_keys(self) -> list[tuple[str, str]]:
        """Models deployed with traffic, by endpoint, each once."""
        keys = [r.models[i].key for r in self.routes.values() for i in r.ids]
        return list(dict.fromkeys(keys))

    def _resolve_prewarm(self) -> list[tuple[str, str]]:
        """The models `prewarm` names, in order, each once (in a thread: it may read the request log)."""
        from fleetops.serving.request_log import most_requested

        keys: list[tuple[str, str]] = []
        for kind, value in self.prewarm_items:
            if kind == "all":
                keys += self._deployed_keys()
            elif kind == "top":
                ranked = []
                for endpoint_id, deployed_model_id, _ in most_requested(self.home):
                    route = self.routes.get(endpoint_id)
                    if route is not None and deployed_model_id in route.ids:  # still deployed, with traffic
                        ranked.append(route.models[deployed_model_id].key)
                keys += list(dict.fromkeys(ranked))[:value]
            else:
                route = self.routes.get(value)
                if route is None:
                    known = sorted(self.routes)[:20]
                    raise StartupError(f"--prewarm names endpoint {value!r}, which does not exist; endpoints: {known}")
                by_traffic = sorted(zip(route.weights, route.ids, strict=True), key=lambda pair: -pair[0])
                keys += [route.models[i].key for _, i in by_traffic]
        return list(dict.fromkeys(keys))


class ContainerModels:
    """Vertex custom serving container: one model from AIP_STORAGE_URI, answering on AIP_PREDICT_ROUTE."""

    resource_prefix = None  # Vertex routes to the container by its own endpoint; any path prefix is this model

    def __init__(self, storage_uri: str, metrics: ServingMetrics | None = None):
        path = _local_artifact(storage_uri)
        predictor = Predictor.load(path)
        self.metrics = metrics or ServingMetrics()
        self.served = Served(
            os.environ.get("AIP_DEPLOYED_MODEL_ID", "0"),
            predictor.artifact.metadata.get("fleet", "model"),
            os.environ.get("AIP_MODEL_VERSION_ID", ""),
            os.environ.get("AIP_MODEL_NAME", ""),
        )
        self._loaded = Loaded(predictor, Batcher(predictor), self.served.model_id)

    def refresh(self) -> bool:
        return False

    def refreshed(self) -> None:
        pass

    def route(self, endpoint_id: str, deployed_model_id: str = "") -> Served:
        return self.served  # Vertex sends the container only the requests for its deployed model

    def loaded(self, served: Served) -> Loaded:
        return self._loaded

    async def load(self, served: Served) -> Loaded:
        return self._loaded

    def logging_rate(self, endpoint_id: str) -> float:
        return 0.0  # on Vertex, the endpoint's request-response logging does this

    def endpoint(self, endpoint_id: str) -> dict[str, Any]:
        raise HttpError(404, "a serving container has no endpoints: Vertex serves GetEndpoint, not the container")

    def problems(self) -> list[str]:
        return []

    def readiness(self) -> dict[str, Any]:
        return {"ready": True, "models_loaded": 1}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class _Seen:
    __slots__ = ("cold", "endpoint_id", "served")

    def __init__(self) -> None:
        self.endpoint_id = ""
        self.served: Served | None = None
        self.cold = False


@dataclass
class Raw:
    """A response body sent as it is (not JSON, or with headers of its own), and those headers."""

    body: bytes
    content_type: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def _explain_refusal(endpoint_id: str, deployed: DeployedModel) -> str:
    from fleetops.platform.endpoints import check_explainable

    try:
        check_explainable(endpoint_id, deployed)
    except UserError as exc:
        return str(exc)
    return ""


def _check_method(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise HttpError(405, f"{path} takes {allowed}, not {method}", allow=allowed)


def _requested_deployed_model(request: dict[str, Any]) -> str:
    """The deployed model an :explain request names (`deployedModelId`, or proto's field name), "" for none."""
    value = request.get("deployedModelId", request.get("deployed_model_id", ""))
    if not isinstance(value, str):
        raise HttpError(400, f"deployedModelId {value!r} must be a string: the id of a model deployed on the endpoint")
    return value


def _raw_predict_response(endpoint_id: str, served: Served, loaded: Loaded, predictions: list[Any]) -> Raw:
    """:rawPredict's answer: the model's own response body, and who served it in Vertex's headers.

    What the body holds is the model's: its serving container answers `{"predictions": [...]}`
    (the SDK's `predict(use_raw_predict=True)` reads that key). The headers are those the Vertex
    docs list (endpoint and deployed model id) and those the SDK reads (model, its version).
    """
    headers = {
        b"x-vertex-ai-endpoint-id": endpoint_id,
        b"x-vertex-ai-deployed-model-id": served.deployed_model_id,
        b"x-vertex-ai-model": served.model_resource_name,
        b"x-vertex-ai-model-version-id": served.version_id,
        b"x-vertex-ai-model-display-name": loaded.model_display_name,
    }
    return Raw(
        orjson.dumps({"predictions": predictions}),
        "application/json",
        [(name, header_value(value)) for name, value in headers.items()],
    )


class PredictionApp:
    """The ASGI application."""

    def __init__(
        self,
        models: TwinModels | ContainerModels,
        *,
        token: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        request_log: Any = None,
        reload_seconds: float = 1.0,
        predict_route: str | None = None,
        health_route: str = "/health",
        concurrent_explains: int = DEFAULT_CONCURRENT_EXPLAINS,
    ):
        if token is not None:
            check_token(token, "the token")
        self.models = models
        self.metrics = models.metrics
        self.token = token
        self._token_bytes = None if token is None else token.encode()
        self.max_body_bytes = max_body_bytes
        self.request_log = request_log
        self.reload_seconds = reload_seconds
        self.predict_route = predict_route
        self.health_route = health_route
        self._reloader: asyncio.Task[None] | None = None
        self._explain_slots = asyncio.Semaphore(concurrent_explains)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await self._refuse_websocket(receive, send)
            return
        if scope["type"] != "http":
            raise ValueError(f"unsupported ASGI scope type {scope['type']!r}")  # what the ASGI spec asks for
        started = time.perf_counter()
        seen = _Seen()  # what the request reached, for the metrics
        headers: list[tuple[bytes, bytes]] = []
        try:
            status, payload = await self._handle(scope, receive, seen)
        except HttpError as exc:
            status, payload = exc.code, error_payload(exc.code, str(exc), exc.status)
            if exc.allow:
                headers.append((b"allow", exc.allow.encode()))
        except UserError as exc:
            status, payload = 400, error_payload(400, str(exc))
        except Exception as exc:  # the server stays up; the caller learns what failed
            status, payload = 500, error_payload(500, f"{type(exc).__name__}: {exc}")
        if isinstance(payload, Raw):
            body, content_type = payload.body, payload.content_type.encode()
            headers += payload.headers
        else:
            body, content_type = orjson.dumps(payload), b"application/json"
        if seen.served is not None:
            seconds = time.perf_counter() - started
            self.metrics.model(seen.endpoint_id, seen.served.deployed_model_id).record(status, seconds)
            if seen.cold:
                self.metrics.cold_latency.observe(seconds)
        else:
            self.metrics.unrouted_response(status)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: dict[str, Any], receive: Any, seen: _Seen) -> tuple[int, Any]:
        path, method = scope["path"], scope["method"]
        if path == self.health_route:
            return 200, {"status": "ok"}
        if path == "/ready":
            readiness = self.models.readiness()
            readiness["problems"] = self.models.problems()
            return (200 if readiness["ready"] else 503), readiness
        if self._token_bytes is not None:
            scheme, _, credentials = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
            # compare_digest: the time taken does not tell how much of a guessed token was right.
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials, self._token_bytes):
                raise HttpError(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')")
        if path == "/metrics":
            _check_method(method, "GET", path)
            accept = dict(scope["headers"]).get(b"accept", b"").decode("latin-1")
            # In a thread: with thousands of models the exposition takes a while, and warm requests go on meanwhile.
            body, content_type = await asyncio.get_running_loop().run_in_executor(None, self.metrics.render, accept)
            return 200, Raw(body, content_type)
        endpoint_id, verb = self._resolve(path, method)
        if verb is None:  # GetEndpoint
            return 200, await asyncio.get_running_loop().run_in_executor(None, self.models.endpoint, endpoint_id)
        request = await self._json_body(receive, scope)
        instances = request.get("instances")
        requested = _requested_deployed_model(request) if verb == "explain" else ""
        served = seen.served = self.models.route(endpoint_id, requested)
        seen.endpoint_id = endpoint_id
        if verb == "explain" and served.explain_refusal:  # as Vertex answers a model it does not explain
            raise HttpError(400, served.explain_refusal, "FAILED_PRECONDITION")
        loaded = self.models.loaded(served)
        if loaded is None:
            seen.cold = True
            loaded = await self.models.load(served)
        predictor = loaded.predictor
        columns = predictor.columns(instances)
        n = len(instances)
        outputs = await loaded.batcher.predict(columns, n)
        predictor.check_finite(outputs, columns)
        predictions = predictor.format_predictions(outputs)
        if verb == "explain":
            from fleetops.serving.explain import explain

            loop = asyncio.get_running_loop()
            async with self._explain_slots:  # the others wait here, holding only their parsed instances
                explanations = await loop.run_in_executor(None, explain, predictor, columns)
            # Vertex's ExplainResponse: no model fields, unlike PredictResponse.
            return 200, {
                "explanations": explanations,
                "deployedModelId": served.deployed_model_id,
                "predictions": predictions,
            }
        rate = self.models.logging_rate(endpoint_id)
        if self.request_log is not None and rate > 0 and (rate >= 1.0 or random.random() < rate):
            self.request_log.log(endpoint_id, served, instances, predictions)
        if verb == "rawPredict":
            return 200, _raw_predict_response(endpoint_id, served, loaded, predictions)
        return 200, {
            "predictions": predictions,
            "deployedModelId": served.deployed_model_id,
            "model": served.model_resource_name,
            "modelVersionId": served.version_id,
            "modelDisplayName": loaded.model_display_name,
        }

    def _resolve(self, path: str, method: str) -> tuple[str, str | None]:
        """The endpoint a path names and its method (None: the endpoint itself); a 404 or 405 saying what is served."""
        if self.predict_route is not None and path == self.predict_route:
            _check_method(method, "POST", path)
            return "", "predict"
        match = _ROUTE.match(path)
        if match is None:
            raise HttpError(404, f"no route {method} {path}; the routes: {_ROUTES_HELP}")
        project, location, endpoint_id, verb = match.groups()
        served_prefix = self.models.resource_prefix
        if served_prefix is not None and f"projects/{project}/locations/{location}" != served_prefix:
            raise HttpError(
                404,
                f"projects/{project}/locations/{location} is not served here: this local twin's endpoints are "
                f"under {served_prefix} (POST /v1/{served_prefix}/endpoints/E:predict)",
            )
        _check_method(method, "GET" if verb is None else "POST", path)
        return endpoint_id, verb

    async def _json_body(self, receive: Any, scope: dict[str, Any]) -> dict[str, Any]:
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.max_body_bytes:
                chunks.append(chunk)
            if not message.get("more_body"):
                break
        # The whole body is read (and dropped) before refusing it, so the client sees the 413, not a reset.
        if size > self.max_body_bytes:
            raise HttpError(413, f"request body of {size} bytes is over the limit of {self.max_body_bytes} bytes")
        try:
            request = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as exc:
            raise HttpError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(request, dict) or "instances" not in request:
            raise HttpError(400, 'request body must be a JSON object {"instances": [...], "parameters": {...}}')
        return request

    async def _refuse_websocket(self, receive: Any, send: Any) -> None:
        """Deny a WebSocket handshake: closing before accepting makes the server answer it with a 403.

        Not the denial-response extension with an error body: uvicorn's default (sans-I/O)
        WebSocket protocol sends that response but then logs "returned without completing
        handshake" as an error, for every such request.
        """
        if (await receive())["type"] == "websocket.connect":
            await send({"type": "websocket.close", "code": 1008})  # 1008: policy violation

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                loop = asyncio.get_running_loop()
                try:
                    await loop.run_in_executor(None, self.models.refresh)
                    self.models.refreshed()
                    await self.models.start()
                except Exception as exc:  # uvicorn stops (every worker), naming the reason
                    reason = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
                    _report_startup_failure(reason)
                    await send({"type": "lifespan.startup.failed", "message": f"fleetops serve: {reason}"})
                    return
                self._reloader = loop.create_task(self._reload_forever())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._reloader:
                    self._reloader.cancel()
                await self.models.stop()
                if self.request_log is not None:
                    self.request_log.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _reload_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.reload_seconds)
            try:
                if await loop.run_in_executor(None, self.models.refresh):
                    self.models.refreshed()
            except Exception as exc:  # a bad reload keeps the last good routes
                print(f"fleetops serve: reload failed, keeping the current routes: {exc}", file=sys.stderr)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline for each request's headers.

    uvicorn 0.54 times a connection only between requests (`timeout_keep_alive`, armed after
    a response): one that connects and sends nothing, or half a request line, is held open
    forever, a file descriptor and a buffer each (slowloris). Here the deadline starts when
    the connection opens or a request's first byte arrives, and stops when its headers are
    complete. Missed, the client gets a 408 and the connection is closed (a connection that
    sent nothing is just closed). Its length is FLEETOPS_SERVE_HEADER_TIMEOUT_SECONDS, read
    per connection because uvicorn builds the protocol from its own Config.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = float(
            os.environ.get("FLEETOPS_SERVE_HEADER_TIMEOUT_SECONDS", DEFAULT_HEADER_TIMEOUT_SECONDS)
        )
        self._header_deadline: asyncio.TimerHandle | None = None
        self._request_begun = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._start_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True
        if self._header_deadline is None:  # the first request's deadline runs from the connection
            self._start_header_deadline()

    def on_headers_complete(self) -> None:
        self._stop_header_deadline()
        self._request_begun = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """A request httptools cannot parse (an unknown method, a malformed line or header): uvicorn's 400, as
        google.rpc JSON instead of its plain text. The connection is closed: where the next request starts
        is unknown."""
        self._answer_and_close(b"400 Bad Request", f"the request is not valid HTTP/1.1 ({msg.rstrip('.')})")

    def _answer_and_close(self, status_line: bytes, message: str) -> None:
        """Write an error in google.rpc's shape straight to the connection (no app cycle is running) and close."""
        body = error_body(int(status_line.split()[0]), message)
        self.transport.write(
            b"HTTP/1.1 "
            + status_line
            + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
            + b"content-length: %d\r\n\r\n" % len(body)
            + body
        )
        self.transport.close()

    def _start_header_deadline(self) -> None:
        self._header_deadline = self.loop.call_later(self.header_timeout, self._header_deadline_passed)

    def _stop_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a pipelined request is late: finish the response in flight, then close
            return
        if self._request_begun:
            self._answer_and_close(
                b"408 Request Timeout", f"the request's headers did not arrive within {self.header_timeout:g} s"
            )
        else:
            self.transport.close()


def create_app() -> PredictionApp:
    """The app as uvicorn workers build it, from FLEETOPS_SERVE_* (or Vertex's AIP_*) environment variables."""
    # Requests are small: one TF thread per worker avoids oversubscribing the cores the workers share. Set
    # for TensorFlow to read when a Keras model first loads: a server of LiteRT models never imports it.
    threads = os.environ.get("FLEETOPS_SERVE_TF_THREADS", "1")
    os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = threads
    concurrent_explains = int(os.environ.get("FLEETOPS_SERVE_CONCURRENT_EXPLAINS", DEFAULT_CONCURRENT_EXPLAINS))
    storage_uri = os.environ.get("AIP_STORAGE_URI")
    if storage_uri:
        return PredictionApp(
            ContainerModels(storage_uri),
            predict_route=os.environ.get("AIP_PREDICT_ROUTE", "/predict"),
            health_route=os.environ.get("AIP_HEALTH_ROUTE", "/health"),
            max_body_bytes=int(os.environ.get("FLEETOPS_SERVE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)),
            concurrent_explains=concurrent_explains,
        )
    from fleetops.serving.request_log import RequestLogWriter

    home = os.environ["FLEETOPS_SERVE_HOME"]
    cache_models = os.environ.get("FLEETOPS_SERVE_CACHE_MODELS")
    cache_bytes = os.environ.get("FLEETOPS_SERVE_CACHE_MEMORY_BYTES")
    return PredictionApp(
        TwinModels(
            home,
            cache_models=int(cache_models) if cache_models else None,
            cache_bytes=int(cache_bytes) if cache_bytes else None,
            prewarm=os.environ.get("FLEETOPS_SERVE_PREWARM", ""),
        ),
        token=os.environ.get("FLEETOPS_SERVE_TOKEN"),  # set but empty is refused, not "no token"
        max_body_bytes=int(os.environ.get("FLEETOPS_SERVE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)),
        request_log=RequestLogWriter(home),
        reload_seconds=float(os.environ.get("FLEETOPS_SERVE_RELOAD_SECONDS", "1.0")),
        concurrent_explains=concurrent_explains,
    )


def serve(
    home: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 1,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_SECONDS,
    keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_SECONDS,
    *,
    prewarm: str = "",
    cache_models: int | None = None,
    cache_memory: str | int | None = None,
) -> None:
    """Run the local twin's server in the foreground (uvicorn with uvloop and httptools).

    `token` None leaves FLEETOPS_SERVE_TOKEN as it is: a token there still applies.
    Where to bind is the caller's decision (see `is_loopback`; the CLI asks for flags).
    `prewarm` (see `parse_prewarm`), `cache_models` and `cache_memory` ('2GB' or bytes) are
    checked here; a limit smaller than the first model loaded stops the server at start
    with a `UserError` saying so.
    """
    check_cache_limits(cache_models, cache_memory, prewarm)
    if home is not None:
        os.environ["FLEETOPS_SERVE_HOME"] = str(Path(home).resolve())
    os.environ["FLEETOPS_SERVE_MAX_BODY_BYTES"] = str(max_body_bytes)
    if token is not None:
        os.environ["FLEETOPS_SERVE_TOKEN"] = check_token(token, "the token")
    os.environ["FLEETOPS_SERVE_PREWARM"] = prewarm
    os.environ["FLEETOPS_SERVE_CACHE_MODELS"] = "" if cache_models is None else str(cache_models)
    memory = cache_memory if cache_memory is None or isinstance(cache_memory, int) else parse_size(cache_memory)
    os.environ["FLEETOPS_SERVE_CACHE_MEMORY_BYTES"] = "" if memory is None else str(memory)
    run_uvicorn(host, port, workers, header_timeout, keep_alive_timeout)


def check_cache_limits(cache_models: int | None, cache_memory: str | int | None, prewarm: str) -> None:
    """Refuse, before starting anything, limits no model fits in and a prewarm the cache cannot hold."""
    if cache_models is not None and cache_models < 1:
        raise UserError(f"--cache-models {cache_models}: the cache must hold at least 1 model")
    if cache_memory is not None:
        memory = cache_memory if isinstance(cache_memory, int) else parse_size(cache_memory)
        ModelCache(max_bytes=memory).close()  # its minimum, checked once
    for kind, value in parse_prewarm(prewarm):
        if kind == "top" and cache_models is not None and value > cache_models:
            raise UserError(f"--prewarm top:{value} is more models than --cache-models {cache_models} keeps")


def parse_prewarm(text: str) -> list[tuple[str, Any]]:
    """`--prewarm`: comma-separated 'all', 'top:N' (the N deployed models most requested in the request log) or
    endpoint ids (the models with traffic there), as (kind, value) pairs: ('all', None), ('top', N), ('endpoint', id).
    """
    items: list[tuple[str, Any]] = []
    for item in (part.strip() for part in (text or "").split(",")):
        if not item:
            continue
        if item == "all":
            items.append(("all", None))
        elif item.startswith("top:"):
            count = item.removeprefix("top:")
            if not count.isdigit() or int(count) < 1:
                raise UserError(f"--prewarm {item!r}: after 'top:' give a number of models, at least 1 (e.g. top:50)")
            items.append(("top", int(count)))
        else:
            items.append(("endpoint", item))
    return items


def run_uvicorn(
    host: str,
    port: int,
    workers: int = 1,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_SECONDS,
    keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_SECONDS,
) -> None:
    """uvicorn running `create_app` (configured by the environment): the twin's server and the container alike.

    A worker whose startup fails writes why to a file named by FLEETOPS_SERVE_STARTUP_ERROR_FILE
    (uvicorn exits, or with several workers stops them, without saying why); that is raised here
    as a `UserError`.
    """
    import uvicorn

    for name, seconds in (("header_timeout", header_timeout), ("keep_alive_timeout", keep_alive_timeout)):
        if not seconds > 0:
            raise UserError(f"{name} must be a positive number of seconds, got {seconds!r}")
    os.environ["FLEETOPS_SERVE_HEADER_TIMEOUT_SECONDS"] = str(header_timeout)  # for the workers' protocols
    with tempfile.TemporaryDirectory(prefix="fleetops-serve-") as scratch:
        failure = Path(scratch) / "startup-error"
        os.environ["FLEETOPS_SERVE_STARTUP_ERROR_FILE"] = str(failure)
        try:
            uvicorn.run(
                "fleetops.serving.server:create_app",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                loop="uvloop",
                http=HeaderDeadlineProtocol,
                timeout_keep_alive=keep_alive_timeout,  # typed int, but only ever passed to loop.call_later
                log_level="warning",
                access_log=False,
            )
        except SystemExit:
            if not failure.is_file():
                raise
        if failure.is_file():
            raise UserError(failure.read_text())


def _report_startup_failure(reason: str) -> None:
    path = os.environ.get("FLEETOPS_SERVE_STARTUP_ERROR_FILE")
    if path:
        Path(path).write_text(reason)


def check_token(token: str, source: str) -> str:
    """The token, if usable as a bearer token; a `UserError` naming `source` otherwise.

    Empty is refused (it would read as "no token", turning authentication off), and so are
    whitespace and non-ASCII characters, which HTTP clients send differently or not at all.
    """
    if not token:
        raise UserError(f"{source} is empty: an empty token would turn authentication off")
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise UserError(f"{source} must be printable ASCII without spaces (it is sent in an HTTP header)")
    return token


def is_loopback(host: str) -> bool:
    """Whether binding `host` accepts connections from this machine only.

    An address counts when it is in 127.0.0.0/8 or is ::1 (also IPv4-mapped, ::ffff:127.x);
    a name such as `localhost` when everything it resolves to does, since the server binds
    every address of the name. "" (every interface), 0.0.0.0 and :: do not.
    """
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        if not host:
            return False
        try:
            found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise UserError(f"host {host!r} does not resolve to an address: {exc.strerror}") from None
        addresses = [ipaddress.ip_address(info[4][0].partition("%")[0]) for info in found]  # drop a zone id
    return bool(addresses) and all(_loopback_address(a) for a in addresses)


def _loopback_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _local_artifact(storage_uri: str) -> Path:
    """AIP_STORAGE_URI is a gs:// folder; copy it locally once (a plain path is used as is)."""
    if not storage_uri.startswith("gs://"):
        return Path(storage_uri)
    from google.cloud import storage

    bucket_name, _, prefix = storage_uri.removeprefix("gs://").partition("/")
    target = Path(os.environ.get("TMPDIR", "/tmp")) / "fleetops-model"
    client = storage.Client()
    for blob in client.list_blobs(bucket_name, prefix=prefix.rstrip("/") + "/"):
        relative = blob.name[len(prefix.rstrip("/")) + 1 :]
        if relative:
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(str(destination))
    return target
