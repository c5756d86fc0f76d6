"""Releasing models to endpoints: a canary for each new champion, then promote or roll back.

One endpoint per fleet member (its id is the model id), so each segment's
traffic goes to its own model. A new champion joins its endpoint with the
spec's `canary_percent` next to the serving model; `promote` gives it all the
traffic and undeploys the rest; `rollback` restores the split recorded before
the canary, undeploys it and gives `champion` back to the model that serves.

Deploying reconciles rather than replays: the registry's `champion` alias says
what each segment should serve, and whatever champion its endpoint lacks is
deployed, whether it won in this run or in one that died between its register
and deploy steps (the aliases were committed, the deploy never happened, and
later runs, which do not promote an unchanged champion again, would never
deploy it). So `champion` must only ever name a model that may serve: that is
why a rollback moves it back.

With `serving.cohosting: pool` each deploy goes into the fleet's deployment
resource pool (`FleetSpec.serving_pool`, created by the first deploy, sized by
the spec's machine type and replicas) instead of onto nodes of its own. The
endpoints stay one per segment, so all of the above, canary, promote and
rollback, is unchanged: a pool changes where a model runs, not how traffic
reaches it. Deploys stay one at a time per task (Vertex takes at most 20
concurrent deploy requests into a pool).
"""

from __future__ import annotations

from typing import Any

from fleetops.errors import NotFoundError, UserError
from fleetops.names import CHAMPION_ALIAS, DEFAULT_ALIAS, LABEL_FLEET, LABEL_SEGMENT, label_value
from fleetops.platform import Platform
from fleetops.platform.endpoints import DeployedModel, DeploymentSettings, Endpoint
from fleetops.spec import FleetSpec


