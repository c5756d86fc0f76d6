"""What the server answers in Vertex's REST shapes: google.rpc error bodies and the Endpoint resource.

Kept apart from the server so that every answer, the app's and the HTTP protocol's own
(a request uvicorn cannot parse, a request whose headers are late), is the same JSON a
Vertex client parses: `{"error": {"code": 400, "message": "...", "status": "INVALID_ARGUMENT"}}`.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # imported by the serving container, which never imports the platform
    from fleetops.platform.endpoints import DeployedModel, Endpoint

# HTTP status -> google.rpc.Code name, as Google's APIs pair them (google/rpc/code.proto's HTTP mapping).
# 405 and 415 have no code of their own there: a method the resource does not serve is UNIMPLEMENTED (as
# grpc-gateway answers a wrong method); a body the server cannot read is the caller's INVALID_ARGUMENT, and so
# is one over the size limit (Vertex answers its 1.5 MB limit with INVALID_ARGUMENT).
RPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# What Vertex autoscales a dedicated deployment on when a CPU target is given (aiplatform's constant).
CPU_UTILIZATION_METRIC = "aiplatform.googleapis.com/prediction/online/cpu/utilization"
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def rpc_status(code: int) -> str:
    """The google.rpc status name for an HTTP status code (UNKNOWN for one Google does not pair)."""
    return RPC_STATUS.get(code, "UNKNOWN")


def error_payload(code: int, message: str, status: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status or rpc_status(code)}}


def error_body(code: int, message: str, status: str | None = None) -> bytes:
    return orjson.dumps(error_payload(code, message, status))


def header_value(text: str) -> bytes:
    """`text` as an HTTP header value: UTF-8, control characters (which would end the header) as spaces."""
    return _CONTROL_CHARACTERS.sub(" ", text).encode()


def endpoint_resource(endpoint: Endpoint) -> dict[str, Any]:
    """The Endpoint as Vertex's REST API answers GetEndpoint (`google.cloud.aiplatform.v1.Endpoint` in JSON).

    The twin records when an endpoint and each deployed model were created, not when a split
    changed or a model was undeployed: `updateTime` is the latest of the times it has. The
    `etag` is a hash of everything else, so it changes whenever the endpoint does.
    """
    prefix = endpoint.resource_name.split("/endpoints/")[0]
    resource: dict[str, Any] = {
        "name": endpoint.resource_name,
        "displayName": endpoint.display_name,
        "deployedModels": [_deployed_model(model, prefix) for model in endpoint.deployed_models],
        "trafficSplit": endpoint.traffic_split,
        "labels": endpoint.labels,
    }
    times = [t for t in (endpoint.create_time, *(m.create_time for m in endpoint.deployed_models)) if t]
    if endpoint.create_time:
        resource["createTime"] = rfc3339(endpoint.create_time)
    if times:
        resource["updateTime"] = rfc3339(max(times, key=_instant))
    resource["etag"] = hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
    return resource


def _deployed_model(model: DeployedModel, prefix: str) -> dict[str, Any]:
    """A DeployedModel: in a deployment resource pool its `sharedResources`, else its `dedicatedResources`."""
    settings = model.settings
    deployed: dict[str, Any] = {
        "id": model.deployed_model_id,
        "model": model.model_resource_name,
        "modelVersionId": model.version_id,
        "displayName": model.display_name,
    }
    if model.create_time:
        deployed["createTime"] = rfc3339(model.create_time)
    if settings.deployment_resource_pool:
        deployed["sharedResources"] = f"{prefix}/deploymentResourcePools/{settings.deployment_resource_pool}"
    else:
        dedicated: dict[str, Any] = {
            "machineSpec": {"machineType": settings.machine_type},
            "minReplicaCount": settings.min_replica_count,
            "maxReplicaCount": settings.max_replica_count,
        }
        if settings.autoscaling_target_cpu is not None:
            dedicated["autoscalingMetricSpecs"] = [
                {"metricName": CPU_UTILIZATION_METRIC, "target": settings.autoscaling_target_cpu}
            ]
        deployed["dedicatedResources"] = dedicated
    if settings.service_account:
        deployed["serviceAccount"] = settings.service_account
    return deployed


def rfc3339(iso: str) -> str:
    """A recorded ISO 8601 time as Google's JSON writes a Timestamp: UTC, with a Z."""
    return _instant(iso).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _instant(iso: str) -> datetime:
    moment = datetime.fromisoformat(iso)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
