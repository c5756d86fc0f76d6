"""Vertex endpoints through the real google-cloud-aiplatform SDK against the loopback Vertex stand-in."""

import dataclasses

import pytest
from google.auth.credentials import AnonymousCredentials

from fleetops.errors import NotFoundError, PlatformError, UserError
from fleetops.platform.endpoints import DeploymentSettings
from fleetops.spec import PREBUILT_TF_IMAGE
from tests.fake_vertex import FakeVertex, Refusal, connect_to

SA = "runner@proj-1.iam.gserviceaccount.com"


@pytest.fixture
def vertex(artifact_dirs):
    with FakeVertex() as fake:
        # Pacing is tested in tests/test_vertex_calls.py: here it would add its waits to the back-off's.
        platform = connect_to(fake, f"&service_account={SA}&labels=team:ml&writes_per_minute=60000")
        for i, artifact in enumerate(artifact_dirs[:2]):
            platform.registry.upload_version(
                "churn-north", artifact, artifact_uri=f"gs://b/m{i}", serving_image="img", is_default_version=i == 0
            )
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


def test_undeploy_with_an_empty_traffic_split_is_refused_as_the_sdk_refuses_it(vertex):
    from google.cloud import aiplatform

    vertex.endpoints.create("churn-north")
    _, first = vertex.endpoints.deploy("churn-north", "churn-north", "1")
    _, canary = vertex.endpoints.deploy("churn-north", "churn-north", "2", traffic_percentage=10)
    sent = len(vertex.fake.requests)
    refused = rf"traffic_split \{{\}} refused for undeploying '{canary}': .* sum to exactly 100"
    with pytest.raises(UserError, match=refused):
        vertex.endpoints.undeploy("churn-north", canary, traffic_split={})
    assert [r for r in vertex.fake.requests[sent:] if r["method"] != "GET"] == []
    # What we mirror: the SDK itself refuses it, before its undeployModel request.
    sdk_endpoint = aiplatform.Endpoint(vertex.endpoints.name("churn-north"), credentials=AnonymousCredentials())
    with pytest.raises(ValueError, match="Sum of all traffic within traffic split needs to be 100"):
        sdk_endpoint.undeploy(deployed_model_id=canary, traffic_split={})
    assert vertex.fake.calls("POST", ":undeployModel") == []


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


# -- co-hosting: a deployment resource pool shared by a fleet's endpoints ---------------------------

POOL = "projects/proj-1/locations/us-central1/deploymentResourcePools/churn-pool"
POOLED = DeploymentSettings(
    machine_type="n1-standard-4",
    min_replica_count=1,
    max_replica_count=3,
    autoscaling_target_cpu=70,
    deployment_resource_pool="churn-pool",
)


@pytest.fixture
def pooled(vertex, artifact_dirs):
    """churn-north (already there, custom container) and churn-south: two versions each for the TF container."""
    for artifact in artifact_dirs[:2]:
        (artifact / "savedmodel").mkdir()
        (artifact / "savedmodel" / "saved_model.pb").write_bytes(b"graph")
    for model in ("churn-tf", "churn-south"):
        for i, artifact in enumerate(artifact_dirs[:2]):
            vertex.registry.upload_version(
                model, artifact, artifact_uri=f"gs://b/{model}/m{i}", serving_image=PREBUILT_TF_IMAGE
            )
        vertex.endpoints.create(model)
    return vertex


def test_deploys_into_a_pool_created_once_and_shared(pooled):
    fake = pooled.fake
    endpoint, first = pooled.endpoints.deploy("churn-tf", "churn-tf", "1", settings=POOLED)
    [create] = fake.calls("POST", "/deploymentResourcePools")
    assert create["body"]["deploymentResourcePoolId"] == "churn-pool"
    resources = create["body"]["deploymentResourcePool"]["dedicatedResources"]
    assert resources["machineSpec"] == {"machineType": "n1-standard-4"}
    assert (resources["minReplicaCount"], resources["maxReplicaCount"]) == (1, 3)
    assert resources["autoscalingMetricSpecs"][0]["target"] == 70
    deployed = fake.calls("POST", ":deployModel")[0]["body"]["deployedModel"]
    assert deployed["sharedResources"] == POOL
    assert "dedicatedResources" not in deployed and "automaticResources" not in deployed
    assert deployed["serviceAccount"] == SA
    # Read back with the pool's resources.
    assert endpoint.deployed(first).settings == dataclasses.replace(POOLED, service_account=SA)

    # The second segment reuses the pool: read, not created again.
    endpoint, south = pooled.endpoints.deploy("churn-south", "churn-south", "1", settings=POOLED)
    assert len(fake.calls("POST", "/deploymentResourcePools")) == 1
    assert fake.calls("POST", ":deployModel")[1]["body"]["deployedModel"]["sharedResources"] == POOL
    assert endpoint.traffic_split == {south: 100}

    # A canary in the pool next to the serving model, on the segment's own endpoint.
    endpoint, canary = pooled.endpoints.deploy("churn-tf", "churn-tf", "2", traffic_percentage=10, settings=POOLED)
    assert endpoint.traffic_split == {first: 90, canary: 10}
    assert endpoint.deployed(canary).settings.deployment_resource_pool == "churn-pool"
    listed = {e.endpoint_id: e for e in pooled.endpoints.list()}
    assert {m.settings.deployment_resource_pool for m in listed["churn-south"].deployed_models} == {"churn-pool"}


