"""The prediction server, for real: a child process on loopback, called by the official Vertex client."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud.aiplatform_v1 import PredictionServiceClient
from google.cloud.aiplatform_v1.services.prediction_service.transports.rest import PredictionServiceRestTransport

from fleetops.platform import connect, local_uri
from fleetops.serving.request_log import read_request_log

ENDPOINT = "projects/local/locations/local/endpoints/churn-north"
PATH = f"/v1/{ENDPOINT}:predict"
GOOD = {
    "tenure_months": 3,
    "monthly_charges": 99.5,
    "support_calls": 4,
    "data_usage_gb": None,
    "plan": "premium",
    "contract": "monthly",
    "payment_method": "voucher",
}


def _twin(home, trained_models):
    platform = connect(local_uri(home))
    platform.registry.upload_version("churn-north", trained_models[0], aliases=["champion"])
    platform.registry.upload_version("churn-north", trained_models[1], is_default_version=False)
    platform.endpoints.create("churn-north", request_logging_rate=1.0)
    platform.endpoints.create("empty")
    platform.endpoints.deploy("churn-north", "churn-north", "champion")
    return platform


@pytest.fixture
def twin(tmp_path, trained_models):
    return _twin(tmp_path / "home", trained_models)


def _altered(source, target, layer_name, change):
    """A copy of a model artifact with one layer's weights changed in place by `change(kernel, bias)`."""
    from fleetops.names import METADATA_IDENTITY, MODEL_STATISTICS_FILE
    from fleetops.training.artifact import load_artifact, save_artifact

    artifact = load_artifact(source)
    layer = artifact.model.get_layer(layer_name)
    kernel, bias = layer.get_weights()
    change(kernel, bias)
    layer.set_weights([kernel, bias])
    metadata = {k: v for k, v in artifact.metadata.items() if k not in ("format", METADATA_IDENTITY)}
    statistics = json.loads((artifact.path / MODEL_STATISTICS_FILE).read_text())
    return save_artifact(artifact.model, metadata, statistics, target)


@pytest.fixture(scope="module")
def altered_models(tmp_path_factory, trained_models):
    """Real models given weights no training gives, so that their output is not always finite.

    - overflowing: a DNN whose second hidden layer's weights are all +-1e30; ordinary values score,
      large ones overflow to inf there and inf - inf = NaN follows. In-range input, NaN output.
    - overflowing_gradients: linear, tenure_months and monthly_charges weighted +1e30 and -1e30;
      the gradients along the integration path overflow for large values of both.
    - faulty: the output bias is NaN, so every output is NaN, whatever the input.
    """
    from fleetops.data.sample import SAMPLE_SPEC, make_churn
    from fleetops.data.split import with_splits
    from fleetops.data.validation import segment_values
    from fleetops.spec import parse_spec
    from fleetops.training.segments import SEGMENT_COLUMN, train_segment

    root = tmp_path_factory.mktemp("altered")
    base = parse_spec(SAMPLE_SPEC.format(source="x.csv")).model_dump(mode="json")
    spec = parse_spec(base | {"architectures": ["dnn"], "training": base["training"] | {"epochs": 1}})
    rows = with_splits(make_churn(rows_per_segment=300, segments=1, seed=3), spec.data.split, spec.data.split_key)
    rows[SEGMENT_COLUMN] = segment_values(rows, spec)
    dnn = train_segment(rows, spec, "north", root / "dnn").artifact_dir

    def huge_weights(kernel, bias):
        kernel[:] = 1e30 * np.sign(kernel)

    def opposite_huge_weights(kernel, bias):
        kernel[0], kernel[1] = 1e30, -1e30

    def nan_bias(kernel, bias):
        bias[:] = float("nan")

    return {
        "overflowing": _altered(dnn, root / "overflowing", "hidden_1", huge_weights),
        "overflowing_gradients": _altered(
            trained_models[0], root / "overflowing_gradients", "probability", opposite_huge_weights
        ),
        "faulty": _altered(trained_models[0], root / "faulty", "probability", nan_bias),
    }


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory, trained_models, altered_models):
    """One server for the tests that only read: bad requests must leave it serving for the next."""
    from tests.conftest import ServerProcess

    platform = _twin(tmp_path_factory.mktemp("shared") / "home", trained_models)
    for name in ("overflowing", "faulty"):
        platform.registry.upload_version(name, altered_models[name])
        platform.endpoints.create(name)
        platform.endpoints.deploy(name, name, "1")
    server = ServerProcess(platform.home)
    yield server
    server.stop()


