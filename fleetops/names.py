"""Names used across the library, components and pipelines, defined once."""

from __future__ import annotations

import hashlib
import re

CHAMPION_ALIAS = "champion"
DEFAULT_ALIAS = "default"

# Labels fleetops puts on every registered version (Vertex label rules apply).
LABEL_FLEET = "fleet"
LABEL_SEGMENT = "segment"
LABEL_ARCHITECTURE = "architecture"
LABEL_ARTIFACT_SHA256 = "artifact-sha256"
LABEL_IDENTITY_SHA256 = "identity-sha256"
LABEL_MANAGED_BY = "managed-by"

# Files inside a model artifact directory.
MODEL_FILE = "model.keras"
MODEL_METADATA_FILE = "metadata.json"
MODEL_STATISTICS_FILE = "statistics.json"

# The metadata key holding a model's identity (fingerprints.model_identity_sha256).
METADATA_IDENTITY = "identity_sha256"

# Vertex model ids: up to 63 of [a-z0-9_-], not starting with a digit or '-'.
_MODEL_ID_MAX = 63
_NON_ID = re.compile(r"[^a-z0-9-]+")


def segment_slug(segment: str) -> str:
    """A readable, id-safe form of a segment; a hash suffix keeps distinct segments distinct."""
    slug = _NON_ID.sub("-", segment.lower()).strip("-")
    if slug == segment and slug:
        return slug
    suffix = hashlib.sha1(segment.encode()).hexdigest()[:6]
    return f"{slug[:40]}-{suffix}" if slug else f"s-{suffix}"


def model_id(fleet: str, segment: str | None) -> str:
    """The registry id of one fleet member: `<fleet>` or `<fleet>-<segment slug>`."""
    if segment is None or segment == "__all__":
        return fleet
    candidate = f"{fleet}-{segment_slug(segment)}"
    if len(candidate) <= _MODEL_ID_MAX:
        return candidate
    digest = hashlib.sha1(candidate.encode()).hexdigest()[:8]
    return f"{candidate[: _MODEL_ID_MAX - 9]}-{digest}"


def label_value(value: str) -> str:
    """Fit any string into a Vertex label value (64 of lowercase, digits, '_', '-')."""
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", value.lower())
    if len(cleaned) <= 64:
        return cleaned
    return cleaned[:55] + "-" + hashlib.sha1(value.encode()).hexdigest()[:8]
