"""Shared fixtures: small sample data, a valid fleet spec, a local twin home."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from fleetops.data.sample import SAMPLE_SPEC, make_churn  # noqa: E402
from fleetops.platform import connect, local_uri  # noqa: E402
from fleetops.spec import parse_spec  # noqa: E402


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
