"""Train one segment with hyperparameters given as command-line flags: a tuning trial's command.

    python -m fleetops.training.trial --spec fleet.yaml --data dataset.parquet \
        --segment north --architecture dnn --output-dir out/ --learning-rate 0.003

Local tuning (Optuna) runs each trial as this command in its own process; a Vertex
hyperparameter tuning job's trials run it in the fleetops image (`fleetops.tuning.vertex`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from pydantic import ValidationError

from fleetops.errors import SpecError, UserError
from fleetops.evaluation.metrics import headline
from fleetops.spec import Architecture, TrainingSpec, describe_error, load_spec
from fleetops.training.segments import read_segment, train_segment
from fleetops.tuning.adapter import report_to_vertex_tuning


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetops.training.trial", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, help="fleet spec YAML")
    parser.add_argument("--data", required=True, help="split dataset (Parquet written by the split step)")
    parser.add_argument("--segment", required=True)
    parser.add_argument(
        "--output-dir",
        default=os.environ.get("AIP_MODEL_DIR"),
        help="where the model goes (default: AIP_MODEL_DIR, which Vertex sets for each trial)",
    )
    # Each flag also answers to its underscore spelling: Vertex tuning passes --learning_rate=0.01.
    parser.add_argument("--architecture", choices=[a.value for a in Architecture], default=None)
    for name, field in TrainingSpec.model_fields.items():
        if name == "candidates":  # a trial trains one segment's own models; the global one is not among them
            continue
        flags = [f"--{name.replace('_', '-')}", f"--{name}"] if "_" in name else [f"--{name}"]
        if name == "hidden_units":
            parser.add_argument(*flags, dest=name, type=lambda s: [int(x) for x in s.split(",")], default=None)
        else:
            parser.add_argument(*flags, dest=name, type=_number(type(field.default)), default=None)
    args = parser.parse_args(argv)
    if not args.output_dir:
        parser.error("--output-dir is required (or AIP_MODEL_DIR)")
    threads = os.environ.get("FLEETOPS_TF_THREADS")
    if threads:  # parallel trials share the cores: one or two TF threads each, not all of them
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(int(threads))
    from fleetops.platform.vertex import gcs_local_path

    # A Vertex tuning trial is given gs:// URIs; its container reads them through the Cloud Storage mount.
    spec = load_spec(gcs_local_path(args.spec))
    overrides = {k: v for k, v in vars(args).items() if k in TrainingSpec.model_fields and v is not None}
    try:
        params = TrainingSpec.model_validate(spec.training.model_dump() | overrides)
    except ValidationError as exc:
        raise SpecError([describe_error(e) for e in exc.errors()], "trainer flags") from None
    architectures = [Architecture(args.architecture)] if args.architecture else None
    output_dir = gcs_local_path(args.output_dir)
    rows = read_segment(gcs_local_path(args.data), args.segment)
    result = train_segment(rows, spec, args.segment, output_dir, params, architectures)
    report = {"metric": result.metric, "value": result.validation_value, **result.summary()}
    validation_metrics = headline(result.metadata["validation_metrics"])
    print(json.dumps(report | {"validation_metrics": validation_metrics}))
    report_to_vertex_tuning(spec.tuning_metric, validation_metrics.get(spec.tuning_metric))
    return 0


def _number(kind: type) -> Any:
    """int flags accept '64.0' too: Vertex passes discrete values as doubles."""
    if kind is int:
        return lambda text: int(float(text))
    return kind


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:  # a tuning trial records this last line as the reason it failed
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
