"""Data components: ingest a source, validate it against the fleet spec, split it."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from components.image import fleetops_component


@fleetops_component
def ingest(fleet_spec: str, platform: str, raw_data: Output[Dataset]):
    """Read the fleet's data source (file, SQL query or bq:// table) into Parquet.

    Args:
        fleet_spec: The fleet spec, YAML or JSON text.
        platform: Platform URI: `local:///path` or `vertex://PROJECT/REGION`.
        raw_data: Output. The rows as Parquet; metadata has rows, columns and sha256.
    """
    from fleetops import training_steps
    from fleetops.platform import connect
    from fleetops.spec import parse_spec

    raw_data.metadata.update(training_steps.ingest(parse_spec(fleet_spec), connect(platform), raw_data.path))


@fleetops_component
def validate(
    fleet_spec: str,
    raw_data: Input[Dataset],
    statistics: Output[Artifact],
    report: Output[Markdown],
    segments: Output[Artifact],
) -> list:
    """Check the data against the spec; fail with a readable report listing every problem.

    A segment's own problem (too few rows, one label value, an empty split) gets the spec's
    `segment_failures.policy`: skipped with its reason, given the global model, or a failure.

    Args:
        fleet_spec: The fleet spec, YAML or JSON text.
        raw_data: The ingested rows.
        statistics: Output. Schema and TFDV-style statistics of the fleet and of each segment (JSON).
        report: Output. The validation report.
        segments: Output. Each segment's outcome (JSON): rows, and the reasons for `skipped` and `fallback`.

    Returns:
        The segments grouped into shards for the fan-out:
        [{"shard": i, "segments": [...], "fallback": {segment: reason}}].
        (kfp.local fans out only over a task's single output, so this is the only one.)
    """
    import json
    import sys

    from fleetops import training_steps
    from fleetops.spec import parse_spec

    spec = parse_spec(fleet_spec)
    result, baseline = training_steps.validate_dataset(spec, raw_data.path)
    with open(report.path, "w") as handle:
        handle.write(result.to_markdown())
    print(result.to_markdown(), file=sys.stderr)
    result.raise_if_failed()
    with open(statistics.path, "w") as handle:
        json.dump(baseline, handle)
    with open(segments.path, "w") as handle:
        json.dump({"rows": result.segments, "skipped": result.skipped, "fallback": result.fallback}, handle)
    shards = training_steps.plan_shards(result.trainable, spec.sharding, fallback=result.fallback)
    statistics.metadata.update({"rows": result.rows, "segments": len(result.segments)})
    segments.metadata.update(
        {"trained": len(result.trainable), "skipped": len(result.skipped), "fallback": len(result.fallback)}
    )
    return shards


@fleetops_component
def split(fleet_spec: str, raw_data: Input[Dataset], dataset: Output[Dataset]):
    """Add the deterministic train/validation/test split (hash of the split key) and the segment column.

    Args:
        fleet_spec: The fleet spec, YAML or JSON text.
        raw_data: The validated rows.
        dataset: Output. Parquet sorted by segment, with `__segment` and `__split` columns.
    """
    from fleetops import training_steps
    from fleetops.spec import parse_spec

    dataset.metadata.update(training_steps.split_dataset(parse_spec(fleet_spec), raw_data.path, dataset.path))
