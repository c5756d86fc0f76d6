"""The local twin's registry follows Vertex's rules (docs/local-twin.md, "Model Registry")."""

import multiprocessing
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from fleetops.errors import NotFoundError, RegistryRuleError
from fleetops.fingerprints import directory_sha256
from fleetops.platform.local.registry import LocalModelRegistry
from fleetops.platform.registry import EvaluationInput

SCHEMA = "gs://google-cloud-aiplatform/schema/modelevaluation/classification_metrics_1.0.0.yaml"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def registry(tmp_path):
    return LocalModelRegistry(tmp_path / "home")


def test_versions_count_up_and_first_is_default(registry, artifact_dirs):
    v1 = registry.upload_version("churn-north", artifact_dirs[0], is_default_version=False).version
    v2 = registry.upload_version("churn-north", artifact_dirs[1], is_default_version=False).version
    assert (v1.version_id, v2.version_id) == ("1", "2")
    assert v1.aliases == ("default",)  # version 1 is always the default
    assert v2.aliases == ()
    assert registry.get_version("churn-north").version_id == "1"
    assert v1.resource_name == "projects/local/locations/local/models/churn-north"
    assert v2.versioned_name.endswith("churn-north@2")


def test_default_upload_moves_default(registry, artifact_dirs):
    registry.upload_version("m", artifact_dirs[0])
    v2 = registry.upload_version("m", artifact_dirs[1], aliases=["champion"]).version
    assert set(v2.aliases) == {"champion", "default"}
    assert registry.get_version("m", "1").aliases == ()
    assert registry.get_version("m").version_id == "2"


def test_alias_moves_between_versions(registry, artifact_dirs):
    registry.upload_version("m", artifact_dirs[0], aliases=["champion"])
    registry.upload_version("m", artifact_dirs[1], is_default_version=False)
    moved = registry.add_version_aliases("m", "2", ["champion", "canary-2"])
    assert set(moved.aliases) == {"champion", "canary-2"}
    assert registry.get_version("m", "1").aliases == ("default",)
    assert registry.get_version("m", "champion").version_id == "2"
    assert registry.remove_version_aliases("m", "champion", ["canary-2"]).aliases == ("champion",)


@pytest.mark.parametrize("alias", ["1", "Champion", "a", "bad_alias", "x-", "-x", "a" * 129])
def test_alias_format_is_vertex_format(registry, artifact_dirs, alias):
    with pytest.raises(RegistryRuleError, match=r"\[a-z\]\[a-zA-Z0-9-\]"):
        registry.upload_version("m", artifact_dirs[0], aliases=[alias])
    with pytest.raises(NotFoundError):
        registry.get_version("m")  # nothing was written


def test_default_alias_cannot_be_removed(registry, artifact_dirs):
    registry.upload_version("m", artifact_dirs[0])
    with pytest.raises(RegistryRuleError, match="'default' alias cannot be removed"):
        registry.remove_version_aliases("m", "1", ["default"])


@pytest.mark.parametrize(
    "labels, message",
    [
        ({"Team": "x"}, "label key 'Team'"),
        ({"team": "Growth"}, "label value 'Growth'"),
        ({"t": "x" * 65}, "label value"),
    ],
)
def test_labels_follow_vertex_format(registry, artifact_dirs, labels, message):
    with pytest.raises(RegistryRuleError, match=message):
        registry.upload_version("m", artifact_dirs[0], labels=labels)


def test_model_id_format(registry, artifact_dirs):
    with pytest.raises(RegistryRuleError, match="model id '9lives' is invalid"):
        registry.upload_version("9lives", artifact_dirs[0])


def test_last_and_default_versions_cannot_be_deleted(registry, artifact_dirs):
    registry.upload_version("m", artifact_dirs[0])
    with pytest.raises(RegistryRuleError, match="last version"):
        registry.delete_version("m", "1")
    registry.upload_version("m", artifact_dirs[1], is_default_version=False)
    with pytest.raises(RegistryRuleError, match="default version"):
        registry.delete_version("m", "1")
    registry.delete_version("m", "2")
    assert not (registry.store / "m" / "2").exists()
    v3 = registry.upload_version("m", artifact_dirs[2], is_default_version=False).version
    assert v3.version_id == "3"  # ids are never reused
    with pytest.raises(NotFoundError, match="has no version or alias '2'"):
        registry.get_version("m", "2")


