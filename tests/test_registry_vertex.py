"""The Vertex registry sends the right requests through the real google-cloud-aiplatform SDK.

The SDK's REST transport is pointed at tests/fake_vertex.py on loopback.
"""

import pytest

from fleetops.errors import RegistryRuleError, UserError
from fleetops.fingerprints import directory_sha256
from fleetops.platform import connect
from fleetops.platform.registry import EvaluationInput, UploadRequest
from tests.fake_vertex import FakeVertex, Refusal, connect_to

SCHEMA = "gs://google-cloud-aiplatform/schema/modelevaluation/classification_metrics_1.0.0.yaml"
KEY = "projects/p/locations/us-central1/keyRings/r/cryptoKeys/k"


@pytest.fixture
def fake():
    with FakeVertex() as server:
        yield server


@pytest.fixture
def vertex(fake):
    return connect_to(fake, f"&labels=team:ml&encryption_key={KEY}")  # paced on a clock that moves when slept on


def test_first_upload_creates_the_model_with_our_id(vertex, fake, artifact_dirs):
    registration = vertex.registry.upload_version(
        "churn-north",
        artifact_dirs[0],
        artifact_uri="gs://bucket/run/model/north",
        serving_image="us-docker.pkg.dev/p/fleetops/serving:1",
        aliases=["champion"],
        labels={"fleet": "churn"},
        lineage={"pipeline_job": "job-1"},
    )
    upload = fake.calls("POST", "models:upload")[0]
    assert upload["path"] == "/v1/projects/proj-1/locations/us-central1/models:upload"
    body = upload["body"]
    assert body["modelId"] == "churn-north" and "parentModel" not in body
    model = body["model"]
    assert model["artifactUri"] == "gs://bucket/run/model/north"
    container = model["containerSpec"]
    assert container["imageUri"] == "us-docker.pkg.dev/p/fleetops/serving:1"
    assert container["command"] == ["fleetops", "serve-container"]
    assert (container["predictRoute"], container["healthRoute"]) == ("/predict", "/health")
    assert container["ports"] == [{"containerPort": 8080}]
    assert sorted(model["versionAliases"]) == ["champion", "default"]
    assert model["labels"]["team"] == "ml" and model["labels"]["fleet"] == "churn"
    assert model["labels"]["artifact-sha256"] == registration.version.artifact_sha256
    assert model["encryptionSpec"]["kmsKeyName"] == KEY
    assert '"pipeline_job":"job-1"' in model["versionDescription"]
    assert registration.created and registration.version.version_id == "1"
    assert registration.version.lineage == {"pipeline_job": "job-1"}


def test_next_upload_is_a_version_of_the_parent(vertex, fake, artifact_dirs):
    vertex.registry.upload_version("m", artifact_dirs[0], artifact_uri="gs://b/1", serving_image="img")
    v2 = vertex.registry.upload_version(
        "m", artifact_dirs[1], artifact_uri="gs://b/2", serving_image="img", is_default_version=False
    ).version
    body = fake.calls("POST", "models:upload")[1]["body"]
    assert body["parentModel"] == "projects/proj-1/locations/us-central1/models/m"
    assert "modelId" not in body and "versionAliases" not in body["model"]
    assert v2.version_id == "2" and v2.aliases == ()


def test_retry_returns_the_existing_version_without_uploading(vertex, fake, artifact_dirs):
    first = vertex.registry.upload_version("m", artifact_dirs[0], artifact_uri="gs://b/1", serving_image="img")
    retry = vertex.registry.upload_version("m", artifact_dirs[0], artifact_uri="gs://b/1", serving_image="img")
    assert not retry.created and retry.version.version_id == first.version.version_id
    assert len(fake.calls("POST", "models:upload")) == 1


