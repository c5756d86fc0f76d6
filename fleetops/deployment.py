"""Releasing models to endpoints: a canary for each new champion, then promote or roll back.

One endpoint per fleet member (its id is the model id), so each segment's
traffic goes to its own model. A new champion joins its endpoint with the
spec's `canary_percent` next to the serving model; `promote` gives it all the
traffic and undeploys the rest; `rollback` restores the split recorded before
the canary and undeploys it.
"""

from __future__ import annotations

from typing import Any

from fleetops.errors import NotFoundError, UserError
from fleetops.names import LABEL_FLEET, LABEL_SEGMENT, label_value
from fleetops.platform import Platform
from fleetops.platform.endpoints import DeploymentSettings, Endpoint
from fleetops.spec import FleetSpec


def deploy_champions(spec: FleetSpec, platform: Platform, registrations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Canary each newly promoted champion on its endpoint (created on first use); return what was done."""
    settings = DeploymentSettings(
        machine_type=spec.serving.machine_type,
        min_replica_count=spec.serving.min_replica_count,
        max_replica_count=spec.serving.max_replica_count,
        autoscaling_target_cpu=spec.serving.autoscaling_target_cpu,
    )
    releases: list[dict[str, Any]] = []
    if not spec.serving.deploy:
        return releases
    for registration in registrations:
        if not registration["promoted"]:
            continue
        endpoint_id = registration["model_id"]
        endpoint = _ensure_endpoint(platform, spec, endpoint_id, registration["segment"])
        if any(
            m.version_id == registration["version_id"] and m.model_id == endpoint_id for m in endpoint.deployed_models
        ):
            continue  # a retried step: this version is already on its endpoint
        previous = dict(endpoint.traffic_split)
        percent = 100 if not endpoint.deployed_models else spec.serving.canary_percent
        endpoint, deployed_id = platform.endpoints.deploy(
            endpoint_id,
            registration["model_id"],
            registration["version_id"],
            traffic_percentage=percent,
            settings=settings,
        )
        releases.append(
            {
                "segment": registration["segment"],
                "endpoint_id": endpoint_id,
                "deployed_model_id": deployed_id,
                "model_id": registration["model_id"],
                "version_id": registration["version_id"],
                "previous_split": previous,
                "split": endpoint.traffic_split,
                "canary": bool(previous),
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
    """Undeploy the canary (default: the newest) and restore `previous_split` (default: Vertex's rescaling)."""
    endpoint = platform.endpoints.get(endpoint_id)
    canary = deployed_model_id or _newest(endpoint)
    endpoint.deployed(canary)
    if len(endpoint.deployed_models) == 1:
        raise UserError(
            f"endpoint {endpoint_id!r} serves only deployed model {canary}; there is nothing to roll back to"
        )
    restored = None
    if previous_split:
        restored = {k: v for k, v in previous_split.items() if k != canary} | {canary: 0}
    return platform.endpoints.undeploy(endpoint_id, canary, restored)


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


def _newest(endpoint: Endpoint) -> str:
    if not endpoint.deployed_models:
        raise UserError(f"endpoint {endpoint.endpoint_id!r} has no deployed models")
    return max(endpoint.deployed_models, key=lambda m: m.create_time).deployed_model_id
