"""Tuning wall time: 8 trials with parallel_trial_count=2 against the same 8 trials one after another.

The random sampler with one seed gives both runs the same 8 parameter sets;
each trial is the trainer's entry point in its own process. Also reports the
tuned model's validation metric against the spec's default parameters.

    python benchmarks/bench_tuning.py [--trials 8]

Ends with: BENCH tuning: <parallel s> vs <sequential s> = <ratio>x (target <= 0.65x; tuned >= default)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()

    import yaml

    from fleetops import fleet
    from fleetops.data.sample import SAMPLE_SPEC, write_sample
    from fleetops.platform import connect, local_uri
    from fleetops.spec import parse_spec
    from fleetops.tuning.local import tune_segment

    work = Path(tempfile.mkdtemp(prefix="bench-tuning-"))
    try:
        data = write_sample(work / "churn.csv", rows_per_segment=1500, segments=1, seed=3)
        base = yaml.safe_load(SAMPLE_SPEC.format(source=data))
        base["tuning"] = {
            "enabled": True,
            "algorithm": "random",
            "max_trial_count": args.trials,
            "parameters": {
                "learning_rate": {"type": "double", "min": 0.001, "max": 0.1, "scale": "log"},
                "hidden_units": {"type": "categorical", "values": ["16,8", "32,16", "8"]},
                "dropout": {"type": "double", "min": 0.0, "max": 0.4},
                "batch_size": {"type": "discrete", "values": [32, 64, 128]},
            },
        }
        results, seconds = {}, {}
        for parallel in (2, 1):
            spec = parse_spec(base | {"tuning": base["tuning"] | {"parallel_trial_count": parallel}})
            if parallel == 2:
                fleet.ingest(spec, connect(local_uri(work / "home")), work / "raw.parquet")
                fleet.split_dataset(spec, work / "raw.parquet", work / "dataset.parquet")
            (work / f"spec{parallel}.json").write_text(spec.to_json())
            started = time.perf_counter()
            results[parallel] = tune_segment(
                spec,
                work / f"spec{parallel}.json",
                work / "dataset.parquet",
                "north",
                work / f"study{parallel}",
                log=lambda line: print("  " + line, flush=True),
            )
            seconds[parallel] = time.perf_counter() - started
            print(f"parallel_trial_count={parallel}: {args.trials} trials in {seconds[parallel]:.1f} s", flush=True)
        same = [t.parameters for t in results[1].trials] == [t.parameters for t in results[2].trials]
        default = _default_metric(work, base)
        tuned = results[2].best_value
        print(f"same {args.trials} parameter sets in both runs: {same}")
        print(f"validation auRoc: tuned {tuned:.4f} ({results[2].best_parameters}) vs default parameters {default:.4f}")
        ratio = seconds[2] / seconds[1]
        print(
            f"BENCH tuning: {seconds[2]:.1f} s vs {seconds[1]:.1f} s = {ratio:.2f}x (target <= 0.65x; "
            f"tuned {tuned:.4f} >= default {default:.4f}: {tuned >= default})"
        )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _default_metric(work: Path, base: dict) -> float:
    """The spec's own training settings, through the same trainer entry point."""
    command = [
        sys.executable,
        "-m",
        "fleetops.training.trainer",
        "--spec",
        str(work / "spec1.json"),
        "--data",
        str(work / "dataset.parquet"),
        "--segment",
        "north",
        "--output-dir",
        str(work / "default"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])["validation_metrics"]["auRoc"]


if __name__ == "__main__":
    sys.exit(main())
