"""Training component: the models of one shard of the fleet."""

from kfp.dsl import Dataset, Input, Model, Output

from components.image import fleetops_component


@fleetops_component
def train(fleet_spec: str, dataset: Input[Dataset], shard: dict, model: Output[Model]):
    """Train every segment of a shard: each architecture, keeping the best on validation.

    Args:
        fleet_spec: The fleet spec, YAML or JSON text.
        dataset: The split dataset.
        shard: {"shard": i, "segments": [...]} from the validate step.
        model: Output. A folder with one model artifact per segment (`<segment slug>/`).
    """
    from fleetops.spec import parse_spec
    from fleetops.training.trainer import train_shard

    results = train_shard(dataset.path, parse_spec(fleet_spec), shard["segments"], model.path)
    model.metadata.update({"shard": shard["shard"], "models": [r.summary() for r in results]})
