"""Serving a fleet: models load on first request into a bounded cache, and /metrics tells what happened.

The server is a real child process on loopback (tests/conftest.py `ServerProcess`); the
cache's own rules (one load per burst, least recently used out, failures remembered)
are also checked directly with loaders that sleep or fail.
"""

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetops.platform import connect, local_uri
from fleetops.platform.registry import UploadRequest
from fleetops.serving.model_cache import ModelCache, ModelTooLarge, ModelUnavailable, parse_size
from tests.test_serving import GOOD

ROOT = Path(__file__).resolve().parents[1]
FLEET = 6


def path(endpoint_id: str, verb: str = "predict") -> str:
    return f"/v1/projects/local/locations/local/endpoints/{endpoint_id}:{verb}"


def _fleet(home: Path, artifacts: list[Path], size: int = FLEET):
    """Endpoints f0..f{size-1}, each with its own model (the trained artifacts, taken in turn)."""
    platform = connect(local_uri(home))
    platform.registry.upload_versions([UploadRequest(f"f{i}", artifacts[i % len(artifacts)]) for i in range(size)])
    for i in range(size):
        platform.endpoints.create(f"f{i}", request_logging_rate=1.0)
        platform.endpoints.deploy(f"f{i}", f"f{i}", "1")
    return platform


@pytest.fixture
def fleet(tmp_path, trained_models):
    return _fleet(tmp_path / "home", trained_models)


