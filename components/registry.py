"""Registry components: register a shard's models, summarize the fleet."""

from typing import List

from kfp.dsl import HTML, Artifact, Input, Markdown, Model, Output

from components.image import fleetops_component


@fleetops_component
def register(
    fleet_spec: str,
    platform: str,
    model: Input[Model],
    evaluation: Input[Artifact],
    pipeline_job: str,
    serving_image: str,
    registered: Output[Artifact],
) -> str:
    """Register the shard's models in one pass (idempotent); move `champion` only to winners.

    Args:
        fleet_spec: The fleet spec, YAML or JSON text.
        platform: Platform URI: `local:///path` or `vertex://PROJECT/REGION`.
        model: The shard's trained models.
        evaluation: The shard's evaluation, with the champion comparison.
        pipeline_job: The pipeline job name, recorded in each version's lineage.
        serving_image: The serving container image for the Vertex registry ('' = the spec's).
        registered: Output. What was registered, one row per segment (JSON; collected by the summary step).

    Returns:
        Counts: registered, new versions, new champions, failed (JSON text).
    """
    import json

    from fleetops import training_steps
    from fleetops.platform import connect
    from fleetops.spec import parse_spec
    from fleetops.training.segments import read_outcome

    with open(evaluation.path) as handle:
        evaluations = json.load(handle)
    spec = parse_spec(fleet_spec)
    results = training_steps.register_shard(
        spec,
        connect(platform),
        model.path,
        evaluations,
        model_uri=model.uri,
        pipeline_job=pipeline_job,
        serving_image=serving_image or None,
    )
    # Segments whose training failed go on to the summary with their reason (nothing is registered).
    results += training_steps.failed_rows(spec, read_outcome(model.path)["failed"])
    with open(registered.path, "w") as handle:
        json.dump(results, handle)
    counts = {
        "registered": sum(1 for r in results if not r.get("failed")),
        "created": sum(1 for r in results if r.get("created")),
        "promoted": sum(1 for r in results if r.get("promoted")),
        "failed": sum(1 for r in results if r.get("failed")),
    }
    # Counts only: artifact metadata and parameters travel on downstream tasks' command lines (size-limited).
    registered.metadata.update(counts)
    return json.dumps(counts)


@fleetops_component
def summarize(
    fleet_spec: str,
    registrations: Input[List[Artifact]],
    evaluations: Input[List[Artifact]],
    segments: Input[Artifact],
    summary: Output[Markdown],
    scorecard: Output[HTML],
) -> str:
    """The fleet summary: totals, the pooled test metric, the per-segment distribution, every segment.

    Fails the run (after writing the summary) when more segments were skipped or failed than the
    spec's `segment_failures.max_failed_fraction`.

    Args:
        fleet_spec: The fleet spec, YAML or JSON text.
        registrations: Every register task's rows.
        evaluations: Every evaluate task's results (each segment's test predictions pool the metric).
        segments: The validate step's segment outcomes (skipped segments and their reasons).
        summary: Output. The summary, rendered in the Vertex console.
        scorecard: Output. The fleet scorecard: one self-contained page (totals, the metric's distribution,
            a sortable, filterable table of every segment, each segment's detail), rendered in the Vertex console.

    Returns:
        The summary as text; past 50 segments, its totals and where the whole summary is (an output
        parameter has a size limit, a Markdown artifact does not).
    """
    import json

    from fleetops import training_steps
    from fleetops.evaluation.report import summarize, summary_head
    from fleetops.scorecard import render_scorecard
    from fleetops.spec import parse_spec

    spec = parse_spec(fleet_spec)
    rows = []
    for artifact in registrations:
        with open(artifact.path) as handle:
            rows += json.load(handle)
    evaluated = []
    for artifact in evaluations:
        with open(artifact.path) as handle:
            evaluated += json.load(handle)
    with open(segments.path) as handle:
        outcomes = json.load(handle)
    table = summarize(rows, evaluated, outcomes, spec)
    with open(summary.path, "w") as handle:
        handle.write(table)
    page, _ = render_scorecard(rows, evaluated, outcomes, fleet=spec.name, metric=spec.primary_metric)
    with open(scorecard.path, "w") as handle:
        handle.write(page)
    training_steps.check_failures(spec, rows, outcomes)
    return summary_head(table, summary.uri)
