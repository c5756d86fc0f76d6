"""Registering a 1,000-model fleet under Vertex's write quota: paced (fleetops) against naive unpaced calls.

The loopback Vertex stand-in (tests/fake_vertex.py) enforces Vertex's "Resource management (CRUD)
requests" quota of 600 a minute, scaled down to 600 writes per `--window` seconds (fixed windows,
429 RESOURCE_EXHAUSTED above it). Both sides register every model from 32 threads through the
real google-cloud-aiplatform SDK:

- fleetops: `registry.upload_version` with `writes_per_minute` set to the quota's rate; every call
  goes through `VertexCalls` (token-bucket pacing, full-jitter back-off, idempotent retries);
- naive: `aiplatform.Model.upload` wrapped in google-api-core's default `Retry()` (1 s doubling to
  60 s, full jitter, 120 s, on 429/500/503): the SDK sets no retry of its own on `UploadModel`.

Reported per side: requests sent, 429s received, wall time, versions registered, duplicates
(an identity registered twice) and failures. The quota's lower bound is the time its rate needs
for the fleet's writes (1,000 x window / 600); a fixed window would also let the first 600
through at once, which pacing does not use: it sends at the rate.

    PYTHONPATH=$PWD python benchmarks/bench_vertex_pacing.py [--models 1000] [--window 20]

Ends with: BENCH vertex_pacing: <ours 429s> vs <naive 429s> = <ratio>x fewer (target >= 5x; wall, duplicates, failures)
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUOTA_WRITES = 600  # Vertex's resource management quota per minute and region, here per window
THREADS = 32
IMAGE = "us-docker.pkg.dev/p/fleetops/serving:1"


@dataclass
class Run:
    requests: int
    throttled: int
    seconds: float
    registered: int
    duplicates: int
    failures: int

    def line(self, name: str) -> str:
        return (
            f"{name:>8}: {self.requests:,} requests, {self.throttled:,} answered 429, {self.seconds:.1f} s, "
            f"{self.registered:,} versions registered, {self.duplicates} duplicates, {self.failures} failures"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--window", type=float, default=20.0, help="seconds the stand-in's 600 writes stand for")
    args = parser.parse_args()
    quiet_sdk()

    artifact = Path(tempfile.mkdtemp(prefix="bench-vertex-pacing-"))
    (artifact / "model.bin").write_bytes(b"a model")
    identities = [hashlib.sha256(f"model-{i}".encode()).hexdigest() for i in range(args.models)]
    lower_bound = args.models * args.window / QUOTA_WRITES
    print(f"{args.models} models, quota {QUOTA_WRITES} writes per {args.window:g} s: lower bound {lower_bound:.1f} s")

    ours = run(args, lambda fake: register_paced(fake, artifact, identities, args.window))
    print(ours.line("fleetops"), flush=True)
    naive = run(args, lambda fake: register_naive(fake, identities))
    print(naive.line("naive"), flush=True)

    ratio = naive.throttled / max(ours.throttled, 1)
    wall = ours.seconds / lower_bound
    met = ratio >= 5 and wall <= 1.2 and ours.duplicates == ours.failures == 0 and ours.registered == args.models
    print(
        f"BENCH vertex_pacing: {ours.throttled:,} 429s vs {naive.throttled:,} 429s = {ratio:.1f}x fewer "
        f"(target >= 5x; wall {ours.seconds:.1f} s = {wall:.2f}x the quota's {lower_bound:.1f} s lower bound, "
        f"target <= 1.2x, naive {naive.seconds:.1f} s; {ours.duplicates} duplicates, {ours.failures} failures, "
        f"{ours.registered:,}/{args.models:,} registered; naive {naive.duplicates} duplicates, "
        f"{naive.failures} failures)"
    )
    return 0 if met else 1


def quiet_sdk() -> None:
    """The SDK logs each upload at INFO, each module on its own logger set to INFO: raise them to WARNING."""
    from google.cloud.aiplatform import models  # noqa: F401 - its loggers are made on import

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("google.cloud.aiplatform"):
            logging.getLogger(name).setLevel(logging.WARNING)


def run(args, register) -> Run:
    """One side against a fresh stand-in enforcing the quota."""
    from tests.fake_vertex import FakeVertex, WriteQuota

    with FakeVertex() as fake:
        fake.write_quota = WriteQuota(limit=QUOTA_WRITES, window_seconds=args.window)
        started = time.perf_counter()
        failures = register(fake)
        seconds = time.perf_counter() - started
        counts = fake.versions_by_identity()
        return Run(
            requests=len(fake.requests),
            throttled=fake.answers[429],
            seconds=seconds,
            registered=len(counts),
            duplicates=sum(n - 1 for n in counts.values()),
            failures=failures,
        )


def register_paced(fake, artifact: Path, identities: list[str], window: float) -> int:
    from google.auth.credentials import AnonymousCredentials

    from fleetops.platform import connect

    per_minute = QUOTA_WRITES * 60 / window
    uri = f"vertex://proj-1/us-central1?api_endpoint={fake.endpoint}&writes_per_minute={per_minute:g}"
    platform = connect(uri, credentials=AnonymousCredentials())

    def register(i: int) -> None:
        platform.registry.upload_version(
            f"m{i}", artifact, artifact_uri=f"gs://b/m{i}", serving_image=IMAGE, identity=identities[i]
        )

    return in_threads(register, len(identities))


def register_naive(fake, identities: list[str]) -> int:
    from google.api_core.retry import Retry
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform

    credentials = AnonymousCredentials()
    where = {"project": "proj-1", "location": "us-central1"}
    aiplatform.init(**where, api_endpoint=fake.endpoint, api_transport="rest", credentials=credentials)
    retry = Retry()  # google-api-core's defaults

    def register(i: int) -> None:
        retry(aiplatform.Model.upload)(
            display_name=f"m{i}",
            model_id=f"m{i}",
            artifact_uri=f"gs://b/m{i}",
            serving_container_image_uri=IMAGE,
            labels={"identity-sha256": identities[i]},
            credentials=credentials,
        )

    return in_threads(register, len(identities))


def in_threads(register, count: int) -> int:
    """Register models 0..count-1 from THREADS threads; the number that failed."""

    shown = []

    def attempt(i: int) -> bool:
        try:
            register(i)
            return True
        except Exception as exc:  # a failure is a result here: counted, and the first few shown
            if len(shown) < 3:
                shown.append(i)
                print(f"  model {i} failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            return False

    with ThreadPoolExecutor(THREADS) as pool:
        return sum(not ok for ok in pool.map(attempt, range(count)))


if __name__ == "__main__":
    sys.exit(main())
