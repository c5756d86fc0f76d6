"""The prediction server: the local twin's endpoints, and the Vertex custom serving container.

One ASGI app, two sources of models:

- `TwinModels(home)`: every endpoint of the local twin, routed by its traffic
  split. It polls the endpoints' revision and picks up deploys, undeploys and
  split changes without a restart.
- `ContainerModels(storage_uri)`: the Vertex custom-container contract, one
  model from `AIP_STORAGE_URI` at `AIP_PREDICT_ROUTE` on `AIP_HTTP_PORT`.

Routes: `POST /v1/projects/{p}/locations/{l}/endpoints/{e}:predict` and
`:explain` (the Vertex REST paths: the official PredictionServiceClient works
against them; the twin answers only for its own project and location, so a
client aimed at the wrong resource learns it), the health route, and
`GET /ready` (503 until every deployed model is loaded). Requests for one
deployed model are micro-batched: while the model scores a batch, new requests
queue and go together into the next one. Errors come back in Google's JSON
error shape with a 4xx for the caller's mistakes; the server keeps serving.
A WebSocket handshake gets a 403 (uvicorn hands it to the app; left unanswered
it became a 500).

Connections are timed: uvicorn closes a keep-alive connection idle between
requests, and `HeaderDeadlineProtocol` (uvicorn has no such timeout) closes one
whose request headers are not complete in time, so slow or silent clients
cannot hold connections open.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
import random
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fleetops.errors import UserError
from fleetops.serving.predictor import Predictor

DEFAULT_MAX_BODY_BYTES = 1_572_864  # Vertex's online prediction payload limit (1.5 MB)
MAX_BATCH_ROWS = 1024
# Explanations computed at once, per worker: each holds a chunk's integration path and gradient tape
# (see explain.py); more share the same cores and multiply the memory (measured: README).
DEFAULT_CONCURRENT_EXPLAINS = 1
DEFAULT_HEADER_TIMEOUT_SECONDS = 10.0  # from connecting (or a request's first byte) to the end of its headers
DEFAULT_KEEP_ALIVE_SECONDS = 5.0  # uvicorn's default: an idle keep-alive connection is closed after this
_ROUTE = re.compile(r"^/v1/projects/([^/]+)/locations/([^/]+)/endpoints/([^/:]+):(predict|explain)$")
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "INVALID_ARGUMENT",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


class HttpError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None):
        super().__init__(message)
        self.code = code
        self.status = status or _STATUS.get(code, "UNKNOWN")


@dataclass
class Served:
    """A deployed model as the server holds it: its registry identity and its predictor (or why it has none)."""

    deployed_model_id: str
    model_id: str
    version_id: str
    model_resource_name: str
    display_name: str
    predictor: Predictor | None = None
    error: str | None = None
    batcher: Batcher | None = None


@dataclass
class Route:
    endpoint_id: str
    models: dict[str, Served]
    ids: list[str] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)
    logging_rate: float = 0.0


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
    """The local twin's endpoints and their models, reloaded when the endpoints change."""

    def __init__(self, home: str | Path):
        from fleetops.platform import connect, local_uri
        from fleetops.platform.local.registry import LOCATION, PROJECT

        self.home = Path(home)
        self.resource_prefix = f"projects/{PROJECT}/locations/{LOCATION}"
        self.platform = connect(local_uri(self.home))
        self.routes: dict[str, Route] = {}
        self._revision: int | None = None
        self._predictors: dict[tuple[str, str], Served] = {}

    def refresh(self) -> bool:
        """Reload routes if the endpoints changed; returns whether anything changed."""
        revision = self.platform.endpoints.revision()
        if revision == self._revision:
            return False
        routes = {}
        for endpoint in self.platform.endpoints.list():
            models = {m.deployed_model_id: self._served(m) for m in endpoint.deployed_models}
            live = [(i, p) for i, p in endpoint.traffic_split.items() if p > 0]
            routes[endpoint.endpoint_id] = Route(
                endpoint.endpoint_id, models, [i for i, _ in live], [p for _, p in live], endpoint.request_logging_rate
            )
        self.routes = routes
        self._revision = revision
        return True

    def route(self, endpoint_id: str) -> Served:
        route = self.routes.get(endpoint_id)
        if route is None:
            raise HttpError(404, f"endpoint {endpoint_id!r} does not exist; endpoints: {sorted(self.routes)[:20]}")
        if not route.ids:
            raise HttpError(
                400,
                f"endpoint {endpoint_id!r} has no deployed model with traffic; deploy a model first",
                "FAILED_PRECONDITION",
            )
        chosen = route.ids[0] if len(route.ids) == 1 else random.choices(route.ids, route.weights)[0]
        return route.models[chosen]

    def logging_rate(self, endpoint_id: str) -> float:
        route = self.routes.get(endpoint_id)
        return route.logging_rate if route else 0.0

    def problems(self) -> list[str]:
        return [
            f"{r.endpoint_id}/{s.deployed_model_id} ({s.model_id}@{s.version_id}): {s.error}"
            for r in self.routes.values()
            for s in r.models.values()
            if s.error
        ]

    def _served(self, deployed: Any) -> Served:
        key = (deployed.model_id, deployed.version_id)
        cached = self._predictors.get(key)
        if cached is None:
            cached = Served(
                deployed.deployed_model_id,
                deployed.model_id,
                deployed.version_id,
                deployed.model_resource_name,
                deployed.display_name,
            )
            try:
                version = self.platform.registry.get_version(deployed.model_id, deployed.version_id)
                cached.predictor = Predictor.load(
                    self.platform.registry.artifact_path(version), version.artifact_sha256
                )
                cached.batcher = Batcher(cached.predictor)
            except Exception as exc:
                cached.error = str(exc)
                print(f"fleetops serve: refusing {deployed.model_id}@{deployed.version_id}: {exc}", file=sys.stderr)
            self._predictors[key] = cached
        return Served(
            deployed.deployed_model_id,
            cached.model_id,
            cached.version_id,
            cached.model_resource_name,
            deployed.display_name,
            cached.predictor,
            cached.error,
            cached.batcher,
        )


