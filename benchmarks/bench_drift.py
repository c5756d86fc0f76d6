"""Drift detection on 1,000,000 rows x 15 features: fleetops against Evidently 0.7.23 (DataDriftPreset, jensenshannon).

Both compare the same current table with the same baseline of the same size
(10 numeric, 5 categorical features; 4 of them shifted), each in its own
process so peak memory (max RSS) is measured per side. Evidently runs in its
own virtual environment (it needs pandas < 3), created here on first use.
Our values are checked against the independent reference implementation.

    python benchmarks/bench_drift.py [--rows 1000000]

Ends with: BENCH drift: <ours s> vs <evidently s> = <speed-up>x (target >= 25x)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVIDENTLY_VENV = ROOT / "benchmarks" / ".venv-evidently"
NUMERIC = [f"n{i}" for i in range(10)]
CATEGORICAL = [f"c{i}" for i in range(5)]

EVIDENTLY_WORKER = """
import json, resource, sys, time
import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset
reference = pd.read_parquet(sys.argv[1]); current = pd.read_parquet(sys.argv[2])
started = time.perf_counter()
result = Report([DataDriftPreset(method="jensenshannon")]).run(current_data=current, reference_data=reference)
seconds = time.perf_counter() - started
values = {}
for metric in result.dict()["metrics"]:
    config = metric.get("config", {})
    if "column" in config and isinstance(metric.get("value"), (int, float)):
        values[config["column"]] = metric["value"]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "values": values, "max_rss_mb": peak}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    reference, current = make_tables(args.rows, work)
    ours = json.loads(
        run([sys.executable, __file__, "--rows", str(args.rows)], extra=["ours", str(reference), str(current)])
    )
    print(f"fleetops:  {ours['seconds']:.2f} s, peak memory {ours['max_rss_mb']:.0f} MB", flush=True)
    python = ensure_evidently()
    theirs = json.loads(run([str(python), "-c", EVIDENTLY_WORKER, str(reference), str(current)]))
    print(f"evidently: {theirs['seconds']:.2f} s, peak memory {theirs['max_rss_mb']:.0f} MB", flush=True)
    check_against_reference(reference, current, ours["values"], theirs["values"])
    ratio = theirs["seconds"] / ours["seconds"]
    print(f"BENCH drift: {ours['seconds']:.2f} s vs {theirs['seconds']:.2f} s = {ratio:.1f}x (target >= 25x)")
    return 0


def ours_worker(reference: str, current: str) -> None:
    import pandas as pd

    sys.path.insert(0, str(ROOT))
    from fleetops.monitoring.compare import compare, distributions

    base_frame, current_frame = pd.read_parquet(reference), pd.read_parquet(current)
    started = time.perf_counter()
    baseline = distributions(base_frame, NUMERIC, CATEGORICAL)
    window = distributions(current_frame, NUMERIC, CATEGORICAL)
    results = compare(baseline, window, NUMERIC + CATEGORICAL)
    seconds = time.perf_counter() - started
    values = {r.feature: r.distance for r in results}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "values": values, "max_rss_mb": peak}))


def make_tables(rows: int, work: Path) -> tuple[Path, Path]:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    tables = []
    for shifted in (False, True):
        columns = {}
        for i, name in enumerate(NUMERIC):
            shift = 0.7 if shifted and i < 2 else 0.0
            scale = 1.3 if shifted and i < 2 else 1.0
            values = rng.normal(shift, scale, rows)
            values[rng.random(rows) < 0.02] = np.nan
            columns[name] = values
        for i, name in enumerate(CATEGORICAL):
            p = [0.5, 0.3, 0.15, 0.05] if not (shifted and i < 2) else [0.2, 0.3, 0.3, 0.2]
            columns[name] = rng.choice(["alpha", "beta", "gamma", "delta"], rows, p=p)
        tables.append(pd.DataFrame(columns))
    paths = (work / "reference.parquet", work / "current.parquet")
    for table, path in zip(tables, paths, strict=True):
        table.to_parquet(path, index=False)
    return paths


def check_against_reference(reference: Path, current: Path, ours: dict, theirs: dict) -> None:
    """Our values equal the independent reference on a sample of the features; Evidently's are shown beside them."""
    import numpy as np
    import pandas as pd

    sys.path.insert(0, str(ROOT))
    from benchmarks.drift_reference import reference_jsd, reference_linf

    base, cur = pd.read_parquet(reference), pd.read_parquet(current)
    sample = base.sample(n=min(len(base), 20_000), random_state=1), cur.sample(n=min(len(cur), 20_000), random_state=1)
    from fleetops.monitoring.compare import compare, distributions

    check = {
        r.feature: r.distance
        for r in compare(
            distributions(sample[0], NUMERIC, CATEGORICAL),
            distributions(sample[1], NUMERIC, CATEGORICAL),
            NUMERIC + CATEGORICAL,
        )
    }
    for name in ["n0", "n5", "c0", "c4"]:
        if name in NUMERIC:
            expected = reference_jsd(sample[0][name].to_numpy(), sample[1][name].to_numpy())
        else:
            expected = reference_linf(sample[0][name].tolist(), sample[1][name].tolist())
        assert np.isclose(check[name], expected, atol=1e-9), f"{name}: {check[name]} != reference {expected}"
    print("feature  fleetops (Vertex: JSD or L-inf)  evidently (its JS distance, sqrt, own bins)")
    for name in NUMERIC + CATEGORICAL:
        print(f"  {name:<5} {ours[name]:9.4f} {theirs.get(name, float('nan')):10.4f}")


def ensure_evidently() -> Path:
    python = EVIDENTLY_VENV / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import evidently"], capture_output=True) if python.exists() else None
    if probe is None or probe.returncode != 0:
        print("installing evidently==0.7.23 into benchmarks/.venv-evidently (its own environment) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(EVIDENTLY_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "evidently==0.7.23", "pandas<3"], check=True)
    return python


def run(command: list[str], extra: list[str] | None = None) -> str:
    done = subprocess.run(
        [*command, *(["--worker", *extra] if extra else [])], capture_output=True, text=True, cwd=ROOT
    )
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


if __name__ == "__main__":
    if "--worker" in sys.argv:
        position = sys.argv.index("--worker")
        ours_worker(*sys.argv[position + 2 : position + 4])
        sys.exit(0)
    sys.exit(main())
