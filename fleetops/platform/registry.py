"""The model registry interface, its value types, and the Vertex rules both sides enforce.

The local twin (SQLite) and Vertex (google-cloud-aiplatform) implement
`ModelRegistry`; callers never branch on which one they hold. The rules below
are checked before any request is sent, so a mistake fails the same way, with
the same message, in both places.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fleetops.errors import RegistryRuleError
from fleetops.names import DEFAULT_ALIAS

# Checked with fullmatch: `$` alone also matches before a final newline ("champion\n").
ALIAS_PATTERN = re.compile(r"^[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]$")
LABEL_KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
LABEL_VALUE_PATTERN = re.compile(r"^[a-z0-9_-]{0,64}$")
MODEL_ID_PATTERN = re.compile(r"^[a-z_][a-z0-9_-]{0,62}$")
# A sha256 in hex: 64 characters, exactly what a Vertex label value may hold, so the label keeps it whole.
IDENTITY_PATTERN = re.compile(r"^[0-9a-f]{64}$")
MAX_LABELS = 64
EVALUATION_SCHEMA_PREFIX = "gs://google-cloud-aiplatform/schema/modelevaluation/"


@dataclass(frozen=True)
class ModelVersion:
    """One version of a registered model, as Vertex describes it."""

    model_id: str
    version_id: str
    resource_name: str
    display_name: str
    aliases: tuple[str, ...]
    labels: dict[str, str]
    artifact_uri: str
    artifact_sha256: str
    description: str = ""
    lineage: dict[str, Any] = field(default_factory=dict)
    create_time: str = ""
    # What uploads deduplicate on (see `ModelRegistry.upload_version`); `artifact_sha256` stays the tamper check.
    identity_sha256: str = ""

    @property
    def versioned_name(self) -> str:
        return f"{self.resource_name}@{self.version_id}"

    @property
    def is_default(self) -> bool:
        return DEFAULT_ALIAS in self.aliases


@dataclass(frozen=True)
class Registration:
    """The result of an upload: the version, and whether this call created it (False on a retry)."""

    version: ModelVersion
    created: bool


@dataclass(frozen=True)
class EvaluationInput:
    """A model evaluation to import: Vertex's schema URI, the metrics, optional slices."""

    metrics_schema_uri: str
    metrics: dict[str, Any]
    display_name: str = "evaluation"
    slices: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class UploadRequest:
    """One upload of a batch (`ModelRegistry.upload_versions`): the arguments of `ModelRegistry.upload_version`."""

    model_id: str
    artifact_path: str | Path
    artifact_uri: str | None = None
    display_name: str | None = None
    description: str = ""
    labels: dict[str, str] | None = None
    aliases: list[str] | tuple[str, ...] = ()
    is_default_version: bool = True
    lineage: dict[str, Any] | None = None
    serving_image: str | None = None
    evaluation: EvaluationInput | None = None
    identity: str | None = None

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments of the equivalent `upload_version` call (shallow: the evaluation stays itself)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Evaluation:
    evaluation_id: str
    resource_name: str
    metrics_schema_uri: str
    metrics: dict[str, Any]
    display_name: str
    slices: list[dict[str, Any]] = field(default_factory=list)
    create_time: str = ""


