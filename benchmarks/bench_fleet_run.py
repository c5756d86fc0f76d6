"""The training pipeline end to end on the local twin: the new defaults against one segment per task.

Both runs are the same compiled pipeline under kfp.local (2 tasks at a time), from ingest to the
fleet summary, on the sample generator's data with the sample spec, each in a fresh twin home:

- ours: the defaults, i.e. shards sized by work (2 tasks for this machine) and packed training;
- baseline: the layout fleetops had before, one segment per task (`sharding.models_per_task: 1`)
  and one Keras fit per segment and architecture (`training.trainer: per_segment`), on a subset
  of the segments (its figure is per model: each segment costs the same tasks).

Then, unless `--big 0`, the defaults on 1,000 segments: wall time and peak memory (the sum of
the resident memory of the run's processes, sampled every half second).

    python benchmarks/bench_fleet_run.py [--segments 200] [--baseline-segments 20] [--rows 400] [--big 1000]

Ends with: BENCH fleet_run: <ours> models/min vs <baseline> models/min = <ratio>x (target >= 10x)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.requirements import require  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=200)
    parser.add_argument("--baseline-segments", type=int, default=20)
    parser.add_argument("--rows", type=int, default=400, help="rows per segment")
    parser.add_argument("--big", type=int, default=1000, help="segments of the extra wall-time run (0: none)")
    args = parser.parse_args()
    require("bench_fleet_run", {"psutil": "it sums the memory of the run's task processes"})

    work = Path(tempfile.mkdtemp(prefix="bench-fleet-run-"))
    try:
        ours = _run(work / "ours", args.segments, args.rows, {}, None)
        subset = ours["segments"][:: max(1, args.segments // args.baseline_segments)][: args.baseline_segments]
        layout = {"sharding": {"models_per_task": 1}, "training": {"trainer": "per_segment"}}
        base = _run(work / "baseline", args.segments, args.rows, layout, subset)
        if args.big:
            big = _run(work / "big", args.big, args.rows, {}, None)
            print(
                f"{args.big} segments end to end: {big['seconds'] / 60:.1f} min, {big['rate']:.0f} models/min, "
                f"peak memory {big['peak_mb']:.0f} MB across the run's processes"
            )
        ratio = ours["rate"] / base["rate"]
        print(
            f"BENCH fleet_run: {ours['rate']:.0f} models/min vs {base['rate']:.1f} models/min = {ratio:.1f}x "
            f"(target >= 10x)"
        )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(work: Path, segments: int, rows: int, overrides: dict, only: list[str] | None) -> dict:
    """One pipeline run in a fresh home: models registered, seconds, models per minute, peak memory."""
    import yaml

    from fleetops.data.sample import SAMPLE_SPEC, write_sample
    from fleetops.names import pipeline_arguments
    from fleetops.platform import connect, local_uri
    from fleetops.platform.local.pipeline_runs import run_compiled
    from pipelines.compile import compile_all

    data = write_sample(work / "churn.parquet", rows_per_segment=rows, segments=segments, seed=17)
    spec = yaml.safe_load(SAMPLE_SPEC.format(source=data))
    for section, values in overrides.items():
        spec[section] = spec.get(section, {}) | values
    if only is not None:
        spec["data"]["segments"] = only
    template = compile_all(work / "build")["fleet_training"]
    home = work / "home"
    arguments = pipeline_arguments(yaml.safe_dump(spec), local_uri(home))
    label = "baseline (one segment per task, per-segment trainer)" if overrides else "ours (defaults)"
    print(f"== {label}: {len(only) if only else segments} segments x {rows} rows", flush=True)
    sampler = _PeakMemory()
    with sampler, open(work / "progress.txt", "w") as progress:
        run = run_compiled(template, arguments, home, out=progress)
    if not run.ok:
        raise SystemExit(f"the run failed; log: {run.log_path}\n" + run.log_path.read_text()[-3000:])
    registry = connect(local_uri(home)).registry
    models = registry.list_models({"fleet": spec["name"]})
    durations: dict[str, list[float]] = {}
    for name, _, seconds in run.tasks:
        durations.setdefault(name, []).append(seconds)
    tasks = ", ".join(f"{n} {len(d)}x {sum(d) / len(d):.1f}s" for n, d in durations.items())
    rate = len(models) / run.seconds * 60
    print(f"   {len(models)} models registered in {run.seconds:.1f} s = {rate:.1f} models/min", flush=True)
    print(f"   tasks (count x mean): {tasks}", flush=True)
    print(f"   peak memory {sampler.peak_mb:.0f} MB across the run's processes", flush=True)
    segment_names = sorted(m.removeprefix(f"{spec['name']}-") for m in models)
    return {"seconds": run.seconds, "rate": rate, "peak_mb": sampler.peak_mb, "segments": segment_names}


class _PeakMemory:
    """The largest sum of resident memory of this process and its descendants, sampled while running."""

    def __init__(self, every: float = 0.5):
        self.every, self.peak_mb = every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self.every):
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:  # a task process that just ended
                    continue
            self.peak_mb = max(self.peak_mb, total / 2**20)


if __name__ == "__main__":
    sys.exit(main())
