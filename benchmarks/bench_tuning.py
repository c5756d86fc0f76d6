"""Tuning wall time: 8 trials with parallel_trial_count=2 against the same 8 trials one after another.

The random sampler with one seed gives both runs the same 8 parameter sets;
each trial is the trainer's entry point in its own process. Also reports
whether tuning paid: the study picks its best trial on the validation split
(and tries the spec's own parameters first, so on validation it cannot lose),
so the tuned and the default models are compared on the test split, which no
trial's choice saw. Both are trained as the train step trains them, through the
trainer's entry point, the tuned one with the study's best parameters.

    python benchmarks/bench_tuning.py [--trials 8]

Ends with: BENCH tuning: <parallel s> vs <sequential s> = <ratio>x (target <= 0.65x; tuned test auRoc >= default's)
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

    from fleetops import training_steps
    from fleetops.data.sample import SAMPLE_SPEC, write_sample
    from fleetops.platform import connect, local_uri
    from fleetops.spec import parse_spec
    from fleetops.tuning.local import trainer_flags, tune_segment

    work = Path(tempfile.mkdtemp(prefix="bench-tuning-"))
    print(f"load average before the runs: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
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
                training_steps.ingest(spec, connect(local_uri(work / "home")), work / "raw.parquet")
                training_steps.split_dataset(spec, work / "raw.parquet", work / "dataset.parquet")
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
        print(f"same {args.trials} parameter sets in both runs: {same}")
        best = results[2].best_parameters
        tuned = _trained_metric(work, "tuned", trainer_flags(best))
        default = _trained_metric(work, "default", [])
        metric = tuned["metric"]
        for split in ("validation", "test"):
            print(f"{split} {metric}: tuned {tuned[split]:.4f} vs default parameters {default[split]:.4f}")
        print(f"best parameters (chosen on validation, best trial's {metric} {results[2].best_value:.4f}): {best}")
        ratio, paid = seconds[2] / seconds[1], tuned["test"] >= default["test"]
        print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        print(
            f"BENCH tuning: {seconds[2]:.1f} s vs {seconds[1]:.1f} s = {ratio:.2f}x (target <= 0.65x; "
            f"tuned test {metric} {tuned['test']:.4f} >= default {default['test']:.4f}: {paid})"
        )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _trained_metric(work: Path, name: str, flags: list[str]) -> dict:
    """The chosen model's metric on validation and test, trained through the trainer's entry point with `flags`.

    The test value is the one the trainer records for the model it chose (on validation) in the artifact's
    selection record: rows neither the choice of candidate nor the study's choice of parameters saw.
    """
    from fleetops.training.artifact import read_metadata

    command = [
        sys.executable,
        "-m",
        "fleetops.training.trial",
        "--spec",
        str(work / "spec1.json"),
        "--data",
        str(work / "dataset.parquet"),
        "--segment",
        "north",
        "--output-dir",
        str(work / name),
        *flags,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    selection = read_metadata(json.loads(done.stdout.strip().splitlines()[-1])["artifact_dir"])["selection"]
    return {"metric": selection["metric"], **selection["candidates"][selection["chosen"]]}


if __name__ == "__main__":
    sys.exit(main())
