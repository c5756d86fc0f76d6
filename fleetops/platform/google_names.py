"""Google Cloud's naming rules for what a `vertex://` URI carries, checked before anything is sent.

A typo in a platform URI (a region that does not exist, a bucket name Cloud Storage
cannot hold, a network given by project id) would otherwise surface minutes later as
a 400 or 404 from a running pipeline. Each check raises a `UserError` naming the
setting, the value and the documented rule. Patterns are applied with `fullmatch`.
"""

from __future__ import annotations

import difflib
import re

from fleetops.errors import UserError

# Project ids: 6 to 30 lowercase letters, digits and hyphens, from a letter, not ending with a hyphen.
PROJECT_ID = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
# A domain-scoped project (`example.com:my-project`) is a domain, a colon, a project id.
DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+")
PROJECT_RULE = (
    "a project id is 6 to 30 lowercase letters, digits or hyphens, starts with a letter and does not end "
    "with a hyphen (a domain-scoped one is DOMAIN:PROJECT_ID, as in example.com:my-project)"
)

BUCKET_CHARACTERS = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?")
IP_ADDRESS = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
BUCKET_RULE = (
    "Cloud Storage bucket names are 3 to 63 lowercase letters, digits, '-', '_' or '.', start and end with a "
    "letter or digit (with dots: up to 222 characters, each dot-separated part at most 63), do not start with "
    "'goog', do not contain 'google' and are not an IP address"
)

# A user-managed service account, and the two default ones Google creates in a project.
SERVICE_ACCOUNT = re.compile(r"(?P<name>[^@]+)@(?P<project>[^@]+)\.iam\.gserviceaccount\.com")
SERVICE_ACCOUNT_NAME = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
COMPUTE_DEFAULT_SERVICE_ACCOUNT = re.compile(r"\d+-compute@developer\.gserviceaccount\.com")
APP_ENGINE_DEFAULT_SERVICE_ACCOUNT = re.compile(r"(?P<project>[^@]+)@appspot\.gserviceaccount\.com")
SERVICE_ACCOUNT_RULE = (
    "a service account email is NAME@PROJECT_ID.iam.gserviceaccount.com (NAME: 6 to 30 lowercase letters, "
    "digits or hyphens, from a letter, not ending with a hyphen), or a project's default one: "
    "PROJECT_NUMBER-compute@developer.gserviceaccount.com or PROJECT_ID@appspot.gserviceaccount.com"
)

# Vertex peers with a VPC network named by project *number* (its API says so), and a network name is RFC 1035.
NETWORK = re.compile(r"projects/\d+/global/networks/[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
NETWORK_RULE = (
    "a network is projects/PROJECT_NUMBER/global/networks/NAME (the project's number, not its id; NAME: up to "
    "63 lowercase letters, digits or hyphens, from a letter, not ending with a hyphen)"
)

# Cloud KMS: key ring and key ids are 1 to 63 letters, digits, '_' or '-'.
KMS_KEY = re.compile(r"projects/[^/]+/locations/[a-z0-9-]+/keyRings/[a-zA-Z0-9_-]{1,63}/cryptoKeys/[a-zA-Z0-9_-]{1,63}")
KMS_KEY_RULE = (
    "a Cloud KMS key name is projects/PROJECT/locations/LOCATION/keyRings/KEY_RING/cryptoKeys/KEY "
    "(KEY_RING and KEY: 1 to 63 letters, digits, '_' or '-')"
)


def is_project_id(value: str) -> bool:
    """A project id, or a domain-scoped one (`example.com:my-project`)."""
    domain, sep, project = value.rpartition(":")
    return PROJECT_ID.fullmatch(project) is not None and (not sep or DOMAIN.fullmatch(domain) is not None)


def check_project(project: str) -> None:
    if not is_project_id(project):
        raise UserError(f"Vertex project {project!r} is not a Google Cloud project id: {PROJECT_RULE}")


def vertex_regions() -> frozenset[str]:
    """The locations google-cloud-aiplatform accepts: its SUPPORTED_REGIONS and multi-regional jurisdictions.

    The SDK's own constants (what `aiplatform.init` checks the location against), so the list
    follows the pinned SDK instead of a copy here.
    """
    from google.cloud.aiplatform.constants import base

    return base.SUPPORTED_REGIONS | base.MREP_JURISDICTIONS


def check_region(region: str) -> None:
    regions = vertex_regions()
    if region not in regions:
        close = difflib.get_close_matches(region.lower(), regions, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(
            f"Vertex region {region!r} is not one Vertex AI serves{hint}: google-cloud-aiplatform's "
            f"SUPPORTED_REGIONS and multi-regional jurisdictions are {sorted(regions)}"
        )


def bucket_problem(bucket: str) -> str | None:
    """Which Cloud Storage naming rule a bucket name breaks, or None when it follows them all."""
    parts = bucket.split(".")
    if len(parts) == 1 and not 3 <= len(bucket) <= 63:
        return f"has {len(bucket)} characters, not 3 to 63"
    if len(parts) > 1 and not (3 <= len(bucket) <= 222 and all(1 <= len(part) <= 63 for part in parts)):
        return "with dots is not 3 to 222 characters of dot-separated parts of 1 to 63"
    if not BUCKET_CHARACTERS.fullmatch(bucket):
        return "holds other characters than a-z, 0-9, '-', '_' and '.', or does not start and end with one of a-z, 0-9"
    if bucket.startswith("goog") or "google" in bucket:
        return "starts with 'goog' or contains 'google'"
    if IP_ADDRESS.fullmatch(bucket):
        return "is an IP address"
    return None


def check_gcs_uri(setting: str, uri: str) -> None:
    """A `gs://BUCKET[/path]` whose bucket follows Cloud Storage's naming rules."""
    if not uri.startswith("gs://"):
        raise UserError(f"{setting} {uri!r} must be a gs:// URI (gs://BUCKET or gs://BUCKET/path)")
    bucket = uri.removeprefix("gs://").partition("/")[0]
    if problem := bucket_problem(bucket):
        raise UserError(f"{setting} {uri!r}: bucket name {bucket!r} {problem}; {BUCKET_RULE}")


def is_service_account(email: str) -> bool:
    if COMPUTE_DEFAULT_SERVICE_ACCOUNT.fullmatch(email):
        return True
    if app_engine := APP_ENGINE_DEFAULT_SERVICE_ACCOUNT.fullmatch(email):
        return is_project_id(_undotted(app_engine["project"]))
    match = SERVICE_ACCOUNT.fullmatch(email)
    return (
        match is not None
        and SERVICE_ACCOUNT_NAME.fullmatch(match["name"]) is not None
        and is_project_id(_undotted(match["project"]))
    )


def _undotted(project: str) -> str:
    """A domain-scoped project in an email domain: `my-project.example.com` is `example.com:my-project`."""
    project_id, _, domain = project.partition(".")
    return f"{domain}:{project_id}" if domain else project_id


def check_service_account(email: str) -> None:
    if not is_service_account(email):
        raise UserError(f"service_account {email!r} is not a service account email: {SERVICE_ACCOUNT_RULE}")


def check_network(network: str) -> None:
    if not NETWORK.fullmatch(network):
        raise UserError(f"network {network!r} is not a VPC network name Vertex accepts: {NETWORK_RULE}")


def check_kms_key(key: str) -> None:
    if not KMS_KEY.fullmatch(key):
        raise UserError(f"encryption_key {key!r} is not a Cloud KMS key name: {KMS_KEY_RULE}")
