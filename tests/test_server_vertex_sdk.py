"""The high-level Vertex SDK (`aiplatform.Endpoint`) against the twin's server: what works locally works on Vertex.

The server is a real child process on loopback serving real Keras models; the SDK is the
real google-cloud-aiplatform, over REST, pointed at the server with `api_endpoint`.
`Endpoint.raw_predict` is the exception: the SDK builds its URL itself, always
`https://{location}-aiplatform.googleapis.com/...` (it ignores `api_endpoint`), so its
session gets a transport adapter that sends what it addressed there to the server over
plain HTTP, and the test checks the URL the SDK built.
"""

import dataclasses
import json
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request

import pytest
import requests
from google.api_core import exceptions as google_exceptions
from google.auth.credentials import AnonymousCredentials
from google.auth.transport.requests import AuthorizedSession
from google.cloud import aiplatform
from google.cloud.aiplatform import initializer

from fleetops.platform import connect, local_uri
from fleetops.platform.endpoints import DeploymentSettings
from tests.test_serving import GOOD

ENDPOINT = "projects/local/locations/local/endpoints/churn-north"
CHAMPION_NAME = "Churn north, champion"
CHALLENGER_NAME = "Churn north, challenger"
OTHER = dict(GOOD, tenure_months=60, contract="two_year", payment_method=None)


@pytest.fixture(scope="module")
def twin_server(tmp_path_factory, trained_models):
    """churn-north: the champion (version 1) takes all traffic, the challenger (version 2) is deployed with none.
    churn-pooled: a model co-hosted in a deployment resource pool (registered for Vertex's TensorFlow container)."""
    from fleetops.spec import PREBUILT_TF_IMAGE
    from fleetops.training.savedmodel import export_savedmodel
    from tests.conftest import ServerProcess

    root = tmp_path_factory.mktemp("sdk")
    platform = connect(local_uri(root / "home"))
    platform.registry.upload_version("churn-north", trained_models[0], display_name=CHAMPION_NAME)
    platform.registry.upload_version(
        "churn-north", trained_models[1], display_name=CHALLENGER_NAME, is_default_version=False
    )
    platform.endpoints.create("churn-north", display_name="Churn, north", labels={"fleet": "churn"})
    settings = DeploymentSettings(
        machine_type="n1-standard-4", min_replica_count=1, max_replica_count=3, autoscaling_target_cpu=70
    )
    platform.endpoints.deploy("churn-north", "churn-north", "1", settings=settings, display_name="champion")
    platform.endpoints.deploy("churn-north", "churn-north", "2", traffic_percentage=0, display_name="challenger")
    pooled = shutil.copytree(trained_models[0], root / "pooled")
    export_savedmodel(pooled)
    platform.registry.upload_version("churn-pooled", pooled, serving_image=PREBUILT_TF_IMAGE)
    platform.endpoints.create("churn-pooled")
    pool = DeploymentSettings(deployment_resource_pool="churn-pool")
    platform.endpoints.deploy("churn-pooled", "churn-pooled", "1", settings=pool)
    server = ServerProcess(platform.home)
    yield server
    server.stop()


@pytest.fixture
def sdk(twin_server):
    """aiplatform initialised for the server (REST over plain HTTP on loopback), as it was afterwards."""
    saved = dict(initializer.global_config.__dict__)
    aiplatform.init(
        project="local",
        location="us-central1",  # init takes only a Vertex region; the endpoint's full name says 'local'
        api_endpoint=f"http://127.0.0.1:{twin_server.port}",  # with the scheme, the REST transport keeps http
        api_transport="rest",
        credentials=AnonymousCredentials(),
    )
    yield aiplatform
    initializer.global_config.__dict__.clear()
    initializer.global_config.__dict__.update(saved)


