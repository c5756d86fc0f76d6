"""Endpoints of the local twin: deploys by version or alias, Vertex's traffic rules, transactional changes."""

import pytest

from fleetops.errors import NotFoundError, RegistryRuleError, UserError
from fleetops.platform.endpoints import DeploymentSettings


@pytest.fixture
def twin(platform, artifact_dirs):
    platform.registry.upload_version("churn-north", artifact_dirs[0], aliases=["champion"])
    platform.registry.upload_version("churn-north", artifact_dirs[1], is_default_version=False)
    platform.registry.upload_version("churn-north", artifact_dirs[2], is_default_version=False)
    return platform


def test_create_deploy_canary_and_rules(twin):
    endpoints = twin.endpoints
    created = endpoints.create("churn-north", labels={"fleet": "churn"}, request_logging_rate=0.5)
    assert created.resource_name == "projects/local/locations/local/endpoints/churn-north"
    assert created.traffic_split == {} and created.request_logging_rate == 0.5
    first, first_id = endpoints.deploy("churn-north", "churn-north", "champion")
    assert first.traffic_split == {first_id: 100} and first.deployed(first_id).version_id == "1"
    canary, canary_id = endpoints.deploy(
        "churn-north", "churn-north", "2", traffic_percentage=10, settings=DeploymentSettings(max_replica_count=3)
    )
    assert canary.traffic_split == {first_id: 90, canary_id: 10}
    assert canary.deployed(canary_id).settings.max_replica_count == 3
    third, third_id = endpoints.deploy(
        "churn-north", "churn-north", "3", traffic_split={first_id: 70, canary_id: 20, "0": 10}
    )
    assert third.traffic_split == {first_id: 70, canary_id: 20, third_id: 10}
    assert endpoints.list({"fleet": "churn"})[0].endpoint_id == "churn-north"


def test_refusals_leave_the_endpoint_as_it_was(twin):
    endpoints = twin.endpoints
    endpoints.create("e1")
    _, first_id = endpoints.deploy("e1", "churn-north", "1")
    before = endpoints.get("e1")
    with pytest.raises(NotFoundError, match="has no version or alias 'stable'"):
        endpoints.deploy("e1", "churn-north", "stable", traffic_percentage=10)
    with pytest.raises(UserError, match="sums to 90"):
        endpoints.deploy("e1", "churn-north", "2", traffic_split={first_id: 80, "0": 10})
    assert endpoints.get("e1") == before
    _, idle_id = endpoints.deploy("e1", "churn-north", "2", traffic_percentage=0)
    assert endpoints.get("e1").traffic_split == {first_id: 100, idle_id: 0}
    with pytest.raises(UserError, match="would leave the remaining traffic split at 0%"):
        endpoints.undeploy("e1", first_id)
    assert endpoints.get("e1").traffic_split == {first_id: 100, idle_id: 0}
    with pytest.raises(UserError, match="already exists"):
        endpoints.create("e1")
    with pytest.raises(UserError, match="endpoint id 'E_1' is invalid"):
        endpoints.create("E_1")
    with pytest.raises(UserError, match="request_logging_rate 1.5"):
        endpoints.create("e2", request_logging_rate=1.5)
    with pytest.raises(NotFoundError, match=r"endpoint 'nope' does not exist; endpoints: \['e1'\]"):
        endpoints.get("nope")


def test_first_deploy_must_take_all_traffic(twin):
    twin.endpoints.create("e1")
    with pytest.raises(UserError, match="first deployed model must take 100"):
        twin.endpoints.deploy("e1", "churn-north", "1", traffic_percentage=30)
    assert twin.endpoints.get("e1").deployed_models == ()  # no half-deployed model


EMPTY_UNDEPLOY_SPLIT = r"traffic_split \{\} refused for undeploying '\d+': .* must sum to exactly 100 over the models"


def test_undeploy_with_an_empty_traffic_split_is_refused_as_the_sdk_refuses_it(twin):
    endpoints = twin.endpoints
    endpoints.create("e1")
    _, first = endpoints.deploy("e1", "churn-north", "1")
    _, canary = endpoints.deploy("e1", "churn-north", "2", traffic_percentage=10)
    before = endpoints.get("e1")
    for undeployed in (canary, first):
        with pytest.raises(UserError, match=EMPTY_UNDEPLOY_SPLIT):
            endpoints.undeploy("e1", undeployed, traffic_split={})
    assert endpoints.get("e1") == before
    endpoints.undeploy("e1", canary)
    with pytest.raises(UserError, match=EMPTY_UNDEPLOY_SPLIT):  # not even for the last model
        endpoints.undeploy("e1", first, traffic_split={})
    assert endpoints.undeploy("e1", first).deployed_models == ()


def test_undeploy_update_and_delete(twin):
    endpoints = twin.endpoints
    endpoints.create("e1")
    _, a = endpoints.deploy("e1", "churn-north", "1")
    _, b = endpoints.deploy("e1", "churn-north", "2", traffic_percentage=25)
    assert endpoints.update_traffic("e1", {a: 0, b: 100}).traffic_split == {a: 0, b: 100}
    with pytest.raises(UserError, match="not deployed on 'e1'"):
        endpoints.update_traffic("e1", {"999": 100})
    with pytest.raises(UserError, match="has deployed models"):
        endpoints.delete("e1")
    with pytest.raises(RegistryRuleError, match="is deployed on endpoints \\['e1'\\]"):
        twin.registry.delete_version("churn-north", "2")
    assert endpoints.undeploy("e1", a).traffic_split == {b: 100}
    assert endpoints.undeploy("e1", b).traffic_split == {}
    endpoints.delete("e1")
    assert endpoints.list() == []


def test_revision_changes_with_every_write(twin):
    endpoints = twin.endpoints
    start = endpoints.revision()
    endpoints.create("e1")
    endpoints.deploy("e1", "churn-north", "1")
    assert endpoints.revision() == start + 2
