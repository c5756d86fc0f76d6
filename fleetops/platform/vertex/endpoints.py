"""Endpoints on Vertex AI through google-cloud-aiplatform.

Every rule is checked with the same functions as the local twin before a
request is sent (so a refusal reads the same in both places); the SDK then
computes and sends the traffic split itself, with the same arithmetic.

Co-hosting (`DeploymentSettings.deployment_resource_pool`, a fleet's
`serving.cohosting: pool`): the model is deployed with
`Model.deploy(deployment_resource_pool=...)` on its own endpoint, so each
segment keeps its traffic split, canary and rollback, while the nodes are the
pool's, shared by the fleet. Why a pool and not one fleet endpoint whose custom
container (our server) routes each instance to its segment's model: Vertex
co-hosts only its prebuilt TensorFlow/PyTorch containers, and one endpoint for
the fleet would put every segment under one traffic split, so a canary or a
rollback could no longer be per segment. The pool is created on first use
(`aiplatform.DeploymentResourcePool.create`, sized by the settings) and reused
after; a pool created meanwhile by another deploy task (shards deploy in
parallel) is read instead. A pool whose resources differ from the settings is
refused rather than used silently: the SDK cannot resize one, and a new pool
id moves the fleet to a new pool canary by canary. A deployed model in a pool
is read back with the pool's resources.

Vertex accepts at most 20 concurrent deploy requests into a pool. Each deploy
task deploys one model at a time (the SDK waits for the operation), so the
deploys in flight are at most the shards deploying at once; a deploy refused
with 429 (quota, or the pool's concurrent deploys) is retried with back-off by
`VertexCalls` (calls.py), after checking that it did not happen: a model
deployed meanwhile on the endpoint is the refused deploy's.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
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
    check_poolable,
)
from fleetops.platform.registry import check_labels
from fleetops.platform.vertex.calls import VertexCalls
from fleetops.platform.vertex.registry import VertexModelRegistry
from fleetops.serving.traffic import check_split, deploy_split, undeploy_split


class VertexEndpoints(Endpoints):
    def __init__(self, settings: VertexSettings, credentials: Any, registry: VertexModelRegistry):
        self.settings = settings
        self.credentials = credentials
        self.registry = registry
        self.calls: VertexCalls = registry.calls  # one pacing for the registry and the endpoints

    def name(self, endpoint_id: str) -> str:
        return f"projects/{self.settings.project}/locations/{self.settings.region}/endpoints/{endpoint_id}"

    def pool_name(self, pool_id: str) -> str:
        return f"projects/{self.settings.project}/locations/{self.settings.region}/deploymentResourcePools/{pool_id}"

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
        create = partial(
            aiplatform.Endpoint.create,
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
        created = self.calls.write(
            f"creation of endpoint {endpoint_id!r}",
            lambda: create().gca_resource,
            # Created, then refused: the endpoint is there under its id.
            already_done=lambda: self._endpoint_or_none(endpoint_id),
        )
        return _from_gca(created, self._pool_reader())

    def get(self, endpoint_id: str) -> Endpoint:
        return _from_gca(self._endpoint(endpoint_id).gca_resource, self._pool_reader())

    def list(self, labels: dict[str, str] | None = None) -> list[Endpoint]:
        from google.cloud import aiplatform

        query = " AND ".join(f"labels.{k}={v}" for k, v in sorted((labels or {}).items())) or None
        found = self.calls.read(
            f"listing of endpoints in {self.settings.project}/{self.settings.region}",
            lambda: aiplatform.Endpoint.list(
                filter=query, project=self.settings.project, location=self.settings.region, credentials=self.credentials
            ),
        )
        pools = self._pool_reader()  # one read per pool for the whole listing
        return sorted((_from_gca(e.gca_resource, pools) for e in found), key=lambda e: e.endpoint_id)

    def delete(self, endpoint_id: str) -> None:
        endpoint = self._endpoint(endpoint_id)
        deployed = [m.id for m in endpoint.gca_resource.deployed_models]
        if deployed:
            raise UserError(
                f"endpoint {endpoint_id!r} has deployed models {deployed}; undeploy them before deleting it"
            )
        self.calls.write(
            f"deletion of endpoint {endpoint_id!r}",
            endpoint.delete,
            already_done=lambda: self._endpoint_or_none(endpoint_id) is None or None,  # deleted, then refused
        )

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
        settings = settings or DeploymentSettings()
        endpoint = self._endpoint(endpoint_id)
        current = dict(endpoint.gca_resource.traffic_split)
        deploy_split(current, "new", traffic_percentage, traffic_split)  # our refusal, before any request
        resolved = self.registry.get_version(model_id, version)
        before = {m.id for m in endpoint.gca_resource.deployed_models}
        model = self.registry.sdk_model(resolved.versioned_name)
        resources: dict[str, Any]
        if pool_id := settings.deployment_resource_pool:
            # The machine, replicas and autoscaling are the pool's: the SDK refuses them next to a pool.
            pool = self._pool_for(model, model_id, resolved.version_id, pool_id, settings)
            resources = {"deployment_resource_pool": pool}
        else:
            resources = {
                "machine_type": settings.machine_type,
                "min_replica_count": settings.min_replica_count,
                "max_replica_count": settings.max_replica_count,
                "autoscaling_target_cpu_utilization": settings.autoscaling_target_cpu,
            }
        self.calls.write(
            f"deploy of model {resolved.versioned_name} to endpoint {endpoint_id!r}",
            lambda: model.deploy(
                endpoint=endpoint,
                deployed_model_display_name=display_name or f"{model_id}@{resolved.version_id}",
                traffic_percentage=traffic_percentage or 0,
                traffic_split=traffic_split,
                service_account=settings.service_account or self.settings.service_account,
                encryption_spec_key_name=self.settings.encryption_key,
                **resources,
            ),
            # Deployed, then refused: a model on the endpoint that was not there before is this deploy's.
            already_done=lambda: self._deployed_ids(endpoint_id) - before or None,
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
        self.calls.write(
            f"undeploy of {deployed_model_id} from endpoint {endpoint_id!r}",
            lambda: endpoint.undeploy(deployed_model_id=deployed_model_id, traffic_split=traffic_split),
            already_done=lambda: deployed_model_id not in self._deployed_ids(endpoint_id) or None,
        )
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
        self.calls.write(
            f"traffic split of endpoint {endpoint_id!r}", lambda: endpoint.update(traffic_split=traffic_split)
        )
        return self.get(endpoint_id)

    def _pool_for(self, model: Any, model_id: str, version_id: str, pool_id: str, settings: DeploymentSettings) -> Any:
        """The deployment resource pool to deploy `model` into: checked, then read, or created on first use."""
        from google.api_core import exceptions
        from google.cloud import aiplatform
        from google.cloud.aiplatform.compat.types import model as gca_model

        check_poolable(model_id, version_id, model.gca_resource.container_spec.image_uri, pool_id)
        shared = gca_model.Model.DeploymentResourcesType.SHARED_RESOURCES
        if shared not in model.supported_deployment_resources_types:
            supported = [t.name for t in model.supported_deployment_resources_types]
            raise UserError(
                f"version {version_id} of model {model_id!r} cannot be deployed into deployment resource pool "
                f"{pool_id!r}: Vertex lists its deployment resource types as {supported}, without SHARED_RESOURCES"
            )
        name = self.pool_name(pool_id)
        try:
            pool = self._pool(name)
        except exceptions.NotFound:
            create = partial(
                aiplatform.DeploymentResourcePool.create,
                deployment_resource_pool_id=pool_id,
                machine_type=settings.machine_type,
                min_replica_count=settings.min_replica_count,
                max_replica_count=settings.max_replica_count,
                autoscaling_target_cpu_utilization=settings.autoscaling_target_cpu,
                project=self.settings.project,
                location=self.settings.region,
                credentials=self.credentials,
            )
            try:
                pool = self.calls.write(
                    f"creation of deployment resource pool {pool_id!r}",
                    create,
                    already_done=lambda: self._pool_or_none(name),  # created, then refused
                )
            except exceptions.Conflict:  # another deploy task (a shard in parallel) created it first
                pool = self._pool(name)
        _check_pool_resources(pool_id, pool.gca_resource, settings)
        return pool

    def _pool_reader(self) -> Callable[[str], Any]:
        """Pool resource name -> its resource, each pool read once per call of ours (a listing has many)."""
        cache: dict[str, Any] = {}

        def read(name: str) -> Any:
            if name not in cache:
                cache[name] = self._pool(name).gca_resource
            return cache[name]

        return read

    def _pool(self, name: str) -> Any:
        from google.cloud import aiplatform

        return self.calls.read(
            f"read of deployment resource pool {name}",
            lambda: aiplatform.DeploymentResourcePool(
                name, project=self.settings.project, location=self.settings.region, credentials=self.credentials
            ),
        )

    def _pool_or_none(self, name: str) -> Any:
        from google.api_core import exceptions

        try:
            return self._pool(name)
        except exceptions.NotFound:
            return None

    def _deployed_ids(self, endpoint_id: str) -> set[str]:
        return {m.id for m in self._endpoint(endpoint_id).gca_resource.deployed_models}

    def _endpoint_or_none(self, endpoint_id: str) -> Any:
        try:
            return self._endpoint(endpoint_id).gca_resource
        except NotFoundError:
            return None

    def _endpoint(self, endpoint_id: str) -> Any:
        from google.api_core import exceptions
        from google.cloud import aiplatform

        check_endpoint_id(endpoint_id)

        def read() -> Any:
            endpoint = aiplatform.Endpoint(
                self.name(endpoint_id),
                project=self.settings.project,
                location=self.settings.region,
                credentials=self.credentials,
            )
            # The SDK reads the endpoint on first use: read it here, where a missing one becomes
            # our NotFoundError (what `deploy_champions` creates a fleet member's endpoint on).
            _ = endpoint.gca_resource
            return endpoint

        try:
            return self.calls.read(f"read of endpoint {endpoint_id!r}", read)
        except exceptions.NotFound:
            raise NotFoundError(
                f"endpoint {endpoint_id!r} does not exist in {self.settings.project}/{self.settings.region}"
            ) from None


def _check_pool_resources(pool_id: str, pool: Any, settings: DeploymentSettings) -> None:
    """Refuse a pool that exists with other resources than `settings` ask for (the SDK cannot resize it)."""
    actual = _resources(pool.dedicated_resources)
    wanted = {
        "machine_type": settings.machine_type,
        "min_replica_count": settings.min_replica_count,
        "max_replica_count": settings.max_replica_count,
        "autoscaling_target_cpu": settings.autoscaling_target_cpu,
    }
    differences = [
        f"{key} {value!r} (the pool has {actual[key]!r})"
        for key, value in wanted.items()
        # No CPU target asked for: Vertex's default (60) is no difference.
        if value != actual[key] and not (key == "autoscaling_target_cpu" and value is None)
    ]
    if differences:
        raise UserError(
            f"deployment resource pool {pool_id!r} exists with other resources than asked for: "
            f"{', '.join(differences)}; a pool is not resized here: give the fleet a new pool "
            "(serving.pool_id), whose canaries then replace the old pool's models, or ask for the pool's resources"
        )


def _resources(resources: Any) -> dict[str, Any]:
    """Machine type, replicas and CPU target of Vertex's DedicatedResources (a deployed model's or a pool's)."""
    cpu_targets = [s.target for s in resources.autoscaling_metric_specs if "cpu" in s.metric_name]
    return {
        "machine_type": resources.machine_spec.machine_type or "n1-standard-2",
        "min_replica_count": resources.min_replica_count or 1,
        "max_replica_count": max(resources.max_replica_count, resources.min_replica_count, 1),
        "autoscaling_target_cpu": cpu_targets[0] if cpu_targets else None,
    }


def _from_gca(endpoint: Any, pools: Callable[[str], Any]) -> Endpoint:
    deployed = []
    for model in endpoint.deployed_models:
        pool_name = model.shared_resources
        # A co-hosted model runs on its pool's nodes: those are its resources.
        resources = pools(pool_name).dedicated_resources if pool_name else model.dedicated_resources
        deployed.append(
            DeployedModel(
                deployed_model_id=model.id,
                model_id=model.model.rsplit("/", 1)[-1],
                version_id=model.model_version_id,
                model_resource_name=model.model,
                display_name=model.display_name,
                settings=DeploymentSettings(
                    **_resources(resources),
                    service_account=model.service_account or None,
                    deployment_resource_pool=pool_name.rsplit("/", 1)[-1] if pool_name else None,
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
