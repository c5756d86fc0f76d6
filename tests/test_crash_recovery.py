"""A run SIGKILLed between its register and deploy steps: the next run deploys the champion it left.

The register step commits the `champion` alias; the deploy step never runs. A
rerun trains a model that does not beat that champion, so nothing is promoted
again, and only a deploy that reconciles endpoints with the registry's champions
puts the champion on its endpoint. Real `fleetops run` processes, a real kill.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from fleetops.data.sample import SAMPLE_SPEC, make_churn
from fleetops.platform import connect, local_uri
from fleetops.spec import parse_spec

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _small_fleet(tmp_path: Path) -> Path:
    """Two segments in one shard, a linear model, three epochs: a run of about 20 seconds."""
    data = tmp_path / "churn.csv"
    make_churn(rows_per_segment=200, segments=2, seed=5).to_csv(data, index=False)
    base = parse_spec(SAMPLE_SPEC.format(source=data)).model_dump(mode="json")
    small = base | {
        "architectures": ["linear"],
        "training": base["training"] | {"epochs": 3, "hidden_units": [4]},
        "sharding": base["sharding"] | {"models_per_task": 2},
    }
    path = tmp_path / "fleet.json"  # JSON is YAML
    path.write_text(json.dumps(small))
    return path


def _registered_versions(database: Path) -> int:
    """Rows of the registry's versions table, read without writing (0 until it exists)."""
    if not database.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=0.1)) as conn:
            return conn.execute("SELECT COUNT(*) FROM versions").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is being created, or the file is locked
        return 0


def test_a_champion_registered_by_a_killed_run_is_deployed_by_the_next_run(tmp_path):
    spec, home = _small_fleet(tmp_path), tmp_path / "home"
    command = [sys.executable, "-m", "fleetops_cli.cli", "run", str(spec), "--home", str(home)]
    killed_log = tmp_path / "killed.log"
    with killed_log.open("w") as log:
        # Its own process group: the CLI, the kfp.local runner and the executing task all go.
        run = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while _registered_versions(home / "registry.sqlite") == 0:
            assert run.poll() is None, f"the run ended before registering:\n{killed_log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no version registered in 180 s"
            time.sleep(0.01)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()

    platform = connect(local_uri(home))
    models = platform.registry.list_models({"fleet": "churn"})
    assert models == ["churn-north", "churn-south"]  # one shard: one register transaction
    for model in models:
        assert platform.registry.get_version(model, "champion").aliases == ("champion", "default")
    assert not any(e.deployed_models for e in platform.endpoints.list())  # killed before its deploy step

    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]

    for model in models:
        champion = platform.registry.get_version(model, "champion")
        assert champion.version_id == "1"  # the rerun's model did not beat it
        endpoint = platform.endpoints.get(model)
        assert [(m.model_id, m.version_id) for m in endpoint.deployed_models] == [(model, "1")]
        assert list(endpoint.traffic_split.values()) == [100]
    [releases] = (home / "pipeline_root").glob("*/for-loop-*/deploy/releases")
    assert sorted((r["model_id"], r["version_id"], r["reconcile"]) for r in json.loads(releases.read_text())) == [
        ("churn-north", "1", True),
        ("churn-south", "1", True),
    ]
