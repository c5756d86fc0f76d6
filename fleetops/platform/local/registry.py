"""The local twin of the Vertex AI Model Registry: SQLite (WAL) plus an artifact store.

Every write is one `BEGIN IMMEDIATE` transaction, so concurrent writers in
separate processes serialise on SQLite's write lock: version ids are never
duplicated and an alias is never on two versions. A batch of uploads (a shard's
models) is one transaction too: one commit and one lock round trip, all or
nothing. Artifacts are copied to a staging folder first and moved into place
inside the transaction, so a failed registration leaves neither a row nor a
file behind.

A killed upload cannot clean up, so each batch stages under
`models/.staging/<id>/` while holding `<id>.lock` with `flock`, which the
kernel releases however its process ends. Opening the registry removes every
staging folder whose lock it can take: those of dead uploads, never one a live
upload is still writing.

A version is found again by its identity (the model's, or its artifact's sha256),
so re-registering an unchanged model returns the existing version. A registry
file from before identities gains the column when it is opened.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetops.errors import NotFoundError, PlatformError, RegistryRuleError
from fleetops.fingerprints import directory_sha256
from fleetops.names import DEFAULT_ALIAS
from fleetops.platform.registry import (
    Evaluation,
    EvaluationInput,
    ModelRegistry,
    ModelVersion,
    Registration,
    UploadRequest,
    check_alias_removal,
    check_aliases,
    check_evaluation,
    check_upload_request,
    upload_aliases,
)

PROJECT = "local"
LOCATION = "local"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    model_id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    next_version_id INTEGER NOT NULL,
    create_time TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    model_id TEXT NOT NULL REFERENCES models(model_id),
    version_id INTEGER NOT NULL,
    display_name TEXT NOT NULL,
    description TEXT NOT NULL,
    labels TEXT NOT NULL,
    artifact_uri TEXT NOT NULL,
    artifact_sha256 TEXT NOT NULL,
    serving_image TEXT,
    lineage TEXT NOT NULL,
    create_time TEXT NOT NULL,
    identity TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (model_id, version_id),
    UNIQUE (model_id, artifact_sha256)
);
CREATE TABLE IF NOT EXISTS aliases (
    model_id TEXT NOT NULL,
    alias TEXT NOT NULL,
    version_id INTEGER NOT NULL,
    PRIMARY KEY (model_id, alias),
    FOREIGN KEY (model_id, version_id) REFERENCES versions(model_id, version_id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS evaluations (
    evaluation_id TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    version_id INTEGER NOT NULL,
    display_name TEXT NOT NULL,
    metrics_schema_uri TEXT NOT NULL,
    metrics TEXT NOT NULL,
    slices TEXT NOT NULL,
    create_time TEXT NOT NULL,
    FOREIGN KEY (model_id, version_id) REFERENCES versions(model_id, version_id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS endpoints (
    endpoint_id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    labels TEXT NOT NULL,
    request_logging_rate REAL NOT NULL,
    create_time TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deployed_models (
    deployed_model_id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id TEXT NOT NULL REFERENCES endpoints(endpoint_id),
    model_id TEXT NOT NULL,
    version_id INTEGER NOT NULL,
    display_name TEXT NOT NULL,
    settings TEXT NOT NULL,
    traffic INTEGER NOT NULL,
    create_time TEXT NOT NULL,
    FOREIGN KEY (model_id, version_id) REFERENCES versions(model_id, version_id)
);
CREATE TABLE IF NOT EXISTS endpoint_changes (id INTEGER PRIMARY KEY CHECK (id = 1), revision INTEGER NOT NULL);
"""


_IDENTITY_INDEX = "versions_model_identity"
_STAGING = ".staging"
_LOCK_SUFFIX = ".lock"

# Bytes identical to a registered version are that version too, whichever identity it was
# given (a version registered before identities existed has its artifact sha256 as identity).
_FIND_EXISTING = (
    "SELECT version_id FROM versions WHERE model_id = ? AND (identity = ? OR artifact_sha256 = ?) "
    "ORDER BY version_id LIMIT 1"
)


