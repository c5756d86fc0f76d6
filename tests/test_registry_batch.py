"""A batch of uploads on the local twin is one transaction: all of it is registered, or none of it."""

import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from fleetops.errors import RegistryRuleError
from fleetops.fingerprints import directory_sha256
from fleetops.platform.local.registry import LocalModelRegistry
from fleetops.platform.registry import EvaluationInput, UploadRequest

SCHEMA = "gs://google-cloud-aiplatform/schema/modelevaluation/classification_metrics_1.0.0.yaml"


def _artifacts(root: Path, count: int) -> list[Path]:
    """`count` small artifact folders with distinct bytes."""
    paths = []
    for i in range(count):
        path = root / f"artifact{i}"
        (path / "sub").mkdir(parents=True)
        (path / "model.bin").write_bytes(i.to_bytes(2, "big") * 64)
        (path / "sub" / "meta.json").write_text(f'{{"i": {i}}}')
        paths.append(path)
    return paths


class WalCommits:
    """Counts the transactions committed to a registry since it was opened.

    In WAL mode each commit ends with a frame whose header holds the database size
    (other frames hold 0). The WAL is truncated first, and this connection stays
    open so that no other connection's close checkpoints the WAL away.
    """

    def __init__(self, registry: LocalModelRegistry):
        self.wal = Path(f"{registry.database}-wal")
        self.conn = sqlite3.connect(registry.database)
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert self.wal.stat().st_size == 0

    def count(self) -> int:
        data = self.wal.read_bytes()
        if not data:
            return 0
        page_size = int.from_bytes(data[8:12], "big")
        salts = data[16:24]
        commits = 0
        for offset in range(32, len(data), 24 + page_size):
            header = data[offset : offset + 24]
            if len(header) < 24 or header[8:16] != salts:
                break  # frames of an earlier WAL generation, not committed in this one
            commits += int.from_bytes(header[4:8], "big") != 0
        return commits

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def registry(tmp_path):
    return LocalModelRegistry(tmp_path / "home")


def _committed(registry: LocalModelRegistry) -> dict[str, list[tuple]]:
    """What the registry holds, without paths or times: model -> versions."""
    return {
        model: [
            (
                v.version_id,
                v.aliases,
                v.identity_sha256,
                v.artifact_sha256,
                v.labels,
                v.lineage,
                v.display_name,
                v.description,
                [(e.display_name, e.metrics) for e in registry.list_evaluations(model, v.version_id)],
            )
            for v in registry.list_versions(model)
        ]
        for model in registry.list_models()
    }


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _assert_left_nothing(registry: LocalModelRegistry, files_before: list[str]) -> None:
    assert _files(registry.store) == files_before
    assert not any((registry.store / ".staging").iterdir())


def test_a_batch_of_n_is_one_commit_where_n_uploads_are_n(tmp_path):
    artifacts = _artifacts(tmp_path, 20)
    # Two artifacts a model: a model's versions in one batch get consecutive ids.
    requests = [
        UploadRequest(f"m{i // 2}", a, evaluation=EvaluationInput(SCHEMA, {"auRoc": i / 20}))
        for i, a in enumerate(artifacts)
    ]
    batch = LocalModelRegistry(tmp_path / "batch")
    commits = WalCommits(batch)
    registrations = batch.upload_versions(requests)
    assert commits.count() == 1
    commits.close()
    assert [r.created for r in registrations] == [True] * 20
    assert [(r.version.model_id, r.version.version_id) for r in registrations] == [
        (f"m{i // 2}", str(i % 2 + 1)) for i in range(20)
    ]
    assert len(list((batch.store / "m3").iterdir())) == 2
    assert batch.list_evaluations("m3", "2")[0].metrics == {"auRoc": 0.35}

    one_by_one = LocalModelRegistry(tmp_path / "one-by-one")
    commits = WalCommits(one_by_one)
    for request in requests:
        one_by_one.upload_version(**request.arguments())
    assert commits.count() == 20
    commits.close()
    assert _committed(one_by_one) == _committed(batch)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"aliases": ["Best"]}, r"upload of model 'm1': version alias 'Best' is invalid"),
        ({"labels": {"team": "Growth"}}, r"upload of model 'm1': label value 'Growth' \(key 'team'\) is invalid"),
        ({"identity": "abc"}, r"upload of model 'm1': version identity 'abc' is invalid"),
        ({"evaluation": EvaluationInput(SCHEMA, {"auRoc": float("nan")})}, r"upload of model 'm1': .* finite JSON"),
        ({"model_id": "9lives"}, r"model id '9lives' is invalid"),
    ],
)
def test_one_invalid_request_fails_the_batch_before_anything_is_written(registry, tmp_path, change, message):
    artifacts = _artifacts(tmp_path, 3)
    requests = [UploadRequest(f"m{i}", a) for i, a in enumerate(artifacts)]
    requests[1] = UploadRequest(**requests[1].arguments() | change)
    commits = WalCommits(registry)
    with pytest.raises(RegistryRuleError, match=message):
        registry.upload_versions(requests)
    assert commits.count() == 0
    commits.close()
    assert registry.list_models() == []
    assert _files(registry.store) == []


