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
from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

# No `*_created` series (the time each series began): with a series per deployed model they would double the
# exposition, for a value Prometheus does not use with the text format. A process-wide prometheus_client setting.
disable_created_metrics()

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_MODEL = ("endpoint_id", "deployed_model_id")


class RequestHistogram:
    """Request latencies in REQUEST_BUCKETS: plain counts, for the event loop alone to update (no locks)."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(REQUEST_BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(REQUEST_BUCKETS, seconds)] += 1  # the first bound >= seconds: le is inclusive
        self.sum += seconds

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs as Prometheus wants them, +Inf last."""
        bounds = [*map(str, REQUEST_BUCKETS), "+Inf"]
        return list(zip(bounds, accumulate(self.counts[:]), strict=True))


class ModelMetrics:
    """One deployed model's requests, errors by status and latency.

    Updated on the event loop for every request, so plain numbers: prometheus_client's
    counters and histograms take a lock per update (a histogram two, and a Python loop over
    its buckets), a few us on a request that costs ~85 us in all at 23,000 requests/s.
    `ServingMetrics` hands them to the registry when it is scraped.
    """

    __slots__ = ("errors", "labels", "latency", "requests")

    def __init__(self, endpoint_id: str, deployed_model_id: str):
        self.labels = (endpoint_id, deployed_model_id)
        self.requests = 0
        self.errors: dict[int, int] = {}
        self.latency = RequestHistogram()

    def record(self, status: int, seconds: float) -> None:
        """One request's outcome; `seconds` from its start to its response."""
        self.requests += 1
        self.latency.observe(seconds)
        if status >= 400:
            self.errors[status] = self.errors.get(status, 0) + 1


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        # The request path's metrics: plain numbers (see `ModelMetrics`), exposed by `_RequestPath`.
        self.cold_latency = RequestHistogram()
        self.cache_hits = 0
        self.cache_misses = 0
        self.unrouted: dict[int, int] = {}
        registry.register(_RequestPath(self))
        self.load_seconds = Histogram(
            "fleetops_serve_model_load_seconds",
            "Time to load one model: its sha256 check, the load and a warm-up prediction.",
            buckets=LOAD_BUCKETS,
            registry=registry,
        )
        self.load_failures = Counter(
            "fleetops_serve_model_load_failures", "Model loads that failed.", registry=registry
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
            found = self._models[(endpoint_id, deployed_model_id)] = ModelMetrics(endpoint_id, deployed_model_id)
        return found

    def unrouted_response(self, status: int) -> None:
        self.unrouted[status] = self.unrouted.get(status, 0) + 1

    def retain(self, deployed: set[tuple[str, str]]) -> None:
        """Drop the series of deployed models not in `deployed` (endpoint_id, deployed_model_id)."""
        for labels in [k for k in self._models if k not in deployed]:
            del self._models[labels]

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


class _RequestPath(Collector):
    """The request path's plain numbers as Prometheus series, read when scraped (in another thread).

    Reads race with the event loop's updates: a scrape may see a request in one series and not
    yet in another, never a count going down. A histogram's count is its +Inf bucket, so each
    histogram is consistent in itself.
    """

    def __init__(self, metrics: ServingMetrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        requests = CounterMetricFamily(
            "fleetops_serve_requests", "Requests that reached a deployed model.", labels=_MODEL
        )
        errors = CounterMetricFamily(
            "fleetops_serve_errors",
            "Requests to a deployed model answered with an error, by HTTP status.",
            labels=(*_MODEL, "code"),
        )
        latency = HistogramMetricFamily(
            "fleetops_serve_request_seconds",
            "Time from a request's start to its response, per deployed model.",
            labels=_MODEL,
        )
        for model in list(m._models.values()):
            requests.add_metric(model.labels, model.requests)
            for code, count in list(model.errors.items()):
                errors.add_metric((*model.labels, str(code)), count)
            latency.add_metric(model.labels, model.latency.buckets(), model.latency.sum)
        cold = HistogramMetricFamily(
            "fleetops_serve_cold_request_seconds",
            "Time from the start to the response of requests that waited for their model to load.",
        )
        cold.add_metric((), m.cold_latency.buckets(), m.cold_latency.sum)
        unrouted = CounterMetricFamily(
            "fleetops_serve_unrouted_responses",
            "Responses to requests that reached no deployed model (health, ready, metrics, unknown routes).",
            labels=("code",),
        )
        for code, count in list(m.unrouted.items()):
            unrouted.add_metric((str(code),), count)
        yield requests
        yield errors
        yield latency
        yield cold
        yield unrouted
        yield CounterMetricFamily(
            "fleetops_serve_cache_hits", "Requests whose model was already loaded.", value=m.cache_hits
        )
        yield CounterMetricFamily(
            "fleetops_serve_cache_misses", "Requests that waited for their model to load.", value=m.cache_misses
        )


def _peak_resident_bytes() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak if sys.platform == "darwin" else peak * 1024)
