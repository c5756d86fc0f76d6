"""`fleetops demo`: the whole loop on the local twin, on generated churn data.

month 1: train a model per region (linear, dnn, boosted trees and their ensemble compete on
         validation); each champion takes its own endpoint.
month 2: fresh data; new champions join as 10% canaries; traffic through the
         official Vertex client; promote; batch-score the month.
month 3: customers change in two regions; their traffic is logged; the
         continuous-training pipeline finds those regions (and not the others),
         retrains them, canaries and promotes the new champions.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from fleetops.data.sample import SAMPLE_SPEC, write_sample
from fleetops.names import OUTPUT_REPORT, OUTPUT_SCORECARD, OUTPUT_SUMMARY, TASK_MONITOR, TASK_SUMMARIZE, model_id
from fleetops.platform import connect, local_uri
from fleetops.spec import load_spec
from fleetops_cli.child_server import free_port, start_child, wait_until_answering

DRIFTED_REGIONS = ("north", "east")


def demo_spec() -> str:
    """The sample spec with every architecture competing per region: linear, dnn, boosted trees, their ensemble."""
    text = SAMPLE_SPEC.format(source="churn.csv")
    every = text.replace("architectures: [linear, dnn]", "architectures: [linear, dnn, gbt, ensemble]")
    if every == text:
        raise RuntimeError("the sample spec no longer lists 'architectures: [linear, dnn]'; update demo_spec")
    return every


def run_demo(home: Path, segments: int, rows: int, run_training: Any, listing: Any) -> int:
    """`run_training(spec, template_name)` runs a pipeline locally and prints its summary; returns (ok, run)."""
    sample = home / "sample"
    spec_path = sample / "fleet.yaml"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(demo_spec())
    print(f"fleetops demo: a churn model per region, local twin at {home}\n", flush=True)
    for step, (label, seed) in enumerate([("month 1", 7), ("month 2, fresh data", 8)], start=1):
        data = write_sample(sample / "churn.csv", rows_per_segment=rows, segments=segments, seed=seed)
        print(f"[{step}/4] {label}: {data}", flush=True)
        ok, run = run_training(load_spec(spec_path), "fleet_training", label)
        if not ok:
            return 1
    spec = load_spec(spec_path)
    platform = connect(local_uri(home))
    print(listing(home))
    print("[3/4] serving: month 2's champions are canaries next to month 1's models", flush=True)
    with running_server(home) as client:
        send_traffic(client, spec, pd.read_csv(data).sample(n=200, random_state=0), show=5)
        from fleetops.batch import fleet_batch_predict
        from fleetops.deployment import promote_fleet

        print(f"\npromoted {len(promote_fleet(platform, spec.name))} canaries: each endpoint serves its new champion")
        batch = fleet_batch_predict(spec, platform, str(data), home / "batch" / "month-2")
        print(
            f"batch prediction of {batch.rows} rows: {batch.predicted} scored, {batch.errors} errors, "
            f"{batch.seconds:.1f}s -> {batch.predictions_path}\n"
        )

        month3 = drifted_month(sample / "churn.csv", rows, segments)
        print(f"[4/4] month 3: customers change in {', '.join(DRIFTED_REGIONS)}; their traffic is logged", flush=True)
        send_traffic(client, spec, month3.groupby("region").head(120), show=0)
    ok, run = run_training(spec, "continuous_training", "continuous training")
    if not ok:
        return 1
    report = sorted((home / "pipeline_root").glob(f"fleetops-continuous-training-*/{TASK_MONITOR}/{OUTPUT_REPORT}"))[-1]
    summary = report.parent / OUTPUT_SUMMARY
    print(summary.read_text() if summary.exists() else "")
    print(listing(home))
    from fleetops.monitoring.alerts import ALERTS_FILE
    from fleetops.serving.request_log import LOG_FILE

    print(f"fleet spec:        {spec_path}\nregistry:          {home / 'registry.sqlite'}")
    print(f"request log:       {home / LOG_FILE} (table prediction_log)")
    print(f"alerts:            {home / ALERTS_FILE} (table alerts)\nrun log:           {run.log_path}")
    print(f"monitoring report: {report}")
    for step in (TASK_MONITOR, TASK_SUMMARIZE):  # the monitoring run's page, and its retraining's (`fleetops report`)
        page = report.parent.parent / step / OUTPUT_SCORECARD
        if page.exists():
            print(f"fleet scorecard:   {page} (HTML, {step})")
    return 0


def drifted_month(path: Path, rows: int, segments: int) -> pd.DataFrame:
    """Fresh data in which DRIFTED_REGIONS changed: older accounts on premium plans, and a competitor's
    offer that now pulls away long-standing customers (tenure raises churn instead of lowering it)."""
    import numpy as np

    write_sample(path, rows_per_segment=rows, segments=segments, seed=9)
    frame = pd.read_csv(path)
    changed = frame["region"].isin(DRIFTED_REGIONS).to_numpy()
    frame.loc[changed, "tenure_months"] = frame.loc[changed, "tenure_months"] + 48
    frame.loc[changed, "plan"] = "premium"
    tenure = frame.loc[changed, "tenure_months"].to_numpy()
    logit = -2.0 + 0.06 * (tenure - 60)
    rng = np.random.default_rng(9)
    frame.loc[changed, "churned"] = (rng.random(changed.sum()) < 1 / (1 + np.exp(-logit))).astype(int)
    frame.to_csv(path, index=False)
    return frame


@contextmanager
def running_server(home: Path) -> Iterator[Any]:
    """`fleetops serve` for the twin in a child process, and an official Vertex client pointed at it."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.aiplatform_v1 import PredictionServiceClient
    from google.cloud.aiplatform_v1.services.prediction_service.transports.rest import PredictionServiceRestTransport

    port = free_port()
    log = home / "serve.log"
    server = start_child(
        [sys.executable, "-m", "fleetops_cli.cli", "serve", "--home", str(home), "--port", str(port)],
        log,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/health", server, log=log)
        yield PredictionServiceClient(
            transport=PredictionServiceRestTransport(
                host=f"127.0.0.1:{port}", credentials=AnonymousCredentials(), url_scheme="http"
            )
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


def send_traffic(client: Any, spec: Any, rows: pd.DataFrame, show: int) -> None:
    served: Counter[tuple[str, str]] = Counter()
    shown = []
    started = time.perf_counter()
    for _, row in rows.iterrows():
        instance = {
            f: (None if pd.isna(row[f]) else row[f].item() if hasattr(row[f], "item") else row[f])
            for f in spec.features.all
        }
        endpoint = model_id(spec.name, row[spec.data.segment_column])
        response = client.predict(endpoint=f"projects/local/locations/local/endpoints/{endpoint}", instances=[instance])
        served[(endpoint, response.model_version_id)] += 1
        if len(shown) < show:
            probability = dict(response.predictions[0])["scores"][1]
            shown.append(
                f"  {row['customer_id']} {endpoint:<14} v{response.model_version_id} "
                f"churn probability {probability:.3f} (actual {row['churned']})"
            )
    print(f"sent {len(rows)} predictions through the official Vertex client in {time.perf_counter() - started:.1f}s")
    if shown:
        print("a few:\n" + "\n".join(shown))
    print("answered by endpoint and version: " + ", ".join(f"{e} v{v}: {n}" for (e, v), n in sorted(served.items())))