def deploy_champions(spec: FleetSpec, platform: Platform, registrations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Deploy each segment's champion where its endpoint does not have it; return what was done.

    For every segment of the shard (the register step's rows), the version holding
    `champion` in the registry is deployed on the segment's endpoint (created on
    first use) unless it is there already: with all the traffic on an empty
    endpoint, else as a canary at `serving.canary_percent` next to what serves.
    A retried or repeated step deploys nothing twice. Only the platform interface
    is used, so the same reconcile runs on the twin and on Vertex.

    Returns:
        One release per deploy: endpoint, deployed model id, version, the split before and
        after, whether it is a canary, `reconcile`: True when the version was not
        promoted by this run (a champion an earlier run registered but never deployed),
        and the deployment resource pool it went into (None without co-hosting).
    """
    settings = DeploymentSettings(
        machine_type=spec.serving.machine_type,
        min_replica_count=spec.serving.min_replica_count,
        max_replica_count=spec.serving.max_replica_count,
        autoscaling_target_cpu=spec.serving.autoscaling_target_cpu,
        deployment_resource_pool=spec.serving_pool,
    )
    releases: list[dict[str, Any]] = []
    if not spec.serving.deploy:
        return releases
    for registration in registrations:
        model = registration["model_id"]
        try:
            champion = platform.registry.get_version(model, CHAMPION_ALIAS)
        except NotFoundError:
            continue  # never registered, or no version has won yet: nothing should serve
        endpoint = _ensure_endpoint(platform, spec, model, registration["segment"])
        if any(m.model_id == model and m.version_id == champion.version_id for m in endpoint.deployed_models):
            continue  # serving already (a retried step, or nothing changed)
        previous = dict(endpoint.traffic_split)
        percent = 100 if not endpoint.deployed_models else spec.serving.canary_percent
        endpoint, deployed_id = platform.endpoints.deploy(
            model, model, champion.version_id, traffic_percentage=percent, settings=settings
        )
        promoted_now = bool(registration.get("promoted")) and registration.get("version_id") == champion.version_id
        releases.append(
            {
                "segment": registration["segment"],
                "endpoint_id": model,
                "deployed_model_id": deployed_id,
                "model_id": model,
                "version_id": champion.version_id,
                "previous_split": previous,
                "split": endpoint.traffic_split,
                "canary": bool(previous),
                "reconcile": not promoted_now,
                "deployment_resource_pool": settings.deployment_resource_pool,
            }
        )
    return releases


def promote(platform: Platform, endpoint_id: str, deployed_model_id: str | None = None) -> Endpoint:
    """Give the canary (default: the newest deployed model) all traffic and undeploy the others."""
    endpoint = platform.endpoints.get(endpoint_id)
    canary = deployed_model_id or _newest(endpoint)
    endpoint.deployed(canary)
    others = [m.deployed_model_id for m in endpoint.deployed_models if m.deployed_model_id != canary]
    if others:
        platform.endpoints.update_traffic(endpoint_id, {canary: 100, **{o: 0 for o in others}})
    for other in others:
        endpoint = platform.endpoints.undeploy(endpoint_id, other)
    return platform.endpoints.get(endpoint_id)


def rollback(
    platform: Platform,
    endpoint_id: str,
    deployed_model_id: str | None = None,
    previous_split: dict[str, int] | None = None,
) -> Endpoint:
    """Undeploy the canary (default: the newest) and restore `previous_split` (default: Vertex's rescaling).

    A canary that held `champion` gives it (and `default`, which moves with it) back to the
    version of its model now taking the most traffic: deploy reconciles endpoints to
    `champion`, and left on the withdrawn version it would be deployed again by the next run.
    """
    endpoint = platform.endpoints.get(endpoint_id)
    canary = deployed_model_id or _newest(endpoint)
    withdrawn = endpoint.deployed(canary)
    if len(endpoint.deployed_models) == 1:
        raise UserError(
            f"endpoint {endpoint_id!r} serves only deployed model {canary}; there is nothing to roll back to"
        )
    restored = None
    if previous_split:
        restored = {k: v for k, v in previous_split.items() if k != canary} | {canary: 0}
    after = platform.endpoints.undeploy(endpoint_id, canary, restored)
    _return_champion(platform, withdrawn, after)
    return after


def promote_fleet(platform: Platform, fleet: str) -> list[dict[str, Any]]:
    """Promote the canary of every endpoint of the fleet that has one."""
    done = []
    for endpoint in _with_canary(platform, fleet):
        canary = _newest(endpoint)
        promote(platform, endpoint.endpoint_id, canary)
        done.append({"endpoint_id": endpoint.endpoint_id, "promoted": canary})
    return done


def rollback_fleet(platform: Platform, fleet: str) -> list[dict[str, Any]]:
    """Roll back the canary of every endpoint of the fleet that has one (Vertex's proportional rescaling)."""
    done = []
    for endpoint in _with_canary(platform, fleet):
        canary = _newest(endpoint)
        after = rollback(platform, endpoint.endpoint_id, canary)
        done.append({"endpoint_id": endpoint.endpoint_id, "rolled_back": canary, "split": after.traffic_split})
    return done


def _with_canary(platform: Platform, fleet: str) -> list[Endpoint]:
    return [e for e in platform.endpoints.list({LABEL_FLEET: fleet}) if len(e.deployed_models) > 1]


def _ensure_endpoint(platform: Platform, spec: FleetSpec, endpoint_id: str, segment: str) -> Endpoint:
    try:
        return platform.endpoints.get(endpoint_id)
    except NotFoundError:
        labels = {**spec.registry.labels, LABEL_FLEET: spec.name, LABEL_SEGMENT: label_value(segment)}
        return platform.endpoints.create(
            endpoint_id,
            display_name=f"{spec.name} {segment}"[:128],
            labels=labels,
            request_logging_rate=spec.serving.request_logging_rate,
        )


def _return_champion(platform: Platform, withdrawn: DeployedModel, endpoint: Endpoint) -> None:
    """Move `champion` and `default` from a rolled-back version to the one of its model serving most."""
    model = withdrawn.model_id
    try:
        champion = platform.registry.get_version(model, CHAMPION_ALIAS)
    except NotFoundError:
        return
    if champion.version_id != withdrawn.version_id:
        return  # the canary was not the champion: nothing to give back
    same_model = [m for m in endpoint.deployed_models if m.model_id == model]
    if not same_model:
        return
    serving = max(same_model, key=lambda m: endpoint.traffic_split.get(m.deployed_model_id, 0))
    if serving.version_id != withdrawn.version_id:
        platform.registry.add_version_aliases(model, serving.version_id, [CHAMPION_ALIAS, DEFAULT_ALIAS])


def _newest(endpoint: Endpoint) -> str:
    if not endpoint.deployed_models:
        raise UserError(f"endpoint {endpoint.endpoint_id!r} has no deployed models")
    return max(endpoint.deployed_models, key=lambda m: m.create_time).deployed_model_id