def _http(server, method, path, body=None):
    """(status, headers, JSON body) of a plain HTTP request to the server."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{server.base}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def test_get_endpoint_answers_the_endpoint_resource(sdk, twin_server):
    endpoint = sdk.Endpoint(ENDPOINT)
    resource = endpoint.gca_resource
    assert resource.name == ENDPOINT and resource.display_name == "Churn, north"
    assert dict(resource.labels) == {"fleet": "churn"}
    assert dict(resource.traffic_split) == {"1": 100, "2": 0}
    champion, challenger = resource.deployed_models
    assert (champion.id, challenger.id) == ("1", "2")
    assert champion.model == challenger.model == "projects/local/locations/local/models/churn-north"
    assert (champion.model_version_id, challenger.model_version_id) == ("1", "2")
    assert (champion.display_name, challenger.display_name) == ("champion", "challenger")
    dedicated = champion.dedicated_resources
    assert dedicated.machine_spec.machine_type == "n1-standard-4"
    assert (dedicated.min_replica_count, dedicated.max_replica_count) == (1, 3)
    (autoscaling,) = dedicated.autoscaling_metric_specs
    assert autoscaling.metric_name == "aiplatform.googleapis.com/prediction/online/cpu/utilization"
    assert autoscaling.target == 70
    assert challenger.dedicated_resources.machine_spec.machine_type == "n1-standard-2"
    assert resource.create_time <= champion.create_time <= challenger.create_time == resource.update_time
    assert resource.etag
    assert endpoint.traffic_split == {"1": 100, "2": 0}

    status, _, answer = _http(twin_server, "GET", f"/v1/{ENDPOINT}")
    assert status == 200 and answer["etag"] == resource.etag
    assert answer["createTime"].endswith("Z") and answer["deployedModels"][0]["createTime"].endswith("Z")


def test_get_endpoint_of_a_missing_endpoint_is_not_found(sdk):
    endpoint = sdk.Endpoint("projects/local/locations/local/endpoints/nope")  # the SDK gets it when first read
    with pytest.raises(google_exceptions.NotFound, match="endpoint 'nope' does not exist"):
        endpoint.gca_resource  # noqa: B018


def test_predict_answers_as_vertex(sdk, twin_server):
    prediction = sdk.Endpoint(ENDPOINT).predict(instances=[GOOD, OTHER])
    assert len(prediction.predictions) == 2
    first = prediction.predictions[0]
    assert first["classes"] == ["0", "1"] and sum(first["scores"]) == pytest.approx(1, abs=1e-5)
    assert prediction.deployed_model_id == "1"
    assert prediction.model_version_id == "1"
    assert prediction.model_resource_name == "projects/local/locations/local/models/churn-north"
    assert prediction.explanations is None

    status, _, answer = _http(twin_server, "POST", f"/v1/{ENDPOINT}:predict", {"instances": [GOOD, OTHER]})
    assert status == 200
    assert set(answer) == {"predictions", "deployedModelId", "model", "modelVersionId", "modelDisplayName"}
    assert answer["modelDisplayName"] == CHAMPION_NAME  # the model's display name, not an id
    assert answer["predictions"] == prediction.predictions


def test_explain_follows_the_split_or_the_deployed_model_named(sdk, twin_server):
    endpoint = sdk.Endpoint(ENDPOINT)
    explained = endpoint.explain(instances=[GOOD])
    assert explained.deployed_model_id == "1"
    (explanation,) = explained.explanations
    attribution = explanation.attributions[0]
    assert set(attribution.feature_attributions) == set(GOOD)
    assert attribution.instance_output_value == pytest.approx(explained.predictions[0]["scores"][1], rel=1e-5)

    challenger = endpoint.explain(instances=[GOOD], deployed_model_id="2")  # no traffic, named: it answers
    assert challenger.deployed_model_id == "2"
    assert challenger.predictions != explained.predictions  # another model (another seed) scored it

    status, _, answer = _http(twin_server, "POST", f"/v1/{ENDPOINT}:explain", {"instances": [GOOD]})
    assert status == 200 and set(answer) == {"explanations", "deployedModelId", "predictions"}


def test_explain_with_a_deployed_model_not_on_the_endpoint_is_not_found(sdk, twin_server):
    with pytest.raises(google_exceptions.NotFound, match="deployed model '7' does not exist on endpoint"):
        sdk.Endpoint(ENDPOINT).explain(instances=[GOOD], deployed_model_id="7")
    request = {"instances": [GOOD], "deployedModelId": "7"}
    status, _, answer = _http(twin_server, "POST", f"/v1/{ENDPOINT}:explain", request)
    assert status == 404 and answer["error"]["status"] == "NOT_FOUND"
    assert "deployed: ['1', '2']" in answer["error"]["message"]


class ToLoopback(requests.adapters.HTTPAdapter):
    """Sends what the SDK addressed to Vertex to the twin's server over plain HTTP; records the URLs it got."""

    def __init__(self, port):
        super().__init__()
        self.port = port
        self.urls = []

    def send(self, request, **kwargs):
        self.urls.append(request.url)
        parts = urllib.parse.urlsplit(request.url)
        request.url = urllib.parse.urlunsplit(("http", f"127.0.0.1:{self.port}", parts.path, parts.query, ""))
        return super().send(request, **kwargs)