def scrape(server, token: str | None = None) -> dict[tuple[str, frozenset], float]:
    """GET /metrics, parsed: (sample name, its labels) -> value."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{server.base}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def predict(server, endpoint_id: str) -> tuple[int, dict]:
    return server.request("POST", path(endpoint_id), {"instances": [GOOD]})


def wait_ready(server, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        status, payload = server.request("GET", "/ready")
        if status == 200 or time.monotonic() > deadline:
            return payload
        time.sleep(0.1)


def test_models_load_on_first_request_and_the_least_recently_used_go_first(fleet, serve):
    server = serve(fleet.home, "--cache-models", "2")
    status, ready = server.request("GET", "/ready")
    assert status == 200 and ready["models_loaded"] == 1  # the first deployed model, loaded at start
    for i in range(FLEET):
        status, payload = predict(server, f"f{i}")
        assert status == 200 and payload["model"].endswith(f"/models/f{i}")
    metrics = scrape(server)
    assert value(metrics, "fleetops_serve_models_loaded") == 2
    assert value(metrics, "fleetops_serve_model_load_seconds_count") == FLEET  # f0 at start, f1..f5 on request
    assert value(metrics, "fleetops_serve_cache_evictions_total") == FLEET - 2
    assert value(metrics, "fleetops_serve_cache_hits_total") == 1  # f0
    assert value(metrics, "fleetops_serve_cache_misses_total") == FLEET - 1
    assert value(metrics, "fleetops_serve_cold_request_seconds_count") == FLEET - 1
    assert value(metrics, "fleetops_serve_worker", pid=str(server.process.pid)) == 1  # one worker: the CLI's process
    for i in range(FLEET):
        labels = {"endpoint_id": f"f{i}", "deployed_model_id": str(i + 1)}
        assert value(metrics, "fleetops_serve_requests_total", **labels) == 1
        assert value(metrics, "fleetops_serve_request_seconds_count", **labels) == 1
    assert value(metrics, "process_resident_memory_bytes") > 0
    assert value(metrics, "fleetops_serve_cache_memory_bytes") > 0

    # Loaded now: f4, f5. Using f4 makes f5 the least recently used: loading f0 evicts f5, not f4.
    assert predict(server, "f4")[0] == 200
    assert predict(server, "f0")[0] == 200
    assert predict(server, "f4")[0] == 200
    metrics = scrape(server)
    assert value(metrics, "fleetops_serve_model_load_seconds_count") == FLEET + 1  # f0 again, f4 never
    assert value(metrics, "fleetops_serve_cache_hits_total") == 3


def test_a_burst_to_a_model_not_yet_loaded_loads_it_once(fleet, serve):
    server = serve(fleet.home)
    before = scrape(server)
    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(lambda _: predict(server, "f3"), range(24)))
    assert [status for status, _ in results] == [200] * 24
    after = scrape(server)
    loads = "fleetops_serve_model_load_seconds_count"
    assert value(after, loads) - value(before, loads) == 1
    assert value(after, "fleetops_serve_cache_misses_total") + value(after, "fleetops_serve_cache_hits_total") == 24


def test_warm_models_answer_while_another_model_loads(tmp_path, trained_models, serve):
    """A load runs in a thread: requests for loaded models are answered before it is done."""
    slow = tmp_path / "slow"
    shutil.copytree(trained_models[0], slow)
    (slow / "padding.bin").write_bytes(b"\0" * 96_000_000)  # its sha256 check alone takes a while
    platform = _fleet(tmp_path / "home", [trained_models[0], slow], size=2)
    server = serve(platform.home)
    assert predict(server, "f0")[0] == 200  # warm
    done = threading.Event()
    cold: list = []

    def cold_request():
        started = time.perf_counter()
        cold.append((predict(server, "f1")[0], time.perf_counter() - started))
        done.set()

    thread = threading.Thread(target=cold_request)
    thread.start()
    warm = []
    while not done.is_set():
        started = time.perf_counter()
        status, _ = predict(server, "f0")
        if not done.is_set():
            warm.append((status, time.perf_counter() - started))
    thread.join()
    assert cold[0][0] == 200
    assert len(warm) >= 3, f"only {len(warm)} warm answer(s) during a load of {cold[0][1]:.2f} s"
    assert all(status == 200 for status, _ in warm)
    assert max(seconds for _, seconds in warm) < cold[0][1] / 2


def test_models_that_fail_to_load_are_503s_remembered_and_evict_nothing(tmp_path, trained_models, serve):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(trained_models[0], corrupt)
    for model_file in ("model.keras", "model.tflite"):  # whichever runtime serves it
        (corrupt / model_file).write_bytes(b"not a model")  # registered so: its sha256 matches
    platform = _fleet(tmp_path / "home", [trained_models[0], trained_models[1], trained_models[0], corrupt], size=4)
    tampered = platform.registry.artifact_path(platform.registry.get_version("f2", "1"))
    original = (tampered / "metadata.json").read_text()
    (tampered / "metadata.json").write_text(original.replace('"seed": 1', '"seed": 7'))
    platform.registry.upload_version("gone", trained_models[1])
    platform.endpoints.create("gone")
    platform.endpoints.deploy("gone", "gone", "1")
    shutil.rmtree(platform.registry.artifact_path(platform.registry.get_version("gone", "1")))

    server = serve(platform.home, "--cache-models", "2")
    assert predict(server, "f0")[0] == 200 and predict(server, "f1")[0] == 200
    reasons = {
        "f2": "deployed model 3 (f2@1) is not being served: model artifact",  # then: sha256 ... changed
        "f3": "deployed model 4 (f3@1) is not being served: ValueError: ",  # from the runtime, on its file
        "gone": "deployed model 5 (gone@1) is not being served: FileNotFoundError: artifact path",
    }
    for _ in range(3):
        for endpoint_id, reason in reasons.items():
            status, payload = predict(server, endpoint_id)
            assert status == 503, payload
            assert payload["error"]["status"] == "UNAVAILABLE" and reason in payload["error"]["message"]
    assert "changed after registration" in predict(server, "f2")[1]["error"]["message"]
    metrics = scrape(server)
    assert value(metrics, "fleetops_serve_model_load_failures_total") == 3  # once each, not once per request
    assert value(metrics, "fleetops_serve_models_failed") == 3
    assert value(metrics, "fleetops_serve_cache_evictions_total") == 0
    assert value(metrics, "fleetops_serve_models_loaded") == 2
    assert value(metrics, "fleetops_serve_errors_total", endpoint_id="f3", deployed_model_id="4", code="503") == 3
    status, ready = server.request("GET", "/ready")
    assert status == 200 and len(ready["problems"]) == 3
    assert predict(server, "f0")[0] == 200 and predict(server, "f1")[0] == 200

    # Repaired, and the endpoints changed: the failed models are tried again.
    (tampered / "metadata.json").write_text(original)
    platform.endpoints.create("another")
    time.sleep(1.0)  # the server polls every 0.2 s in the tests
    assert predict(server, "f2")[0] == 200
    assert not [p for p in server.request("GET", "/ready")[1]["problems"] if p.startswith("f2/")]


def test_prewarm_loads_the_most_requested_and_named_models_before_ready(fleet, serve):
    from fleetops.serving.request_log import RequestLogWriter

    log = RequestLogWriter(fleet.home)
    for endpoint_id, count in (("f4", 5), ("f2", 3), ("f1", 1)):
        deployed = fleet.endpoints.get(endpoint_id).deployed_models[0]
        log.log(endpoint_id, deployed, [GOOD] * count, [{"value": 0.0}] * count)
    log.close()

    server = serve(fleet.home, "--prewarm", "top:2,f5", "--cache-models", "4")
    ready = wait_ready(server)
    assert ready["ready"] and ready["prewarm"] == {"models": 3, "loaded": 3, "failed": 0, "done": True}
    for endpoint_id in ("f4", "f2", "f5"):
        assert predict(server, endpoint_id)[0] == 200
    metrics = scrape(server)
    assert value(metrics, "fleetops_serve_cache_hits_total") == 3
    assert value(metrics, "fleetops_serve_cache_misses_total") == 0
    assert value(metrics, "fleetops_serve_models_loaded") == 3


def test_prewarm_all_is_the_old_behaviour_and_ready_waits_for_it(fleet, serve):
    server = serve(fleet.home, "--prewarm", "all")
    ready = wait_ready(server)
    assert ready["ready"] and ready["models_loaded"] == FLEET and ready["prewarm"]["loaded"] == FLEET
    assert f"ready: {FLEET} model(s) loaded, 0 failed" in server.output()


def _start_failure(home, *flags, seconds=120) -> tuple[int, str]:
    """Run `fleetops serve` expecting it to stop by itself; its exit code and output."""
    from fleetops_cli.child_server import free_port

    done = subprocess.run(
        [sys.executable, "-m", "fleetops_cli.cli", "serve", "--home", str(home), "--port", str(free_port()), *flags],
        capture_output=True,
        text=True,
        timeout=seconds,
        cwd=ROOT,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_memory_limit_smaller_than_one_model_is_refused_at_start(tmp_path, trained_models, workers):
    big = tmp_path / "big"
    shutil.copytree(trained_models[0], big)
    (big / "padding.bin").write_bytes(b"\0" * 3_000_000)  # 3 MB on disk: the least a model can take
    platform = _fleet(tmp_path / "home", [big], size=1)
    code, output = _start_failure(platform.home, "--cache-memory", "2MB", "--workers", workers)
    assert code == 2, output
    assert (
        "error: --cache-memory 2.0 MB is smaller than one model: f0@1 takes 3.1 MB once loaded; give a larger limit"
        in output
    )


def test_a_prewarm_of_an_unknown_endpoint_is_refused_at_start(fleet):
    code, output = _start_failure(fleet.home, "--prewarm", "f1,nope")
    assert code == 2, output
    assert "error: --prewarm names endpoint 'nope', which does not exist; endpoints: ['f0', 'f1'" in output


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cache-models", "0"], "--cache-models 0: the cache must hold at least 1 model"),
        (["--cache-memory", "10kB"], "a cache memory limit of 10.0 kB is smaller than any model"),
        (["--cache-memory", "lots"], "--cache-memory 'lots' is not a size"),
        (["--cache-memory", "2 parsecs"], "--cache-memory '2 parsecs' is not a size"),
        (["--prewarm", "top:"], "--prewarm 'top:': after 'top:' give a number of models"),
        (["--prewarm", "top:0"], "--prewarm 'top:0'"),
        (["--prewarm", "top:5", "--cache-models", "2"], "--prewarm top:5 is more models than --cache-models 2 keeps"),
    ],
)
def test_cache_options_that_cannot_work_are_refused(tmp_path, capsys, flags, message):
    from fleetops_cli.cli import main

    assert main(["serve", "--home", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err


# What an evicted model leaves behind, per load, at most (model_cache's docstring): Keras models until
# Python's cyclic collector runs (measured: up to ~3.3 MB) and in TensorFlow's kernel cache for good
# (~0.5 MB); LiteRT interpreters are freed whole. A server holding on to evicted models would grow more.
LEFT_PER_LOAD = {"keras": 4_000_000, "litert": 500_000}


@pytest.mark.parametrize("runtime", ["keras", "litert"])
def test_memory_stays_within_the_limit_over_sweeps_of_every_model(tmp_path, trained_models, serve, runtime):
    size = 8
    platform = _fleet(tmp_path / "home", trained_models, size=size)
    env = {"FLEETOPS_SERVING_RUNTIME": runtime}
    probe = serve(platform.home, env=env)  # the first model loads at start: its measured memory
    one_model = value(scrape(probe), "fleetops_serve_cache_memory_bytes")
    probe.stop()
    limit = max(int(3.5 * one_model), 100_000)
    server = serve(platform.home, "--cache-memory", str(limit), env=env)
    resident = []
    for _ in range(3):
        for i in range(size):
            status, payload = predict(server, f"f{i}")
            assert status == 200, payload
            metrics = scrape(server)
            assert 0 < value(metrics, "fleetops_serve_cache_memory_bytes") <= limit
        resident.append(value(metrics, "process_resident_memory_bytes"))
    assert value(metrics, "fleetops_serve_cache_memory_limit_bytes") == limit
    assert 1 <= value(metrics, "fleetops_serve_models_loaded") < size
    assert value(metrics, "fleetops_serve_cache_evictions_total") >= 2 * size
    # Each sweep loads every model again; the process grows by what evicted models leave, not by the models.
    assert resident[2] - resident[0] < 2 * size * LEFT_PER_LOAD[runtime], resident


def test_metrics_per_model_and_behind_the_token(fleet, serve):
    token = "metrics-Token"
    server = serve(fleet.home, "--token", token)
    auth = {"Authorization": f"Bearer {token}"}
    assert server.request("GET", "/metrics")[0] == 401
    assert server.request("POST", path("f1"), {"instances": [GOOD]}, auth)[0] == 200
    assert server.request("POST", path("f1"), {"instances": [{"plan": 3}]}, auth)[0] == 400
    assert server.request("POST", path("nope"), {"instances": [GOOD]}, auth)[0] == 404
    metrics = scrape(server, token)
    f1 = {"endpoint_id": "f1", "deployed_model_id": "2"}
    assert value(metrics, "fleetops_serve_requests_total", **f1) == 2
    assert value(metrics, "fleetops_serve_errors_total", **f1, code="400") == 1
    assert value(metrics, "fleetops_serve_request_seconds_count", **f1) == 2
    assert value(metrics, "fleetops_serve_unrouted_responses_total", code="404") == 1
    assert value(metrics, "fleetops_serve_unrouted_responses_total", code="401") == 1
    assert not [k for k in metrics if ("endpoint_id", "nope") in k[1]]  # unknown names make no series

    # Undeployed, its series go.
    fleet.endpoints.undeploy("f1", "2")
    time.sleep(1.0)
    assert not [k for k in scrape(server, token) if ("endpoint_id", "f1") in k[1]]
    request = urllib.request.Request(
        f"{server.base}/metrics", headers=auth | {"Accept": "application/openmetrics-text"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.read().decode().rstrip().endswith("# EOF")


def test_canary_with_a_cache_of_one_model(fleet, serve):
    """Traffic split between two versions that cannot both stay loaded: every request still answered right."""
    fleet.registry.upload_version("f0", Path(fleet.registry.artifact_path(fleet.registry.get_version("f1", "1"))))
    _, canary = fleet.endpoints.deploy("f0", "f0", "2", traffic_percentage=50)
    server = serve(fleet.home, "--cache-models", "1")
    seen = [predict(server, "f0")[1]["modelVersionId"] for _ in range(60)]
    assert set(seen) == {"1", "2"}
    assert value(scrape(server), "fleetops_serve_models_loaded") == 1


# The cache on its own: loaders that sleep, count and fail.


def _run(coroutine):
    return asyncio.run(coroutine)


def test_cache_loads_a_key_once_for_concurrent_waiters():
    calls = []

    def loader():
        calls.append(1)
        time.sleep(0.05)
        return "model", 1000

    async def main():
        cache = ModelCache(max_models=2)
        entries = await asyncio.gather(*(cache.load("a", loader) for _ in range(50)))
        cache.close()
        return entries

    entries = _run(main())
    assert len(calls) == 1 and {e.value for e in entries} == {"model"} and entries[0].bytes >= 1000


def test_cache_remembers_a_failure_until_retain_and_evicts_nothing_for_it():
    calls = {"a": 0, "bad": 0}

    def loader(key, fail=False):
        def load():
            calls[key] += 1
            if fail:
                raise OSError("disk on fire")
            return key, 1000

        return load

    async def main():
        cache = ModelCache(max_models=1)
        await cache.load("a", loader("a"))
        for _ in range(3):
            with pytest.raises(ModelUnavailable, match="OSError: disk on fire"):
                await cache.load("bad", loader("bad", fail=True))
        assert calls["bad"] == 1 and cache.keys() == ["a"]
        cache.retain({"a", "bad"})
        with pytest.raises(ModelUnavailable):
            await cache.load("bad", loader("bad", fail=True))
        assert calls["bad"] == 2
        cache.close()

    _run(main())


def test_cache_refuses_a_model_larger_than_its_memory_and_keeps_the_rest():
    async def main():
        cache = ModelCache(max_bytes=3_000_000)
        await cache.load("small", lambda: ("small", 1_000_000))
        with pytest.raises(ModelTooLarge, match="more than the cache's whole limit of 3.0 MB"):
            await cache.load("huge", lambda: ("huge", 5_000_000))
        assert cache.keys() == ["small"]
        await cache.load("b", lambda: ("b", 1_500_000))
        await cache.load("c", lambda: ("c", 1_500_000))  # 4 MB with small: small goes
        assert cache.keys() == ["b", "c"] and cache.bytes <= 3_000_000
        cache.close()

    _run(main())


def test_most_requested_ranks_the_recent_rows_of_the_request_log(tmp_path, trained_models):
    from fleetops.serving.request_log import RequestLogWriter, most_requested

    platform = _fleet(tmp_path / "home", trained_models, size=2)
    log = RequestLogWriter(platform.home)
    old = SimpleNamespace(deployed_model_id="99", model_id="f0", version_id="0")
    log.log("f0", old, [GOOD] * 4, [{"value": 0.0}] * 4)
    log.log("f1", platform.endpoints.get("f1").deployed_models[0], [GOOD], [{"value": 0.0}])
    log.close()
    assert [row[:2] for row in most_requested(platform.home)] == [("f0", "99"), ("f1", "2")]
    assert [row[:2] for row in most_requested(platform.home, recent_rows=1)] == [("f1", "2")]


@pytest.mark.parametrize(
    "text, expected",
    [("2GB", 2_000_000_000), ("512MiB", 512 * 2**20), ("1.5 GB", 1_500_000_000), ("1000000", 1_000_000)],
)
def test_sizes(text, expected):
    assert parse_size(text) == expected


def test_ready_lists_a_prewarmed_model_that_failed_and_is_not_ready(tmp_path, trained_models, serve):
    platform = _fleet(tmp_path / "home", trained_models, size=3)
    shutil.rmtree(platform.registry.artifact_path(platform.registry.get_version("f2", "1")))
    server = serve(platform.home, "--prewarm", "f1,f2")
    wait_ready(server, seconds=5)
    status, ready = server.request("GET", "/ready")
    assert status == 503 and ready["prewarm"]["failed"] == 1
    assert ready["problems"][0].startswith("f2/3 (f2@1): FileNotFoundError")
    assert json.dumps(ready)  # a plain JSON document
