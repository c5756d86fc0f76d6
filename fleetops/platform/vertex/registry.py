"""The model registry on Vertex AI, through google-cloud-aiplatform.

The same rules as the local twin are checked before a request is sent.
Idempotency uses labels: each version carries `identity-sha256=<hex>` (the
model's identity, or its artifact's sha256 when it has none) and
`artifact-sha256=<hex>` (the tamper check the serving container applies). Both
are 64 hex characters, the longest a Vertex label value may be, so they are
stored whole, never truncated. An upload whose identity or artifact bytes
match a version's labels returns that version instead of adding one; a version
from before identities has no identity label and is matched on its artifact
sha256, as it was then. Lineage goes into the version description as JSON,
where the console shows it.

Every request goes through `VertexCalls` (calls.py: paced, retried, errors made ours). An upload
refused with a 429 or 503 may have created the version all the same: before each retry the
versions are read again and one carrying the identity label is the upload's result, so a retry
never adds a second version.

A version for Vertex's prebuilt TensorFlow container (a fleet with
`serving.cohosting: pool`: only those containers can be co-hosted) is uploaded
without our container's command, routes and port, with Vertex's `artifactUri`
naming the SavedModel inside the artifact (`<artifact>/savedmodel`, what that
container loads); the version's `artifact_uri` here stays the artifact itself,
which evaluation and batch scoring read.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from fleetops.errors import NotFoundError, RegistryRuleError
from fleetops.fingerprints import directory_sha256
from fleetops.names import DEFAULT_ALIAS, LABEL_ARTIFACT_SHA256, LABEL_IDENTITY_SHA256
from fleetops.platform import VertexSettings
from fleetops.platform.registry import (
    Evaluation,
    EvaluationInput,
    ModelRegistry,
    ModelVersion,
    Registration,
    UploadRequest,
    check_alias_removal,
    check_aliases,
    check_labels,
    check_model_id,
    check_upload_request,
)
from fleetops.platform.vertex.calls import VertexCalls
from fleetops.spec import is_prebuilt_tf_image
from fleetops.training.savedmodel import SAVEDMODEL_DIR

LINEAGE_MARKER = "\nlineage: "
SERVING_COMMAND = ["fleetops", "serve-container"]
SERVING_PREDICT_ROUTE = "/predict"
SERVING_HEALTH_ROUTE = "/health"
SERVING_PORT = 8080


class VertexModelRegistry(ModelRegistry):
    requires_serving_image = True

    def __init__(self, settings: VertexSettings, credentials: Any = None, calls: VertexCalls | None = None):
        self.settings = settings
        self.credentials = credentials
        self.calls = calls or VertexCalls(settings)

    def model_name(self, model_id: str) -> str:
        return f"projects/{self.settings.project}/locations/{self.settings.region}/models/{model_id}"

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
        from google.cloud import aiplatform

        # The rules both registries share, with the twin's messages; the labels are checked
        # again below with the ones this registry adds.
        check_upload_request(
            UploadRequest(
                model_id,
                artifact_path,
                labels=labels,
                aliases=aliases,
                serving_image=serving_image,
                evaluation=evaluation,
                identity=identity,
            )
        )
        sha = directory_sha256(artifact_path)
        identity = identity or sha
        all_labels = {
            **self.settings.labels,
            **(labels or {}),
            LABEL_ARTIFACT_SHA256: sha,
            LABEL_IDENTITY_SHA256: identity,
        }
        check_labels(all_labels)
        from fleetops.platform.vertex import gcs_uri

        uri = gcs_uri(artifact_uri or artifact_path)  # a path under the Cloud Storage mount is its gs:// object
        if not uri.startswith("gs://"):
            raise RegistryRuleError(
                f"artifact_uri {uri!r} must be a gs:// URI on Vertex, or a path under the Cloud Storage mount "
                "(/gcs in a Vertex task; FLEETOPS_GCS_MOUNT elsewhere)"
            )
        if not serving_image:
            raise RegistryRuleError("a serving container image is required to upload a model to Vertex")

        existing_versions = self._versions_or_none(model_id)
        if (existing := _same_version(existing_versions, identity, sha)) is not None:
            return Registration(existing, created=False)
        if is_prebuilt_tf_image(serving_image):
            # Vertex's TensorFlow container runs its own server on the SavedModel: no command, routes or port.
            container: dict[str, Any] = {"artifact_uri": f"{uri.rstrip('/')}/{SAVEDMODEL_DIR}"}
        else:
            # Our image is the serving container: `fleetops serve-container` honours the AIP_* contract.
            container = {
                "artifact_uri": uri,
                "serving_container_command": SERVING_COMMAND,
                "serving_container_predict_route": SERVING_PREDICT_ROUTE,
                "serving_container_health_route": SERVING_HEALTH_ROUTE,
                "serving_container_ports": [SERVING_PORT],
            }
        upload = partial(  # one request, sent again on a retry
            aiplatform.Model.upload,
            display_name=display_name or model_id,
            serving_container_image_uri=serving_image,
            **container,
            model_id=None if existing_versions else model_id,
            parent_model=self.model_name(model_id) if existing_versions else None,
            # The SDK appends 'default' itself when is_default_version is set.
            is_default_version=is_default_version,
            version_aliases=list(aliases) or None,
            version_description=_with_lineage(description, lineage),
            description=description,
            labels=all_labels,
            encryption_spec_key_name=self.settings.encryption_key,
            project=self.settings.project,
            location=self.settings.region,
            credentials=self.credentials,
        )
        version = self.calls.write(
            f"upload of a version of model {model_id!r}",
            lambda: self._from_gca(upload().gca_resource),
            # Created, then refused (a 503, a timeout): the version carries the identity label.
            already_done=lambda: _same_version(self._versions_or_none(model_id), identity, sha),
        )
        if evaluation is not None:
            try:
                self.import_evaluation(model_id, version.version_id, evaluation)
            except Exception:
                # Vertex has no transaction spanning two calls: undo the upload so no
                # version is left without its evaluation.
                self._undo_upload(model_id, version, existing_versions)
                raise
        return Registration(version, created=True)

    def get_version(self, model_id: str, version: str | None = None) -> ModelVersion:
        from google.api_core import exceptions

        check_model_id(model_id)
        name = f"{self.model_name(model_id)}@{version or DEFAULT_ALIAS}"
        try:
            return self._read_version(name)
        except exceptions.NotFound:
            raise NotFoundError(
                f"model {model_id!r} has no version or alias {version or DEFAULT_ALIAS!r} on Vertex"
            ) from None

    def list_versions(self, model_id: str) -> list[ModelVersion]:
        versions = self._versions_or_none(model_id)
        if versions is None:
            raise NotFoundError(f"model {model_id!r} is not in the Vertex Model Registry")
        return versions

    def list_models(self, labels: dict[str, str] | None = None) -> list[str]:
        from google.cloud import aiplatform

        query = " AND ".join(f"labels.{k}={v}" for k, v in sorted((labels or {}).items())) or None
        models = self.calls.read(
            f"listing of models in {self.settings.project}/{self.settings.region}",
            lambda: aiplatform.Model.list(
                filter=query,
                project=self.settings.project,
                location=self.settings.region,
                credentials=self.credentials,
            ),
        )
        return sorted({m.resource_name.rsplit("/", 1)[-1] for m in models})

    def add_version_aliases(self, model_id: str, version: str, aliases: list[str]) -> ModelVersion:
        check_aliases(aliases)
        version_id = self._version_id(model_id, version)
        self.calls.write(
            f"alias change of model {model_id!r} version {version_id}",
            lambda: self._registry(model_id).add_version_aliases(list(aliases), version_id),
        )
        return self.get_version(model_id, version_id)

    def remove_version_aliases(self, model_id: str, version: str, aliases: list[str]) -> ModelVersion:
        check_aliases(aliases)
        check_alias_removal(aliases)
        version_id = self._version_id(model_id, version)
        self.calls.write(
            f"alias change of model {model_id!r} version {version_id}",
            lambda: self._registry(model_id).remove_version_aliases(list(aliases), version_id),
        )
        return self.get_version(model_id, version_id)

    def delete_version(self, model_id: str, version: str) -> None:
        versions = self.list_versions(model_id)
        version_id = self._version_id(model_id, version)
        target = next(v for v in versions if v.version_id == version_id)
        if len(versions) == 1:
            raise RegistryRuleError(
                f"version {version_id} is the last version of model {model_id!r} and cannot be deleted "
                "as a version; delete the model instead"
            )
        if target.is_default:
            raise RegistryRuleError(
                f"version {version_id} of model {model_id!r} is the default version and cannot be deleted; "
                "make another version the default first"
            )
        self._delete_version(model_id, version_id)

    def import_evaluation(self, model_id: str, version: str, evaluation: EvaluationInput) -> Evaluation:
        from google.cloud.aiplatform.compat.types import model_evaluation as gca_evaluation
        from google.protobuf import json_format, struct_pb2

        version_id = self._version_id(model_id, version)
        metrics = struct_pb2.Value()
        json_format.ParseDict(evaluation.metrics, metrics)
        name = f"{self.model_name(model_id)}@{version_id}"
        model = self.sdk_model(name)
        request = gca_evaluation.ModelEvaluation(
            display_name=evaluation.display_name, metrics_schema_uri=evaluation.metrics_schema_uri, metrics=metrics
        )
        send = partial(model.api_client.import_model_evaluation, parent=name, model_evaluation=request)
        return self.calls.write(
            f"evaluation import into model version {name}",
            lambda: _evaluation_from_gca(send()),
            # Imported, then refused: the same evaluation is on the version.
            already_done=lambda: next(
                (e for e in self.list_evaluations(model_id, version_id) if _same_evaluation(e, evaluation)), None
            ),
        )

    def list_evaluations(self, model_id: str, version: str | None = None) -> list[Evaluation]:
        version_id = self._version_id(model_id, version or DEFAULT_ALIAS)
        name = f"{self.model_name(model_id)}@{version_id}"
        evaluations = self.calls.read(
            f"listing of the evaluations of model version {name}",
            lambda: self._model(name).list_model_evaluations(),
        )
        return [_evaluation_from_gca(e.gca_resource) for e in evaluations]

    def artifact_path(self, version: ModelVersion) -> Path:
        from fleetops.platform.vertex import gcs_local_path

        return Path(gcs_local_path(version.artifact_uri))

    # -- helpers -------------------------------------------------------------------------------

    def _registry(self, model_id: str) -> Any:
        """The SDK's version operations on a model (building it sends no request)."""
        from google.cloud import aiplatform

        return aiplatform.models.ModelRegistry(
            self.model_name(model_id),
            project=self.settings.project,
            location=self.settings.region,
            credentials=self.credentials,
        )

    def _model(self, name: str) -> Any:
        """One version, read (the SDK reads the resource when the object is made)."""
        from google.cloud import aiplatform

        return aiplatform.Model(
            name, project=self.settings.project, location=self.settings.region, credentials=self.credentials
        )

    def sdk_model(self, name: str) -> Any:
        """The SDK's `aiplatform.Model` of one version (`models/ID@VERSION`), read through the call layer."""
        return self.calls.read(f"read of model version {name}", lambda: self._model(name))

    def _read_version(self, name: str) -> ModelVersion:
        return self._from_gca(self.sdk_model(name).gca_resource)

    def _delete_version(self, model_id: str, version_id: str) -> None:
        self.calls.write(
            f"deletion of model {model_id!r} version {version_id}",
            lambda: self._registry(model_id).delete_version(version_id),
            # Deleted, then refused: the version is no longer listed.
            already_done=lambda: self._version_gone(model_id, version_id),
        )

    def _version_gone(self, model_id: str, version_id: str) -> bool | None:
        """True when the version is not there (a deletion refused after it happened), else None."""
        from google.api_core import exceptions

        try:
            self.sdk_model(f"{self.model_name(model_id)}@{version_id}")
        except exceptions.NotFound:
            return True
        return None

    def _version_id(self, model_id: str, version: str) -> str:
        return str(version) if str(version).isdigit() else self.get_version(model_id, version).version_id

    def _versions_or_none(self, model_id: str) -> list[ModelVersion] | None:
        from google.api_core import exceptions

        try:
            infos = self.calls.read(
                f"listing of the versions of model {model_id!r}", lambda: self._registry(model_id).list_versions()
            )
        except exceptions.NotFound:
            return None
        names = [f"{info.model_resource_name}@{info.version_id}" for info in infos]
        versions = [self._read_version(name) for name in names]
        return sorted(versions, key=lambda v: int(v.version_id))

    def _undo_upload(self, model_id: str, version: ModelVersion, before: list[ModelVersion] | None) -> None:
        """Remove a version just uploaded, and give back the aliases it took from `before` (the versions then).

        Vertex refuses to delete the default version, and an upload made the default one took
        `default` (and `champion`, ...) from an earlier version: the aliases go back first, or
        the version would stay, without its evaluation, as the model's default and champion.
        """
        if not before:
            self.calls.write(f"deletion of model {model_id!r}", lambda: self._model(self.model_name(model_id)).delete())
            return
        taken: dict[str, list[str]] = {}
        for alias in version.aliases:
            holder = next((v for v in before if alias in v.aliases), None)
            if holder is not None:
                taken.setdefault(holder.version_id, []).append(alias)
        if version.is_default and not any(DEFAULT_ALIAS in aliases for aliases in taken.values()):
            return  # no earlier default to give it back to: leave the version rather than break the model
        for version_id, aliases in taken.items():
            self.calls.write(
                f"alias change of model {model_id!r} version {version_id}",
                lambda aliases=aliases, version_id=version_id: self._registry(model_id).add_version_aliases(
                    aliases, version_id
                ),
            )
        self._delete_version(model_id, version.version_id)

    def _from_gca(self, model: Any) -> ModelVersion:
        name = model.name
        labels = dict(model.labels)
        description, lineage = _split_lineage(model.version_description)
        return ModelVersion(
            model_id=name.rsplit("/", 1)[-1],
            version_id=model.version_id,
            resource_name=name,
            display_name=model.display_name,
            aliases=tuple(sorted(model.version_aliases)),
            labels=labels,
            artifact_uri=_artifact_root(model),
            artifact_sha256=labels.get(LABEL_ARTIFACT_SHA256, ""),
            description=description,
            lineage=lineage,
            create_time=model.version_create_time.isoformat() if model.version_create_time else "",
            # Versions from before identities were deduplicated on their artifact sha256: it is their identity.
            identity_sha256=labels.get(LABEL_IDENTITY_SHA256) or labels.get(LABEL_ARTIFACT_SHA256, ""),
        )