def test_an_unchanged_model_is_found_by_its_identity_label(vertex, fake, artifact_dirs):
    same, other = "a" * 64, "b" * 64
    first = vertex.registry.upload_version(
        "m", artifact_dirs[0], artifact_uri="gs://b/1", serving_image="img", identity=same
    )
    rerun = vertex.registry.upload_version(
        "m", artifact_dirs[1], artifact_uri="gs://b/2", serving_image="img", identity=same
    )
    assert not rerun.created and rerun.version.version_id == first.version.version_id == "1"
    assert len(fake.calls("POST", "models:upload")) == 1
    labels = fake.calls("POST", "models:upload")[0]["body"]["model"]["labels"]
    # Both whole: a sha256 in hex is 64 characters, the longest label value Vertex takes.
    assert labels["identity-sha256"] == same and labels["artifact-sha256"] == directory_sha256(artifact_dirs[0])
    assert rerun.version.identity_sha256 == same
    assert rerun.version.artifact_sha256 == labels["artifact-sha256"]  # the serving tamper check is unchanged
    changed = vertex.registry.upload_version(
        "m", artifact_dirs[2], artifact_uri="gs://b/3", serving_image="img", identity=other
    )
    assert changed.created and changed.version.version_id == "2" and changed.version.identity_sha256 == other
    with pytest.raises(RegistryRuleError, match="version identity 'x' is invalid"):
        vertex.registry.upload_version(
            "m", artifact_dirs[0], artifact_uri="gs://b/1", serving_image="img", identity="x"
        )
    assert len(fake.calls("POST", "models:upload")) == 2


def test_a_version_from_before_identities_is_found_by_its_artifact_sha256(vertex, fake, artifact_dirs):
    vertex.registry.upload_version("m", artifact_dirs[0], artifact_uri="gs://b/1", serving_image="img")
    del fake.models["m"]["versions"]["1"]["labels"]["identity-sha256"]  # as uploaded before identities
    old = vertex.registry.get_version("m", "1")
    assert old.identity_sha256 == old.artifact_sha256 == directory_sha256(artifact_dirs[0])
    retry = vertex.registry.upload_version("m", artifact_dirs[0], artifact_uri="gs://b/1", serving_image="img")
    assert not retry.created and retry.version.version_id == "1"
    assert len(fake.calls("POST", "models:upload")) == 1


def test_aliases_go_through_merge_version_aliases(vertex, fake, artifact_dirs):
    vertex.registry.upload_version(
        "m", artifact_dirs[0], artifact_uri="gs://b/1", serving_image="img", aliases=["champion"]
    )
    vertex.registry.upload_version(
        "m", artifact_dirs[1], artifact_uri="gs://b/2", serving_image="img", is_default_version=False
    )
    moved = vertex.registry.add_version_aliases("m", "2", ["champion"])
    assert moved.aliases == ("champion",)
    merge = fake.calls("POST", ":mergeVersionAliases")[0]
    assert merge["path"].endswith("models/m@2:mergeVersionAliases")
    assert merge["body"] == {"versionAliases": ["champion"]}
    assert vertex.registry.get_version("m", "1").aliases == ("default",)
    vertex.registry.remove_version_aliases("m", "2", ["champion"])
    assert fake.calls("POST", ":mergeVersionAliases")[1]["body"] == {"versionAliases": ["-champion"]}


def test_rules_are_checked_before_any_request(vertex, fake, artifact_dirs):
    with pytest.raises(RegistryRuleError, match="version alias 'Best'"):
        vertex.registry.upload_version(
            "m", artifact_dirs[0], artifact_uri="gs://b/1", serving_image="img", aliases=["Best"]
        )
    with pytest.raises(RegistryRuleError, match="must be a gs:// URI"):
        vertex.registry.upload_version("m", artifact_dirs[0], artifact_uri="/tmp/x", serving_image="img")
    with pytest.raises(RegistryRuleError, match="serving container image is required"):
        vertex.registry.upload_version("m", artifact_dirs[0], artifact_uri="gs://b/1")
    assert fake.requests == []
    vertex.registry.upload_version("m", artifact_dirs[0], artifact_uri="gs://b/1", serving_image="img")
    with pytest.raises(RegistryRuleError, match="'default' alias cannot be removed"):
        vertex.registry.remove_version_aliases("m", "1", ["default"])
    with pytest.raises(RegistryRuleError, match="last version"):
        vertex.registry.delete_version("m", "1")
    assert fake.calls("DELETE") == [] and fake.calls("POST", ":mergeVersionAliases") == []