def test_a_pool_created_meanwhile_by_another_deploy_is_used(pooled):
    # A shard deploying in parallel creates the pool between this deploy's read and its create.
    pooled.fake.race_pool_creation = {
        "machineSpec": {"machineType": "n1-standard-4"},
        "minReplicaCount": 1,
        "maxReplicaCount": 3,
        "autoscalingMetricSpecs": [
            {"metricName": "aiplatform.googleapis.com/prediction/online/cpu/utilization", "target": 70}
        ],
    }
    _, first = pooled.endpoints.deploy("churn-tf", "churn-tf", "1", settings=POOLED)
    [refused_create] = pooled.fake.calls("POST", "/deploymentResourcePools")  # a 409: it exists now
    assert refused_create["body"]["deploymentResourcePoolId"] == "churn-pool"
    assert pooled.endpoints.get("churn-tf").deployed(first).settings.deployment_resource_pool == "churn-pool"


def test_pool_refusals_send_no_deploy(pooled):
    fake = pooled.fake
    pooled.endpoints.create("churn-north")
    # The custom container cannot be co-hosted: refused before a pool is made.
    with pytest.raises(UserError, match=r"version 1 of model 'churn-north' cannot be deployed into deployment "):
        pooled.endpoints.deploy("churn-north", "churn-north", "1", settings=POOLED)
    assert fake.calls("POST", "/deploymentResourcePools") == [] and fake.calls("POST", ":deployModel") == []

    pooled.endpoints.deploy("churn-tf", "churn-tf", "1", settings=POOLED)
    bigger = DeploymentSettings(
        machine_type="n1-standard-8", max_replica_count=3, deployment_resource_pool="churn-pool"
    )
    sent = len(fake.calls("POST", ":deployModel"))
    with pytest.raises(UserError) as refused:
        pooled.endpoints.deploy("churn-south", "churn-south", "1", settings=bigger)
    message = str(refused.value)
    assert "pool 'churn-pool' exists with other resources than asked for: machine_type 'n1-standard-8'" in message
    assert "(the pool has 'n1-standard-4')" in message and "serving.pool_id" in message
    assert "max_replica_count" not in message  # the same count is no difference
    assert len(fake.calls("POST", ":deployModel")) == sent


def test_a_deploy_refused_with_429_is_retried_with_back_off(pooled):
    fake, waits = pooled.fake, pooled.time.sleeps
    # e.g. more than 20 concurrent deploy requests into the pool
    fake.refusals.append(Refusal(429, count=2, method="POST", path_suffix=":deployModel"))
    endpoint, first = pooled.endpoints.deploy("churn-tf", "churn-tf", "1", settings=POOLED)
    assert len(waits) == 2 and 0 <= waits[0] <= 1.0 and 0 <= waits[1] <= 2.0  # full jitter under 1 s, 2 s
    assert len(fake.calls("POST", ":deployModel")) == 3
    assert endpoint.traffic_split == {first: 100}

    fake.refusals.append(Refusal(429, count=10, method="POST", path_suffix=":deployModel"))
    with pytest.raises(PlatformError) as refused:
        pooled.endpoints.deploy("churn-south", "churn-south", "1", settings=POOLED)
    message = str(refused.value)
    assert "models/churn-south@1 to endpoint 'churn-south'" in message
    assert "failed after 8 attempt(s); last error: TooManyRequests: 429" in message
    assert len(fake.calls("POST", ":deployModel")) == 3 + 8
    assert pooled.endpoints.get("churn-south").deployed_models == ()


def test_a_deploy_that_happened_before_its_answer_was_lost_is_not_sent_again(pooled):
    fake = pooled.fake
    fake.refusals.append(Refusal(503, count=1, after_handling=True, method="POST", path_suffix=":deployModel"))
    endpoint, deployed = pooled.endpoints.deploy("churn-tf", "churn-tf", "1", settings=POOLED)
    assert len(fake.calls("POST", ":deployModel")) == 1
    assert [m.deployed_model_id for m in endpoint.deployed_models] == [deployed]

    fake.refusals.append(Refusal(503, count=1, after_handling=True, method="POST", path_suffix="/endpoints"))
    created = pooled.endpoints.create("churn-east")  # created, then a 503: found by its id, no 409
    assert created.endpoint_id == "churn-east" and len(fake.calls("POST", "/endpoints")) == 3
