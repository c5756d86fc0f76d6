"""Co-hosting (serving.cohosting: pool): the spec, the SavedModel export, registering for the TF container.

Deploying into the pool, canaries and rollbacks are in tests/test_endpoints_vertex.py and tests/test_deployment.py.
"""

import shutil

import numpy as np
import pandas as pd
import pytest
from google.auth.credentials import AnonymousCredentials

from fleetops import training_steps
from fleetops.errors import RegistryRuleError, SpecError, UserError
from fleetops.platform import connect
from fleetops.platform.endpoints import DeployedModel, DeploymentSettings, check_explainable
from fleetops.spec import PREBUILT_TF_IMAGE, parse_spec
from fleetops.training.artifact import load_artifact
from fleetops.training.savedmodel import export_savedmodel, has_savedmodel
from tests.fake_vertex import FakeVertex

EUROPE_TF = "europe-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"


def _with(spec, **sections):
    document = spec.model_dump(mode="json")
    return parse_spec(document | {name: document[name] | changes for name, changes in sections.items()})


def test_the_spec_field_and_its_refusals(spec):
    assert spec.serving.cohosting == "none" and spec.serving_pool is None
    pooled = _with(spec, serving={"cohosting": "pool"})
    assert pooled.serving_pool == "churn-pool"
    assert _with(spec, serving={"cohosting": "pool", "pool_id": "shared-cpu"}).serving_pool == "shared-cpu"
    # Another prebuilt TensorFlow CPU image (another region's copy) is co-hostable too.
    assert _with(spec, serving={"cohosting": "pool"}, registry={"serving_image": EUROPE_TF}).serving_pool

    with pytest.raises(SpecError) as custom:
        _with(spec, serving={"cohosting": "pool"}, registry={"serving_image": "us-docker.pkg.dev/p/r/fleetops:1"})
    assert "registry.serving_image 'us-docker.pkg.dev/p/r/fleetops:1' is a custom container" in str(custom.value)
    assert f"fleetops then uses {PREBUILT_TF_IMAGE}" in str(custom.value)
    with pytest.raises(SpecError) as gpu:
        _with(spec, serving={"cohosting": "pool", "machine_type": "a2-highgpu-1g"})
    assert "serving: machine_type 'a2-highgpu-1g' comes with GPUs" in str(gpu.value)
    with pytest.raises(SpecError, match="serving: pool_id 'p1' is set but cohosting is 'none'"):
        _with(spec, serving={"pool_id": "p1"})
    with pytest.raises(SpecError, match="serving.pool_id: String should match pattern"):
        _with(spec, serving={"cohosting": "pool", "pool_id": "Pool_1"})
    with pytest.raises(SpecError, match="serving.cohosting: Input should be 'none' or 'pool'"):
        _with(spec, serving={"cohosting": "endpoint"})
    # Without co-hosting a GPU machine and a custom image stay allowed.
    _with(spec, serving={"machine_type": "a2-highgpu-1g"}, registry={"serving_image": "img"})


def test_the_savedmodel_scores_as_the_artifact_does(trained_models, tmp_path):
    artifact = tmp_path / "north"
    shutil.copytree(trained_models[0], artifact)
    export_savedmodel(artifact)
    assert has_savedmodel(artifact) and not list(artifact.glob(".*partial"))
    stamp = (artifact / "savedmodel" / "saved_model.pb").stat().st_mtime_ns
    export_savedmodel(artifact)  # a rerun keeps the export it finds
    assert (artifact / "savedmodel" / "saved_model.pb").stat().st_mtime_ns == stamp

    import tensorflow as tf

    loaded = load_artifact(artifact)
    # Instances as our server takes them, one value per feature; NaN and "" for missing values.
    instances = pd.DataFrame(
        {
            "tenure_months": [3.0, 40.0, np.nan],
            "monthly_charges": [50.0, 99.5, 20.0],
            "support_calls": [1.0, 6.0, 0.0],
            "data_usage_gb": [3.0, 0.5, 12.0],
            "plan": ["basic", "premium", ""],
            "contract": ["monthly", "annual", "never-seen"],
            "payment_method": ["card", "bank", "card"],
        }
    )
    serve = tf.saved_model.load(str(artifact / "savedmodel")).signatures["serving_default"]
    features = loaded.features["numeric"] + loaded.features["categorical"]
    assert sorted(serve.structured_input_signature[1]) == sorted(features)
    outputs = serve(**{name: tf.constant(instances[name].tolist()) for name in features})
    np.testing.assert_allclose(outputs["scores"].numpy(), loaded.scores(instances), rtol=1e-5, atol=1e-6)
    assert outputs["classes"].numpy().astype(str).tolist() == [loaded.classes] * 3