def _client(server):
    transport = PredictionServiceRestTransport(
        host=f"127.0.0.1:{server.port}", credentials=AnonymousCredentials(), url_scheme="http"
    )
    return PredictionServiceClient(transport=transport)


def test_official_client_predicts_and_explains(shared_server):
    client = _client(shared_server)
    other = dict(GOOD, tenure_months=60, contract="two_year", payment_method=None)
    response = client.predict(endpoint=ENDPOINT, instances=[GOOD, other])
    assert len(response.predictions) == 2
    first = dict(response.predictions[0])
    assert list(first["classes"]) == ["0", "1"] and abs(sum(first["scores"]) - 1) < 1e-5
    assert response.deployed_model_id == "1"
    assert response.model == "projects/local/locations/local/models/churn-north"
    assert response.model_version_id == "1"

    explained = client.explain(endpoint=ENDPOINT, instances=[GOOD])
    attribution = explained.explanations[0].attributions[0]
    features = dict(attribution.feature_attributions)
    assert set(features) == set(GOOD)
    delta = attribution.instance_output_value - attribution.baseline_output_value
    assert sum(features.values()) == pytest.approx(delta, abs=1e-3)  # integrated gradients' completeness
    assert attribution.output_display_name == "1"


@pytest.mark.parametrize(
    "body, code, message",
    [
        (b"{not json", 400, "request body is not valid JSON"),
        ({"rows": []}, 400, 'must be a JSON object {"instances"'),
        ({"instances": []}, 400, "'instances' must be a non-empty list"),
        ({"instances": [[1, 2]]}, 400, "instance 0 must be an object of feature values, got list"),
        ({"instances": [dict(GOOD, plan=None, extra=1)]}, 400, "instance 0 has unknown feature(s) ['extra']"),
        ({"instances": [{k: v for k, v in GOOD.items() if k != "plan"}]}, 400, "is missing feature(s) ['plan']"),
        ({"instances": [dict(GOOD, tenure_months="three")]}, 400, "feature 'tenure_months' must be a number or null"),
        ({"instances": [dict(GOOD, tenure_months=True)]}, 400, "feature 'tenure_months' must be a number or null"),
        ({"instances": [dict(GOOD, plan=3)]}, 400, "feature 'plan' must be a string or null, got 3"),
        ({"instances": [GOOD] * 20_000}, 413, "over the limit of"),
    ],
)
def test_bad_requests_get_4xx_and_the_server_keeps_serving(shared_server, body, code, message):
    server = shared_server
    status, payload = server.request("POST", PATH, body, {"Content-Type": "application/json"})
    assert status == code
    assert message in payload["error"]["message"]
    assert server.request("POST", PATH, {"instances": [GOOD]})[0] == 200


@pytest.mark.parametrize("verb", ["predict", "explain"])
@pytest.mark.parametrize("value", [1e39, -1e39, 1e308])
def test_numbers_beyond_float32_are_bad_input(shared_server, verb, value):
    """They used to pass the check (finite in float64), become inf in the float32 cast, and come back as null scores."""
    path = f"/v1/{ENDPOINT}:{verb}"
    status, payload = shared_server.request("POST", path, {"instances": [GOOD, dict(GOOD, tenure_months=value)]})
    assert status == 400, payload
    message = payload["error"]["message"]
    assert f"instance 1 feature 'tenure_months' is {value!r}, outside the range the model takes" in message
    assert "-3.4028234663852886e+38 to 3.4028234663852886e+38 (float32)" in message
    assert shared_server.request("POST", path, {"instances": [GOOD]})[0] == 200