def test_upload_is_idempotent_on_artifact_bytes(registry, artifact_dirs, tmp_path):
    first = registry.upload_version("m", artifact_dirs[0], lineage={"run": "a"})
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in artifact_dirs[0].rglob("*"):
        if f.is_file():
            target = copy / f.relative_to(artifact_dirs[0])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())
    retry = registry.upload_version("m", copy, lineage={"run": "a"})
    assert first.created and not retry.created
    assert retry.version.version_id == "1"
    assert len(registry.list_versions("m")) == 1
    stored = registry.artifact_path(first.version)
    assert (stored / "model.bin").read_bytes() == (artifact_dirs[0] / "model.bin").read_bytes()
    assert first.version.artifact_uri == stored.as_uri()


def test_upload_is_idempotent_on_identity_not_bytes(registry, artifact_dirs):
    same, other = "a" * 64, "b" * 64
    first = registry.upload_version("m", artifact_dirs[0], identity=same)
    rerun = registry.upload_version("m", artifact_dirs[1], identity=same, aliases=["champion"])
    assert first.created and not rerun.created
    assert rerun.version.version_id == "1" and rerun.version.identity_sha256 == same
    assert rerun.version.artifact_sha256 == directory_sha256(artifact_dirs[0])  # what the server checks: stored bytes
    assert rerun.version.aliases == ("default",)  # an unchanged model changes nothing
    changed = registry.upload_version("m", artifact_dirs[2], identity=other)
    assert changed.created and changed.version.version_id == "2"
    # Bytes already registered are that version, whatever identity they come with.
    assert registry.upload_version("m", artifact_dirs[0], identity="c" * 64).version.version_id == "1"
    assert [v.identity_sha256 for v in registry.list_versions("m")] == [same, other]
    # Without an identity, the artifact's bytes are the identity.
    plain = registry.upload_version("n", artifact_dirs[0]).version
    assert plain.identity_sha256 == plain.artifact_sha256 == directory_sha256(artifact_dirs[0])
    with pytest.raises(RegistryRuleError, match=r"version identity 'ABC' is invalid: it must be a sha256 in hex"):
        registry.upload_version("m", artifact_dirs[0], identity="ABC")


# The versions table as registries were created before version identities.
_SCHEMA_BEFORE_IDENTITIES = """
CREATE TABLE models (
    model_id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    next_version_id INTEGER NOT NULL,
    create_time TEXT NOT NULL
);
CREATE TABLE versions (
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
    PRIMARY KEY (model_id, version_id),
    UNIQUE (model_id, artifact_sha256)
);
"""


def test_a_registry_file_from_before_identities_is_migrated_on_open(tmp_path, artifact_dirs):
    home = tmp_path / "home"
    home.mkdir()
    old_sha = directory_sha256(artifact_dirs[0])
    with sqlite3.connect(home / "registry.sqlite") as conn:
        conn.executescript(_SCHEMA_BEFORE_IDENTITIES)
        conn.execute("INSERT INTO models VALUES ('m', 'm', 2, '2024-01-01')")
        conn.execute(
            "INSERT INTO versions VALUES ('m', 1, 'm', '', '{}', 'file:///old', ?, NULL, '{}', '2024-01-01')",
            (old_sha,),
        )
    registry = LocalModelRegistry(home)
    assert registry.get_version("m", "1").identity_sha256 == old_sha  # backfilled from the artifact sha256
    retry = registry.upload_version("m", artifact_dirs[0])
    assert not retry.created and retry.version.version_id == "1"  # old rows still deduplicate
    assert not registry.upload_version("m", artifact_dirs[1], identity=old_sha).created
    new = registry.upload_version("m", artifact_dirs[1], identity="d" * 64)
    assert new.created and new.version.version_id == "2"
    LocalModelRegistry(home)  # opening a migrated file again changes nothing
    assert [v.identity_sha256 for v in registry.list_versions("m")] == [old_sha, "d" * 64]
    with sqlite3.connect(home / "registry.sqlite") as conn, pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        conn.execute(
            "INSERT INTO versions VALUES ('m', 3, 'm', '', '{}', 'file:///x', 'other', NULL, '{}', 'now', ?)",
            ("d" * 64,),
        )


