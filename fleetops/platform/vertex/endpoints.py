"""Endpoints on Vertex AI through google-cloud-aiplatform.

Every rule is checked with the same functions as the local twin before a
request is sent (so a refusal reads the same in both places); the SDK then
computes and sends the traffic split itself, with the same arithmetic.
"""

from __future__ import annotations

from typing import Any

from fleetops.errors import NotFoundError, UserError
from fleetops.platform import VertexSettings
from fleetops.platform.endpoints import (
    DeployedModel,
    DeploymentSettings,
    Endpoint,
    Endpoints,
    check_endpoint_id,
    check_logging_rate,
)
from fleetops.platform.registry import check_labels
from fleetops.platform.vertex.registry import VertexModelRegistry
from fleetops.serving.traffic import check_split, deploy_split, undeploy_split


class VertexEndpoints(Endpoints):
    def __init__(self, settings: VertexSettings, credentials: Any, registry: VertexModelRegistry):
        self.settings = settings
        self.credentials = credentials
        self.registry = registry

    def name(self, endpoint_id: str) -> str:
        return f"projects/{self.settings.project}/locations/{self.settings.region}/endpoints/{endpoint_id}"

    def create(
        self,
        endpoint_id: str,
        display_name: str | None = None,
        labels: dict[str, str] | None = None,
        request_logging_rate: float = 0.0,
    ) -> Endpoint:
        from google.cloud import aiplatform

        check_endpoint_id(endpoint_id)
        all_labels = {**self.settings.labels, **(labels or {})}
        check_labels(all_labels)
        check_logging_rate(request_logging_rate)
        endpoint = aiplatform.Endpoint.create(
            display_name=display_name or endpoint_id,
            endpoint_id=endpoint_id,
            labels=all_labels or None,
            encryption_spec_key_name=self.settings.encryption_key,
            # Vertex logs sampled requests to BigQuery; the table is named after the endpoint.
            enable_request_response_logging=request_logging_rate > 0,
            request_response_logging_sampling_rate=request_logging_rate or None,
            request_response_logging_bq_destination_table=(
                f"bq://{self.settings.project}.fleetops_request_logs.{endpoint_id.replace('-', '_')}"
                if request_logging_rate > 0
                else None
            ),
            project=self.settings.project,
            location=self.settings.region,
            credentials=self.credentials,
        )
        return _from_gca(endpoint.gca_resource)

    def get(self, endpoint_id: str) -> Endpoint:
        return _from_gca(self._endpoint(endpoint_id).gca_resource)

    def list(self, labels: dict[str, str] | None = None) -> list[Endpoint]:
        from google.cloud import aiplatform

        query = " AND ".join(f"labels.{k}={v}" for k, v in sorted((labels or {}).items())) or None
        found = aiplatform.Endpoint.list(filter=query, credentials=self.credentials)
        return sorted((_from_gca(e.gca_resource) for e in found), key=lambda e: e.endpoint_id)

    def delete(self, endpoint_id: str) -> None:
        endpoint = self._endpoint(endpoint_id)
        deployed = [m.id for m in endpoint.gca_resource.deployed_models]
        if deployed:
            raise UserError(
                f"endpoint {endpoint_id!r} has deployed models {deployed}; undeploy them before deleting it"
            )
        endpoint.delete()

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
        from google.cloud import aiplatform

        settings = settings or DeploymentSettings()
        endpoint = self._endpoint(endpoint_id)
        current = dict(endpoint.gca_resource.traffic_split)
        deploy_split(current, "new", traffic_percentage, traffic_split)  # our refusal, before any request
        resolved = self.registry.get_version(model_id, version)
        before = {m.id for m in endpoint.gca_resource.deployed_models}
        model = aiplatform.Model(resolved.versioned_name, credentials=self.credentials)
        model.deploy(
            endpoint=endpoint,
            deployed_model_display_name=display_name or f"{model_id}@{resolved.version_id}",
            traffic_percentage=traffic_percentage or 0,
            traffic_split=traffic_split,
            machine_type=settings.machine_type,
            min_replica_count=settings.min_replica_count,
            max_replica_count=settings.max_replica_count,
            autoscaling_target_cpu_utilization=settings.autoscaling_target_cpu,
            service_account=settings.service_account or self.settings.service_account,
            encryption_spec_key_name=self.settings.encryption_key,
        )
        after = self.get(endpoint_id)
        new_ids = [m.deployed_model_id for m in after.deployed_models if m.deployed_model_id not in before]
        return after, new_ids[0]

    def undeploy(
        self, endpoint_id: str, deployed_model_id: str, traffic_split: dict[str, int] | None = None
    ) -> Endpoint:
        endpoint = self._endpoint(endpoint_id)
        current = {m.id: 0 for m in endpoint.gca_resource.deployed_models} | dict(endpoint.gca_resource.traffic_split)
        undeploy_split(current, deployed_model_id, traffic_split)  # our refusal, before any request
        endpoint.undeploy(deployed_model_id=deployed_model_id, traffic_split=traffic_split)
        return self.get(endpoint_id)

    def update_traffic(self, endpoint_id: str, traffic_split: dict[str, int]) -> Endpoint:
        check_split(traffic_split)
        endpoint = self._endpoint(endpoint_id)
        deployed = {m.id for m in endpoint.gca_resource.deployed_models}
        unknown = sorted(set(traffic_split) - deployed)
        if unknown:
            raise UserError(
                f"traffic_split names {unknown}, which are not deployed on {endpoint_id!r}; "
                f"deployed: {sorted(deployed)}"
            )
        endpoint.update(traffic_split=traffic_split)
        return self.get(endpoint_id)

    def _endpoint(self, endpoint_id: str) -> Any:
        from google.api_core import exceptions
        from google.cloud import aiplatform

        check_endpoint_id(endpoint_id)
        try:
            endpoint = aiplatform.Endpoint(self.name(endpoint_id), credentials=self.credentials)
            # The SDK reads the endpoint on first use: read it here, where a missing one becomes
            # our NotFoundError (what `deploy_champions` creates a fleet member's endpoint on).
            _ = endpoint.gca_resource
            return endpoint
        except exceptions.NotFound:
            raise NotFoundError(
                f"endpoint {endpoint_id!r} does not exist in {self.settings.project}/{self.settings.region}"
            ) from None