def _same_version(versions: list[ModelVersion] | None, identity: str, sha: str) -> ModelVersion | None:
    """The version of `versions` with this identity, or these artifact bytes (a version from before identities)."""
    return next((v for v in versions or [] if v.identity_sha256 == identity or v.artifact_sha256 == sha), None)


def _artifact_root(model: Any) -> str:
    """The fleetops artifact of a version: for the prebuilt TensorFlow container, the folder of its SavedModel."""
    suffix = f"/{SAVEDMODEL_DIR}"
    if is_prebuilt_tf_image(model.container_spec.image_uri) and model.artifact_uri.endswith(suffix):
        return model.artifact_uri.removesuffix(suffix)
    return model.artifact_uri


def _with_lineage(description: str, lineage: dict[str, Any] | None) -> str:
    if not lineage:
        return description
    return f"{description}{LINEAGE_MARKER}{json.dumps(lineage, sort_keys=True, separators=(',', ':'), default=str)}"


def _split_lineage(text: str) -> tuple[str, dict[str, Any]]:
    description, marker, payload = (text or "").partition(LINEAGE_MARKER)
    if not marker:
        return description, {}
    try:
        return description, json.loads(payload)
    except json.JSONDecodeError:
        return text, {}


def _same_evaluation(found: Evaluation, sent: EvaluationInput) -> bool:
    return (found.display_name, found.metrics_schema_uri, found.metrics) == (
        sent.display_name,
        sent.metrics_schema_uri,
        sent.metrics,
    )


def _evaluation_from_gca(evaluation: Any) -> Evaluation:
    from google.protobuf import json_format

    pb = type(evaluation).pb(evaluation)
    metrics = json_format.MessageToDict(pb.metrics) if pb.HasField("metrics") else {}
    return Evaluation(
        evaluation_id=evaluation.name.rsplit("/", 1)[-1],
        resource_name=evaluation.name,
        metrics_schema_uri=evaluation.metrics_schema_uri,
        metrics=metrics,
        display_name=evaluation.display_name,
        create_time=evaluation.create_time.isoformat() if evaluation.create_time else "",
    )
