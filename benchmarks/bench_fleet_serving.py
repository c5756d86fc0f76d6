"""Serving a fleet of thousands: one server, models loaded on demand into a bounded cache, against loading them all.

A fleet of `--segments` churn models (the sample data, trained packed, linear, a few epochs: their quality
is not what is measured) is registered and each deployed on its own endpoint of a local twin. Both sides
are `fleetops serve` with the same workers, the same traffic and the same warm-up:

    ours:      models load on their first request, at most --cache-models per worker (LRU), through
               the runtime each artifact records (LiteRT for the sample spec)
    baseline:  the server as it was: every model loaded at start (--prewarm all, no cache limit) and
               served by Keras (FLEETOPS_SERVING_RUNTIME=keras)

wrk (C, so the client does not eat the servers' CPU) drives each at 32 connections with single-instance
requests whose endpoint is a Zipf draw (exponent --zipf) over the endpoints, from a table of draws in its
Lua script. Reported per side: start-up (until every worker says it is ready), throughput, latency (wrk's,
over all requests), warm p99 (requests whose model was loaded; from the servers' /metrics histograms,
all requests minus those that waited for a load), cold-load p99 (the load-time histogram over the
measured run: sha256 check, load and warm-up predictions) and cold-request p99 (requests that waited for
a load, queueing behind other loads included), models loaded, evictions, and the peak resident
memory of the server's process tree (psutil, every 0.2 s, from start to stop).

    python benchmarks/bench_fleet_serving.py [--segments 1000] [--seconds 30] [--cache-models 200]

`--baseline-env KEY=VALUE` (repeatable) replaces the baseline's environment variables (by default
FLEETOPS_SERVING_RUNTIME=keras; `--baseline-env FLEETOPS_SERVING_RUNTIME=litert` compares the cache
against every model loaded with the same runtime). Ends with:

BENCH fleet_serving: <ours> req/s, <mem> MB vs <baseline> req/s, <mem> MB = <throughput ratio>x
(memory <ratio>x; targets ...)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_serving import INSTANCE, ensure_wrk, measured_wrk, parse_wrk  # noqa: E402
from benchmarks.requirements import require  # noqa: E402
from fleetops_cli.child_server import free_port, start_child, wait_until_answering  # noqa: E402

DRAWS = 100_000  # Zipf draws in the Lua table; wrk's threads pick from it at random
TARGETS = {"throughput": 0.7, "memory": 0.2, "startup": 20.0, "warm_p99_ms": 20.0, "cold_p99_ms": 50.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=1000, help="fleet members, each with its own endpoint")
    parser.add_argument("--seconds", type=int, default=30, help="the measured run, per side")
    parser.add_argument(
        "--warmup",
        type=int,
        default=10,
        help="seconds of the same traffic before measuring, repeated until the cache is full",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--cache-models", type=int, default=200, help="our cache's limit per worker")
    parser.add_argument("--zipf", type=float, default=1.1, help="the exponent s: P(rank k) ~ 1/k^s")
    parser.add_argument("--rows", type=int, default=300, help="rows per segment to train on")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--baseline-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--sides", default="ours,baseline", help="comma-separated subset to run")
    args = parser.parse_args()
    require("bench_fleet_serving", {"psutil": "the servers' peak memory is summed over their processes"})
    wrk = ensure_wrk()
    baseline_env = dict(item.split("=", 1) for item in args.baseline_env) or {"FLEETOPS_SERVING_RUNTIME": "keras"}
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-serving-"))
    try:
        started = time.perf_counter()
        home, endpoints = prepare(work, args.segments, args.rows, args.epochs)
        print(f"{len(endpoints)} models trained, registered and deployed in {time.perf_counter() - started:.0f} s")
        script = zipf_script(work, endpoints, args.zipf)
        common = ["--workers", str(args.workers)]
        sides = {
            "ours": (common + ["--cache-models", str(args.cache_models)], {}),
            "baseline": (common + ["--prewarm", "all"], baseline_env),
        }
        results = {}
        for name in args.sides.split(","):
            flags, env = sides[name]
            results[name] = measure(name, wrk, home, flags, env, script, work, args)
            report(name, results[name])
        if set(results) == {"ours", "baseline"}:
            print(bench_line(results["ours"], results["baseline"]))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def prepare(work: Path, segments: int, rows: int, epochs: int) -> tuple[Path, list[str]]:
    """Train a fleet packed, register every model in one batch, and deploy each on its own endpoint."""
    from fleetops import training_steps
    from fleetops.data.sample import SAMPLE_SPEC, write_sample
    from fleetops.names import model_id
    from fleetops.platform import connect, local_uri
    from fleetops.platform.registry import UploadRequest
    from fleetops.spec import parse_spec
    from fleetops.training.segments import train_shard

    data = write_sample(work / "churn.parquet", rows_per_segment=rows, segments=segments, seed=13)
    base = parse_spec(SAMPLE_SPEC.format(source=data)).model_dump(mode="json")
    spec = parse_spec(base | {"architectures": ["linear"], "training": base["training"] | {"epochs": epochs}})
    platform = connect(local_uri(work / "home"))
    training_steps.ingest(spec, platform, work / "raw.parquet")
    training_steps.split_dataset(spec, work / "raw.parquet", work / "dataset.parquet")
    names = _segments(work / "dataset.parquet")
    trained = train_shard(work / "dataset.parquet", spec, names, work / "models", log=lambda *_: None).results
    ids = [model_id(spec.name, r.segment) for r in trained]
    platform.registry.upload_versions([UploadRequest(i, r.artifact_dir) for i, r in zip(ids, trained, strict=True)])
    for i in ids:
        platform.endpoints.create(i)
        platform.endpoints.deploy(i, i, "1")
    return platform.home, ids


def _segments(dataset: Path) -> list[str]:
    import pandas as pd

    from fleetops.training.segments import SEGMENT_COLUMN

    return sorted(pd.read_parquet(dataset, columns=[SEGMENT_COLUMN])[SEGMENT_COLUMN].unique())


def zipf_script(work: Path, endpoints: list[str], s: float) -> Path:
    """A wrk script posting one instance to an endpoint drawn by Zipf rank (ranks shuffled over the endpoints)."""
    import numpy as np

    rng = np.random.default_rng(0)
    order = rng.permutation(len(endpoints))  # which endpoint is the most requested is arbitrary
    weights = 1.0 / np.arange(1, len(endpoints) + 1) ** s
    draws = order[rng.choice(len(endpoints), size=DRAWS, p=weights / weights.sum())] + 1  # Lua counts from 1
    paths = ",".join(f'"/v1/projects/local/locations/local/endpoints/{e}:predict"' for e in endpoints)
    body = json.dumps({"instances": [INSTANCE]})
    script = work / "zipf.lua"
    script.write_text(
        f"local paths = {{{paths}}}\n"
        f"local draws = {{{','.join(map(str, draws))}}}\n"
        f"local body = [[{body}]]\n"
        "local headers = {['Content-Type'] = 'application/json'}\n"
        "local threads = 0\n"
        "function setup(thread) threads = threads + 1; thread:set('id', threads) end\n"
        "function init(args) math.randomseed(1000 * (tonumber(id) or 0) + os.time()) end\n"
        "function request()\n"
        "  return wrk.format('POST', paths[draws[math.random(#draws)]], headers, body)\n"
        "end\n"
    )
    return script


class PeakMemory:
    """The peak of the summed resident memory of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.2):
        import psutil

        self._process = psutil.Process(pid)
        self._every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                for process in [self._process, *self._process.children(recursive=True)]:
                    try:
                        total += process.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            self.peak = max(self.peak, total)
            self._stop.wait(self._every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def measure(name: str, wrk: str, home: Path, flags: list[str], env: dict, script: Path, work: Path, args) -> dict:
    port = free_port()
    log = work / f"server-{name}.log"
    command = [sys.executable, "-m", "fleetops_cli.cli", "serve", "--home", str(home), "--port", str(port), *flags]
    started = time.perf_counter()
    server = start_child(command, log, cwd=ROOT, env={**os.environ, **env})
    memory = PeakMemory(server.pid)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_answering(f"{base}/health", server, seconds=600, log=log)
        startup = wait_for_workers(log, server, args.workers, started)
        print(f"{name}: every worker ready {startup:.1f} s after start", flush=True)
        url = f"{base}/health"  # wrk needs a URL; the script's requests carry their own paths
        warmed = warm_up(wrk, script, url, base, args)
        print(f"{name}: warmed up for {warmed:.0f} s", flush=True)
        before = scrape_workers(base, args.workers)
        out = measured_wrk(wrk, script, url, args)
        after = scrape_workers(base, args.workers)
    finally:
        server.terminate()
        server.wait(timeout=60)
        peak = memory.stop()
    result = parse_wrk(out) | {"startup": startup, "peak_mb": peak / 1e6}
    result |= server_side(before, after)
    return result


def warm_up(wrk: str, script: Path, url: str, base: str, args, most: float = 600) -> float:
    """The same traffic, in runs of --warmup seconds, until every worker's cache is full; the seconds it took.

    Full: as many models loaded as the cache keeps, or every model. Until then a run would measure
    the cache filling, not serving (the baseline has loaded all its models before it answers).
    """
    started = time.monotonic()
    while True:
        subprocess.run(
            [wrk, "-t2", f"-c{args.connections}", f"-d{args.warmup}s", "-s", str(script), url],
            capture_output=True,
            check=True,
        )
        scrapes = scrape_workers(base, args.workers)
        full = len(scrapes) >= args.workers and all(
            _total({pid: samples}, "fleetops_serve_models_loaded")
            >= min(_total({pid: samples}, "fleetops_serve_cache_models_limit"), args.segments)
            for pid, samples in scrapes.items()
        )
        if full or time.monotonic() - started > most:
            return time.monotonic() - started


def wait_for_workers(log: Path, server: subprocess.Popen, workers: int, started: float, seconds: float = 3600) -> float:
    """Seconds from `started` until every worker has logged that it is ready (its prewarm done)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if len(re.findall(r"fleetops serve: worker \d+ ready:", log.read_text(errors="replace"))) >= workers:
            return time.perf_counter() - started
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}; see {log}")
        time.sleep(0.1)
    raise RuntimeError(f"the server's workers were not ready within {seconds:.0f} s; see {log}")


def scrape_workers(base: str, workers: int, attempts: int = 400) -> dict[str, dict]:
    """Each worker's /metrics (a scrape reaches one worker: scraped on new connections until all are seen)."""
    from prometheus_client.parser import text_string_to_metric_families

    seen: dict[str, dict] = {}
    for _ in range(attempts):
        with urllib.request.urlopen(f"{base}/metrics", timeout=60) as response:
            text = response.read().decode()
        samples: dict[tuple[str, tuple], float] = {}
        pid = ""
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "fleetops_serve_worker":
                    pid = sample.labels["pid"]
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        seen[pid] = samples
        if len(seen) >= workers:
            break
    if len(seen) < workers:
        print(f"  (only {len(seen)} of {workers} workers answered /metrics: their figures are missing)")
    return seen


def _total(scrapes: dict[str, dict], name: str) -> float:
    return sum(v for samples in scrapes.values() for (n, _), v in samples.items() if n == name)


def _buckets(scrapes: dict[str, dict], name: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts summed over workers and label sets: upper bound -> count."""
    counts: dict[float, float] = {}
    for samples in scrapes.values():
        for (n, labels), v in samples.items():
            if n == f"{name}_bucket":
                bound = float(dict(labels)["le"])
                counts[bound] = counts.get(bound, 0.0) + v
    return counts


def _delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """As Prometheus' histogram_quantile: linear within the bucket that holds the q-th observation."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(buckets[bound] - below, 1e-12)
        lower, below = bound, buckets[bound]
    return lower


def server_side(before: dict[str, dict], after: dict[str, dict]) -> dict:
    """Warm and cold latency, loads and evictions over the measured run, from the workers' /metrics."""
    every = _delta(
        _buckets(after, "fleetops_serve_request_seconds"), _buckets(before, "fleetops_serve_request_seconds")
    )
    cold = _delta(
        _buckets(after, "fleetops_serve_cold_request_seconds"), _buckets(before, "fleetops_serve_cold_request_seconds")
    )
    warm = {bound: count - cold.get(bound, 0.0) for bound, count in every.items()}
    # The loads during the measured run: each worker's first load at start imports the runtime (seconds).
    loads = _delta(
        _buckets(after, "fleetops_serve_model_load_seconds"), _buckets(before, "fleetops_serve_model_load_seconds")
    )
    load_seconds = _total(after, "fleetops_serve_model_load_seconds_sum") - _total(
        before, "fleetops_serve_model_load_seconds_sum"
    )
    total = warm.get(float("inf"), 0.0)
    within = min(1.0, warm.get(TARGETS["warm_p99_ms"] / 1000, 0.0) / total) if total else None

    def ms(value: float | None) -> float | None:
        return None if value is None else value * 1000

    return {
        "warm_p99": ms(quantile(warm, 0.99)),
        "warm_within_target": within,
        "cold_requests": cold.get(float("inf"), 0.0),
        "requests": every.get(float("inf"), 0.0),
        "cold_request_p99": ms(quantile(cold, 0.99)),
        "load_p99": ms(quantile(loads, 0.99)),
        "loads": loads.get(float("inf"), 0.0),
        "load_mean": ms(load_seconds / loads[float("inf")]) if loads.get(float("inf")) else None,
        "models_loaded": _total(after, "fleetops_serve_models_loaded"),
        "evictions": _total(after, "fleetops_serve_cache_evictions_total"),
        "workers_scraped": len(after),
    }


def _fmt(value: float | None, unit: str = " ms") -> str:
    return "n/a" if value is None else f"{value:.1f}{unit}"


def report(name: str, r: dict) -> None:
    within = "n/a" if r["warm_within_target"] is None else f"{100 * r['warm_within_target']:.2f}%"
    misses = f"{100 * r['cold_requests'] / r['requests']:.1f}%" if r["requests"] else "n/a"
    print(
        f"{name:<9} {r['rps']:8.0f} req/s  wrk p50 {r['p50']:6.1f} ms  p99 {r['p99']:6.1f} ms  errors {r['errors']}\n"
        f"          warm p99 {_fmt(r['warm_p99'])} ({within} within {TARGETS['warm_p99_ms']:.0f} ms)  "
        f"cold requests {r['cold_requests']:.0f} = {misses} (p99 {_fmt(r['cold_request_p99'])})  "
        f"model loads {r['loads']:.0f} (mean {_fmt(r['load_mean'])}, p99 {_fmt(r['load_p99'])})\n"
        f"          models loaded {r['models_loaded']:.0f}  evictions {r['evictions']:.0f}  "
        f"start-up {r['startup']:.1f} s  peak memory {r['peak_mb']:.0f} MB  "
        f"(workers scraped: {r['workers_scraped']})",
        flush=True,
    )


def bench_line(ours: dict, baseline: dict) -> str:
    ratio = ours["rps"] / baseline["rps"]
    memory = ours["peak_mb"] / baseline["peak_mb"]
    startup = baseline["startup"] / ours["startup"]
    return (
        f"BENCH fleet_serving: {ours['rps']:.0f} req/s, {ours['peak_mb']:.0f} MB vs {baseline['rps']:.0f} req/s, "
        f"{baseline['peak_mb']:.0f} MB = {ratio:.2f}x (memory {memory:.2f}x; targets: throughput >= "
        f"{TARGETS['throughput']}x, memory <= {TARGETS['memory']}x, start-up >= {TARGETS['startup']:.0f}x faster "
        f"[{startup:.1f}x: {ours['startup']:.1f} s vs {baseline['startup']:.1f} s], warm p99 <= "
        f"{TARGETS['warm_p99_ms']:.0f} ms [{_fmt(ours['warm_p99'])}], cold-load p99 <= {TARGETS['cold_p99_ms']:.0f} ms "
        f"[{_fmt(ours['load_p99'])}], 0 errors [{ours['errors']} and {baseline['errors']}])"
    )


if __name__ == "__main__":
    sys.exit(main())
