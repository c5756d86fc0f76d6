"""Canary releases of new champions, promote and rollback, on the local twin (and reconcile on Vertex)."""

import pytest
from google.auth.credentials import AnonymousCredentials

from fleetops.deployment import deploy_champions, promote, promote_fleet, rollback, rollback_fleet
from fleetops.errors import UserError
from fleetops.platform import connect
from fleetops.spec import PREBUILT_TF_IMAGE, parse_spec
from fleetops_cli.cli import _endpoint_listing
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


# -- co-hosting (serving.cohosting: pool) --------------------------------------------------------


def _pooled(spec, **serving):
    base = spec.model_dump(mode="json")
    return parse_spec(base | {"serving": base["serving"] | {"cohosting": "pool"} | serving})


def _tf_artifacts(artifact_dirs):
    """The test artifacts as the register step leaves them for the prebuilt TensorFlow container."""
    for artifact in artifact_dirs:
        (artifact / "savedmodel").mkdir(exist_ok=True)
        (artifact / "savedmodel" / "saved_model.pb").write_bytes(b"graph")
    return artifact_dirs


def test_cohosting_on_the_twin_records_the_pool_and_releases_per_segment(platform, artifact_dirs, spec, tmp_path):
    """The twin's one server already co-hosts every endpoint: the pool is recorded, releases work as before."""
    spec = _pooled(spec, canary_percent=25)
    for model in ("churn-north", "churn-south"):
        for i, artifact in enumerate(_tf_artifacts(artifact_dirs[:2])):
            platform.registry.upload_version(
                model, artifact, serving_image=PREBUILT_TF_IMAGE, is_default_version=i == 0
            )
    north = _registration(platform, "1")
    south = {"segment": "south", "model_id": "churn-south", "version_id": "1", "promoted": True}
    platform.registry.add_version_aliases("churn-south", "1", ["champion"])
    releases = deploy_champions(spec, platform, [north, south])
    assert [(r["endpoint_id"], r["deployment_resource_pool"]) for r in releases] == [
        ("churn-north", "churn-pool"),
        ("churn-south", "churn-pool"),
    ]
    [deployed] = platform.endpoints.get("churn-north").deployed_models
    assert deployed.settings.deployment_resource_pool == "churn-pool"
    assert deployed.settings.machine_type == spec.serving.machine_type
    assert f"{deployed.deployed_model_id}: v1 100% in pool churn-pool" in _endpoint_listing(tmp_path / "home")

    # A canary at canary_percent on one segment's endpoint only; rollback and promote per segment.
    [canary] = deploy_champions(spec, platform, [_registration(platform, "2")])
    assert _serving(platform) == {"1": 75, "2": 25}
    assert platform.endpoints.get("churn-south").traffic_split == {releases[1]["deployed_model_id"]: 100}
    rollback(platform, "churn-north", canary["deployed_model_id"], canary["previous_split"])
    assert _serving(platform) == {"1": 100}
    platform.registry.add_version_aliases("churn-south", "2", ["champion"])
    [south_canary] = deploy_champions(spec, platform, [south | {"version_id": "2"}])
    assert promote(platform, "churn-south").traffic_split == {south_canary["deployed_model_id"]: 100}
    assert _serving(platform) == {"1": 100}

    # As on Vertex: a version not registered for the TensorFlow container is not co-hosted.
    platform.registry.upload_version("churn-north", artifact_dirs[2], aliases=["champion"], is_default_version=False)
    with pytest.raises(UserError, match=r"version 3 of model 'churn-north' cannot be deployed into deployment"):
        deploy_champions(spec, platform, [_registration(platform, "3", promoted=False)])
    assert _serving(platform) == {"1": 100}


def test_cohosting_on_vertex_one_pool_per_fleet_and_releases_per_segment(artifact_dirs, spec):
    spec = _pooled(spec, machine_type="n1-standard-4", max_replica_count=4, canary_percent=20)
    with FakeVertex() as fake:
        vertex = connect(
            f"vertex://proj-1/us-central1?api_endpoint={fake.endpoint}", credentials=AnonymousCredentials()
        )
        for model in ("churn-north", "churn-south"):
            for i, artifact in enumerate(_tf_artifacts(artifact_dirs[:2])):
                vertex.registry.upload_version(
                    model,
                    artifact,
                    artifact_uri=f"gs://b/{model}/{i}",
                    serving_image=PREBUILT_TF_IMAGE,
                    aliases=["champion", "default"] if i == 0 else [],
                    is_default_version=i == 0,
                )
        rows = [
            {"segment": segment, "model_id": f"churn-{segment}", "version_id": "1", "promoted": True}
            for segment in ("north", "south")
        ]
        first = deploy_champions(spec, vertex, rows)
        [create] = fake.calls("POST", "/deploymentResourcePools")
        assert create["body"]["deploymentResourcePoolId"] == "churn-pool"
        resources = create["body"]["deploymentResourcePool"]["dedicatedResources"]
        assert (resources["machineSpec"]["machineType"], resources["maxReplicaCount"]) == ("n1-standard-4", 4)
        deploys = [call["body"] for call in fake.calls("POST", ":deployModel")]
        assert [d["deployedModel"]["model"].rsplit("/", 1)[-1] for d in deploys] == ["churn-north@1", "churn-south@1"]
        assert all(
            d["deployedModel"]["sharedResources"].endswith("/deploymentResourcePools/churn-pool") for d in deploys
        )
        assert all("dedicatedResources" not in d["deployedModel"] for d in deploys)
        assert [set(fake.endpoints[e]["trafficSplit"].values()) for e in ("churn-north", "churn-south")] == [{100}] * 2

        # Version 2 wins in both segments: a canary at 20% on each endpoint, in the same pool.
        for row in rows:
            vertex.registry.add_version_aliases(row["model_id"], "2", ["champion", "default"])
        canaries = deploy_champions(spec, vertex, [row | {"version_id": "2"} for row in rows])
        assert len(fake.calls("POST", "/deploymentResourcePools")) == 1  # the second deploy reused it
        assert [c["split"][c["deployed_model_id"]] for c in canaries] == [20, 20]
        # Roll north back, promote south: each endpoint on its own.
        rollback(vertex, "churn-north", canaries[0]["deployed_model_id"], canaries[0]["previous_split"])
        promote(vertex, "churn-south", canaries[1]["deployed_model_id"])
        north, south = vertex.endpoints.get("churn-north"), vertex.endpoints.get("churn-south")
        assert north.traffic_split == {first[0]["deployed_model_id"]: 100}
        assert south.traffic_split == {canaries[1]["deployed_model_id"]: 100}
        assert [m.version_id for m in south.deployed_models] == ["2"]
        assert vertex.registry.get_version("churn-north", "champion").version_id == "1"
        assert {m.settings.deployment_resource_pool for e in (north, south) for m in e.deployed_models} == {
            "churn-pool"
        }