class LocalModelRegistry(ModelRegistry):
    """Model registry of the local twin under `home` (`registry.sqlite`, `models/`)."""

    def __init__(self, home: str | Path):
        self.home = Path(home)
        self.database = self.home / "registry.sqlite"
        self.store = self.home / "models"
        self.store.mkdir(parents=True, exist_ok=True)
        self._sweep_staging()
        with self.connect() as conn:
            # Once the tables exist this writes nothing and takes no write lock: opening the
            # registry (every component, the server, the CLI) never waits for a writer.
            conn.executescript(_SCHEMA)
            if conn.execute("SELECT 1 FROM endpoint_changes").fetchone() is None:
                conn.execute("INSERT OR IGNORE INTO endpoint_changes VALUES (1, 0)")
        self._migrate()

    # -- writes --------------------------------------------------------------------------------

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
        request = UploadRequest(
            model_id,
            artifact_path,
            artifact_uri=artifact_uri,
            display_name=display_name,
            description=description,
            labels=labels,
            aliases=aliases,
            is_default_version=is_default_version,
            lineage=lineage,
            serving_image=serving_image,
            evaluation=evaluation,
            identity=identity,
        )
        return self.upload_versions([request])[0]

    def upload_versions(self, requests: Sequence[UploadRequest]) -> list[Registration]:
        """Register a batch all or nothing, in one `BEGIN IMMEDIATE` transaction (see `ModelRegistry`).

        Every request is checked, hashed and copied to staging before the write lock is
        taken, so other writers wait for the rows and the renames, not for the copies.
        A batch whose models are all registered already writes nothing and takes no lock.
        """
        requests = list(requests)
        for request in requests:
            check_upload_request(request)
        with _Staging(self.store / _STAGING) as staging:
            uploads = [_Upload(r, directory_sha256(r.artifact_path), staging.folder(i)) for i, r in enumerate(requests)]
            with self.connect() as conn:
                found = [conn.execute(_FIND_EXISTING, u.key).fetchone() for u in uploads]
                if all(row is not None for row in found):
                    return [
                        Registration(self._version(conn, u.request.model_id, row[0]), created=False)
                        for u, row in zip(uploads, found, strict=True)
                    ]
            for upload, row in zip(uploads, found, strict=True):
                if row is None:
                    upload.stage()
            placed: list[_Placed] = []
            with self.transaction(placed) as conn:
                return [self._register(conn, upload, placed) for upload in uploads]

    def add_version_aliases(self, model_id: str, version: str, aliases: list[str]) -> ModelVersion:
        check_aliases(aliases)
        with self.transaction() as conn:
            version_id = self.resolve_version(conn, model_id, version)
            _assign_aliases(conn, model_id, version_id, aliases)
            return self._version(conn, model_id, version_id)

    def remove_version_aliases(self, model_id: str, version: str, aliases: list[str]) -> ModelVersion:
        check_aliases(aliases)
        check_alias_removal(aliases)
        with self.transaction() as conn:
            version_id = self.resolve_version(conn, model_id, version)
            conn.executemany(
                "DELETE FROM aliases WHERE model_id = ? AND version_id = ? AND alias = ?",
                [(model_id, version_id, a) for a in aliases],
            )
            return self._version(conn, model_id, version_id)

    def delete_version(self, model_id: str, version: str) -> None:
        with self.transaction() as conn:
            version_id = self.resolve_version(conn, model_id, version)
            count = conn.execute("SELECT COUNT(*) FROM versions WHERE model_id = ?", (model_id,)).fetchone()[0]
            if count == 1:
                raise RegistryRuleError(
                    f"version {version_id} is the last version of model {model_id!r} and cannot be deleted "
                    "as a version; delete the model instead"
                )
            aliases = self._aliases(conn, model_id, version_id)
            if DEFAULT_ALIAS in aliases:
                raise RegistryRuleError(
                    f"version {version_id} of model {model_id!r} is the default version and cannot be deleted; "
                    "make another version the default first"
                )
            endpoints = [
                row[0]
                for row in conn.execute(
                    "SELECT DISTINCT endpoint_id FROM deployed_models WHERE model_id = ? AND version_id = ?",
                    (model_id, version_id),
                )
            ]
            if endpoints:
                raise RegistryRuleError(
                    f"version {version_id} of model {model_id!r} is deployed on endpoints {endpoints}; "
                    "undeploy it before deleting the version"
                )
            conn.execute("DELETE FROM versions WHERE model_id = ? AND version_id = ?", (model_id, version_id))
            # The folder goes only once the rows are gone: a failed commit leaves both.
            shutil.rmtree(self.store / model_id / str(version_id), ignore_errors=True)

    def import_evaluation(self, model_id: str, version: str, evaluation: EvaluationInput) -> Evaluation:
        with self.transaction() as conn:
            version_id = self.resolve_version(conn, model_id, version)
            evaluation_id = _insert_evaluation(conn, model_id, version_id, evaluation)
            return self._evaluation(conn, evaluation_id)

    # -- reads ---------------------------------------------------------------------------------

    def get_version(self, model_id: str, version: str | None = None) -> ModelVersion:
        with self.connect() as conn:
            return self._version(conn, model_id, self.resolve_version(conn, model_id, version))

    def list_versions(self, model_id: str) -> list[ModelVersion]:
        with self.connect() as conn:
            self._require_model(conn, model_id)
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT version_id FROM versions WHERE model_id = ? ORDER BY version_id", (model_id,)
                )
            ]
            return [self._version(conn, model_id, v) for v in ids]

    def list_models(self, labels: dict[str, str] | None = None) -> list[str]:
        with self.connect() as conn:
            rows = conn.execute("SELECT DISTINCT model_id, labels FROM versions ORDER BY model_id").fetchall()
        wanted = (labels or {}).items()
        return sorted({m for m, raw in rows if wanted <= json.loads(raw).items()})

    def list_evaluations(self, model_id: str, version: str | None = None) -> list[Evaluation]:
        with self.connect() as conn:
            version_id = self.resolve_version(conn, model_id, version)
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT evaluation_id FROM evaluations WHERE model_id = ? AND version_id = ? ORDER BY create_time",
                    (model_id, version_id),
                )
            ]
            return [self._evaluation(conn, e) for e in ids]

    def artifact_path(self, version: ModelVersion) -> Path:
        return self.store / version.model_id / version.version_id

    # -- helpers -------------------------------------------------------------------------------

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.database, timeout=60, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=60000")
            yield conn
        finally:
            conn.close()

    @contextmanager
    def transaction(self, placed: list[_Placed] | None = None) -> Iterator[sqlite3.Connection]:
        """One `BEGIN IMMEDIATE` transaction: committed when the block ends, rolled back if it (or the commit) fails.

        Args:
            placed: Folders the block moves into the store for the rows it writes. On failure
                the ones still there are removed under the write lock, so never a folder another
                writer has committed at the same path: before the rollback while this connection
                holds the lock, or, when SQLite has rolled back by itself and released it, after
                taking it again (`_remove_uncommitted`).
        """
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    for folder in placed or ():
                        folder.remove()
                    conn.execute("ROLLBACK")
                elif placed:
                    self._remove_uncommitted(conn, placed)
                raise

    def _remove_uncommitted(self, conn: sqlite3.Connection, placed: list[_Placed]) -> None:
        """Remove placed folders after the transaction ended without this connection's ROLLBACK.

        SQLite rolls a transaction back by itself on an interrupted write, a full disk or an
        I/O error (also in COMMIT), and the write lock goes with it: another writer may since
        have registered the same version ids and moved its own folders to these paths. Under
        the lock again, a folder goes only if it is still the one this batch moved there and
        no committed row names it (an exception raised just after a successful COMMIT ends
        here too, with its rows committed). If the lock cannot be had, the folders stay: no
        row names them, and the next registration of their version replaces them.
        """
        # Never an error of its own: the caller re-raises the one that ended the transaction.
        with suppress(sqlite3.Error):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for folder in placed:
                    committed = conn.execute(
                        "SELECT 1 FROM versions WHERE model_id = ? AND version_id = ?",
                        (folder.model_id, folder.version_id),
                    ).fetchone()
                    if committed is None:
                        folder.remove()
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    def _migrate(self) -> None:
        """Bring a registry file from before version identities up to date (a no-op once done).

        Old rows get their artifact sha256 as identity: that is what they were
        deduplicated on, so re-registering their artifacts still finds them.
        """
        with self.connect() as conn:
            if _has_identity_index(conn):
                return
        # Checked again under the write lock: another process may be migrating the same file.
        with self.transaction() as conn:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(versions)")}
            if "identity" not in columns:
                conn.execute("ALTER TABLE versions ADD COLUMN identity TEXT NOT NULL DEFAULT ''")
                conn.execute("UPDATE versions SET identity = artifact_sha256")
            conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {_IDENTITY_INDEX} ON versions (model_id, identity)")

    def _sweep_staging(self) -> None:
        """Remove what killed uploads left in staging: every folder whose lock no live upload holds."""
        root = self.store / _STAGING
        try:
            entries = sorted(root.iterdir())
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.endswith(_LOCK_SUFFIX):
                _remove_abandoned(root / entry.name.removesuffix(_LOCK_SUFFIX), entry)
            elif entry.is_dir() and not (root / f"{entry.name}{_LOCK_SUFFIX}").exists():
                # An upload creates its lock before its folder and removes it after, so a folder
                # without one has no upload: it was staged before staging locks existed.
                shutil.rmtree(entry, ignore_errors=True)

    def _register(self, conn: sqlite3.Connection, upload: _Upload, placed: list[_Placed]) -> Registration:
        """One upload inside its batch's transaction; `placed` gains the folder it moves into the store.

        Deduplication is decided here, under the write lock, so it also sees the versions
        that earlier requests of the batch and other writers have created.
        """
        request = upload.request
        model_id = request.model_id
        duplicate = conn.execute(_FIND_EXISTING, upload.key).fetchone()
        if duplicate is not None:
            return Registration(self._version(conn, model_id, duplicate[0]), created=False)
        # Not copied yet only if it was found before the lock was taken and deleted since.
        upload.stage()
        row = conn.execute("SELECT next_version_id FROM models WHERE model_id = ?", (model_id,)).fetchone()
        now = _now()
        display_name = request.display_name or model_id
        if row is None:
            conn.execute("INSERT INTO models VALUES (?, ?, 1, ?)", (model_id, display_name, now))
            version_id = 1
        else:
            version_id = row[0]
        conn.execute("UPDATE models SET next_version_id = ? WHERE model_id = ?", (version_id + 1, model_id))
        final = self.store / model_id / str(version_id)
        conn.execute(
            "INSERT INTO versions (model_id, version_id, display_name, description, labels, artifact_uri, "
            "artifact_sha256, serving_image, lineage, create_time, identity) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                model_id,
                version_id,
                display_name,
                request.description,
                json.dumps(dict(request.labels or {}), sort_keys=True),
                final.as_uri(),
                upload.sha,
                request.serving_image,
                json.dumps(request.lineage or {}, sort_keys=True, default=str),
                now,
                upload.identity,
            ),
        )
        has_default = conn.execute(
            "SELECT 1 FROM aliases WHERE model_id = ? AND alias = ?", (model_id, DEFAULT_ALIAS)
        ).fetchone()
        # Vertex: the first version is always the default one.
        wanted = upload_aliases(request.aliases, request.is_default_version or not has_default)
        _assign_aliases(conn, model_id, version_id, wanted)
        if request.evaluation is not None:
            _insert_evaluation(conn, model_id, version_id, request.evaluation)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)  # left by a crash before a commit: never registered
        # Recorded before the move, so a failure at any point after it still removes the folder.
        placed.append(_Placed(final, model_id, version_id, _file_id(upload.staging)))
        os.replace(upload.staging, final)
        return Registration(self._version(conn, model_id, version_id), created=True)

    def _require_model(self, conn: sqlite3.Connection, model_id: str) -> None:
        if conn.execute("SELECT 1 FROM models WHERE model_id = ?", (model_id,)).fetchone() is None:
            raise NotFoundError(f"model {model_id!r} is not in the registry at {self.database}")

    def resolve_version(self, conn: sqlite3.Connection, model_id: str, version: str | None) -> int:
        self._require_model(conn, model_id)
        ref = DEFAULT_ALIAS if version is None else str(version)
        if ref.isdigit():
            row = conn.execute(
                "SELECT version_id FROM versions WHERE model_id = ? AND version_id = ?", (model_id, int(ref))
            ).fetchone()
        else:
            row = conn.execute(
                "SELECT version_id FROM aliases WHERE model_id = ? AND alias = ?", (model_id, ref)
            ).fetchone()
        if row is None:
            known = ", ".join(
                v.version_id + (f" ({', '.join(v.aliases)})" if v.aliases else "")
                for v in self._versions_brief(conn, model_id)
            )
            raise NotFoundError(f"model {model_id!r} has no version or alias {ref!r}; it has versions {known}")
        return int(row[0])

    def _versions_brief(self, conn: sqlite3.Connection, model_id: str) -> list[ModelVersion]:
        ids = [r[0] for r in conn.execute("SELECT version_id FROM versions WHERE model_id = ?", (model_id,))]
        return [self._version(conn, model_id, v) for v in ids]

    def _aliases(self, conn: sqlite3.Connection, model_id: str, version_id: int) -> tuple[str, ...]:
        rows = conn.execute(
            "SELECT alias FROM aliases WHERE model_id = ? AND version_id = ? ORDER BY alias", (model_id, version_id)
        )
        return tuple(r[0] for r in rows)

    def _version(self, conn: sqlite3.Connection, model_id: str, version_id: int) -> ModelVersion:
        row = conn.execute(
            "SELECT display_name, description, labels, artifact_uri, artifact_sha256, lineage, create_time, identity "
            "FROM versions WHERE model_id = ? AND version_id = ?",
            (model_id, version_id),
        ).fetchone()
        display_name, description, labels, uri, sha, lineage, created, identity = row
        return ModelVersion(
            model_id=model_id,
            version_id=str(version_id),
            resource_name=f"projects/{PROJECT}/locations/{LOCATION}/models/{model_id}",
            display_name=display_name,
            aliases=self._aliases(conn, model_id, version_id),
            labels=json.loads(labels),
            artifact_uri=uri,
            artifact_sha256=sha,
            description=description,
            lineage=json.loads(lineage),
            create_time=created,
            identity_sha256=identity,
        )

    def _evaluation(self, conn: sqlite3.Connection, evaluation_id: str) -> Evaluation:
        model_id, version_id, name, schema, metrics, slices, created = conn.execute(
            "SELECT model_id, version_id, display_name, metrics_schema_uri, metrics, slices, create_time "
            "FROM evaluations WHERE evaluation_id = ?",
            (evaluation_id,),
        ).fetchone()
        return Evaluation(
            evaluation_id=evaluation_id,
            resource_name=f"projects/{PROJECT}/locations/{LOCATION}/models/{model_id}@{version_id}/evaluations/{evaluation_id}",
            metrics_schema_uri=schema,
            metrics=json.loads(metrics),
            display_name=name,
            slices=json.loads(slices),
            create_time=created,
        )