class ContainerModels:
    """Vertex custom serving container: one model from AIP_STORAGE_URI, answering on AIP_PREDICT_ROUTE."""

    resource_prefix = None  # Vertex routes to the container by its own endpoint; any path prefix is this model

    def __init__(self, storage_uri: str):
        path = _local_artifact(storage_uri)
        predictor = Predictor.load(path)
        self.served = Served(
            os.environ.get("AIP_DEPLOYED_MODEL_ID", "0"),
            predictor.artifact.metadata.get("fleet", "model"),
            os.environ.get("AIP_MODEL_VERSION_ID", ""),
            os.environ.get("AIP_MODEL_NAME", ""),
            os.environ.get("AIP_DEPLOYED_MODEL_ID", "model"),
            predictor,
            None,
            Batcher(predictor),
        )

    def refresh(self) -> bool:
        return False

    def route(self, endpoint_id: str) -> Served:
        return self.served

    def logging_rate(self, endpoint_id: str) -> float:
        return 0.0  # on Vertex, the endpoint's request-response logging does this

    def problems(self) -> list[str]:
        return []


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
        try:
            status, payload = await self._handle(scope, receive)
        except HttpError as exc:
            status, payload = exc.code, {"error": {"code": exc.code, "message": str(exc), "status": exc.status}}
        except UserError as exc:
            status, payload = 400, {"error": {"code": 400, "message": str(exc), "status": "INVALID_ARGUMENT"}}
        except Exception as exc:  # the server stays up; the caller learns what failed
            status = 500
            payload = {"error": {"code": 500, "message": f"{type(exc).__name__}: {exc}", "status": "INTERNAL"}}
        body = orjson.dumps(payload)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: dict[str, Any], receive: Any) -> tuple[int, Any]:
        path, method = scope["path"], scope["method"]
        if path == self.health_route:
            return 200, {"status": "ok"}
        if path == "/ready":
            problems = self.models.problems()
            return (503, {"ready": False, "problems": problems}) if problems else (200, {"ready": True})
        if self._token_bytes is not None:
            scheme, _, credentials = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
            # compare_digest: the time taken does not tell how much of a guessed token was right.
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials, self._token_bytes):
                raise HttpError(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')")
        if self.predict_route is not None and path == self.predict_route:
            endpoint_id, verb = "", "predict"
        elif match := _ROUTE.match(path):
            project, location, endpoint_id, verb = match.groups()
            served_prefix = self.models.resource_prefix
            if served_prefix is not None and f"projects/{project}/locations/{location}" != served_prefix:
                raise HttpError(
                    404,
                    f"projects/{project}/locations/{location} is not served here: this local twin's endpoints are "
                    f"under {served_prefix} (POST /v1/{served_prefix}/endpoints/E:predict)",
                )
        else:
            raise HttpError(404, f"no route {method} {path}; use POST /v1/projects/P/locations/L/endpoints/E:predict")
        if method != "POST":
            raise HttpError(405, f"{path} takes POST, not {method}")
        request = await self._json_body(receive, scope)
        instances = request.get("instances")
        served = self.models.route(endpoint_id)
        if served.predictor is None:
            raise HttpError(
                503,
                f"deployed model {served.deployed_model_id} ({served.model_id}@{served.version_id}) "
                f"is not being served: {served.error}",
            )
        columns = served.predictor.columns(instances)
        n = len(instances)
        outputs = await served.batcher.predict(columns, n)
        served.predictor.check_finite(outputs, columns)
        if verb == "explain":
            from fleetops.serving.explain import integrated_gradients

            loop = asyncio.get_running_loop()
            async with self._explain_slots:  # the others wait here, holding only their parsed instances
                explanations = await loop.run_in_executor(None, integrated_gradients, served.predictor, columns)
            payload = self._response(served, served.predictor.format_predictions(outputs))
            payload["explanations"] = explanations
            return 200, payload
        predictions = served.predictor.format_predictions(outputs)
        rate = self.models.logging_rate(endpoint_id)
        if self.request_log is not None and rate > 0 and (rate >= 1.0 or random.random() < rate):
            self.request_log.log(endpoint_id, served, instances, predictions)
        return 200, self._response(served, predictions)

    def _response(self, served: Served, predictions: list[Any]) -> dict[str, Any]:
        return {
            "predictions": predictions,
            "deployedModelId": served.deployed_model_id,
            "model": served.model_resource_name,
            "modelDisplayName": served.display_name,
            "modelVersionId": served.version_id,
        }

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
                await asyncio.get_running_loop().run_in_executor(None, self.models.refresh)
                self._reloader = asyncio.get_running_loop().create_task(self._reload_forever())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._reloader:
                    self._reloader.cancel()
                if self.request_log is not None:
                    self.request_log.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _reload_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.reload_seconds)
            try:
                await loop.run_in_executor(None, self.models.refresh)
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
            message = f"the request's headers did not arrive within {self.header_timeout:g} s"
            body = orjson.dumps({"error": {"code": 408, "message": message, "status": "DEADLINE_EXCEEDED"}})
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                + b"content-length: %d\r\n\r\n" % len(body)
                + body
            )
        self.transport.close()


