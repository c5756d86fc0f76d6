"""Batch prediction throughput: the fleetops batch job against plain batched Keras `model.predict`.

Both score the same 1,000,000 churn rows with the same trained model, starting
from the same in-memory DataFrame. The baseline builds the input tensors and
calls `model.predict(batch_size=65536)`; ours also validates every row,
routes bad rows to errors and writes predictions and errors to Parquet.

    python benchmarks/bench_batch.py [--rows 1000000]

Ends with: BENCH batch: <ours rows/s> vs <baseline rows/s> = <ratio>x (target >= 0.8x)
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    import tensorflow as tf

    from fleetops import training_steps
    from fleetops.batch import CHUNK_ROWS, batch_predict
    from fleetops.data.sample import SAMPLE_SPEC, make_churn, write_sample
    from fleetops.platform import connect, local_uri
    from fleetops.serving.predictor import Predictor
    from fleetops.spec import parse_spec
    from fleetops.training.segments import train_shard

    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        data = write_sample(work / "churn.csv", rows_per_segment=2000, segments=1)
        spec = parse_spec(SAMPLE_SPEC.format(source=data))
        training_steps.ingest(spec, connect(local_uri(work / "home")), work / "raw.parquet")
        training_steps.split_dataset(spec, work / "raw.parquet", work / "dataset.parquet")
        model_dir = train_shard(work / "dataset.parquet", spec, ["north"], work / "model", log=lambda *_: None).results[
            0
        ]
        predictor = Predictor.load(model_dir.artifact_dir)
        rows = make_churn(rows_per_segment=args.rows // 8, segments=8, seed=1)
        print(f"{len(rows):,} rows, model {model_dir.architecture}", flush=True)

        def baseline() -> None:
            numeric = {c: tf.constant(rows[c].to_numpy("float32").reshape(-1, 1)) for c in predictor.numeric}
            categorical = {
                c: tf.constant(rows[c].fillna("").astype(str).to_numpy(dtype=object).reshape(-1, 1))
                for c in predictor.categorical
            }
            np.asarray(predictor.artifact.model.predict(numeric | categorical, batch_size=CHUNK_ROWS, verbose=0))

        def ours() -> None:
            batch_predict(predictor, rows, work / "out")

        timings = {"fleetops": [], "keras predict": []}
        for _ in range(args.repeats):
            for name, run in (("keras predict", baseline), ("fleetops", ours)):
                started = time.perf_counter()
                run()
                timings[name].append(time.perf_counter() - started)
        best = {name: min(values) for name, values in timings.items()}
        for name, seconds in best.items():
            print(f"{name:<14} best of {args.repeats}: {seconds:6.2f} s  {len(rows) / seconds:12,.0f} rows/s")
        written = pd.read_parquet(work / "out" / "predictions.parquet", columns=["customer_id"])
        assert len(written) == len(rows), "every row should have been scored"
        ours_rate, base_rate = len(rows) / best["fleetops"], len(rows) / best["keras predict"]
        ratio = ours_rate / base_rate
        print(f"BENCH batch: {ours_rate:,.0f} rows/s vs {base_rate:,.0f} rows/s = {ratio:.2f}x (target >= 0.8x)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