def test_evaluation_import_request_and_undo_on_failure(vertex, fake, artifact_dirs):
    vertex.registry.upload_version(
        "m",
        artifact_dirs[0],
        artifact_uri="gs://b/1",
        serving_image="img",
        evaluation=EvaluationInput(SCHEMA, {"auRoc": 0.81, "confusionMatrix": {"rows": [[1, 2], [3, 4]]}}, "eval-1"),
    )
    request = fake.calls("POST", "evaluations:import")[0]
    assert request["path"].endswith("models/m@1/evaluations:import")
    assert request["body"]["modelEvaluation"] == {
        "metricsSchemaUri": SCHEMA,
        "metrics": {"auRoc": 0.81, "confusionMatrix": {"rows": [[1, 2], [3, 4]]}},
        "displayName": "eval-1",
    }
    assert vertex.registry.list_evaluations("m", "1")[0].metrics["auRoc"] == 0.81
    fake.fail_evaluation_import = True
    with pytest.raises(Exception, match="injected failure"):
        vertex.registry.upload_version(
            "m",
            artifact_dirs[1],
            artifact_uri="gs://b/2",
            serving_image="img",
            is_default_version=False,
            evaluation=EvaluationInput(SCHEMA, {"auRoc": 0.7}),
        )
    assert [v.version_id for v in vertex.registry.list_versions("m")] == ["1"]  # the upload was undone


def test_an_evaluation_imported_before_its_answer_was_lost_is_not_imported_again(vertex, fake, artifact_dirs):
    fake.refusals.append(Refusal(503, count=1, after_handling=True, method="POST", path_suffix="evaluations:import"))
    evaluation = EvaluationInput(SCHEMA, {"auRoc": 0.81, "confusionMatrix": {"rows": [[1, 2], [3, 4]]}}, "eval-1")
    vertex.registry.upload_version(
        "m", artifact_dirs[0], artifact_uri="gs://b/1", serving_image="img", evaluation=evaluation
    )
    [found] = vertex.registry.list_evaluations("m", "1")
    assert found.metrics["auRoc"] == 0.81 and len(fake.calls("POST", "evaluations:import")) == 1


def test_an_undone_upload_that_took_default_and_champion_gives_them_back(vertex, fake, artifact_dirs):
    vertex.registry.upload_version(
        "m", artifact_dirs[0], artifact_uri="gs://b/1", serving_image="img", aliases=["champion"]
    )
    fake.fail_evaluation_import = True
    with pytest.raises(Exception, match="injected failure"):
        vertex.registry.upload_version(
            "m",
            artifact_dirs[1],
            artifact_uri="gs://b/2",
            serving_image="img",
            aliases=["champion", "canary"],
            evaluation=EvaluationInput(SCHEMA, {"auRoc": 0.9}),
        )
    # No version is left without its evaluation, holding the aliases it took.
    [v1] = vertex.registry.list_versions("m")
    assert v1.version_id == "1" and v1.aliases == ("champion", "default")
    assert fake.calls("POST", ":mergeVersionAliases")[-1]["path"].endswith("models/m@1:mergeVersionAliases")