def _from_gca(endpoint: Any) -> Endpoint:
    deployed = []
    for model in endpoint.deployed_models:
        resources = model.dedicated_resources
        cpu_targets = [s.target for s in resources.autoscaling_metric_specs if "cpu" in s.metric_name]
        deployed.append(
            DeployedModel(
                deployed_model_id=model.id,
                model_id=model.model.rsplit("/", 1)[-1],
                version_id=model.model_version_id,
                model_resource_name=model.model,
                display_name=model.display_name,
                settings=DeploymentSettings(
                    machine_type=resources.machine_spec.machine_type or "n1-standard-2",
                    min_replica_count=resources.min_replica_count or 1,
                    max_replica_count=max(resources.max_replica_count, resources.min_replica_count, 1),
                    autoscaling_target_cpu=cpu_targets[0] if cpu_targets else None,
                    service_account=model.service_account or None,
                ),
                create_time=model.create_time.isoformat() if model.create_time else "",
            )
        )
    split = {m.deployed_model_id: 0 for m in deployed} | dict(endpoint.traffic_split)
    logging = endpoint.predict_request_response_logging_config
    return Endpoint(
        endpoint_id=endpoint.name.rsplit("/", 1)[-1],
        resource_name=endpoint.name,
        display_name=endpoint.display_name,
        labels=dict(endpoint.labels),
        deployed_models=tuple(deployed),
        traffic_split=split,
        request_logging_rate=logging.sampling_rate if logging.enabled else 0.0,
        create_time=endpoint.create_time.isoformat() if endpoint.create_time else "",
    )