def _has_identity_index(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (_IDENTITY_INDEX,)).fetchone()
    return row is not None


def _assign_aliases(conn: sqlite3.Connection, model_id: str, version_id: int, aliases: list[str]) -> None:
    """Give each alias to `version_id`, taking it from whichever version had it."""
    for alias in aliases:
        conn.execute(
            "INSERT INTO aliases (model_id, alias, version_id) VALUES (?, ?, ?) "
            "ON CONFLICT (model_id, alias) DO UPDATE SET version_id = excluded.version_id",
            (model_id, alias, version_id),
        )


def _insert_evaluation(conn: sqlite3.Connection, model_id: str, version_id: int, evaluation: EvaluationInput) -> str:
    check_evaluation(evaluation)
    metrics = json.dumps(evaluation.metrics, sort_keys=True, allow_nan=False)
    slices = json.dumps(evaluation.slices, sort_keys=True, allow_nan=False)
    evaluation_id = uuid.uuid4().hex[:16]
    conn.execute(
        "INSERT INTO evaluations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            evaluation_id,
            model_id,
            version_id,
            evaluation.display_name,
            evaluation.metrics_schema_uri,
            metrics,
            slices,
            _now(),
        ),
    )
    return evaluation_id


@dataclass
class _Upload:
    """A request of a batch on its way in: its artifact's sha256 and the folder it is staged in."""

    request: UploadRequest
    sha: str
    staging: Path

    @property
    def identity(self) -> str:
        """What it deduplicates on: the identity given, else the artifact's bytes."""
        return self.request.identity or self.sha

    @property
    def key(self) -> tuple[str, str, str]:
        """The parameters of `_FIND_EXISTING`."""
        return (self.request.model_id, self.identity, self.sha)

    def stage(self) -> None:
        """Copy the artifact to its staging folder (once) and check the copy is what was hashed."""
        if self.staging.exists():
            return
        source = Path(self.request.artifact_path)
        _copy_artifact(source, self.staging)
        if directory_sha256(self.staging) != self.sha:
            raise PlatformError(
                f"artifact {str(source)!r} of model {self.request.model_id!r} changed while it was being copied; retry"
            )