def test_a_batch_uploads_model_by_model_and_a_rerun_completes_it(vertex, fake, artifact_dirs):
    def request(model_id, i, **options):
        return UploadRequest(model_id, artifact_dirs[i], artifact_uri=f"gs://b/{i}", serving_image="img", **options)

    batch = [request("m", 0, aliases=["champion"]), request("m", 1, is_default_version=False), request("n", 2)]
    registered = vertex.registry.upload_versions(batch)
    assert [(r.created, r.version.model_id, r.version.version_id) for r in registered] == [
        (True, "m", "1"),
        (True, "m", "2"),
        (True, "n", "1"),
    ]
    assert vertex.registry.get_version("m", "champion").version_id == "1"
    assert len(fake.calls("POST", "models:upload")) == 3

    sent = len(fake.requests)
    with pytest.raises(RegistryRuleError, match="upload of model 'n': version alias 'Best' is invalid"):
        vertex.registry.upload_versions([request("m", 2), request("n", 0, aliases=["Best"])])
    assert len(fake.requests) == sent  # every request is checked before the first upload

    # No transaction spans uploads on Vertex: a failure keeps the versions registered before it.
    fake.fail_evaluation_import = True
    evaluated = request("n", 1, evaluation=EvaluationInput(SCHEMA, {"auRoc": 0.7}), is_default_version=False)
    with pytest.raises(Exception, match="injected failure"):
        vertex.registry.upload_versions([request("m", 2, is_default_version=False), evaluated])
    assert [v.version_id for v in vertex.registry.list_versions("m")] == ["1", "2", "3"]
    assert [v.version_id for v in vertex.registry.list_versions("n")] == ["1"]
    fake.fail_evaluation_import = False
    rerun = vertex.registry.upload_versions([request("m", 2, is_default_version=False), evaluated])
    # The undone upload used n's version id 2: Vertex never reuses an id.
    assert [(r.created, r.version.version_id) for r in rerun] == [(False, "3"), (True, "3")]


def test_artifacts_are_read_through_the_gcs_mount(vertex, artifact_dirs):
    v = vertex.registry.upload_version(
        "m", artifact_dirs[0], artifact_uri="gs://bucket/x/m", serving_image="img"
    ).version
    assert str(vertex.registry.artifact_path(v)) == "/gcs/bucket/x/m"


# -- boosted trees and ensembles (real artifacts: tests/model_kinds.py) ------------------------------------

IMAGE = "us-docker.pkg.dev/proj-1/fleetops/components:abc123"


@pytest.fixture
def kinds_shard(tmp_path, spec, churn, kind_artifacts):
    """A shard of north's trees and south's global model (a one-member ensemble), evaluated on the twin."""
    import shutil

    from fleetops import training_steps
    from fleetops.platform import local_uri

    churn.to_parquet(tmp_path / "raw.parquet")
    training_steps.split_dataset(spec, tmp_path / "raw.parquet", tmp_path / "dataset.parquet")
    shard = tmp_path / "shard"
    shutil.copytree(kind_artifacts["gbt"], shard / "north")
    shutil.copytree(kind_artifacts["global"], shard / "south")
    twin = connect(local_uri(tmp_path / "twin"))
    evaluations = training_steps.evaluate_shard(spec, twin, tmp_path / "dataset.parquet", shard, ["north", "south"])
    return shard, evaluations


