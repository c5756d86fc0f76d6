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


# Keys shared by components, pipelines and the code that runs them or reads their outputs. A component's
# signature stays literal Python (KFP reads its parameter names); these name the same keys where other code
# refers to them by string, and tests/test_compile.py checks that the compiled pipelines still use them.

# The pipelines' parameters: what a run is given.
PARAM_FLEET_SPEC = "fleet_spec"
PARAM_PLATFORM = "platform"
PARAM_SERVING_IMAGE = "serving_image"
PARAM_TRAIN_CPU_LIMIT = "train_cpu_limit"
PARAM_TRAIN_MEMORY_LIMIT = "train_memory_limit"

# A component's or pipeline's return value: KFP names it "Output".
OUTPUT_RETURN_VALUE = "Output"

# Tasks (each named for its component) whose outputs are read after a run: `<pipeline root>/<task>/<output>`.
TASK_VALIDATE = "validate"
TASK_EVALUATE = "evaluate"
TASK_REGISTER = "register"
TASK_SUMMARIZE = "summarize"
TASK_MONITOR = "monitor"

# Components' outputs, by the name of their output parameter.
OUTPUT_RAW_DATA = "raw_data"
OUTPUT_DATASET = "dataset"
OUTPUT_SEGMENTS = "segments"
OUTPUT_TRIALS = "trials"
OUTPUT_GLOBAL_MODEL = "global_model"
OUTPUT_MODEL = "model"
OUTPUT_EVALUATION = "evaluation"
OUTPUT_REGISTERED = "registered"
OUTPUT_SUMMARY = "summary"
OUTPUT_SCORECARD = "scorecard"
OUTPUT_ANOMALIES = "anomalies"
OUTPUT_REPORT = "report"
OUTPUT_RETRAIN_SPEC = "retrain_spec"
OUTPUT_FLEET_NAME = "fleet_name"


def pipeline_arguments(fleet_spec: str, platform: str, serving_image: str | None = "") -> dict[str, str | None]:
    """A run's arguments to the training pipelines (`fleet_training`, `continuous_training`)."""
    return {PARAM_FLEET_SPEC: fleet_spec, PARAM_PLATFORM: platform, PARAM_SERVING_IMAGE: serving_image}
