"""Training component: the models of one shard of the fleet."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.image import fleetops_component


@fleetops_component
def train(
    fleet_spec: str, platform: str, dataset: Input[Dataset], shard: dict, tuning: Input[Artifact], model: Output[Model]
):
    """Train every segment of a shard: tuned first when the spec says so, then each architecture, keeping the best.

    Args:
        fleet_spec: The fleet spec, YAML or JSON text.
        platform: Platform URI; the local twin keeps tuning studies under its home (reruns resume them).
        dataset: The split dataset.
        shard: {"shard": i, "segments": [...]} from the validate step.
        tuning: The tune step's study; its `best_parameters` (tuned once for the fleet) apply to every segment.
        model: Output. A folder with one model artifact per segment (`<segment slug>/`), trials in its metadata.
    """
    import json
    from pathlib import Path

    from fleetops.platform import connect
    from fleetops.spec import parse_spec
    from fleetops.training.trainer import train_shard

    home = getattr(connect(platform), "home", None)
    with open(tuning.path) as handle:
        tuned = json.load(handle).get("best_parameters")
    results = train_shard(
        dataset.path,
        parse_spec(fleet_spec),
        shard["segments"],
        model.path,
        tuned=tuned,
        tuning_dir=Path(home) / "tuning" if home else None,
    )
    model.metadata.update({"shard": shard["shard"], "models": [r.summary() for r in results]})