def test_an_artifact_that_cannot_be_copied_fails_the_batch_and_cleans_its_staging(registry, tmp_path):
    artifacts = _artifacts(tmp_path, 3)
    # A dangling link is not hashed (it is no file) but the copy trips over it: a failure
    # while staging, after the artifacts before it were staged.
    (artifacts[2] / "weights.h5").symlink_to(tmp_path / "gone.h5")
    with pytest.raises(shutil.Error, match="artifact2/weights.h5"):
        registry.upload_versions([UploadRequest(f"m{i}", a) for i, a in enumerate(artifacts)])
    assert registry.list_models() == []
    _assert_left_nothing(registry, [])


def test_a_failure_inside_the_transaction_rolls_back_rows_and_folders(registry, tmp_path):
    artifacts = _artifacts(tmp_path, 4)
    registry.upload_versions([UploadRequest("keep", artifacts[0], aliases=["champion"])])
    committed, files = _committed(registry), _files(registry.store)
    # Where `blocked` would get its folder there is a file: moving its artifact into place
    # fails after `m` and `keep` have their rows and their folders.
    (registry.store / "blocked").write_text("not a folder")
    files = sorted([*files, "blocked"])
    requests = [
        UploadRequest("m", artifacts[1], evaluation=EvaluationInput(SCHEMA, {"auRoc": 0.9})),
        UploadRequest("keep", artifacts[2], aliases=["champion"]),
        UploadRequest("blocked", artifacts[3]),
    ]
    with pytest.raises(FileExistsError):
        registry.upload_versions(requests)
    assert _committed(registry) == committed  # `keep` v1 still champion, no `m`
    _assert_left_nothing(registry, files)  # keep/1, committed before, is still there

    (registry.store / "blocked").unlink()
    retried = registry.upload_versions(requests)
    assert [(r.version.model_id, r.version.version_id) for r in retried] == [
        ("m", "1"),
        ("keep", "2"),
        ("blocked", "1"),
    ]


def test_duplicates_within_and_across_batches_add_no_version(registry, tmp_path):
    a0, a1, a2 = _artifacts(tmp_path, 3)
    copy = shutil.copytree(a0, tmp_path / "copy")
    same = "a" * 64
    first = registry.upload_versions(
        [
            UploadRequest("m", a0),
            UploadRequest("m", copy),  # the same bytes
            UploadRequest("m", a1, identity=same),
            UploadRequest("m", a2, identity=same, aliases=["champion"]),  # the same model, retrained
        ]
    )
    assert [(r.created, r.version.version_id) for r in first] == [(True, "1"), (False, "1"), (True, "2"), (False, "2")]
    assert registry.get_version("m", "2").aliases == ("default",)  # a duplicate moves no alias

    commits = WalCommits(registry)
    rerun = registry.upload_versions([UploadRequest("m", a0), UploadRequest("m", a2, identity=same)])
    assert [(r.created, r.version.version_id) for r in rerun] == [(False, "1"), (False, "2")]
    assert commits.count() == 0  # nothing new: no write at all
    second = registry.upload_versions([UploadRequest("m", copy), UploadRequest("n", a0)])
    assert [(r.created, r.version.model_id, r.version.version_id) for r in second] == [
        (False, "m", "1"),
        (True, "n", "1"),
    ]
    assert commits.count() == 1
    commits.close()
    assert [v.version_id for v in registry.list_versions("m")] == ["1", "2"]