class ModelRegistry(ABC):
    """Versions, aliases, labels, lineage and evaluations of models, keyed by model id."""

    # Whether an upload must name the serving container image (Vertex: yes; the twin serves every
    # version with its own server and records the image only).
    requires_serving_image: bool = False

    @abstractmethod
    def upload_version(
        self,
        model_id: str,
        artifact_path: str | Path,
        *,
        artifact_uri: str | None = None,
        display_name: str | None = None,
        description: str = "",
        labels: dict[str, str] | None = None,
        aliases: list[str] | tuple[str, ...] = (),
        is_default_version: bool = True,
        lineage: dict[str, Any] | None = None,
        serving_image: str | None = None,
        evaluation: EvaluationInput | None = None,
        identity: str | None = None,
    ) -> Registration:
        """Register `artifact_path` as a new version of `model_id` (created on first upload).

        Idempotent: if this model already has a version with the same `identity`,
        or with the same artifact bytes (sha256), that version is returned with
        `created=False` and nothing else changes (no alias move, no evaluation).
        Atomic: on failure no version, alias move or evaluation is left behind.
        For many models at once, `upload_versions` (one transaction on the twin).

        Args:
            identity: What makes two uploads the same version: a sha256 in hex, such as
                the model identity `save_artifact` records (`identity_sha256`). None means
                the artifact's bytes (its directory sha256), for artifacts that have none.
        """

    def upload_versions(self, requests: Sequence[UploadRequest]) -> list[Registration]:
        """Register a batch of uploads, as `upload_version` would one by one, in order.

        The i-th registration is what `upload_version(**requests[i].arguments())` would
        return after the earlier requests: the same deduplication (an identity or artifact
        already registered, also by an earlier request of the batch, gives `created=False`),
        consecutive version ids for requests of the same model, and the same alias moves.

        Every request is checked against the shared rules (`check_upload_request`) before
        anything is uploaded, so a malformed request fails the batch with nothing registered.

        Atomicity depends on the registry:

        - Local twin: all or nothing. The whole batch is one SQLite transaction; if any
          request fails, no version, alias move, evaluation or artifact file of the batch is left.
        - Vertex (this default implementation): per model. Each upload is its own
          long-running operation and Vertex has no transaction spanning several, so a batch
          is no cheaper there than a loop. The requests are uploaded in order; if one fails,
          its own upload is undone as `upload_version` undoes it, the exception propagates,
          and the versions registered before it stay registered, each with its evaluation.
          Rerunning the same batch is safe: those are found again by their identity and
          returned with `created=False`, and the rest are uploaded.

        Args:
            requests: The uploads, in the order their versions are to be created.

        Returns:
            One registration per request, in the same order.

        Raises:
            RegistryRuleError: A request breaks a registry rule; the message names its model id.
        """
        requests = list(requests)
        for request in requests:
            check_upload_request(request)
        return [self.upload_version(**request.arguments()) for request in requests]

    @abstractmethod
    def get_version(self, model_id: str, version: str | None = None) -> ModelVersion:
        """A version by id or alias; the default version when `version` is None."""

    @abstractmethod
    def list_versions(self, model_id: str) -> list[ModelVersion]:
        """Every version of a model, oldest first."""

    @abstractmethod
    def list_models(self, labels: dict[str, str] | None = None) -> list[str]:
        """Model ids, optionally only those whose versions carry all of `labels`."""

    @abstractmethod
    def add_version_aliases(self, model_id: str, version: str, aliases: list[str]) -> ModelVersion:
        """Give aliases to a version; an alias held by another version moves here."""

    @abstractmethod
    def remove_version_aliases(self, model_id: str, version: str, aliases: list[str]) -> ModelVersion:
        """Take aliases off a version (never `default`: give it to another version instead)."""

    @abstractmethod
    def delete_version(self, model_id: str, version: str) -> None:
        """Delete a version; the last version and the default version cannot be deleted."""

    @abstractmethod
    def import_evaluation(self, model_id: str, version: str, evaluation: EvaluationInput) -> Evaluation:
        """Attach an evaluation to a version."""

    @abstractmethod
    def list_evaluations(self, model_id: str, version: str | None = None) -> list[Evaluation]:
        """The evaluations of a version (the default version when None)."""

    @abstractmethod
    def artifact_path(self, version: ModelVersion) -> Path:
        """A local path from which the version's artifact can be read."""


def check_model_id(model_id: str) -> None:
    if not isinstance(model_id, str) or not MODEL_ID_PATTERN.fullmatch(model_id):
        raise RegistryRuleError(
            f"model id {model_id!r} is invalid: up to 63 characters of [a-z0-9_-], not starting with a digit or '-'"
        )


def check_identity(identity: str) -> None:
    if not isinstance(identity, str) or not IDENTITY_PATTERN.fullmatch(identity):
        raise RegistryRuleError(
            f"version identity {identity!r} is invalid: it must be a sha256 in hex (64 characters of [0-9a-f])"
        )