def test_trees_and_ensembles_are_registered_for_the_fleetops_serving_container(
    vertex, fake, spec, kinds_shard, kind_artifacts, tmp_path
):
    from fleetops import training_steps
    from fleetops.training.artifact import read_metadata

    shard, evaluations = kinds_shard
    rows = training_steps.register_shard(
        spec, vertex, shard, evaluations, model_uri="gs://bucket/run/model", pipeline_job="job-1", serving_image=IMAGE
    )
    assert [(r["segment"], r["version_id"], r["created"], r["architecture"]) for r in rows] == [
        ("north", "1", True, "gbt"),
        ("south", "1", True, "global_gbt"),
    ]
    uploads = fake.calls("POST", "models:upload")
    for upload, segment, architecture in zip(uploads, ("north", "south"), ("gbt", "global_gbt"), strict=True):
        model = upload["body"]["model"]
        # Our container, which serves every kind: never Vertex's TensorFlow one, never a SavedModel path.
        assert model["containerSpec"]["imageUri"] == IMAGE
        assert model["containerSpec"]["command"] == ["fleetops", "serve-container"]
        assert model["artifactUri"] == f"gs://bucket/run/model/{segment}"
        assert model["labels"]["architecture"] == architecture and model["labels"]["segment"] == segment
        assert model["labels"]["artifact-sha256"] == directory_sha256(shard / segment)
        assert model["labels"]["identity-sha256"] == read_metadata(shard / segment)["identity_sha256"]
    north = vertex.registry.get_version("churn-north", "1")
    assert north.lineage["selection"]["chosen"] == "gbt" and north.lineage["runtimes"]["serving"] == "xgboost"
    assert vertex.registry.get_version("churn-south", "1").lineage["selection"]["chosen"] == "global"

    # The same models again: found by their identity, nothing uploaded.
    again = training_steps.register_shard(
        spec, vertex, shard, evaluations, model_uri="gs://bucket/run/model", serving_image=IMAGE
    )
    assert [(r["version_id"], r["created"]) for r in again] == [("1", False), ("1", False)]
    assert len(fake.calls("POST", "models:upload")) == 2

    # North's ensemble (trees and a Keras linear model) is a new version of the same model, for the same container.
    import shutil

    other = tmp_path / "run2"
    shutil.copytree(kind_artifacts["ensemble"], other / "north")
    ensemble = dict(evaluations[0], promote=False)
    [row] = training_steps.register_shard(
        spec, vertex, other, [ensemble], model_uri="gs://bucket/run2/model", serving_image=IMAGE
    )
    assert (row["version_id"], row["created"], row["architecture"]) == ("2", True, "ensemble")
    body = fake.calls("POST", "models:upload")[-1]["body"]
    assert body["parentModel"].endswith("/models/churn-north") and body["model"]["containerSpec"]["imageUri"] == IMAGE
    assert body["model"]["labels"]["artifact-sha256"] == directory_sha256(other / "north")


def test_trees_without_a_serving_image_are_refused_before_any_request(vertex, fake, spec, kinds_shard):
    from fleetops import training_steps
    from fleetops.spec import PREBUILT_TF_IMAGE

    shard, evaluations = kinds_shard
    with pytest.raises(
        UserError,
        match=r"the model of segment 'north' \(architecture gbt\) is XGBoost boosted trees, and no serving image was "
        r"given, which the registry \(Vertex\) requires: pass the fleetops image as the pipeline's serving_image "
        r"\(`fleetops submit --serving-image IMAGE`\) or set registry.serving_image in the spec",
    ):
        training_steps.register_shard(spec, vertex, shard, evaluations, model_uri="gs://bucket/run/model")
    with pytest.raises(UserError, match=r"segment 'north' .* is Vertex's prebuilt TensorFlow container"):
        training_steps.register_shard(
            spec, vertex, shard, evaluations, model_uri="gs://bucket/run/model", serving_image=PREBUILT_TF_IMAGE
        )
    assert fake.requests == []
    # The spec's registry.serving_image is what the pipeline registers with when it passes none.
    own = spec.model_copy(update={"registry": spec.registry.model_copy(update={"serving_image": IMAGE})})
    training_steps.register_shard(own, vertex, shard, evaluations, model_uri="gs://bucket/run/model")
    assert {c["body"]["model"]["containerSpec"]["imageUri"] for c in fake.calls("POST", "models:upload")} == {IMAGE}


def test_a_failed_registration_of_trees_leaves_no_version_on_vertex(vertex, fake, spec, kinds_shard):
    from fleetops import training_steps
    from fleetops.errors import NotFoundError

    shard, evaluations = kinds_shard
    fake.fail_evaluation_import = True
    with pytest.raises(Exception, match="injected failure"):
        training_steps.register_shard(
            spec, vertex, shard, evaluations, model_uri="gs://bucket/run/model", serving_image=IMAGE
        )
    with pytest.raises(NotFoundError):
        vertex.registry.list_versions("churn-north")  # its first version was undone, and the model with it
    fake.fail_evaluation_import = False
    rows = training_steps.register_shard(
        spec, vertex, shard, evaluations, model_uri="gs://bucket/run/model", serving_image=IMAGE
    )
    assert [(r["segment"], r["created"]) for r in rows] == [("north", True), ("south", True)]
    assert [v.version_id for v in vertex.registry.list_versions("churn-north")] == ["1"]