def test_raw_predict_answers_the_models_body_and_vertex_headers(sdk, twin_server):
    endpoint = sdk.Endpoint(ENDPOINT)
    endpoint.authorized_session = AuthorizedSession(AnonymousCredentials())
    adapter = ToLoopback(twin_server.port)
    endpoint.authorized_session.mount("https://", adapter)
    body = json.dumps({"instances": [GOOD, OTHER]}).encode()

    response = endpoint.raw_predict(body=body, headers={"Content-Type": "application/json"})

    assert adapter.urls == [f"https://local-aiplatform.googleapis.com/v1/{ENDPOINT}:rawPredict"]
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    predicted = endpoint.predict(instances=[GOOD, OTHER])
    assert response.json() == {"predictions": predicted.predictions}  # the model's body: no Vertex fields
    assert response.headers["X-Vertex-AI-Endpoint-Id"] == "churn-north"
    assert response.headers["X-Vertex-AI-Deployed-Model-Id"] == "1"
    assert response.headers["X-Vertex-AI-Model"] == "projects/local/locations/local/models/churn-north"
    assert response.headers["X-Vertex-AI-Model-Version-Id"] == "1"
    assert response.headers["X-Vertex-AI-Model-Display-Name"] == CHAMPION_NAME

    through_raw = endpoint.predict(instances=[GOOD, OTHER], use_raw_predict=True)  # the SDK reads the headers
    assert through_raw.predictions == predicted.predictions
    assert (through_raw.deployed_model_id, through_raw.model_version_id) == ("1", "1")
    assert through_raw.model_resource_name == "projects/local/locations/local/models/churn-north"


