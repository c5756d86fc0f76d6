"""Vertex endpoints through the real google-cloud-aiplatform SDK against the loopback Vertex stand-in."""

import pytest
from google.auth.credentials import AnonymousCredentials

from fleetops.errors import NotFoundError, UserError
from fleetops.platform import connect
from fleetops.platform.endpoints import DeploymentSettings
from tests.fake_vertex import FakeVertex

SA = "runner@proj-1.iam.gserviceaccount.com"


@pytest.fixture
def vertex(artifact_dirs):
    with FakeVertex() as fake:
        platform = connect(
            f"vertex://proj-1/us-central1?api_endpoint={fake.endpoint}&service_account={SA}&labels=team:ml",
            credentials=AnonymousCredentials(),
        )
        for i, artifact in enumerate(artifact_dirs[:2]):
            platform.registry.upload_version(
                "churn-north", artifact, artifact_uri=f"gs://b/m{i}", serving_image="img", is_default_version=i == 0
            )
        platform.fake = fake
        yield platform


def test_create_with_request_response_logging(vertex):
    endpoint = vertex.endpoints.create("churn-north", labels={"fleet": "churn"}, request_logging_rate=0.25)
    request = vertex.fake.calls("POST", "/endpoints")[0]
    assert "endpointId=churn-north" in request["query"]
    body = request["body"]
    assert body["labels"] == {"team": "ml", "fleet": "churn"}
    assert body["predictRequestResponseLoggingConfig"] == {
        "enabled": True,
        "samplingRate": 0.25,
        "bigqueryDestination": {"outputUri": "bq://proj-1.fleetops_request_logs.churn_north"},
    }
    assert endpoint.request_logging_rate == 0.25
    assert endpoint.resource_name == "projects/proj-1/locations/us-central1/endpoints/churn-north"


def test_deploy_canary_split_and_resources(vertex):
    vertex.endpoints.create("churn-north")
    settings = DeploymentSettings(
        machine_type="n1-standard-4", min_replica_count=2, max_replica_count=5, autoscaling_target_cpu=60
    )
    endpoint, first = vertex.endpoints.deploy("churn-north", "churn-north", "default", settings=settings)
    deploy = vertex.fake.calls("POST", ":deployModel")[0]["body"]
    assert deploy["trafficSplit"] == {"0": 100}
    model = deploy["deployedModel"]
    assert model["model"] == "projects/proj-1/locations/us-central1/models/churn-north@1"
    assert model["serviceAccount"] == SA
    resources = model["dedicatedResources"]
    assert resources["machineSpec"]["machineType"] == "n1-standard-4"
    assert (resources["minReplicaCount"], resources["maxReplicaCount"]) == (2, 5)
    assert resources["autoscalingMetricSpecs"][0]["target"] == 60
    assert endpoint.traffic_split == {first: 100}

    endpoint, canary = vertex.endpoints.deploy("churn-north", "churn-north", "2", traffic_percentage=10)
    assert vertex.fake.calls("POST", ":deployModel")[1]["body"]["trafficSplit"] == {first: 90, "0": 10}
    assert endpoint.traffic_split == {first: 90, canary: 10}
    assert endpoint.deployed(canary).version_id == "2"


def test_refusals_send_nothing(vertex):
    vertex.endpoints.create("churn-north")
    _, first = vertex.endpoints.deploy("churn-north", "churn-north", "1")
    vertex.endpoints.deploy("churn-north", "churn-north", "2", traffic_percentage=0)
    sent = len(vertex.fake.requests)
    with pytest.raises(UserError, match="sums to 90: Vertex requires"):
        vertex.endpoints.deploy("churn-north", "churn-north", "2", traffic_split={first: 80, "0": 10})
    with pytest.raises(UserError, match="would leave the remaining traffic split at 0%"):
        vertex.endpoints.undeploy("churn-north", first)
    with pytest.raises(UserError, match="has deployed models"):
        vertex.endpoints.delete("churn-north")
    assert [r for r in vertex.fake.requests[sent:] if r["method"] != "GET"] == []


def test_promote_and_undeploy(vertex):
    vertex.endpoints.create("churn-north")
    _, first = vertex.endpoints.deploy("churn-north", "churn-north", "1")
    _, canary = vertex.endpoints.deploy("churn-north", "churn-north", "2", traffic_percentage=10)
    assert vertex.endpoints.update_traffic("churn-north", {first: 0, canary: 100}).traffic_split == {
        first: 0,
        canary: 100,
    }
    patch = vertex.fake.calls("PATCH")[0]
    assert "updateMask=trafficSplit" in patch["query"] and patch["body"]["trafficSplit"] == {first: 0, canary: 100}
    assert vertex.endpoints.undeploy("churn-north", first).traffic_split == {canary: 100}
    assert vertex.fake.calls("POST", ":undeployModel")[0]["body"] == {
        "deployedModelId": first,
        "trafficSplit": {canary: 100},
    }


def test_a_missing_endpoint_is_not_found_as_on_the_twin(vertex):
    # The SDK reads an endpoint lazily; `deploy_champions` creates an endpoint on this error.
    with pytest.raises(NotFoundError, match="endpoint 'churn-west' does not exist in proj-1/us-central1"):
        vertex.endpoints.get("churn-west")
