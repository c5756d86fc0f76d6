"""Tuning component: tune once for the whole fleet (per-segment tuning runs inside the train step)."""

from kfp.dsl import Artifact, Dataset, Input, Output

from components.image import fleetops_component


@fleetops_component
def tune(fleet_spec: str, platform: str, dataset: Input[Dataset], trials: Output[Artifact]):
    """With `tuning.scope: fleet`, tune the largest segment and share its best parameters with every segment.

    Per-segment tuning (`scope: per_segment`) happens in each train step instead, so a fleet
    pays no extra task start-up per shard. With tuning off this step only says so.

    Args:
        fleet_spec: The fleet spec, YAML or JSON text (its `tuning` section).
        platform: Platform URI; it runs the study (the local twin resumes it on a rerun; Vertex runs a job).
        dataset: The split dataset.
        trials: Output. The study (JSON): its trials in Vertex's Trial shape and `best_parameters`, which
            every train step applies (null when tuning is off or per segment). An artifact rather than a
            parameter: kfp.local resolves a parameter from outside a ParallelFor to the loop item.
    """
    import json

    import pandas as pd

    from fleetops.platform import connect
    from fleetops.spec import parse_spec
    from fleetops.training.segments import SEGMENT_COLUMN

    spec = parse_spec(fleet_spec)
    if not (spec.tuning.enabled and spec.tuning.scope == "fleet"):
        with open(trials.path, "w") as handle:
            json.dump({"scope": spec.tuning.scope, "enabled": spec.tuning.enabled, "best_parameters": None}, handle)
        return
    sizes = pd.read_parquet(dataset.path, columns=[SEGMENT_COLUMN])[SEGMENT_COLUMN].value_counts()
    segment = str(sizes.index[0])
    result = connect(platform).tune(spec, dataset.path, segment)
    with open(trials.path, "w") as handle:
        json.dump(result, handle)
    trials.metadata.update({"segment": segment, "best_value": result["best_value"]})
