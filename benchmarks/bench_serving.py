"""Online prediction throughput and latency: fleetops serve against FastAPI + uvicorn baselines.

Every server serves the same Keras churn model with the same number of worker
processes; wrk (a C load generator, so the client does not eat the servers'
Python CPU) drives each at 32 connections for a fixed duration with
single-instance requests, then 100-instance requests, ours and the baselines
taking turns at each size so a change in the machine's load falls on both.

The competent baseline is given what ours has that a competent engineer would
also set (see benchmarks/serving_baselines.py): the same TensorFlow thread pools
(one intra-op and one inter-op thread a worker), orjson both ways, uvloop and
httptools, a prediction as the model loads; both get the same client, bodies and
warm-up. What stays ours alone is the server's design: micro-batching, padding
to a few traced shapes, the frozen garbage collector.

    python benchmarks/bench_serving.py [--seconds 15] [--workers 2]

Ends with one line carrying both sizes:
BENCH serving: 1 instance <ours> vs <competent> = <ratio>x; 100 instances <ours> vs <competent> = <ratio>x
(target >= 1.5x throughput at both, p99 <= 20 ms at 1, p99 no worse than the baseline's at 100, 0 errors)
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
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.requirements import require  # noqa: E402
from fleetops_cli.child_server import free_port, start_child, wait_until_answering  # noqa: E402

PATH = "/v1/projects/local/locations/local/endpoints/churn-north:predict"
INSTANCE = {
    "tenure_months": 3,
    "monthly_charges": 99.5,
    "support_calls": 4,
    "data_usage_gb": None,
    "plan": "premium",
    "contract": "monthly",
    "payment_method": "voucher",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--runtime", default="keras", choices=["keras", "litert"], help="what fleetops serves with")
    parser.add_argument("--servers", default="fleetops,competent,naive", help="comma-separated subset to run")
    args = parser.parse_args()
    require("bench_serving", {"fastapi": "the baseline servers are FastAPI apps"})
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    try:
        model_dir, home = prepare(work)
        # The baselines serve the Keras model, so ours does too (`--runtime litert` for the light runtime,
        # which the baselines do not have): the comparison is of the servers, on equal footing.
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "FLEETOPS_SERVING_RUNTIME": args.runtime}
        servers = {
            "fleetops": lambda port: [
                sys.executable,
                "-m",
                "fleetops_cli.cli",
                "serve",
                "--home",
                str(home),
                "--port",
                str(port),
                "--workers",
                str(args.workers),
            ],
            "competent": lambda port: baseline_command(port, args.workers),
            "naive": lambda port: baseline_command(port, args.workers),
        }
        results = {}
        wanted = args.servers.split(",")
        print(f"load average before the runs: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
        for size in (1, 100):
            for name, command in servers.items():
                if name not in wanted or (name == "naive" and size == 100):
                    continue
                server_env = env | {"BASELINE_MODEL_DIR": str(model_dir), "BASELINE_MODE": name}
                results[(name, size)] = r = measure(wrk, command, server_env, work, size, args)
                print(
                    f"{name:<10} {size:>3} instance(s)/request: {r['rps']:8.0f} req/s  p50 {r['p50']:6.1f} ms  "
                    f"p99 {r['p99']:6.1f} ms  errors {r['errors']}  (1-min load after: {r['load']:.2f})",
                    flush=True,
                )
        if not {(name, size) for name in ("fleetops", "competent") for size in (1, 100)} <= results.keys():
            return 0
        print(
            f"\nrows/s with 100-instance requests: fleetops {results[('fleetops', 100)]['rps'] * 100:,.0f}, "
            f"competent {results[('competent', 100)]['rps'] * 100:,.0f}"
        )
        print(bench_line(results))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_line(results: dict) -> str:
    """The BENCH line: both sizes, ours against the competent baseline, and whether each target is met."""
    parts, missed = [], []
    for size in (1, 100):
        ours, base = results[("fleetops", size)], results[("competent", size)]
        ratio = ours["rps"] / base["rps"]
        label = "1 instance" if size == 1 else f"{size} instances"
        parts.append(
            f"{label} {ours['rps']:,.0f} req/s p99 {ours['p99']:.1f} ms vs {base['rps']:,.0f} req/s "
            f"p99 {base['p99']:.1f} ms = {ratio:.2f}x"
        )
        if ratio < 1.5:
            missed.append(f"throughput at {size} {ratio:.2f}x")
        if size == 1 and ours["p99"] > 20:
            missed.append(f"p99 at 1 {ours['p99']:.1f} ms")
        if size > 1 and ours["p99"] > base["p99"]:
            missed.append(f"p99 at {size} {ours['p99']:.1f} > {base['p99']:.1f} ms")
    errors = sum(results[(name, size)]["errors"] for name in ("fleetops", "competent") for size in (1, 100))
    if errors:
        missed.append(f"{errors} errors")
    verdict = "met" if not missed else "missed: " + ", ".join(missed)
    return (
        f"BENCH serving: {'; '.join(parts)} (target >= 1.5x throughput at both, p99 <= 20 ms at 1, "
        f"p99 no worse than baseline at 100, 0 errors: {verdict})"
    )


def baseline_command(port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "benchmarks.serving_baselines:create_app",
        "--factory",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",  # what ours runs on (fleetops.serving.server.run_uvicorn)
        "--http",
        "httptools",
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def prepare(work: Path) -> tuple[Path, Path]:
    """Train the sample churn model for one region and deploy it on a fresh local twin."""
    from fleetops import training_steps
    from fleetops.data.sample import SAMPLE_SPEC, write_sample
    from fleetops.platform import connect, local_uri
    from fleetops.spec import parse_spec
    from fleetops.training.segments import train_shard

    data = write_sample(work / "churn.csv", rows_per_segment=2000, segments=1)
    spec = parse_spec(SAMPLE_SPEC.format(source=data))
    platform = connect(local_uri(work / "home"))
    data_path = work / "raw.parquet"
    training_steps.ingest(spec, platform, data_path)
    training_steps.split_dataset(spec, data_path, work / "dataset.parquet")
    trained = train_shard(work / "dataset.parquet", spec, ["north"], work / "models", log=lambda *_: None)
    model_dir = trained.results[0].artifact_dir
    platform.registry.upload_version("churn-north", model_dir, aliases=["champion"])
    platform.endpoints.create("churn-north")
    platform.endpoints.deploy("churn-north", "churn-north", "champion")
    return model_dir, platform.home


def measure(wrk: str, command, env: dict, work: Path, size: int, args) -> dict:
    port = free_port()
    log = work / f"server-{port}.log"
    server = start_child(command(port), log, cwd=ROOT, env=env)
    try:
        url = f"http://127.0.0.1:{port}{PATH}"
        body = json.dumps({"instances": [INSTANCE] * size})
        # A predict request, not the health route: the model must be loaded before the clock starts.
        request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
        wait_until_answering(request, server, seconds=120, timeout=5, log=log)
        script = work / f"post{size}.lua"
        script.write_text(
            f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[{body}]]\n'
        )
        # A short warm-up, then the measured run.
        subprocess.run([wrk, "-t1", "-c8", "-d2s", "-s", str(script), url], capture_output=True, check=True)
        out = measured_wrk(wrk, script, url, args)
        return parse_wrk(out) | {"load": os.getloadavg()[0]}
    finally:
        server.terminate()
        server.wait(timeout=30)


def measured_wrk(wrk: str, script: Path, url: str, args: argparse.Namespace) -> str:
    """wrk's output for the measured run: 2 threads, `--connections`, `--seconds`, latency percentiles."""
    return subprocess.run(
        [wrk, "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def parse_wrk(out: str) -> dict:
    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(match.group(1))
    if match := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(map(int, match.groups()))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"rps": rps, "p50": ms("50%"), "p99": ms("99%"), "errors": errors}


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk (Debian package) ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or "wrk"


if __name__ == "__main__":
    sys.exit(main())