@pytest.mark.parametrize("verb", ["predict", "explain"])
def test_the_largest_float32_is_served_with_finite_scores(shared_server, verb):
    instances = [dict(GOOD, tenure_months=3.4028234663852886e38), dict(GOOD, tenure_months=-3.4028234663852886e38)]
    status, payload = shared_server.request("POST", f"/v1/{ENDPOINT}:{verb}", {"instances": instances})
    assert status == 200, payload
    assert all(isinstance(s, float) for p in payload["predictions"] for s in p["scores"])


@pytest.mark.parametrize("verb", ["predict", "explain"])
def test_output_that_overflows_for_an_instance_is_a_400_naming_it(shared_server, verb):
    path = f"/v1/projects/local/locations/local/endpoints/overflowing:{verb}"
    assert shared_server.request("POST", path, {"instances": [GOOD]})[0] == 200  # ordinary values score
    huge = dict(GOOD, tenure_months=1e12, monthly_charges=1e12)
    status, payload = shared_server.request("POST", path, {"instances": [GOOD, huge]})
    assert status == 400, payload
    message = payload["error"]["message"]
    assert message.startswith("instance 1: the model's output is not a finite number for its numeric values")
    assert "'tenure_months': 1000000000000.0" in message


@pytest.mark.parametrize("verb", ["predict", "explain"])
def test_a_model_whose_output_is_never_finite_is_a_500_not_null_scores(shared_server, verb):
    path = f"/v1/projects/local/locations/local/endpoints/faulty:{verb}"
    status, payload = shared_server.request("POST", path, {"instances": [GOOD]})
    assert status == 500, payload
    assert payload["error"]["status"] == "INTERNAL"
    assert "even with its numeric features left out: the model itself is faulty" in payload["error"]["message"]
    assert shared_server.request("POST", PATH, {"instances": [GOOD]})[0] == 200


def test_attributions_that_overflow_are_refused(altered_models):
    from fleetops.errors import UserError
    from fleetops.serving.explain import explain
    from fleetops.serving.predictor import Predictor

    predictor = Predictor.load(altered_models["overflowing_gradients"])
    huge = dict(GOOD, tenure_months=1e12, monthly_charges=1e12)
    columns = predictor.columns([GOOD, huge])
    with pytest.raises(UserError, match=r"^instance 1: its attributions are not finite numbers"):
        explain(predictor, columns)


def test_explaining_in_chunks_gives_the_same_explanations(trained_models):
    """Chunks bound the memory of a large :explain; they must not change a single attribution."""
    import random

    from fleetops.serving.explain import explain
    from fleetops.serving.predictor import Predictor

    rng = random.Random(5)
    instances = [
        dict(
            GOOD,
            tenure_months=rng.randint(0, 72),
            monthly_charges=rng.uniform(10, 120),
            data_usage_gb=rng.choice([None, rng.uniform(0, 40)]),
            plan=rng.choice(["basic", "premium", "unseen"]),
        )
        for _ in range(53)
    ]
    predictor = Predictor.load(trained_models[0])
    columns = predictor.columns(instances)
    whole = explain(predictor, columns, chunk_instances=len(instances))
    for chunk_instances in (1, 7, 52):
        chunked = explain(predictor, columns, chunk_instances=chunk_instances)
        assert len(chunked) == len(whole)
        for one, other in zip(chunked, whole, strict=True):
            a, b = one["attributions"][0], other["attributions"][0]
            assert a["outputIndex"] == b["outputIndex"] and a["outputDisplayName"] == b["outputDisplayName"]
            for key in ("baselineOutputValue", "instanceOutputValue"):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6)
            assert a["featureAttributions"] == pytest.approx(b["featureAttributions"], rel=1e-4, abs=1e-6)


def test_unknown_and_empty_endpoints(shared_server):
    server = shared_server
    status, payload = server.request(
        "POST", "/v1/projects/local/locations/local/endpoints/nope:predict", {"instances": [GOOD]}
    )
    assert status == 404 and "endpoint 'nope' does not exist" in payload["error"]["message"]
    status, payload = server.request(
        "POST", "/v1/projects/local/locations/local/endpoints/empty:predict", {"instances": [GOOD]}
    )
    assert status == 400 and payload["error"]["status"] == "FAILED_PRECONDITION"
    assert server.request("GET", "/ready")[0] == 200