@dataclass(frozen=True)
class _Placed:
    """A folder a batch moved into the store for a version row it wrote, and which file it is.

    A rename keeps the file's identity (device, inode), and another writer's folder at the same
    path is another file: removing only while the path is still this one removes only ours.
    """

    path: Path
    model_id: str
    version_id: int
    file_id: tuple[int, int]

    def remove(self) -> None:
        """Remove the folder if the path still holds it."""
        try:
            if _file_id(self.path) != self.file_id:
                return
        except OSError:
            return  # gone (or unreadable): nothing of ours to remove
        shutil.rmtree(self.path, ignore_errors=True)


def _file_id(path: Path) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


class _Staging:
    """A batch's staging folder, `<root>/<id>/`, claimed by holding `<root>/<id>.lock` (flock) until the batch ends.

    The lock file is created and locked before the folder, and removed after it.
    """

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        while True:
            name = uuid.uuid4().hex
            lock = root / f"{name}{_LOCK_SUFFIX}"
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A sweep may have taken the fresh file before this process did, and removed it.
            if _still_names(lock, fd):
                break
            os.close(fd)
        self.path = root / name
        self._lock = lock
        self._fd = fd

    def folder(self, index: int) -> Path:
        """Where the batch's `index`-th artifact is copied."""
        return self.path / str(index)

    def __enter__(self) -> _Staging:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            shutil.rmtree(self.path, ignore_errors=True)
            self._lock.unlink(missing_ok=True)
        finally:
            os.close(self._fd)


def _remove_abandoned(folder: Path, lock: Path) -> None:
    """Remove a staging folder and its lock file if no live upload holds the lock."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return  # its upload has just finished
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a live upload
        if _still_names(lock, fd):  # not removed by its upload (or another sweep) meanwhile
            shutil.rmtree(folder, ignore_errors=True)
            lock.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _still_names(path: Path, fd: int) -> bool:
    """Whether `path` is still the file open as `fd`."""
    try:
        named = _file_id(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return named == (held.st_dev, held.st_ino)


def _copy_artifact(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, destination)
    else:
        destination.mkdir()
        shutil.copy2(source, destination / source.name)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
