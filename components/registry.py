"""Registry components: register a shard's models, summarize the fleet."""

from typing import List

from kfp.dsl import Artifact, Input, Markdown, Model, Output

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
    """Register each model as a new version (idempotent); move `champion` only to winners.

    Args:
        fleet_spec: The fleet spec, YAML or JSON text.
        platform: Platform URI: `local:///path` or `vertex://PROJECT/REGION`.
        model: The shard's trained models.
        evaluation: The shard's evaluation, with the champion comparison.
        pipeline_job: The pipeline job name, recorded in each version's lineage.
        serving_image: The serving container image for the Vertex registry ('' = the spec's).
        registered: Output. What was registered (JSON).

    Returns:
        The same as `registered`, as JSON text (collected by the summary step).
    """
    import json

    from fleetops import fleet
    from fleetops.platform import connect
    from fleetops.spec import parse_spec

    with open(evaluation.path) as handle:
        evaluations = json.load(handle)
    results = fleet.register_shard(
        parse_spec(fleet_spec),
        connect(platform),
        model.path,
        evaluations,
        model_uri=model.uri,
        pipeline_job=pipeline_job,
        serving_image=serving_image or None,
    )
    with open(registered.path, "w") as handle:
        json.dump(results, handle)
    registered.metadata["models"] = [f"{r['model_id']}@{r['version_id']}" for r in results]
    return json.dumps(results)


@fleetops_component
def summarize(registrations: List[str], summary: Output[Markdown]) -> str:
    """A Markdown table of the fleet: each segment's new version and its champion.

    Args:
        registrations: The JSON outputs of every register task.
        summary: Output. The table, rendered in the Vertex console.

    Returns:
        The table as text.
    """
    import json

    from fleetops import fleet

    rows = [row for text in registrations for row in json.loads(text)]
    table = fleet.summarize(rows)
    with open(summary.path, "w") as handle:
        handle.write(table)
    return table
