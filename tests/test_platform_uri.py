"""`vertex://` URIs are checked against Google Cloud's naming rules before anything is sent."""

import re

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud.aiplatform.constants import base as sdk_constants

from fleetops.errors import UserError
from fleetops.platform import connect, vertex_settings
from tests.fake_vertex import FakeVertex

KEY = "projects/proj-1/locations/us-central1/keyRings/ring_1/cryptoKeys/key-1"
NETWORK = "projects/123456/global/networks/vpc-1"
SA = "runner@proj-1.iam.gserviceaccount.com"


def refused(uri: str, *parts: str) -> None:
    """`uri` is refused with a message holding each of `parts` (the value, quoted, and the rule)."""
    with pytest.raises(UserError) as refusal:
        vertex_settings(uri)
    for part in parts:
        assert part in str(refusal.value), (part, str(refusal.value))


def test_a_full_uri_is_read_into_settings():
    settings = vertex_settings(
        f"vertex://proj-1/europe-west4?staging_bucket=gs://proj-1-staging/runs&pipeline_root=gs://roots.example.com/x"
        f"&service_account={SA}&network={NETWORK}&encryption_key={KEY}&labels=a:b,c:d"
    )
    assert (settings.project, settings.region, settings.labels) == ("proj-1", "europe-west4", {"a": "b", "c": "d"})
    assert (settings.staging_bucket, settings.pipeline_root) == ("gs://proj-1-staging/runs", "gs://roots.example.com/x")
    assert (settings.service_account, settings.network, settings.encryption_key) == (SA, NETWORK, KEY)


def test_the_uri_shape_and_its_settings_are_checked():
    refused("vertex://proj-1/us-central1?colour=blue", "setting(s) ['colour'] unknown; allowed: ['staging_bucket'")
    refused("vertex://proj-1", "'vertex://proj-1' must look like vertex://PROJECT/REGION")
    refused("vertex://proj-1/us-central1?labels=Team:x", "label key 'Team' is invalid")
    with pytest.raises(UserError, match="is not supported"):
        connect("s3://bucket")


@pytest.mark.parametrize("project", ["proj-1", "a" * 30, "example.com:my-project", "corp.example.co.uk:ml-fleet"])
def test_project_ids_and_domain_scoped_ones_are_accepted(project):
    assert vertex_settings(f"vertex://{project}/us-central1").project == project


@pytest.mark.parametrize(
    "project",
    ["p1", "proj", "a" * 31, "1project", "project-", "Proj-1", "my_project", "example.com:", "example..com:proj-1"],
)
def test_a_project_id_that_breaks_googles_rules_is_refused(project):
    refused(f"vertex://{project}/us-central1", f"Vertex project {project!r}", "6 to 30 lowercase letters")


@pytest.mark.parametrize("region", ["us-central1", "europe-west4", "us", "eu"])
def test_vertex_regions_are_accepted(region):
    assert vertex_settings(f"vertex://proj-1/{region}").region == region


def test_every_region_the_sdk_supports_is_accepted():
    """The list is the SDK's own constant: a region added to google-cloud-aiplatform is accepted with it."""
    for region in sdk_constants.SUPPORTED_REGIONS | sdk_constants.MREP_JURISDICTIONS:
        vertex_settings(f"vertex://proj-1/{region}")


@pytest.mark.parametrize(
    "region, hint",
    [("us-centrall1", " (did you mean 'us-central1'?)"), ("US-CENTRAL1", " (did you mean 'us-central1'?)"), ("r", "")],
)
def test_a_region_vertex_does_not_serve_is_refused(region, hint):
    refused(
        f"vertex://proj-1/{region}", f"Vertex region {region!r} is not one Vertex AI serves{hint}", "SUPPORTED_REGIONS"
    )


GOOD_BUCKETS = ["abc", "my_bucket-1", "a" * 63, "data.example.com", ".".join(["a" * 63] * 3) + "." + "b" * 30]
BAD_BUCKETS = [
    ("", "has 0 characters, not 3 to 63"),
    ("ab", "has 2 characters, not 3 to 63"),
    ("a" * 64, "has 64 characters, not 3 to 63"),
    ("a" * 64 + ".com", "with dots is not 3 to 222 characters"),
    (".".join(["a" * 63] * 3) + "." + "b" * 31, "with dots is not 3 to 222 characters"),
    ("a..b", "with dots is not 3 to 222 characters"),
    ("My-Bucket", "holds other characters"),
    ("-bucket", "holds other characters"),
    ("bucket_", "holds other characters"),
    ("my bucket", "holds other characters"),
    ("goog-data", "starts with 'goog' or contains 'google'"),
    ("my-google-data", "starts with 'goog' or contains 'google'"),
    ("192.168.1.10", "is an IP address"),
]


