"""The prediction server's metrics, in Prometheus' text format at GET /metrics.

Each app has its own `CollectorRegistry` (not prometheus_client's global one), so a
process can build several apps (the tests do) without their series mixing.

Per endpoint and deployed model (labels `endpoint_id`, `deployed_model_id`; only for
endpoints and models the server knows, so callers cannot create series by naming
endpoints that do not exist; a model's series go when it is undeployed):

    fleetops_serve_requests_total           requests that reached the deployed model
    fleetops_serve_errors_total{code}       those answered with a 4xx or 5xx (e.g. 400 bad input, 503 not loadable)
    fleetops_serve_request_seconds          histogram: from the request's start to its response
    fleetops_serve_cold_request_seconds     histogram, all models: the requests among those that waited for a
                                            load (warm latency = the per-model buckets summed, minus these)

The model cache (see `fleetops.serving.model_cache`):

    fleetops_serve_model_load_seconds       histogram: one model's load, its sha256 check and warm-up included
    fleetops_serve_model_load_failures_total
    fleetops_serve_cache_hits_total         requests whose model was loaded
    fleetops_serve_cache_misses_total       requests that waited for a load (their own or one in progress)
    fleetops_serve_cache_evictions_total
    fleetops_serve_models_loaded            gauge
    fleetops_serve_models_failed            gauge: models whose load failed (retried when the endpoints change)
    fleetops_serve_cache_memory_bytes       gauge: the loaded models' measured memory
    fleetops_serve_cache_memory_limit_bytes, fleetops_serve_cache_models_limit   (+Inf without a limit)

And the process: `process_resident_memory_bytes` and the other `process_*` series of
prometheus_client's process collector, `fleetops_serve_resident_memory_peak_bytes`,
`fleetops_serve_unrouted_responses_total{code}` for responses that reached no
model (health, readiness, metrics, unknown endpoints, missing tokens), and
`fleetops_serve_worker{pid}` (1), which worker answered the scrape.

With uvicorn `--workers N`, each worker process keeps its own metrics and a scrape is
answered by whichever worker accepts the connection: a scrape shows one worker, which
`fleetops_serve_worker{pid}` names. This
was chosen over prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR):
that mode needs the directory wiped before every start and each dead worker marked
(uvicorn restarts workers without telling the app), the per-process gauges (resident
memory, models loaded) become one series per pid anyway, and every increment on the
request path becomes a write to an mmapped file. Scrape a server with one worker for
exact totals, or sum per-worker scrapes of one worker per port.
"""

from __future__ import annotations

import math
import os
import resource
import sys
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder

# No `*_created` series (the time each series began): with a series per deployed model they would double the
# exposition, for a value Prometheus does not use with the text format. A process-wide prometheus_client setting.
disable_created_metrics()

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_MODEL = ("endpoint_id", "deployed_model_id")


