"""Fleet training throughput: the packed trainer on 1,000 segments against one model at a time.

Both sides train the sample spec's architectures (linear and dnn, the best on validation kept) with
the same settings, in one process, with TensorFlow's default threads, and write each segment's
standalone model artifact (the export is counted). The baseline is today's per-segment trainer
(`train_segment`, one Keras `fit` per architecture) in a loop, after one warm-up segment, on a
random 100 of the segments: its figure is per model. Quality is the mean test auRoc (rows neither
trainer saw, from the exported artifacts) over the segments both trained, each side trained with
5 seeds (a segment's test auRoc on ~75 rows moves by a few hundredths with its seed, which is
also measured and printed).

    python benchmarks/bench_fleet_training.py [--segments 1000] [--rows 500] [--baseline 100] [--seeds 5]

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
    parser.add_argument("--seeds", type=int, default=5, help="seeds per side for the quality comparison")
    args = parser.parse_args()

    import numpy as np
    import yaml

    from fleetops import training_steps
    from fleetops.data.sample import SAMPLE_SPEC, write_sample
    from fleetops.platform import connect, local_uri
    from fleetops.spec import parse_spec
    from fleetops.training.packed import train_pack
    from fleetops.training.segments import read_segment, read_segments, train_segment, train_shard

    work = Path(tempfile.mkdtemp(prefix="bench-fleet-training-"))
    try:
        data = write_sample(work / "churn.parquet", rows_per_segment=args.rows, segments=args.segments, seed=13)
        spec = parse_spec(yaml.safe_load(SAMPLE_SPEC.format(source=data)))
        training_steps.ingest(spec, connect(local_uri(work / "home")), work / "raw.parquet")
        training_steps.split_dataset(spec, work / "raw.parquet", work / "dataset.parquet")
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

        # Quality: a model's test auRoc on 75 rows moves by a few hundredths with its seed, so each side is
        # trained with `--seeds` seeds on the same segments and the means over segments and seeds compared.
        # (A packed segment trains the same in any pack, so the extra packed runs need only these segments.)
        by_segment = {r.segment: r for r in packed}
        seeds = [spec.training.seed + i for i in range(args.seeds)]
        ours_dirs = {(s, seeds[0]): by_segment[s].artifact_dir for s in chosen}
        base_dirs = {(s, seeds[0]): work / "single" / s for s in chosen}
        rows = read_segments(work / "dataset.parquet", chosen)
        for seed in seeds[1:]:
            params = spec.training.model_copy(update={"seed": seed})
            for r in train_pack(rows, spec, work / f"packed-{seed}", params=params, log=lambda *_: None):
                ours_dirs[(r.segment, seed)] = r.artifact_dir
            for segment in chosen:
                one = read_segment(work / "dataset.parquet", segment)
                train_segment(one, spec, segment, work / f"single-{seed}" / segment, params=params)
                base_dirs[(segment, seed)] = work / f"single-{seed}" / segment
        ours_auc = np.array([[_test_auc(work, spec, ours_dirs[(s, seed)], s) for seed in seeds] for s in chosen])
        base_auc = np.array([[_test_auc(work, spec, base_dirs[(s, seed)], s) for seed in seeds] for s in chosen])
        # A test split with one class has no auRoc on either side: those segments are left out of the means.
        kept = ~(np.isnan(ours_auc.astype(float)).any(axis=1) | np.isnan(base_auc.astype(float)).any(axis=1))
        if not kept.all():
            print(f"{int((~kept).sum())} segment(s) have a one-class test split (auRoc undefined): left out")
        ours_auc, base_auc = ours_auc[kept].astype(float), base_auc[kept].astype(float)
        diff = ours_auc.mean(axis=1) - base_auc.mean(axis=1)
        print(
            f"test auRoc over the {int(kept.sum())} segments both trained, {len(seeds)} seeds each: packed "
            f"{ours_auc.mean():.4f}, one at a time {base_auc.mean():.4f} (per-segment difference of the seed means: "
            f"mean {diff.mean():+.4f}, sd {diff.std():.4f})"
        )
        for i, seed in enumerate(seeds):
            print(f"  seed {seed}: packed {ours_auc[:, i].mean():.4f}, one at a time {base_auc[:, i].mean():.4f}")
        print(
            f"seed spread: retraining a segment alone with another seed moves its test auRoc by sd "
            f"{base_auc.std(axis=1, ddof=1).mean():.4f} on average (packed: {ours_auc.std(axis=1, ddof=1).mean():.4f})"
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

    from fleetops.training.segments import SEGMENT_COLUMN

    return sorted(pd.read_parquet(work / "dataset.parquet", columns=[SEGMENT_COLUMN])[SEGMENT_COLUMN].unique())


def _test_auc(work: Path, spec, directory: Path, segment: str) -> float:
    """auRoc of an exported artifact on its segment's test split (rows the selection never saw)."""
    from fleetops.data.split import SPLIT_COLUMN, TEST
    from fleetops.evaluation.metrics import classification_metrics
    from fleetops.training.artifact import load_artifact
    from fleetops.training.segments import encode_labels, read_segment

    rows = read_segment(work / "dataset.parquet", segment)
    test = rows[rows[SPLIT_COLUMN] == TEST]
    artifact = load_artifact(directory)
    y = encode_labels(test[spec.label], artifact.classes)
    value = classification_metrics(y, artifact.scores(test), artifact.classes)["auRoc"]
    return float("nan") if value is None else value


def _indent(line: str) -> None:
    print("  " + line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