def test_default_and_alias_rules_are_those_of_uploads_one_by_one(tmp_path):
    a = _artifacts(tmp_path, 7)
    requests = [
        UploadRequest("m", a[0], is_default_version=False),  # the first version is the default anyway
        UploadRequest("m", a[1], aliases=["champion"], is_default_version=False),
        UploadRequest("n", a[2], aliases=["canary"], labels={"team": "growth"}, lineage={"run": "r1"}),
        UploadRequest("m", a[3], aliases=["champion", "canary"]),  # takes champion and default
        UploadRequest("n", a[4], is_default_version=False, description="shadow"),
        UploadRequest("m", a[1], aliases=["stale"]),  # a duplicate: returns v2 as it stands, moves nothing
        UploadRequest("n", a[5], aliases=["canary"], display_name="n v3"),  # takes canary and default from n v1
        UploadRequest("m", a[6], aliases=["canary"], is_default_version=False),  # m v4 takes canary from v3
    ]
    batch = LocalModelRegistry(tmp_path / "batch")
    batched = batch.upload_versions(requests)
    one_by_one = LocalModelRegistry(tmp_path / "one-by-one")
    sequential = [one_by_one.upload_version(**r.arguments()) for r in requests]

    def seen(registrations):
        return [(r.created, r.version.model_id, r.version.version_id, r.version.aliases) for r in registrations]

    assert seen(batched) == seen(sequential)
    assert _committed(batch) == _committed(one_by_one)
    assert batch.get_version("m").version_id == "3" and batch.get_version("m", "canary").version_id == "4"
    assert batch.get_version("n", "default").version_id == batch.get_version("n", "canary").version_id == "3"


def test_a_batch_sqlite_rolled_back_never_removes_the_folder_another_writer_committed(registry, tmp_path, monkeypatch):
    """SQLite rolls back by itself when a write is interrupted (or meets a full disk) and releases the write lock.

    Writer A's batch has moved `m`'s artifact to m/1 when its next INSERT is interrupted. Writer B
    then registers `m` v1 at the same path. A's cleanup, held up until B has committed (a window
    of microseconds otherwise), must not remove B's folder.
    """
    a0, a1, a2 = _artifacts(tmp_path, 3)
    writer_a = threading.current_thread()
    a_placed, b_begins, b_done = threading.Event(), threading.Event(), threading.Event()
    connect, rmtree = sqlite3.connect, shutil.rmtree

    def instrumented(*args, **kwargs):
        conn = connect(*args, **kwargs)
        if threading.current_thread() is writer_a:
            inserts, fired = [], []

            def trace(sql):
                if sql.startswith("INSERT INTO versions"):
                    inserts.append(sql)
                    if len(inserts) == 2:  # n's row: m's folder is in place
                        a_placed.set()

            def interrupt():
                if len(inserts) == 2 and not fired:
                    fired.append(True)
                    return 1
                return 0

            conn.set_trace_callback(trace)
            conn.set_progress_handler(interrupt, 1)
        else:
            conn.set_trace_callback(lambda sql: sql.startswith("BEGIN IMMEDIATE") and b_begins.set())
        return conn

    def delayed_rmtree(path, *args, **kwargs):
        if threading.current_thread() is writer_a and Path(path) == registry.store / "m" / "1":
            # Give B the time to commit: it can only if A no longer holds the write lock.
            b_begins.wait(10)
            b_done.wait(1)
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", instrumented)
    monkeypatch.setattr(shutil, "rmtree", delayed_rmtree)
    registered = []

    def writer_b():
        a_placed.wait(10)
        registered.append(registry.upload_version("m", a2))
        b_done.set()

    other = threading.Thread(target=writer_b)
    other.start()
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):
        registry.upload_versions([UploadRequest("m", a0), UploadRequest("n", a1)])
    other.join(30)
    monkeypatch.undo()

    [b] = registered
    assert b.created and (b.version.model_id, b.version.version_id) == ("m", "1")
    assert registry.list_models() == ["m"]  # A's batch left nothing
    assert directory_sha256(registry.artifact_path(b.version)) == directory_sha256(a2)
    assert not any((registry.store / ".staging").iterdir())
