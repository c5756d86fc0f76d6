"""The endpoints interface: create endpoints, deploy registered versions with a traffic split, undeploy.

The local twin (SQLite, beside the registry) and Vertex (google-cloud-aiplatform)
implement `Endpoints`; the traffic arithmetic is `fleetops.serving.traffic`,
which is the SDK's own, so both sides compute the same splits.

Co-hosting: `DeploymentSettings.deployment_resource_pool` names a deployment
resource pool (a fleet's shared nodes, `serving.cohosting: pool`). The model
is then deployed into the pool instead of on nodes of its own, still on its
own endpoint: an endpoint's traffic split, and so canary, promote and rollback,
work the same with or without a pool. On Vertex the pool is created on first
use with the settings' machine type, replicas and autoscaling target; the twin
records it (its one local server already serves every endpoint). Both refuse,
with the same message, a version Vertex cannot co-host (not served by its
prebuilt TensorFlow container), and explanations of a co-hosted model, which
Vertex does not serve.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from fleetops.errors import UserError
from fleetops.spec import PREBUILT_TF_IMAGE, RESOURCE_ID_PATTERN, is_prebuilt_tf_image

# Vertex: a user-chosen endpoint (or deployment resource pool) id starting with a letter is up to 63 of
# [a-z0-9-], ending alphanumeric.
ENDPOINT_ID_PATTERN = re.compile(RESOURCE_ID_PATTERN)


@dataclass(frozen=True)
class DeploymentSettings:
    """Resources of a deployed model (Vertex `Model.deploy` arguments; recorded by the local twin)."""

    machine_type: str = "n1-standard-2"
    min_replica_count: int = 1
    max_replica_count: int = 1
    autoscaling_target_cpu: int | None = None
    service_account: str | None = None
    # A deployment resource pool id: the model shares the pool's nodes, which the fields above size
    # (when the pool is created), instead of getting its own.
    deployment_resource_pool: str | None = None

    def __post_init__(self) -> None:
        if self.min_replica_count < 1:
            raise UserError(f"min_replica_count {self.min_replica_count} must be at least 1")
        if self.max_replica_count < self.min_replica_count:
            raise UserError(
                f"max_replica_count {self.max_replica_count} is below min_replica_count {self.min_replica_count}"
            )
        if self.autoscaling_target_cpu is not None and not 1 <= self.autoscaling_target_cpu <= 100:
            raise UserError(f"autoscaling_target_cpu {self.autoscaling_target_cpu} must be a percentage from 1 to 100")
        pool = self.deployment_resource_pool
        if pool is not None and not ENDPOINT_ID_PATTERN.fullmatch(pool):
            raise UserError(
                f"deployment_resource_pool {pool!r} is invalid: up to 63 of [a-z0-9-], starting with a letter "
                "and ending with a letter or digit"
            )


@dataclass(frozen=True)
class DeployedModel:
    deployed_model_id: str
    model_id: str
    version_id: str
    model_resource_name: str
    display_name: str
    settings: DeploymentSettings = DeploymentSettings()
    create_time: str = ""


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: str
    resource_name: str
    display_name: str
    labels: dict[str, str] = field(default_factory=dict)
    deployed_models: tuple[DeployedModel, ...] = ()
    traffic_split: dict[str, int] = field(default_factory=dict)
    request_logging_rate: float = 0.0
    create_time: str = ""

    def deployed(self, deployed_model_id: str) -> DeployedModel:
        for model in self.deployed_models:
            if model.deployed_model_id == deployed_model_id:
                return model
        known = [m.deployed_model_id for m in self.deployed_models]
        raise UserError(
            f"deployed model {deployed_model_id!r} is not on endpoint {self.endpoint_id!r}; deployed: {known}"
        )


class Endpoints(ABC):
    @abstractmethod
    def create(
        self,
        endpoint_id: str,
        display_name: str | None = None,
        labels: dict[str, str] | None = None,
        request_logging_rate: float = 0.0,
    ) -> Endpoint:
        """Create an endpoint with our own id (so a fleet member's endpoint is found by name)."""

    @abstractmethod
    def get(self, endpoint_id: str) -> Endpoint: ...

    @abstractmethod
    def list(self, labels: dict[str, str] | None = None) -> list[Endpoint]: ...

    @abstractmethod
    def delete(self, endpoint_id: str) -> None:
        """Delete an endpoint; refused while models are deployed on it (as Vertex does)."""

    @abstractmethod
    def deploy(
        self,
        endpoint_id: str,
        model_id: str,
        version: str = "default",
        *,
        traffic_percentage: int | None = None,
        traffic_split: dict[str, int] | None = None,
        settings: DeploymentSettings | None = None,
        display_name: str | None = None,
    ) -> tuple[Endpoint, str]:
        """Deploy a registered version (id or alias); return the endpoint and the new deployed model id."""

    @abstractmethod
    def undeploy(
        self, endpoint_id: str, deployed_model_id: str, traffic_split: dict[str, int] | None = None
    ) -> Endpoint:
        """Undeploy a model; None rescales the others, a given split must sum to 100 (the SDK refuses `{}`)."""

    @abstractmethod
    def update_traffic(self, endpoint_id: str, traffic_split: dict[str, int]) -> Endpoint: ...


def check_endpoint_id(endpoint_id: str) -> None:
    if not isinstance(endpoint_id, str) or not ENDPOINT_ID_PATTERN.fullmatch(endpoint_id):
        raise UserError(
            f"endpoint id {endpoint_id!r} is invalid: up to 63 of [a-z0-9-], starting with a letter "
            "and ending with a letter or digit"
        )


def check_poolable(model_id: str, version_id: str, serving_image: str | None, pool: str) -> None:
    """Vertex co-hosts only models served by its prebuilt TensorFlow container (here; PyTorch too, in preview)."""
    if not is_prebuilt_tf_image(serving_image):
        raise UserError(
            f"version {version_id} of model {model_id!r} cannot be deployed into deployment resource pool {pool!r}: "
            f"it is served by {serving_image or 'no Vertex serving container'}, and Vertex co-hosts only models "
            f"served by its prebuilt TensorFlow container ({PREBUILT_TF_IMAGE}, with a SavedModel); a fleet "
            "registers its models that way with serving.cohosting: pool, so train and register again with it"
        )


def check_explainable(endpoint_id: str, deployed: DeployedModel) -> None:
    """Vertex serves no explanations for a model in a deployment resource pool: say so rather than fail later."""
    pool = deployed.settings.deployment_resource_pool
    if pool:
        raise UserError(
            f"deployed model {deployed.deployed_model_id} on endpoint {endpoint_id!r} ({deployed.model_id}@"
            f"{deployed.version_id}) is co-hosted in deployment resource pool {pool!r}, and Vertex serves no "
            "explanations (Explainable AI) for co-hosted models; use :predict, or serving.cohosting: none "
            "for a fleet that needs explanations"
        )


def check_logging_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise UserError(f"request_logging_rate {rate!r} must be in [0, 1] (0 turns request logging off)")
