"""Every validated name refuses a trailing newline.

Python's `$` also matches just before a final newline, so `re.match(r"^[a-z]+$", "champion\\n")`
succeeds; the checks use `fullmatch`. Each case goes through the public entry point that
validates the name and expects the error to show the value (with its newline) and the rule.
"""

import pytest
import yaml

from fleetops.data.sample import SAMPLE_SPEC
from fleetops.data.sources import parse_table
from fleetops.errors import RegistryRuleError, SpecError, UserError
from fleetops.platform import vertex_settings
from fleetops.platform.endpoints import DeploymentSettings
from fleetops.platform.vertex.pipeline_jobs import build_pipeline_job
from fleetops.spec import PREBUILT_TF_IMAGE, is_prebuilt_tf_image, parse_spec


def test_registry_refuses_a_trailing_newline_in_aliases_model_ids_and_labels(platform, artifact_dirs):
    registry = platform.registry
    with pytest.raises(RegistryRuleError, match=r"version alias 'champion\\n' is invalid: it must match \[a-z\]"):
        registry.upload_version("churn", artifact_dirs[0], aliases=["champion\n"])
    with pytest.raises(RegistryRuleError, match=r"model id 'churn\\n' is invalid: up to 63 characters of \[a-z0-9_-\]"):
        registry.upload_version("churn\n", artifact_dirs[0])
    with pytest.raises(RegistryRuleError, match=r"label key 'team\\n' is invalid: 1 to 64 lowercase letters"):
        registry.upload_version("churn", artifact_dirs[0], labels={"team\n": "growth"})
    with pytest.raises(RegistryRuleError, match=r"label value 'growth\\n' \(key 'team'\) is invalid: at most 64"):
        registry.upload_version("churn", artifact_dirs[0], labels={"team": "growth\n"})
    with pytest.raises(RegistryRuleError, match=r"version identity '.{64}\\n' is invalid: it must be a sha256"):
        registry.upload_version("churn", artifact_dirs[0], identity="a" * 64 + "\n")
    assert registry.list_models() == []  # nothing was written


def test_endpoints_refuse_a_trailing_newline_in_endpoint_and_pool_ids(platform):
    with pytest.raises(UserError, match=r"endpoint id 'churn-north\\n' is invalid: up to 63 of \[a-z0-9-\]"):
        platform.endpoints.create("churn-north\n")
    with pytest.raises(UserError, match=r"deployment_resource_pool 'pool\\n' is invalid: up to 63 of \[a-z0-9-\]"):
        DeploymentSettings(deployment_resource_pool="pool\n")
    assert platform.endpoints.list() == []


def test_a_pipeline_job_id_with_a_trailing_newline_is_refused(tmp_path):
    settings = vertex_settings("vertex://proj-1/us-central1?staging_bucket=gs://proj-1-staging")
    with pytest.raises(UserError, match=r"pipeline job id 'churn-1\\n' is invalid: it must match \[a-z\]"):
        build_pipeline_job(settings, tmp_path / "x.json", {}, display_name="x", job_id="churn-1\n")


def test_a_table_reference_with_a_trailing_newline_is_refused():
    with pytest.raises(UserError, match=r"table reference 'bq://proj-1.crm.churn\\n' must look like bq://project"):
        parse_table("bq://proj-1.crm.churn\n")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("name", "churn\n", r"name: String should match pattern .* \(got 'churn\\n'\)"),
        ("registry", {"labels": {"team": "growth\n"}}, r"labels \['team=growth\\n'\] are invalid: keys and values"),
        ("registry", {"labels": {"team\n": "growth"}}, r"labels \['team\\n=growth'\] are invalid: keys and values"),
        ("serving", {"pool_id": "pool\n"}, r"serving.pool_id: String should match pattern .* \(got 'pool\\n'\)"),
    ],
)
def test_the_fleet_spec_refuses_a_trailing_newline_in_its_names(field, value, message):
    document = yaml.safe_load(SAMPLE_SPEC.format(source="churn.csv"))
    document[field] = value
    with pytest.raises(SpecError, match=message):
        parse_spec(document)


def test_a_serving_image_with_a_trailing_newline_is_not_the_prebuilt_one():
    assert is_prebuilt_tf_image(PREBUILT_TF_IMAGE)
    assert not is_prebuilt_tf_image(PREBUILT_TF_IMAGE + "\n")
