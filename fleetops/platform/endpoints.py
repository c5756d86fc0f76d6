"""The endpoints interface: create endpoints, deploy registered versions with a traffic split, undeploy.

The local twin (SQLite, beside the registry) and Vertex (google-cloud-aiplatform)
implement `Endpoints`; the traffic arithmetic is `fleetops.serving.traffic`,
which is the SDK's own, so both sides compute the same splits.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from fleetops.errors import UserError

# Vertex: a user-chosen endpoint id starting with a letter is up to 63 of [a-z0-9-], ending alphanumeric.
ENDPOINT_ID_PATTERN = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class DeploymentSettings:
    """Resources of a deployed model (Vertex `Model.deploy` arguments; recorded by the local twin)."""

    machine_type: str = "n1-standard-2"
    min_replica_count: int = 1
    max_replica_count: int = 1
    autoscaling_target_cpu: int | None = None
    service_account: str | None = None

    def __post_init__(self) -> None:
        if self.min_replica_count < 1:
            raise UserError(f"min_replica_count {self.min_replica_count} must be at least 1")
        if self.max_replica_count < self.min_replica_count:
            raise UserError(
                f"max_replica_count {self.max_replica_count} is below min_replica_count {self.min_replica_count}"
            )
        if self.autoscaling_target_cpu is not None and not 1 <= self.autoscaling_target_cpu <= 100:
            raise UserError(f"autoscaling_target_cpu {self.autoscaling_target_cpu} must be a percentage from 1 to 100")


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
    ) -> Endpoint: ...

    @abstractmethod
    def update_traffic(self, endpoint_id: str, traffic_split: dict[str, int]) -> Endpoint: ...


def check_endpoint_id(endpoint_id: str) -> None:
    if not isinstance(endpoint_id, str) or not ENDPOINT_ID_PATTERN.match(endpoint_id):
        raise UserError(
            f"endpoint id {endpoint_id!r} is invalid: up to 63 of [a-z0-9-], starting with a letter "
            "and ending with a letter or digit"
        )


def check_logging_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise UserError(f"request_logging_rate {rate!r} must be in [0, 1] (0 turns request logging off)")
