"""Canary releases of new champions, promote and rollback, on the local twin (and reconcile on Vertex)."""

import pytest
from google.auth.credentials import AnonymousCredentials

from fleetops.deployment import deploy_champions, promote, promote_fleet, rollback, rollback_fleet
from fleetops.errors import UserError
from fleetops.platform import connect
from fleetops.spec import parse_spec
from tests.fake_vertex import FakeVertex


@pytest.fixture
def fleet(platform, artifact_dirs, spec):
    for i, artifact in enumerate(artifact_dirs):
        platform.registry.upload_version("churn-north", artifact, is_default_version=i == 0)
    return platform, spec


def _registration(platform, version, promoted=True):
    """The register step's row for churn-north v`version`; a winner takes `champion` as `register_shard` gives it."""
    if promoted:
        platform.registry.add_version_aliases("churn-north", version, ["champion", "default"])
    return {"segment": "north", "model_id": "churn-north", "version_id": version, "promoted": promoted}


def _serving(platform):
    endpoint = platform.endpoints.get("churn-north")
    return {m.version_id: endpoint.traffic_split[m.deployed_model_id] for m in endpoint.deployed_models}


def test_first_champion_takes_the_endpoint_then_canaries_follow(fleet):
    platform, spec = fleet
    [first] = deploy_champions(spec, platform, [_registration(platform, "1")])
    assert not first["canary"] and first["split"] == {first["deployed_model_id"]: 100}
    assert not first["reconcile"]  # promoted by this run
    endpoint = platform.endpoints.get("churn-north")
    assert endpoint.labels == {"team": "growth", "fleet": "churn", "segment": "north"}
    assert endpoint.request_logging_rate == 1.0

    # Challengers stay put.
    assert deploy_champions(spec, platform, [_registration(platform, "2", promoted=False)]) == []
    [canary] = deploy_champions(spec, platform, [_registration(platform, "2")])
    assert canary["canary"] and canary["previous_split"] == {first["deployed_model_id"]: 100}
    assert canary["split"] == {first["deployed_model_id"]: 90, canary["deployed_model_id"]: 10}
    # A retried step deploys nothing twice.
    assert deploy_champions(spec, platform, [_registration(platform, "2")]) == []


def test_a_champion_whose_deploy_never_happened_is_deployed_by_the_next_deploy(fleet):
    """A run killed between register and deploy: the next run's deploy deploys the champion it left."""
    platform, spec = fleet
    platform.registry.add_version_aliases("churn-north", "1", ["champion"])  # registered, then the run died
    # The rerun's model does not beat the champion: its row is not promoted.
    [release] = deploy_champions(spec, platform, [_registration(platform, "2", promoted=False)])
    assert release["version_id"] == "1" and release["reconcile"] and not release["canary"]
    assert _serving(platform) == {"1": 100}
    assert deploy_champions(spec, platform, [_registration(platform, "2", promoted=False)]) == []

    # A second champion is left undeployed next to the serving one: it goes out as a canary.
    platform.registry.add_version_aliases("churn-north", "2", ["champion", "default"])
    [canary] = deploy_champions(spec, platform, [_registration(platform, "3", promoted=False)])
    assert (canary["version_id"], canary["canary"], canary["reconcile"]) == ("2", True, True)
    assert _serving(platform) == {"1": 90, "2": 10}
    # Rows of segments that failed in training carry no version; their champion is reconciled too.
    failed = {"segment": "north", "model_id": "churn-north", "failed": "diverged", "promoted": False}
    assert deploy_champions(spec, platform, [failed]) == []
    # No champion anywhere, or serving turned off: nothing is deployed.
    ghost = {"segment": "west", "model_id": "churn-west", "version_id": "1", "promoted": False}
    assert deploy_champions(spec, platform, [ghost]) == []
    base = spec.model_dump(mode="json")
    off = parse_spec(base | {"serving": base["serving"] | {"deploy": False}})
    platform.registry.add_version_aliases("churn-north", "3", ["champion"])
    assert deploy_champions(off, platform, [_registration(platform, "3", promoted=False)]) == []


def test_promote_moves_all_traffic_and_undeploys_the_old_model(fleet):
    platform, spec = fleet
    deploy_champions(spec, platform, [_registration(platform, "1")])
    [canary] = deploy_champions(spec, platform, [_registration(platform, "2")])
    after = promote(platform, "churn-north")
    assert after.traffic_split == {canary["deployed_model_id"]: 100}
    assert [m.version_id for m in after.deployed_models] == ["2"]


def test_rollback_restores_the_recorded_split(fleet):
    platform, spec = fleet
    base = spec.model_dump(mode="json")
    spec = parse_spec(base | {"serving": base["serving"] | {"canary_percent": 30}})
    [a] = deploy_champions(spec, platform, [_registration(platform, "1")])
    [b] = deploy_champions(spec, platform, [_registration(platform, "2")])
    platform.endpoints.update_traffic("churn-north", {a["deployed_model_id"]: 55, b["deployed_model_id"]: 45})
    [c] = deploy_champions(spec, platform, [_registration(platform, "3")])
    after = rollback(platform, "churn-north", c["deployed_model_id"], c["previous_split"])
    assert after.traffic_split == c["previous_split"] == {a["deployed_model_id"]: 55, b["deployed_model_id"]: 45}
    # `champion` goes back to the version serving most, so no later deploy brings the canary back.
    assert platform.registry.get_version("churn-north", "champion").version_id == "1"
    assert platform.registry.get_version("churn-north").version_id == "1"
    assert deploy_champions(spec, platform, [_registration(platform, "3", promoted=False)]) == []


def test_fleet_wide_promote_and_rollback(fleet):
    platform, spec = fleet
    deploy_champions(spec, platform, [_registration(platform, "1")])
    [canary] = deploy_champions(spec, platform, [_registration(platform, "2")])
    assert rollback_fleet(platform, "churn") == [
        {"endpoint_id": "churn-north", "rolled_back": canary["deployed_model_id"], "split": {"1": 100}}
    ]
    assert platform.registry.get_version("churn-north", "champion").version_id == "1"
    with pytest.raises(UserError, match="nothing to roll back to"):
        rollback(platform, "churn-north")
    [again] = deploy_champions(spec, platform, [_registration(platform, "3")])
    assert promote_fleet(platform, "churn") == [{"endpoint_id": "churn-north", "promoted": again["deployed_model_id"]}]
    assert promote_fleet(platform, "churn") == []  # nothing left to promote


def test_reconcile_uses_only_the_platform_interface_so_vertex_does_it_too(artifact_dirs, spec):
    with FakeVertex() as fake:
        vertex = connect(
            f"vertex://proj-1/us-central1?api_endpoint={fake.endpoint}", credentials=AnonymousCredentials()
        )
        for i, artifact in enumerate(artifact_dirs[:2]):
            vertex.registry.upload_version(
                "churn-north",
                artifact,
                artifact_uri=f"gs://b/m{i}",
                serving_image="img",
                aliases=["champion"] if i == 0 else [],
                is_default_version=i == 0,
            )
        row = {"segment": "north", "model_id": "churn-north", "version_id": "2", "promoted": False}
        [release] = deploy_champions(spec, vertex, [row])
        assert (release["version_id"], release["reconcile"], release["canary"]) == ("1", True, False)
        [deploy] = fake.calls("POST", ":deployModel")
        assert deploy["body"]["deployedModel"]["model"].endswith("models/churn-north@1")
        assert deploy["body"]["trafficSplit"] == {"0": 100}
        assert deploy_champions(spec, vertex, [row]) == []
        assert len(fake.calls("POST", ":deployModel")) == 1
