"""Transfer learning on the sample fleet: segments fine-tuned from the global model against from scratch.

A fleet of segments of varied size (the sample generator's `size_spread`), the sample spec's
settings. The global model trains on every segment's rows; each segment is then trained packed
from scratch and warm-started from it, and the validation split picks one per segment (what
`training.warm_start: global` registers). Quality is the test auRoc (rows neither training nor the
choice saw), from scratch against the chosen model, over all segments and by size.

    python benchmarks/bench_warm_start.py [--segments 300] [--rows 200] [--spread 1.0]

Ends with: BENCH warm_start: <chosen> vs <scratch> = <ratio>x (target >= 1.0x on the smallest third)
"""

from __future__ import annotations

import argparse
import os
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
    parser.add_argument("--segments", type=int, default=300)
    parser.add_argument("--rows", type=int, default=200, help="median rows per segment")
    parser.add_argument("--spread", type=float, default=1.0, help="spread of segment sizes (log-normal sigma)")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    import yaml

    from fleetops import training_steps
    from fleetops.data.sample import SAMPLE_SPEC, make_churn
    from fleetops.data.validation import validate
    from fleetops.spec import parse_spec
    from fleetops.training.packed import train_global
    from fleetops.training.segments import train_shard

    work = Path(tempfile.mkdtemp(prefix="bench-warm-start-"))
    try:
        raw = make_churn(rows_per_segment=args.rows, segments=args.segments, seed=23, size_spread=args.spread)
        raw.to_parquet(work / "raw.parquet")
        base = yaml.safe_load(SAMPLE_SPEC.format(source=work / "raw.parquet"))
        base["training"]["warm_start"] = "global"
        spec = parse_spec(base)
        report = validate(raw, spec)  # segments too small for a split are skipped, as the pipeline does
        training_steps.split_dataset(spec, work / "raw.parquet", work / "dataset.parquet")
        segments = sorted(report.trainable)
        print(f"{len(segments)} segments ({len(report.skipped)} skipped as too small), {len(raw)} rows")

        started = time.perf_counter()
        found = train_global(pd.read_parquet(work / "dataset.parquet"), spec, work / "global", log=_indent)
        dataset = work / "dataset.parquet"
        outcome = train_shard(dataset, spec, segments, work / "models", log=_indent, global_model=found)
        print(f"global model and {len(outcome.results)} segments, both starts: {time.perf_counter() - started:.1f} s")

        rows, scratch, chosen = [], [], []
        for result in outcome.results:
            transfer = result.metadata["transfer"]
            pick = transfer[transfer["chosen"]]["test"]
            if transfer["scratch"]["test"] is None or pick is None:
                continue  # a one-class test split: undefined either way
            rows.append(result.metadata["rows"]["train"])
            scratch.append(transfer["scratch"]["test"])
            chosen.append(pick)
        rows, scratch, chosen = np.array(rows), np.array(scratch), np.array(chosen)
        warm_share = np.mean([r.metadata["transfer"]["chosen"] == "warm_start" for r in outcome.results])
        print(f"validation chose the warm start for {warm_share:.0%} of segments")
        cuts = np.quantile(rows, [1 / 3, 2 / 3])
        groups = {"smallest third": rows <= cuts[0], "middle third": (rows > cuts[0]) & (rows <= cuts[1])}
        groups["largest third"] = rows > cuts[1]
        for name, mask in groups.items():
            print(
                f"{name} ({int(rows[mask].min())}-{int(rows[mask].max())} train rows, {int(mask.sum())} segments): "
                f"test auRoc from scratch {scratch[mask].mean():.4f}, chosen {chosen[mask].mean():.4f} "
                f"({chosen[mask].mean() - scratch[mask].mean():+.4f})"
            )
        small = groups["smallest third"]
        ratio = chosen[small].mean() / scratch[small].mean()
        print(f"all segments: from scratch {scratch.mean():.4f}, chosen {chosen.mean():.4f}")
        print(
            f"BENCH warm_start: {chosen[small].mean():.4f} vs {scratch[small].mean():.4f} = {ratio:.3f}x "
            f"(target >= 1.0x on the smallest third; all segments {chosen.mean():.4f} vs {scratch.mean():.4f})"
        )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _indent(line: str) -> None:
    print("  " + line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