def test_failed_registration_leaves_nothing(registry, artifact_dirs):
    registry.upload_version("m", artifact_dirs[0], aliases=["champion"])
    bad = EvaluationInput(SCHEMA, {"auRoc": float("nan")})
    with pytest.raises(RegistryRuleError, match="finite JSON"):
        registry.upload_version("m", artifact_dirs[1], aliases=["champion"], evaluation=bad)
    assert [v.version_id for v in registry.list_versions("m")] == ["1"]
    assert registry.get_version("m", "champion").version_id == "1"  # the alias did not move
    assert sorted(p.name for p in (registry.store / "m").iterdir()) == ["1"]
    assert not any((registry.store / ".staging").iterdir())
    ok = registry.upload_version("m", artifact_dirs[1], evaluation=EvaluationInput(SCHEMA, {"auRoc": 0.8}))
    assert ok.version.version_id == "2"  # the refused attempt used no id
    assert registry.list_evaluations("m", "2")[0].metrics == {"auRoc": 0.8}


def test_evaluations_and_lineage_are_stored(registry, artifact_dirs):
    v = registry.upload_version(
        "m", artifact_dirs[0], lineage={"pipeline_job": "job-1", "data_sha256": "ab"}, labels={"fleet": "churn"}
    ).version
    evaluation = registry.import_evaluation("m", v.version_id, EvaluationInput(SCHEMA, {"logLoss": 0.3}, "eval-1"))
    assert evaluation.resource_name.endswith(f"models/m@1/evaluations/{evaluation.evaluation_id}")
    assert registry.get_version("m").lineage == {"pipeline_job": "job-1", "data_sha256": "ab"}
    assert registry.list_models({"fleet": "churn"}) == ["m"]
    assert registry.list_models({"fleet": "other"}) == []
    with pytest.raises(RegistryRuleError, match="not a Vertex model evaluation schema"):
        registry.import_evaluation("m", "1", EvaluationInput("gs://mine/schema.yaml", {}))


def test_unknown_model_and_alias_name_what_exists(registry, artifact_dirs):
    with pytest.raises(NotFoundError, match="model 'ghost' is not in the registry"):
        registry.get_version("ghost")
    registry.upload_version("m", artifact_dirs[0])
    with pytest.raises(NotFoundError, match=r"has no version or alias 'champion'; it has versions 1 \(default\)"):
        registry.get_version("m", "champion")


def _upload_many(home: str, artifacts: list[str], alias: str) -> list[str]:
    registry = LocalModelRegistry(home)
    return [registry.upload_version("fleet-m", a, aliases=[alias]).version.version_id for a in artifacts]


def test_concurrent_writers_never_duplicate_versions_or_aliases(tmp_path):
    home = tmp_path / "home"
    LocalModelRegistry(home)
    artifacts = []
    for i in range(24):
        d = tmp_path / f"a{i}"
        d.mkdir()
        (d / "w.bin").write_bytes(i.to_bytes(2, "big") * 50)
        artifacts.append(str(d))
    jobs = [(str(home), artifacts[i::4], "champion") for i in range(4)]
    # Two workers also retry the same artifacts: idempotency under concurrency.
    jobs += [(str(home), artifacts[:6], "champion")]
    with multiprocessing.get_context("spawn").Pool(5) as pool:
        results = pool.starmap(_upload_many, jobs)
    registry = LocalModelRegistry(home)
    versions = registry.list_versions("fleet-m")
    assert sorted(int(v.version_id) for v in versions) == list(range(1, 25))
    assert len({v.artifact_sha256 for v in versions}) == 24
    conn = sqlite3.connect(Path(home) / "registry.sqlite")
    holders = conn.execute("SELECT alias, COUNT(*) FROM aliases GROUP BY alias").fetchall()
    assert dict(holders) == {"champion": 1, "default": 1}
    assert sum(len(r) for r in results) == 30