def check_aliases(aliases: list[str] | tuple[str, ...]) -> None:
    """Vertex's alias format; aliases are not numeric (that would read as a version id)."""
    for alias in aliases:
        if not isinstance(alias, str) or not ALIAS_PATTERN.fullmatch(alias):
            raise RegistryRuleError(
                f"version alias {alias!r} is invalid: it must match [a-z][a-zA-Z0-9-]{{0,126}}[a-z0-9] "
                "(start with a lowercase letter, 2 to 128 characters)"
            )
    duplicates = sorted({a for a in aliases if list(aliases).count(a) > 1})
    if duplicates:
        raise RegistryRuleError(f"version aliases {duplicates} are given more than once")


def check_labels(labels: dict[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise RegistryRuleError(f"{len(labels)} labels given; at most {MAX_LABELS} are allowed")
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_KEY_PATTERN.fullmatch(key):
            raise RegistryRuleError(
                f"label key {key!r} is invalid: 1 to 64 lowercase letters, digits, '_' or '-', starting with a letter"
            )
        if not isinstance(value, str) or not LABEL_VALUE_PATTERN.fullmatch(value):
            raise RegistryRuleError(
                f"label value {value!r} (key {key!r}) is invalid: at most 64 lowercase letters, digits, '_' or '-'"
            )


def check_evaluation(evaluation: EvaluationInput) -> None:
    """What Vertex accepts as an imported model evaluation: its schema, metrics that are finite JSON."""
    if not evaluation.metrics_schema_uri.startswith(EVALUATION_SCHEMA_PREFIX):
        raise RegistryRuleError(
            f"metrics_schema_uri {evaluation.metrics_schema_uri!r} is not a Vertex model evaluation schema "
            f"({EVALUATION_SCHEMA_PREFIX}...)"
        )
    try:
        json.dumps(evaluation.metrics, allow_nan=False)
        json.dumps(evaluation.slices, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RegistryRuleError(f"evaluation metrics must be finite JSON values: {exc}") from None


def check_upload_request(request: UploadRequest) -> None:
    """Every rule an upload must meet before anything is sent; a failure names the model (a batch has many)."""
    check_model_id(request.model_id)
    try:
        check_aliases(request.aliases)
        check_labels(dict(request.labels or {}))
        if request.identity is not None:
            check_identity(request.identity)
        if request.evaluation is not None:
            check_evaluation(request.evaluation)
        check_serving_format(request.artifact_path, request.serving_image)
    except RegistryRuleError as exc:
        raise RegistryRuleError(f"upload of model {request.model_id!r}: {exc}") from None


def check_serving_format(artifact_path: str | Path, serving_image: str | None) -> None:
    """Vertex's prebuilt TensorFlow container serves a SavedModel: an artifact named for it must carry one."""
    from fleetops.spec import is_prebuilt_tf_image
    from fleetops.training.savedmodel import SAVEDMODEL_DIR, has_savedmodel

    if is_prebuilt_tf_image(serving_image) and not has_savedmodel(artifact_path):
        raise RegistryRuleError(
            f"serving image {serving_image} is Vertex's prebuilt TensorFlow container, which serves a SavedModel, "
            f"and artifact {str(artifact_path)!r} has no {SAVEDMODEL_DIR}/saved_model.pb "
            "(fleetops.training.savedmodel.export_savedmodel writes it)"
        )


def upload_aliases(aliases: list[str] | tuple[str, ...], is_default_version: bool) -> list[str]:
    """The aliases an upload asks for: `default` is appended when `is_default_version` (as the SDK does)."""
    result = list(aliases)
    if is_default_version and DEFAULT_ALIAS not in result:
        result.append(DEFAULT_ALIAS)
    return result


def check_alias_removal(aliases: list[str]) -> None:
    if DEFAULT_ALIAS in aliases:
        raise RegistryRuleError(
            "the 'default' alias cannot be removed: a model has exactly one default version; "
            "add 'default' to another version to move it"
        )