class ModelMetrics:
    """One deployed model's children of the per-model series (looked up once, not per request)."""

    __slots__ = ("_errors", "codes", "labels", "latency", "requests")

    def __init__(self, metrics: ServingMetrics, endpoint_id: str, deployed_model_id: str):
        self.labels = (endpoint_id, deployed_model_id)
        self.requests = metrics.requests.labels(*self.labels)
        self.latency = metrics.latency.labels(*self.labels)
        self._errors = metrics.errors
        self.codes: set[str] = set()

    def record(self, status: int, seconds: float) -> None:
        """One request's outcome; `seconds` from its start to its response."""
        self.requests.inc()
        self.latency.observe(seconds)
        if status >= 400:
            code = str(status)
            self.codes.add(code)
            self._errors.labels(*self.labels, code).inc()


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "fleetops_serve_requests", "Requests that reached a deployed model.", _MODEL, registry=registry
        )
        self.errors = Counter(
            "fleetops_serve_errors",
            "Requests to a deployed model answered with an error, by HTTP status.",
            (*_MODEL, "code"),
            registry=registry,
        )
        self.latency = Histogram(
            "fleetops_serve_request_seconds",
            "Time from a request's start to its response, per deployed model.",
            _MODEL,
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.cold_latency = Histogram(
            "fleetops_serve_cold_request_seconds",
            "Time from the start to the response of requests that waited for their model to load.",
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.unrouted = Counter(
            "fleetops_serve_unrouted_responses",
            "Responses to requests that reached no deployed model (health, ready, metrics, unknown routes).",
            ("code",),
            registry=registry,
        )
        self.load_seconds = Histogram(
            "fleetops_serve_model_load_seconds",
            "Time to load one model: its sha256 check, the load and a warm-up prediction.",
            buckets=LOAD_BUCKETS,
            registry=registry,
        )
        self.load_failures = Counter(
            "fleetops_serve_model_load_failures", "Model loads that failed.", registry=registry
        )
        self.cache_hits = Counter(
            "fleetops_serve_cache_hits", "Requests whose model was already loaded.", registry=registry
        )
        self.cache_misses = Counter(
            "fleetops_serve_cache_misses", "Requests that waited for their model to load.", registry=registry
        )
        self.cache_evictions = Counter(
            "fleetops_serve_cache_evictions", "Models evicted from the cache.", registry=registry
        )
        self.models_loaded = Gauge("fleetops_serve_models_loaded", "Models loaded now.", registry=registry)
        self.models_failed = Gauge(
            "fleetops_serve_models_failed",
            "Models whose load failed (retried when the endpoints change).",
            registry=registry,
        )
        self.cache_bytes = Gauge(
            "fleetops_serve_cache_memory_bytes", "Measured memory of the loaded models.", registry=registry
        )
        self.cache_limit_bytes = Gauge(
            "fleetops_serve_cache_memory_limit_bytes", "The cache's memory limit (+Inf: none).", registry=registry
        )
        self.cache_limit_models = Gauge(
            "fleetops_serve_cache_models_limit", "The cache's limit on models (+Inf: none).", registry=registry
        )
        peak = Gauge(
            "fleetops_serve_resident_memory_peak_bytes",
            "The peak resident memory of this server process.",
            registry=registry,
        )
        peak.set_function(_peak_resident_bytes)
        Gauge("fleetops_serve_worker", "The server process that answered.", ("pid",), registry=registry).labels(
            str(os.getpid())
        ).set(1)
        ProcessCollector(registry=registry)
        self._models: dict[tuple[str, str], ModelMetrics] = {}

    def model(self, endpoint_id: str, deployed_model_id: str) -> ModelMetrics:
        found = self._models.get((endpoint_id, deployed_model_id))
        if found is None:
            found = self._models[(endpoint_id, deployed_model_id)] = ModelMetrics(self, endpoint_id, deployed_model_id)
        return found

    def retain(self, deployed: set[tuple[str, str]]) -> None:
        """Drop the series of deployed models not in `deployed` (endpoint_id, deployed_model_id)."""
        for labels in [k for k in self._models if k not in deployed]:
            gone = self._models.pop(labels)
            self.requests.remove(*labels)
            self.latency.remove(*labels)
            for code in gone.codes:
                self.errors.remove(*labels, code)

    def watch_cache(self, cache: Any) -> None:
        """Gauges read from `cache` (a `ModelCache`) when scraped."""
        self.models_loaded.set_function(lambda: len(cache))
        self.models_failed.set_function(lambda: len(cache.failed))
        self.cache_bytes.set_function(lambda: cache.bytes)
        self.cache_limit_bytes.set(math.inf if cache.max_bytes is None else cache.max_bytes)
        self.cache_limit_models.set(math.inf if cache.max_models is None else cache.max_models)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition for an `Accept` header (text format 0.0.4 by default, or OpenMetrics) and its type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def _peak_resident_bytes() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak if sys.platform == "darwin" else peak * 1024)
