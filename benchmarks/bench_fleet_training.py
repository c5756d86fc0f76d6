"""Fleet training throughput: the packed trainer on 1,000 segments against one model at a time.

Both sides train the sample spec's architectures (linear and dnn, the best on validation kept) with
the same settings, in one process, with TensorFlow's default threads, and write each segment's
standalone model artifact (the export is counted). The baseline is today's per-segment trainer
(`train_segment`, one Keras `fit` per architecture) in a loop, after one warm-up segment, on a
random 100 of the segments: its figure is per model. Quality is the mean test auRoc (rows neither
trainer saw, from the exported artifacts) over the segments both trained; the spread that
retraining one segment alone with other seeds gives is measured too, for scale.

    python benchmarks/bench_fleet_training.py [--segments 1000] [--rows 500] [--baseline 100]

Ends with: BENCH fleet_training: <ours> models/min vs <baseline> models/min = <ratio>x
(target >= 20x; mean auRoc <ours> vs <baseline>)
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=500, help="rows per segment")
    parser.add_argument("--baseline", type=int, default=100, help="segments the baseline trains")
    parser.add_argument("--seed-spread", type=int, default=8, help="segments retrained with 2 other seeds")
    args = parser.parse_args()

    import numpy as np
    import yaml

    from fleetops import fleet
    from fleetops.data.sample import SAMPLE_SPEC, write_sample
    from fleetops.platform import connect, local_uri
    from fleetops.spec import parse_spec
    from fleetops.training.trainer import read_segment, train_segment, train_shard

    work = Path(tempfile.mkdtemp(prefix="bench-fleet-training-"))
    try:
        data = write_sample(work / "churn.parquet", rows_per_segment=args.rows, segments=args.segments, seed=13)
        spec = parse_spec(yaml.safe_load(SAMPLE_SPEC.format(source=data)))
        fleet.ingest(spec, connect(local_uri(work / "home")), work / "raw.parquet")
        fleet.split_dataset(spec, work / "raw.parquet", work / "dataset.parquet")
        segments = _all(work)
        print(f"{len(segments)} segments x {args.rows} rows; architectures {[a.value for a in spec.architectures]}")

        started = time.perf_counter()
        packed = train_shard(work / "dataset.parquet", spec, segments, work / "packed", log=_indent).results
        ours_seconds = time.perf_counter() - started
        ours_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ours_rate = len(packed) / ours_seconds * 60
        print(f"packed: {len(packed)} models in {ours_seconds:.1f} s = {ours_rate:.0f} models/min")
        print(f"peak memory after the packed run: {ours_peak:.0f} MB")

        rng = np.random.default_rng(0)
        chosen = sorted(rng.choice(segments, size=min(args.baseline, len(segments)), replace=False).tolist())
        warm = next(s for s in segments if s not in chosen)
        train_segment(read_segment(work / "dataset.parquet", warm), spec, warm, work / "warm-up")
        started = time.perf_counter()
        for segment in chosen:
            train_segment(read_segment(work / "dataset.parquet", segment), spec, segment, work / "single" / segment)
        base_seconds = time.perf_counter() - started
        base_rate = len(chosen) / base_seconds * 60
        print(f"one at a time: {len(chosen)} models in {base_seconds:.1f} s = {base_rate:.1f} models/min")

        by_segment = {r.segment: r for r in packed}
        pairs = [
            (_test_auc(work, spec, by_segment[s].artifact_dir, s), _test_auc(work, spec, work / "single" / s, s))
            for s in chosen
        ]
        # A test split with one class has no auRoc on either side: those segments are left out of the means.
        ours_auc = [a for a, b in pairs if a is not None and b is not None]
        base_auc = [b for a, b in pairs if a is not None and b is not None]
        if len(ours_auc) < len(pairs):
            print(f"{len(pairs) - len(ours_auc)} segment(s) have a one-class test split (auRoc undefined): left out")
        diff = np.array(ours_auc) - np.array(base_auc)
        print(
            f"test auRoc over the {len(ours_auc)} segments both trained: packed {np.mean(ours_auc):.4f}, "
            f"one at a time {np.mean(base_auc):.4f} (per-segment difference: mean {diff.mean():+.4f}, "
            f"sd {diff.std():.4f})"
        )
        spread = []
        for segment in chosen[: args.seed_spread]:
            values = [pairs[chosen.index(segment)][1]]
            for seed in (101, 202):
                params = spec.training.model_copy(update={"seed": seed})
                rows = read_segment(work / "dataset.parquet", segment)
                train_segment(rows, spec, segment, work / f"seed{seed}" / segment, params=params)
                values.append(_test_auc(work, spec, work / f"seed{seed}" / segment, segment))
            if None not in values:
                spread.append(np.std(values))
        print(
            f"seed spread: retraining one segment alone with 3 seeds moves its test auRoc by sd "
            f"{np.mean(spread):.4f} on average ({len(spread)} segments)"
        )
        ratio = ours_rate / base_rate
        print(
            f"BENCH fleet_training: {ours_rate:.0f} models/min vs {base_rate:.1f} models/min = {ratio:.1f}x "
            f"(target >= 20x; mean auRoc {np.mean(ours_auc):.4f} vs {np.mean(base_auc):.4f})"
        )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _all(work: Path) -> list[str]:
    import pandas as pd

    from fleetops.training.trainer import SEGMENT_COLUMN

    return sorted(pd.read_parquet(work / "dataset.parquet", columns=[SEGMENT_COLUMN])[SEGMENT_COLUMN].unique())


def _test_auc(work: Path, spec, directory: Path, segment: str) -> float | None:
    """auRoc of an exported artifact on its segment's test split (rows the selection never saw)."""
    from fleetops.data.split import SPLIT_COLUMN, TEST
    from fleetops.evaluation.metrics import classification_metrics
    from fleetops.training.artifact import load_artifact
    from fleetops.training.trainer import encode_labels, read_segment

    rows = read_segment(work / "dataset.parquet", segment)
    test = rows[rows[SPLIT_COLUMN] == TEST]
    artifact = load_artifact(directory)
    y = encode_labels(test[spec.label], artifact.classes)
    return classification_metrics(y, artifact.scores(test), artifact.classes)["auRoc"]


def _indent(line: str) -> None:
    print("  " + line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