@pytest.mark.parametrize("setting", ["staging_bucket", "pipeline_root"])
@pytest.mark.parametrize("bucket", GOOD_BUCKETS)
def test_bucket_names_that_follow_the_rules_are_accepted(setting, bucket):
    assert getattr(vertex_settings(f"vertex://proj-1/us-central1?{setting}=gs://{bucket}/x"), setting)


@pytest.mark.parametrize("setting", ["staging_bucket", "pipeline_root"])
@pytest.mark.parametrize("bucket, problem", BAD_BUCKETS)
def test_a_malformed_bucket_is_refused_with_the_rule_it_breaks(setting, bucket, problem):
    uri = f"gs://{bucket}/runs"
    refused(f"vertex://proj-1/us-central1?{setting}={uri}", f"{setting} {uri!r}: bucket name {bucket!r} {problem}")
    refused(f"vertex://proj-1/us-central1?{setting}={uri}", "Cloud Storage bucket names are 3 to 63")


def test_a_bucket_setting_must_be_a_gcs_uri():
    refused("vertex://proj-1/us-central1?staging_bucket=b", "staging_bucket 'b' must be a gs:// URI")
    refused("vertex://proj-1/us-central1?pipeline_root=/tmp/root", "pipeline_root '/tmp/root' must be a gs:// URI")


@pytest.mark.parametrize(
    "email",
    [
        SA,
        "123456-compute@developer.gserviceaccount.com",
        "proj-1@appspot.gserviceaccount.com",
        "ml-runner@my-project.example.com.iam.gserviceaccount.com",
        "service-123456@gcp-sa-aiplatform.iam.gserviceaccount.com",
    ],
)
def test_service_account_emails_are_accepted(email):
    assert vertex_settings(f"vertex://proj-1/us-central1?service_account={email}").service_account == email


@pytest.mark.parametrize(
    "email",
    [
        "runner",
        "sa@proj-1.iam.gserviceaccount.com",
        "Runner@proj-1.iam.gserviceaccount.com",
        "runner@p.iam.gserviceaccount.com",
        "runner@gmail.com",
        "runner@proj-1.iam.gserviceaccount.com.example.com",
        "compute@developer.gserviceaccount.com",
    ],
)
def test_a_malformed_service_account_is_refused(email):
    refused(
        f"vertex://proj-1/us-central1?service_account={email}",
        f"service_account {email!r} is not a service account email",
        "NAME@PROJECT_ID.iam.gserviceaccount.com",
    )


@pytest.mark.parametrize(
    "network",
    [
        "vpc",
        "projects/proj-1/global/networks/vpc",
        "projects/123/global/networks/VPC",
        "projects/123/global/networks/vpc-",
        "projects/123/regions/us-central1/networks/vpc",
        "projects/123/global/networks/",
    ],
)
def test_a_network_not_in_vertexs_format_is_refused(network):
    refused(
        f"vertex://proj-1/us-central1?network={network}",
        f"network {network!r} is not a VPC network name Vertex accepts",
        "projects/PROJECT_NUMBER/global/networks/NAME (the project's number, not its id",
    )


@pytest.mark.parametrize(
    "key",
    [
        "key-1",
        "projects/proj-1/locations/us-central1/keyRings/ring_1/cryptoKeys/",
        KEY + "/cryptoKeyVersions/1",
        "projects/proj-1/locations/us-central1/keyRings/ring.1/cryptoKeys/key-1",
        "projects/proj-1/keyRings/ring_1/cryptoKeys/key-1",
    ],
)
def test_a_malformed_kms_key_is_refused(key):
    refused(
        f"vertex://proj-1/us-central1?encryption_key={key}",
        f"encryption_key {key!r} is not a Cloud KMS key name",
        "projects/PROJECT/locations/LOCATION/keyRings/KEY_RING/cryptoKeys/KEY",
    )


@pytest.mark.parametrize(
    "path_and_setting, value",
    [
        ("us-centrall1?", "us-centrall1"),
        ("us-central1?staging_bucket=gs://goog-data", "gs://goog-data"),
        ("us-central1?network=projects/proj-1/global/networks/vpc", "projects/proj-1/global/networks/vpc"),
    ],
)
def test_a_refused_uri_sends_nothing(path_and_setting, value):
    with FakeVertex() as fake:
        with pytest.raises(UserError, match=re.escape(repr(value))):
            connect(
                f"vertex://proj-1/{path_and_setting}&api_endpoint={fake.endpoint}", credentials=AnonymousCredentials()
            )
        assert fake.requests == []


def test_anonymous_credentials_are_for_a_stand_in_and_nothing_else_is_accepted():
    platform = connect("vertex://proj-1/us-central1?api_endpoint=http://127.0.0.1:9&credentials=anonymous")
    assert isinstance(platform.credentials, AnonymousCredentials)
    with pytest.raises(UserError, match=r"credentials 'adc' is not a choice: 'anonymous'"):
        vertex_settings("vertex://proj-1/us-central1?credentials=adc")
