"""Canary releases of new champions, promote and rollback, on the local twin."""

import pytest

from fleetops.deployment import deploy_champions, promote, promote_fleet, rollback, rollback_fleet
from fleetops.errors import UserError
from fleetops.spec import parse_spec


@pytest.fixture
def fleet(platform, artifact_dirs, spec):
    for i, artifact in enumerate(artifact_dirs):
        platform.registry.upload_version("churn-north", artifact, is_default_version=i == 0)
    return platform, spec


def _registration(version, promoted=True):
    return {"segment": "north", "model_id": "churn-north", "version_id": version, "promoted": promoted}


def test_first_champion_takes_the_endpoint_then_canaries_follow(fleet):
    platform, spec = fleet
    [first] = deploy_champions(spec, platform, [_registration("1")])
    assert not first["canary"] and first["split"] == {first["deployed_model_id"]: 100}
    endpoint = platform.endpoints.get("churn-north")
    assert endpoint.labels == {"team": "growth", "fleet": "churn", "segment": "north"}
    assert endpoint.request_logging_rate == 1.0

    assert deploy_champions(spec, platform, [_registration("2", promoted=False)]) == []  # challengers stay put
    [canary] = deploy_champions(spec, platform, [_registration("2")])
    assert canary["canary"] and canary["previous_split"] == {first["deployed_model_id"]: 100}
    assert canary["split"] == {first["deployed_model_id"]: 90, canary["deployed_model_id"]: 10}
    assert deploy_champions(spec, platform, [_registration("2")]) == []  # a retried step deploys nothing twice


def test_promote_moves_all_traffic_and_undeploys_the_old_model(fleet):
    platform, spec = fleet
    deploy_champions(spec, platform, [_registration("1")])
    [canary] = deploy_champions(spec, platform, [_registration("2")])
    after = promote(platform, "churn-north")
    assert after.traffic_split == {canary["deployed_model_id"]: 100}
    assert [m.version_id for m in after.deployed_models] == ["2"]


def test_rollback_restores_the_recorded_split(fleet):
    platform, spec = fleet
    base = spec.model_dump(mode="json")
    spec = parse_spec(base | {"serving": base["serving"] | {"canary_percent": 30}})
    [a] = deploy_champions(spec, platform, [_registration("1")])
    [b] = deploy_champions(spec, platform, [_registration("2")])
    platform.endpoints.update_traffic("churn-north", {a["deployed_model_id"]: 55, b["deployed_model_id"]: 45})
    [c] = deploy_champions(spec, platform, [_registration("3")])
    after = rollback(platform, "churn-north", c["deployed_model_id"], c["previous_split"])
    assert after.traffic_split == c["previous_split"] == {a["deployed_model_id"]: 55, b["deployed_model_id"]: 45}


def test_fleet_wide_promote_and_rollback(fleet):
    platform, spec = fleet
    deploy_champions(spec, platform, [_registration("1")])
    [canary] = deploy_champions(spec, platform, [_registration("2")])
    assert rollback_fleet(platform, "churn") == [
        {"endpoint_id": "churn-north", "rolled_back": canary["deployed_model_id"], "split": {"1": 100}}
    ]
    with pytest.raises(UserError, match="nothing to roll back to"):
        rollback(platform, "churn-north")
    [again] = deploy_champions(spec, platform, [_registration("3")])
    assert promote_fleet(platform, "churn") == [{"endpoint_id": "churn-north", "promoted": again["deployed_model_id"]}]
    assert promote_fleet(platform, "churn") == []  # nothing left to promote
