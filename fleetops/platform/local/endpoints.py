"""Endpoints of the local twin, in the registry's SQLite database.

The tables are created with the registry's (one database for the twin). A
deploy resolves the version (id or alias) and writes the deployed model and
the new split in one transaction with the registry, so it never points at a
version that is not there. Every change bumps `endpoint_changes.revision`;
a running prediction server polls it and reloads without a restart.

A deployment resource pool (co-hosting) is recorded with the deployed model's
settings: the twin's one server already serves every endpoint from shared
resources. The deploy is refused, as on Vertex, when the version is not
registered for Vertex's prebuilt TensorFlow container.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime

from fleetops.errors import NotFoundError, UserError
from fleetops.platform.endpoints import (
    DeployedModel,
    DeploymentSettings,
    Endpoint,
    Endpoints,
    check_endpoint_id,
    check_logging_rate,
    check_poolable,
)
from fleetops.platform.local.registry import LOCATION, PROJECT, LocalModelRegistry
from fleetops.platform.registry import check_labels
from fleetops.serving.traffic import check_split, deploy_split, undeploy_split


class LocalEndpoints(Endpoints):
    def __init__(self, registry: LocalModelRegistry):
        self.registry = registry

    def create(
        self,
        endpoint_id: str,
        display_name: str | None = None,
        labels: dict[str, str] | None = None,
        request_logging_rate: float = 0.0,
    ) -> Endpoint:
        check_endpoint_id(endpoint_id)
        check_labels(labels or {})
        check_logging_rate(request_logging_rate)
        with self.registry.transaction() as conn:
            if conn.execute("SELECT 1 FROM endpoints WHERE endpoint_id = ?", (endpoint_id,)).fetchone():
                raise UserError(f"endpoint {endpoint_id!r} already exists")
            conn.execute(
                "INSERT INTO endpoints VALUES (?, ?, ?, ?, ?)",
                (endpoint_id, display_name or endpoint_id, json.dumps(labels or {}), request_logging_rate, _now()),
            )
            _bump(conn)
            return self._endpoint(conn, endpoint_id)

    def get(self, endpoint_id: str) -> Endpoint:
        with self.registry.connect() as conn:
            return self._endpoint(conn, endpoint_id)

    def list(self, labels: dict[str, str] | None = None) -> list[Endpoint]:
        with self.registry.connect() as conn:
            ids = [r[0] for r in conn.execute("SELECT endpoint_id FROM endpoints ORDER BY endpoint_id")]
            endpoints = [self._endpoint(conn, e) for e in ids]
        wanted = (labels or {}).items()
        return [e for e in endpoints if wanted <= e.labels.items()]

    def delete(self, endpoint_id: str) -> None:
        with self.registry.transaction() as conn:
            endpoint = self._endpoint(conn, endpoint_id)
            if endpoint.deployed_models:
                deployed = [m.deployed_model_id for m in endpoint.deployed_models]
                raise UserError(
                    f"endpoint {endpoint_id!r} has deployed models {deployed}; undeploy them before deleting it"
                )
            conn.execute("DELETE FROM endpoints WHERE endpoint_id = ?", (endpoint_id,))
            _bump(conn)

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
        with self.registry.transaction() as conn:
            endpoint = self._endpoint(conn, endpoint_id)
            version_id = self.registry.resolve_version(conn, model_id, version)
            settings = settings or DeploymentSettings()
            if settings.deployment_resource_pool:
                (image,) = conn.execute(
                    "SELECT serving_image FROM versions WHERE model_id = ? AND version_id = ?", (model_id, version_id)
                ).fetchone()
                check_poolable(model_id, str(version_id), image, settings.deployment_resource_pool)
            cursor = conn.execute(
                "INSERT INTO deployed_models "
                "(endpoint_id, model_id, version_id, display_name, settings, traffic, create_time) "
                "VALUES (?, ?, ?, ?, ?, 0, ?)",
                (
                    endpoint_id,
                    model_id,
                    version_id,
                    display_name or f"{model_id}@{version_id}",
                    _settings_json(settings),
                    _now(),
                ),
            )
            new_id = str(cursor.lastrowid)
            split = deploy_split(endpoint.traffic_split, new_id, traffic_percentage, traffic_split)
            _write_split(conn, endpoint_id, split)
            return self._endpoint(conn, endpoint_id), new_id

    def undeploy(
        self, endpoint_id: str, deployed_model_id: str, traffic_split: dict[str, int] | None = None
    ) -> Endpoint:
        with self.registry.transaction() as conn:
            endpoint = self._endpoint(conn, endpoint_id)
            endpoint.deployed(deployed_model_id)
            split = undeploy_split(endpoint.traffic_split, deployed_model_id, traffic_split)
            conn.execute("DELETE FROM deployed_models WHERE deployed_model_id = ?", (int(deployed_model_id),))
            _write_split(conn, endpoint_id, split)
            return self._endpoint(conn, endpoint_id)

    def update_traffic(self, endpoint_id: str, traffic_split: dict[str, int]) -> Endpoint:
        check_split(traffic_split)
        with self.registry.transaction() as conn:
            endpoint = self._endpoint(conn, endpoint_id)
            unknown = sorted(set(traffic_split) - {m.deployed_model_id for m in endpoint.deployed_models})
            if unknown:
                raise UserError(
                    f"traffic_split names {unknown}, which are not deployed on {endpoint_id!r}; "
                    f"deployed: {sorted(endpoint.traffic_split)}"
                )
            if endpoint.deployed_models and not traffic_split:
                raise UserError(f"an empty traffic_split would stop all traffic to {endpoint_id!r}; undeploy instead")
            _write_split(conn, endpoint_id, traffic_split)
            return self._endpoint(conn, endpoint_id)

    def revision(self) -> int:
        """A counter that changes whenever any endpoint changes (what a server polls)."""
        with self.registry.connect() as conn:
            return int(conn.execute("SELECT revision FROM endpoint_changes WHERE id = 1").fetchone()[0])

    def _endpoint(self, conn: sqlite3.Connection, endpoint_id: str) -> Endpoint:
        row = conn.execute(
            "SELECT display_name, labels, request_logging_rate, create_time FROM endpoints WHERE endpoint_id = ?",
            (endpoint_id,),
        ).fetchone()
        if row is None:
            known = [r[0] for r in conn.execute("SELECT endpoint_id FROM endpoints ORDER BY endpoint_id LIMIT 20")]
            raise NotFoundError(f"endpoint {endpoint_id!r} does not exist; endpoints: {known}")
        display_name, labels, rate, created = row
        deployed, split = [], {}
        for dm_id, model_id, version_id, name, settings, traffic, dm_created in conn.execute(
            "SELECT deployed_model_id, model_id, version_id, display_name, settings, traffic, create_time "
            "FROM deployed_models WHERE endpoint_id = ? ORDER BY deployed_model_id",
            (endpoint_id,),
        ):
            deployed.append(
                DeployedModel(
                    deployed_model_id=str(dm_id),
                    model_id=model_id,
                    version_id=str(version_id),
                    model_resource_name=f"projects/{PROJECT}/locations/{LOCATION}/models/{model_id}",
                    display_name=name,
                    settings=DeploymentSettings(**json.loads(settings)),
                    create_time=dm_created,
                )
            )
            split[str(dm_id)] = traffic  # zero entries stay, as in Vertex's split
        return Endpoint(
            endpoint_id=endpoint_id,
            resource_name=f"projects/{PROJECT}/locations/{LOCATION}/endpoints/{endpoint_id}",
            display_name=display_name,
            labels=json.loads(labels),
            deployed_models=tuple(deployed),
            traffic_split=split,
            request_logging_rate=rate,
            create_time=created,
        )


def _write_split(conn: sqlite3.Connection, endpoint_id: str, split: dict[str, int]) -> None:
    conn.execute("UPDATE deployed_models SET traffic = 0 WHERE endpoint_id = ?", (endpoint_id,))
    conn.executemany(
        "UPDATE deployed_models SET traffic = ? WHERE deployed_model_id = ? AND endpoint_id = ?",
        [(percent, int(dm_id), endpoint_id) for dm_id, percent in split.items()],
    )
    _bump(conn)


def _bump(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE endpoint_changes SET revision = revision + 1 WHERE id = 1")


def _settings_json(settings: DeploymentSettings) -> str:
    return json.dumps(settings.__dict__, sort_keys=True)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