def test_opening_the_registry_does_not_wait_for_a_writer(registry, artifact_dirs):
    # Components, the server and the CLI open it while a shard's registration may hold the write lock.
    registry.upload_version("m", artifact_dirs[0])
    with closing(sqlite3.connect(registry.database, isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        opened = LocalModelRegistry(registry.home)  # waiting would last the busy timeout (60 s), then fail
        assert time.monotonic() - started < 5
        assert opened.get_version("m").version_id == "1"
        writer.execute("ROLLBACK")


_UPLOAD = """
import sys
from fleetops.platform.local.registry import LocalModelRegistry
LocalModelRegistry(sys.argv[1]).upload_version(sys.argv[2], sys.argv[3])
"""


def _upload_in_child(home: Path, model_id: str, artifact: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _UPLOAD, str(home), model_id, str(artifact)], cwd=ROOT)


def _staged(staging: Path) -> Path:
    """Wait until an upload has copied its artifact into staging; the folder it staged in."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = [p for p in staging.iterdir() if {"model.bin", "meta.json"} <= {f.name for f in p.rglob("*")}]
        if done:
            return done[0]
        time.sleep(0.01)
    raise AssertionError(f"nothing staged in 60 s: {sorted(staging.iterdir())}")


def test_opening_the_registry_sweeps_staging_left_by_a_killed_upload_but_not_a_live_one(registry, artifact_dirs):
    staging = registry.store / ".staging"
    (staging / "0d15ea5e").mkdir(parents=True)  # staged before staging locks existed
    with closing(sqlite3.connect(registry.database, isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")  # uploads stage their artifact, then wait here for the write lock
        killed = _upload_in_child(registry.home, "m", artifact_dirs[0])
        left = _staged(staging)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait() == -signal.SIGKILL
        assert left.exists()
        LocalModelRegistry(registry.home)
        assert list(staging.iterdir()) == []

        live = _upload_in_child(registry.home, "n", artifact_dirs[1])
        kept = _staged(staging)
        LocalModelRegistry(registry.home)
        assert sorted(p.name for p in staging.iterdir()) == [kept.name, f"{kept.name}.lock"]
        writer.execute("ROLLBACK")
    assert live.wait(timeout=60) == 0
    version = registry.get_version("n")
    assert directory_sha256(registry.artifact_path(version)) == directory_sha256(artifact_dirs[1])
    assert list(staging.iterdir()) == []  # a finished upload leaves no folder and no lock
    with pytest.raises(NotFoundError):
        registry.get_version("m")


def test_a_gbt_and_an_ensemble_artifact_are_stored_whole_and_found_again_by_identity(registry, kind_artifacts):
    """Real boosted trees and an ensemble (members under members/<name>/; tests/model_kinds.py)."""
    from fleetops.serving.predictor import Predictor
    from fleetops.training.artifact import read_metadata

    for kind, model_id in (("gbt", "trees"), ("ensemble", "mixed")):
        source = kind_artifacts[kind]
        identity = read_metadata(source)["identity_sha256"]
        bad = EvaluationInput(SCHEMA, {"auRoc": float("nan")})
        with pytest.raises(RegistryRuleError, match="finite JSON"):
            registry.upload_version(model_id, source, identity=identity, evaluation=bad)
        with pytest.raises(NotFoundError):
            registry.get_version(model_id)  # the refused upload left no version
        first = registry.upload_version(
            model_id, source, identity=identity, evaluation=EvaluationInput(SCHEMA, {"auRoc": 0.8})
        )
        stored = registry.artifact_path(first.version)
        assert first.version.artifact_sha256 == directory_sha256(source) == directory_sha256(stored)
        assert first.version.identity_sha256 == identity and first.version.version_id == "1"
        # The stored copy passes the serving tamper check and serves as the artifact's own runtime.
        assert Predictor.load(stored, first.version.artifact_sha256).runtime == {"gbt": "xgboost"}.get(kind, kind)
        again = registry.upload_version(model_id, source, identity=identity)
        assert not again.created and again.version.version_id == "1"
        assert len(registry.list_versions(model_id)) == 1
    members = registry.artifact_path(registry.get_version("mixed"))
    assert sorted(p.name for p in (members / "members").iterdir()) == ["gbt", "linear"]