@pytest.mark.parametrize("verb", ["predict", "explain"])
@pytest.mark.parametrize(
    "resource",
    ["projects/my-project/locations/local", "projects/local/locations/us-central1", "projects/p/locations/l"],
)
def test_another_project_or_location_is_not_found(shared_server, resource, verb):
    path = f"/v1/{resource}/endpoints/churn-north:{verb}"
    status, payload = shared_server.request("POST", path, {"instances": [GOOD]})
    assert status == 404 and payload["error"]["status"] == "NOT_FOUND"
    message = payload["error"]["message"]
    assert message.startswith(f"{resource} is not served here")
    assert "this local twin's endpoints are under projects/local/locations/local" in message


def _raw_exchange(server, request: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes on a fresh connection and read until the server closes it (or `timeout`)."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as conn:
        conn.sendall(request)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
        return received


@pytest.mark.parametrize("path", ["/health", "/ready", PATH, "/v1/somewhere/else"])
def test_a_websocket_upgrade_is_refused_and_the_server_keeps_serving(shared_server, path):
    upgrade = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{shared_server.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    response = _raw_exchange(shared_server, upgrade)
    assert response.startswith(b"HTTP/1.1 403 Forbidden\r\n"), response  # was a 500: the app did not answer
    assert shared_server.request("GET", "/health")[0] == 200
    assert shared_server.request("POST", PATH, {"instances": [GOOD]})[0] == 200


def test_connections_that_do_not_finish_their_headers_are_closed(twin, serve):
    """Before, a connection that sent half a request (or nothing) was held open forever."""
    import select
    import socket

    server = serve(twin.home, "--header-timeout", "0.5", "--keep-alive-timeout", "0.5")
    partial = f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl".encode()
    response = _raw_exchange(server, partial, timeout=5)  # a socket.timeout here: the server never closed it
    assert response.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), response
    assert b"did not arrive within 0.5 s" in response
    assert _raw_exchange(server, b"", timeout=5) == b""  # connected, sent nothing: closed without a word

    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:  # a byte every 0.1 s
        started = time.monotonic()
        for byte in partial:
            if select.select([conn], [], [], 0.1)[0]:  # the server answered
                break
            conn.sendall(bytes([byte]))
        assert conn.recv(65536).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 3  # the deadline runs from the connection, not from the last byte

    body = json.dumps({"instances": [GOOD]}).encode()
    request = f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    response = _raw_exchange(server, request, timeout=5)  # answered, then closed when idle for 0.5 s
    assert response.startswith(b"HTTP/1.1 200 OK\r\n") and b'"predictions"' in response
    assert server.request("GET", "/ready")[0] == 200


def test_traffic_split_and_live_reload(twin, serve):
    server = serve(twin.home)
    first = twin.endpoints.get("churn-north").deployed_models[0].deployed_model_id
    _, canary = twin.endpoints.deploy("churn-north", "churn-north", "2", traffic_percentage=50)
    time.sleep(1.0)  # the server polls every 0.2 s here; no restart
    seen = [server.request("POST", PATH, {"instances": [GOOD]})[1]["deployedModelId"] for _ in range(200)]
    assert {first, canary} == set(seen)
    assert 60 < seen.count(canary) < 140  # 50% of 200, allowing for chance
    twin.endpoints.update_traffic("churn-north", {first: 0, canary: 100})
    time.sleep(1.0)
    assert {server.request("POST", PATH, {"instances": [GOOD]})[1]["modelVersionId"] for _ in range(20)} == {"2"}


def test_request_response_log_samples_requests(twin, serve):
    server = serve(twin.home)
    for _ in range(5):
        server.request("POST", PATH, {"instances": [GOOD, GOOD]})
    server.stop()  # flushes the log
    log = read_request_log(twin.home, "churn-north")
    assert len(log) == 10
    assert set(log["model_id"]) == {"churn-north"} and set(log["version_id"]) == {"1"}
    assert log.loc[0, "plan"] == "premium" and log.loc[0, "prediction"]["classes"] == ["0", "1"]


def test_the_log_reads_back_what_json_wrote_nan_included(tmp_path):
    from types import SimpleNamespace

    from fleetops.serving.request_log import RequestLogWriter

    writer = RequestLogWriter(tmp_path)
    deployed = SimpleNamespace(deployed_model_id="1", model_id="m", version_id="1")
    rows = [{"a": 1.5, "b": "x"}, {"a": float("nan"), "b": None}, {"a": 2**70, "b": "é"}]
    writer.log("e", deployed, rows, [0.1, float("inf"), 0.3])
    writer.close()
    log = read_request_log(tmp_path, "e")
    assert log["a"].iloc[0] == 1.5 and np.isnan(log["a"].iloc[1]) and log["a"].iloc[2] == 2**70
    assert log["b"].iloc[[0, 2]].tolist() == ["x", "é"] and log["b"].isna().tolist() == [False, True, False]
    assert log["prediction"].tolist() == [0.1, float("inf"), 0.3]


def test_a_tampered_artifact_is_refused_at_load(twin, serve):
    stored = twin.registry.artifact_path(twin.registry.get_version("churn-north", "2"))
    shutil.copy(stored / "metadata.json", stored / "metadata.json.bak")
    (stored / "metadata.json").write_text((stored / "metadata.json").read_text().replace('"seed": 2', '"seed": 3'))
    first = twin.endpoints.get("churn-north").deployed_models[0].deployed_model_id
    twin.endpoints.deploy("churn-north", "churn-north", "2", traffic_split={first: 0, "0": 100})
    server = serve(twin.home)
    status, payload = server.request("POST", PATH, {"instances": [GOOD]})
    message = payload["error"]["message"]
    assert status == 503 and "deployed model 2 (churn-north@2) is not being served" in message
    assert "changed after registration" in message
    # Models load lazily: one that cannot is listed, and the server stays ready for the others.
    status, ready = server.request("GET", "/ready")
    assert status == 200 and "sha256" in ready["problems"][0] and "changed after registration" in ready["problems"][0]
    assert ready["problems"][0].startswith("churn-north/2 (churn-north@2): ")
    assert server.request("GET", "/health")[0] == 200


@pytest.mark.parametrize("source", ["--token", "--token-file", "FLEETOPS_SERVE_TOKEN"])
def test_bearer_token(twin, serve, tmp_path, source):
    token = "s3cret-Token_42"
    if source == "--token":
        server = serve(twin.home, "--token", token)
    elif source == "--token-file":
        (tmp_path / "token").write_text(token + "\n")  # as `echo TOKEN > file` writes it
        server = serve(twin.home, "--token-file", str(tmp_path / "token"))
    else:
        server = serve(twin.home, env={"FLEETOPS_SERVE_TOKEN": token})
    if source != "--token":  # the point of a file or the environment: `ps` does not show the token
        assert token not in Path(f"/proc/{server.process.pid}/cmdline").read_text()
    assert server.request("POST", PATH, {"instances": [GOOD]})[0] == 401
    for wrong in ("s3cret-Token_43", "s3cret", token + "x", ""):
        assert server.request("POST", PATH, {"instances": [GOOD]}, {"Authorization": f"Bearer {wrong}"})[0] == 401
    assert server.request("POST", PATH, {"instances": [GOOD]}, {"Authorization": token})[0] == 401
    assert server.request("POST", PATH, {"instances": [GOOD]}, {"Authorization": f"Bearer {token}"})[0] == 200
    assert server.request("POST", PATH, {"instances": [GOOD]}, {"Authorization": f"bearer {token}"})[0] == 200
    assert server.request("GET", "/health")[0] == 200 and server.request("GET", "/ready")[0] == 200


def test_vertex_custom_container_contract(trained_models, serve):
    env = {
        "AIP_STORAGE_URI": str(trained_models[0]),
        "AIP_PREDICT_ROUTE": "/v1/predict-here",
        "AIP_HEALTH_ROUTE": "/healthz",
        "AIP_DEPLOYED_MODEL_ID": "42",
    }
    server = serve(None, env=env, command=["serve-container", "--host", "127.0.0.1"], health="/healthz")
    status, payload = server.request("POST", "/v1/predict-here", {"instances": [GOOD]})
    assert status == 200 and payload["deployedModelId"] == "42"
    assert len(payload["predictions"]) == 1 and payload["predictions"][0]["classes"] == ["0", "1"]
    status, payload = server.request("POST", "/v1/predict-here", {"instances": [{"plan": "basic"}]})
    assert status == 400 and "is missing feature(s)" in payload["error"]["message"]


def test_an_endpoint_without_logging_logs_nothing(twin, serve):
    twin.endpoints.create("quiet", request_logging_rate=0.0)
    twin.endpoints.deploy("quiet", "churn-north", "1")
    server = serve(twin.home)
    for _ in range(5):
        assert (
            server.request("POST", "/v1/projects/local/locations/local/endpoints/quiet:predict", {"instances": [GOOD]})[
                0
            ]
            == 200
        )
    server.stop()
    assert read_request_log(twin.home, "quiet").empty


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--host", "0.0.0.0"], "--host 0.0.0.0 would accept connections from other machines; add --allow-remote"),
        (["--host", "::"], "--host :: would accept connections from other machines"),
        (["--host", "192.0.2.1", "--no-auth"], "--host 192.0.2.1 would accept connections from other machines"),
        (["--host", "0.0.0.0", "--allow-remote"], "and no token lets anyone who reaches the port call the models"),
        (["--host", "0.0.0.0", "--allow-remote"], "or add --no-auth to mean it"),
        (["--token", ""], "--token is empty: an empty token would turn authentication off"),
        (["--token", "two words"], "--token must be printable ASCII without spaces"),
        (["--token", "x", "--no-auth"], "--no-auth contradicts the token given"),
        (["--host", "no-such-host.invalid"], "host 'no-such-host.invalid' does not resolve to an address"),
    ],
)
def test_serve_refuses_to_open_the_server_by_accident(tmp_path, capsys, flags, message):
    from fleetops_cli.cli import main

    assert main(["serve", "--home", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err


def test_an_empty_token_from_a_file_or_the_environment_is_refused(tmp_path, capsys, monkeypatch):
    from fleetops_cli.cli import main

    (tmp_path / "token").write_text("\n")
    assert main(["serve", "--home", str(tmp_path), "--token-file", str(tmp_path / "token")]) == 2
    assert f"--token-file {tmp_path / 'token'} is empty" in capsys.readouterr().err
    assert main(["serve", "--home", str(tmp_path), "--token-file", str(tmp_path / "missing")]) == 2
    assert "cannot read it" in capsys.readouterr().err
    monkeypatch.setenv("FLEETOPS_SERVE_TOKEN", "")
    assert main(["serve", "--home", str(tmp_path)]) == 2
    assert "FLEETOPS_SERVE_TOKEN is empty" in capsys.readouterr().err
    monkeypatch.setenv("FLEETOPS_SERVE_TOKEN", "s3cret")
    assert main(["serve", "--home", str(tmp_path), "--host", "0.0.0.0", "--allow-remote", "--no-auth"]) == 2
    assert "--no-auth contradicts the token given" in capsys.readouterr().err


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("127.255.255.254", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.1.2.3", False),
        ("192.0.2.1", False),
        ("::ffff:10.1.2.3", False),
        ("fe80::1", False),
    ],
)
def test_what_counts_as_loopback(host, loopback):
    from fleetops.serving.server import is_loopback

    assert is_loopback(host) is loopback


def test_no_auth_beyond_loopback_warns_on_stderr(tmp_path):
    """192.0.2.1 (TEST-NET-1) is no address of this machine: the bind fails after the warning, exposing nothing."""
    import subprocess
    import sys

    command = ["serve", "--home", str(tmp_path), "--host", "192.0.2.1", "--allow-remote", "--no-auth", "--port", "9"]
    done = subprocess.run(
        [sys.executable, "-m", "fleetops_cli.cli", *command],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert "WARNING: fleetops serve on 192.0.2.1 without authentication (--no-auth)" in done.stderr
    assert done.returncode != 0 and "192.0.2.1" in done.stderr  # uvicorn could not bind it