def create_app() -> PredictionApp:
    """The app as uvicorn workers build it, from FLEETOPS_SERVE_* (or Vertex's AIP_*) environment variables."""
    import tensorflow as tf

    # Requests are small: one TF thread per worker avoids oversubscribing the cores the workers share.
    tf.config.threading.set_intra_op_parallelism_threads(int(os.environ.get("FLEETOPS_SERVE_TF_THREADS", "1")))
    tf.config.threading.set_inter_op_parallelism_threads(int(os.environ.get("FLEETOPS_SERVE_TF_THREADS", "1")))
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
    return PredictionApp(
        TwinModels(home),
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
) -> None:
    """Run the local twin's server in the foreground (uvicorn with uvloop and httptools).

    `token` None leaves FLEETOPS_SERVE_TOKEN as it is: a token there still applies.
    Where to bind is the caller's decision (see `is_loopback`; the CLI asks for flags).
    """
    if home is not None:
        os.environ["FLEETOPS_SERVE_HOME"] = str(Path(home).resolve())
    os.environ["FLEETOPS_SERVE_MAX_BODY_BYTES"] = str(max_body_bytes)
    if token is not None:
        os.environ["FLEETOPS_SERVE_TOKEN"] = check_token(token, "the token")
    run_uvicorn(host, port, workers, header_timeout, keep_alive_timeout)


def run_uvicorn(
    host: str,
    port: int,
    workers: int = 1,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_SECONDS,
    keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_SECONDS,
) -> None:
    """uvicorn running `create_app` (configured by the environment): the twin's server and the container alike."""
    import uvicorn

    for name, seconds in (("header_timeout", header_timeout), ("keep_alive_timeout", keep_alive_timeout)):
        if not seconds > 0:
            raise UserError(f"{name} must be a positive number of seconds, got {seconds!r}")
    os.environ["FLEETOPS_SERVE_HEADER_TIMEOUT_SECONDS"] = str(header_timeout)  # for the workers' protocols
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