def _evaluation(segment="north"):
    return {
        "segment": segment,
        "model_id": f"churn-{segment}",
        "promote": True,
        "metric": "auRoc",
        "metrics": {"auRoc": 0.8},
        "slices": [],
        "champion_value": None,
        "champion_version": None,
        "reason": "first champion",
    }


def test_registration_for_the_pool_exports_and_names_the_tensorflow_container(trained_models, tmp_path, spec):
    spec = _with(spec, serving={"cohosting": "pool"})
    model_dir = tmp_path / "model"
    shutil.copytree(trained_models[0], model_dir / "north")
    with FakeVertex() as fake:
        vertex = connect(
            f"vertex://proj-1/us-central1?api_endpoint={fake.endpoint}", credentials=AnonymousCredentials()
        )
        # A custom image for a pooled fleet is refused before anything is exported or sent.
        with pytest.raises(UserError, match="serving_image 'img' is a custom container, and the fleet's spec says"):
            training_steps.register_shard(
                spec, vertex, model_dir, [_evaluation()], "gs://b/run/model", serving_image="img"
            )
        assert not has_savedmodel(model_dir / "north") and fake.requests == []

        [row] = training_steps.register_shard(spec, vertex, model_dir, [_evaluation()], model_uri="gs://b/run/model")
        assert has_savedmodel(model_dir / "north")
        [upload] = fake.calls("POST", "models:upload")
        model = upload["body"]["model"]
        # Vertex's TensorFlow container on the SavedModel: none of our container's command, routes or port.
        assert model["containerSpec"] == {"imageUri": PREBUILT_TF_IMAGE}
        assert model["artifactUri"] == "gs://b/run/model/north/savedmodel"
        # What Vertex then lists for the model (an output field: Vertex derives it from the container).
        stored = fake.models["churn-north"]["versions"]["1"]
        assert stored["supportedDeploymentResourcesTypes"] == ["DEDICATED_RESOURCES", "SHARED_RESOURCES"]
        # The version's artifact stays the fleetops artifact, which evaluation loads.
        assert row["artifact_uri"] == "gs://b/run/model/north"
        assert vertex.registry.get_version("churn-north", "champion").artifact_uri == "gs://b/run/model/north"


def test_the_tensorflow_container_needs_a_savedmodel_on_both_platforms(platform, artifact_dirs):
    message = r"serving image .* is Vertex's prebuilt TensorFlow container, which serves a SavedModel, and artifact"
    with pytest.raises(RegistryRuleError, match=message):
        platform.registry.upload_version("churn-north", artifact_dirs[0], serving_image=PREBUILT_TF_IMAGE)
    with FakeVertex() as fake:
        vertex = connect(
            f"vertex://proj-1/us-central1?api_endpoint={fake.endpoint}", credentials=AnonymousCredentials()
        )
        with pytest.raises(RegistryRuleError, match=message):
            vertex.registry.upload_version(
                "churn-north", artifact_dirs[0], artifact_uri="gs://b/m", serving_image=PREBUILT_TF_IMAGE
            )
        assert fake.requests == []


def test_explanations_of_a_co_hosted_model_are_refused_with_the_reason():
    settings = DeploymentSettings(deployment_resource_pool="churn-pool")
    deployed = DeployedModel("7", "churn-north", "2", "projects/p/locations/l/models/churn-north", "d", settings)
    with pytest.raises(UserError, match=r"co-hosted in deployment resource pool 'churn-pool', and Vertex serves no"):
        check_explainable("churn-north", deployed)
    check_explainable("churn-north", DeployedModel("8", "churn-north", "2", "n", "d"))  # own nodes: explainable
    with pytest.raises(UserError, match="deployment_resource_pool 'Pool' is invalid"):
        DeploymentSettings(deployment_resource_pool="Pool")
