"""Shared fixtures: small sample data, a valid fleet spec, a local twin home."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from fleetops.data.sample import SAMPLE_SPEC, make_churn  # noqa: E402
from fleetops.platform import connect, local_uri  # noqa: E402
from fleetops.spec import parse_spec  # noqa: E402
from fleetops_cli.child_server import free_port, start_child, wait_until_answering  # noqa: E402


@pytest.fixture
def churn():
    return make_churn(rows_per_segment=300, segments=2, seed=3)


@pytest.fixture
def churn_csv(tmp_path, churn) -> Path:
    path = tmp_path / "churn.csv"
    churn.to_csv(path, index=False)
    return path


@pytest.fixture
def spec(churn_csv):
    return parse_spec(SAMPLE_SPEC.format(source=churn_csv))


@pytest.fixture
def platform(tmp_path):
    return connect(local_uri(tmp_path / "home"))


@pytest.fixture
def artifact_dirs(tmp_path):
    """Three distinct small 'artifacts' (directories with different bytes)."""
    dirs = []
    for i in range(3):
        d = tmp_path / f"artifact{i}"
        (d / "sub").mkdir(parents=True)
        (d / "model.bin").write_bytes(bytes([i]) * 100)
        (d / "sub" / "meta.json").write_text(f'{{"i": {i}}}')
        dirs.append(d)
    return dirs


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory):
    """Two real Keras churn models (different seeds), trained once per test session."""
    from fleetops.data.split import with_splits
    from fleetops.data.validation import segment_values
    from fleetops.training.segments import SEGMENT_COLUMN, train_segment

    root = tmp_path_factory.mktemp("trained")
    df = make_churn(rows_per_segment=300, segments=1, seed=3)
    base = parse_spec(SAMPLE_SPEC.format(source="x.csv")).model_dump(mode="json")
    spec = parse_spec(base | {"architectures": ["linear"], "training": base["training"] | {"epochs": 3}})
    rows = with_splits(df, spec.data.split, spec.data.split_key)
    rows[SEGMENT_COLUMN] = segment_values(rows, spec)
    paths = []
    for seed in (1, 2):
        params = spec.training.model_copy(update={"seed": seed})
        paths.append(train_segment(rows, spec, "north", root / f"model{seed}", params=params).artifact_dir)
    return paths


@pytest.fixture(scope="session")
def kind_artifacts(tmp_path_factory, trained_models):
    """A gbt, an ensemble and a global_gbt artifact, trained once per session (see tests/model_kinds.py)."""
    from tests.model_kinds import build

    spec = parse_spec(SAMPLE_SPEC.format(source="x.csv"))
    churn = make_churn(rows_per_segment=300, segments=2, seed=3)
    return build(spec, churn, trained_models[0], tmp_path_factory.mktemp("kinds"))


class ServerProcess:
    """A fleetops server in a child process on a free loopback port.

    `fleetops serve --home HOME` by default; `command` replaces it (the port is given
    through `--port` or, for the serving container, AIP_HTTP_PORT).
    """

    def __init__(self, home, *extra, env=None, command=None, health="/health"):
        import sys
        import tempfile

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.health = health
        environment = {**os.environ, "FLEETOPS_SERVE_RELOAD_SECONDS": "0.2", "AIP_HTTP_PORT": str(self.port)}
        environment |= env or {}
        if command is None:
            command = ["serve", "--home", str(home), "--port", str(self.port), *extra]
        self.log = Path(tempfile.mkdtemp(prefix="fleetops-server-")) / "server.log"
        self.process = start_child(
            [sys.executable, "-m", "fleetops_cli.cli", *command],
            self.log,
            env=environment,
            cwd=Path(__file__).resolve().parents[1],
        )
        self.wait_until_up()

    def wait_until_up(self, seconds=60):
        wait_until_answering(f"{self.base}{self.health}", self.process, seconds, log=self.log)

    def output(self) -> str:
        """What the server has written to stdout and stderr so far."""
        return self.log.read_text(errors="replace")

    def request(self, method, path, body=None, headers=None):
        import json
        import urllib.error
        import urllib.request

        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def serve():
    servers = []

    def start(home, *extra, **options):
        server = ServerProcess(home, *extra, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
