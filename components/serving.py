"""Serving components: canary champions on their endpoints, promote or roll back a fleet's canaries."""

from kfp.dsl import Artifact, Input, Output

from components.image import fleetops_component


@fleetops_component
def deploy(fleet_spec: str, platform: str, registered: Input[Artifact], releases: Output[Artifact]) -> str:
    """Deploy each segment's champion where its endpoint lacks it: 100% on a new endpoint, else a canary.

    New champions, and champions an earlier run registered but never deployed (it died before
    this step): the registry's `champion` alias is what each endpoint must serve.

    Args:
        fleet_spec: The fleet spec, YAML or JSON text (its `serving` section decides).
        platform: Platform URI: `local:///path` or `vertex://PROJECT/REGION`.
        registered: What the register step registered (JSON): the shard's segments.
        releases: Output. Each deploy: endpoint, deployed model id, the split before and after, and
            whether it reconciled a champion of an earlier run (JSON).

    Returns:
        The number of deploys, as JSON text.
    """
    import json

    from fleetops.deployment import deploy_champions
    from fleetops.platform import connect
    from fleetops.spec import parse_spec

    with open(registered.path) as handle:
        registrations = json.load(handle)
    done = deploy_champions(parse_spec(fleet_spec), connect(platform), registrations)
    with open(releases.path, "w") as handle:
        json.dump(done, handle)
    # Counts only: a shard deploys hundreds of models, and outputs travel on command lines (size-limited).
    releases.metadata["endpoints"] = len(done)
    return json.dumps({"deployed": len(done)})


@fleetops_component
def promote_canaries(fleet_name: str, platform: str) -> str:
    """Give each canary of the fleet all its endpoint's traffic and undeploy the model it replaces.

    Args:
        fleet_name: The fleet's name (endpoints carry it as the `fleet` label).
        platform: Platform URI.

    Returns:
        What was promoted, as JSON text.
    """
    import json

    from fleetops.deployment import promote_fleet
    from fleetops.platform import connect

    return json.dumps(promote_fleet(connect(platform), fleet_name))


@fleetops_component
def rollback_canaries(fleet_name: str, platform: str) -> str:
    """Undeploy each canary of the fleet, giving its traffic back to the models it shared the endpoint with.

    Args:
        fleet_name: The fleet's name (endpoints carry it as the `fleet` label).
        platform: Platform URI.

    Returns:
        What was rolled back, as JSON text.
    """
    import json

    from fleetops.deployment import rollback_fleet
    from fleetops.platform import connect

    return json.dumps(rollback_fleet(connect(platform), fleet_name))