def test_raw_predict_over_plain_http(twin_server):
    request = urllib.request.Request(
        f"{twin_server.base}/v1/{ENDPOINT}:rawPredict", data=json.dumps({"instances": [GOOD]}).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200 and list(json.loads(response.read())) == ["predictions"]
        assert response.headers["X-Vertex-AI-Deployed-Model-Id"] == "1"


def test_bad_instances_get_a_google_rpc_error_and_the_server_keeps_serving(sdk, twin_server):
    endpoint = sdk.Endpoint(ENDPOINT)
    with pytest.raises(google_exceptions.BadRequest, match="feature 'tenure_months' must be a number or null"):
        endpoint.predict(instances=[dict(GOOD, tenure_months="three")])
    status, _, answer = _http(twin_server, "POST", f"/v1/{ENDPOINT}:predict", {"instances": [{"plan": 3}]})
    assert status == 400
    assert answer["error"]["code"] == 400 and answer["error"]["status"] == "INVALID_ARGUMENT"
    assert "missing feature(s)" in answer["error"]["message"]
    assert endpoint.predict(instances=[GOOD]).deployed_model_id == "1"


@pytest.mark.parametrize(
    "method, suffix, allowed",
    [("GET", ":predict", "POST"), ("PUT", ":rawPredict", "POST"), ("GET", ":explain", "POST"), ("POST", "", "GET")],
)
def test_a_wrong_method_gets_405_with_a_status_name(twin_server, method, suffix, allowed):
    path = f"/v1/{ENDPOINT}{suffix}"
    status, headers, answer = _http(twin_server, method, path, {"instances": [GOOD]} if method != "GET" else None)
    assert status == 405 and headers["Allow"] == allowed
    message = f"{path} takes {allowed}, not {method}"
    assert answer["error"] == {"code": 405, "message": message, "status": "UNIMPLEMENTED"}
    assert _http(twin_server, "POST", f"/v1/{ENDPOINT}:predict", {"instances": [GOOD]})[0] == 200


def test_an_unknown_route_is_not_found(twin_server):
    status, _, answer = _http(twin_server, "GET", "/v1/projects/local/locations/local/models")
    assert status == 404 and answer["error"]["status"] == "NOT_FOUND"
    assert "GET /v1/projects/P/locations/L/endpoints/E" in answer["error"]["message"]


def test_a_request_http_cannot_parse_gets_a_google_rpc_error(twin_server):
    """httptools refuses a method it does not know before the app sees it; uvicorn answered in plain text."""
    with socket.create_connection(("127.0.0.1", twin_server.port), timeout=10) as conn:
        conn.sendall(f"BREW /v1/{ENDPOINT}:predict HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"content-type: application/json" in head
    error = json.loads(body)["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT"
    assert error["message"].startswith("the request is not valid HTTP/1.1")
    assert _http(twin_server, "GET", "/health")[0] == 200


def test_the_endpoint_resource_is_vertexs_json():
    """Times in UTC with a Z, the latest as `updateTime`; a pool as `sharedResources`; an etag that follows changes."""
    from google.cloud.aiplatform_v1.types import Endpoint as VertexEndpoint

    from fleetops.platform.endpoints import DeployedModel, Endpoint
    from fleetops.serving.rest import endpoint_resource

    pooled = DeployedModel(
        "4",
        "churn-north",
        "3",
        "projects/local/locations/local/models/churn-north",
        "pooled",
        DeploymentSettings(deployment_resource_pool="churn-pool", service_account="sa@p.iam.gserviceaccount.com"),
        "2026-01-02T03:04:05.000006+00:00",
    )
    endpoint = Endpoint(
        "churn-north",
        "projects/local/locations/local/endpoints/churn-north",
        "churn-north",
        deployed_models=(pooled,),
        traffic_split={"4": 100},
        create_time="2026-01-01T00:00:00+00:00",
    )
    resource = endpoint_resource(endpoint)
    parsed = VertexEndpoint.from_json(json.dumps(resource))  # what the SDK's REST transport does
    (deployed,) = parsed.deployed_models
    assert deployed.shared_resources == "projects/local/locations/local/deploymentResourcePools/churn-pool"
    assert "dedicatedResources" not in resource["deployedModels"][0]
    assert deployed.service_account == "sa@p.iam.gserviceaccount.com"
    assert resource["deployedModels"][0]["createTime"] == "2026-01-02T03:04:05.000006Z"
    assert resource["createTime"] == "2026-01-01T00:00:00.000000Z"
    assert resource["updateTime"] == "2026-01-02T03:04:05.000006Z"  # the latest time the twin recorded
    changed = endpoint_resource(dataclasses.replace(endpoint, traffic_split={"4": 0}))
    assert changed["etag"] != resource["etag"]  # a change to the endpoint changes its etag


def test_a_co_hosted_model_predicts_but_is_not_explained_as_on_vertex(sdk):
    endpoint = sdk.Endpoint("projects/local/locations/local/endpoints/churn-pooled")
    (deployed,) = endpoint.gca_resource.deployed_models
    assert deployed.shared_resources == "projects/local/locations/local/deploymentResourcePools/churn-pool"
    assert endpoint.predict(instances=[GOOD]).deployed_model_id == deployed.id
    with pytest.raises(
        google_exceptions.BadRequest, match="co-hosted in deployment resource pool 'churn-pool'"
    ) as refused:
        endpoint.explain(instances=[GOOD])
    # Over REST the SDK picks the exception by HTTP code; the status says which precondition failed.
    assert refused.value.response.json()["error"]["status"] == "FAILED_PRECONDITION"
