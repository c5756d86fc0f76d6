"""The fleet pass: every segment and feature at once, identical to the per-endpoint job; bad windows reported."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from fleetops.data.sample import make_churn
from fleetops.monitoring.compare import compare, distributions
from fleetops.monitoring.fleet import fleet_compare, fleet_distributions
from fleetops.monitoring.jobs import monitor_endpoint, monitor_fleet
from fleetops.serving.request_log import RequestLogWriter
from fleetops.spec import parse_spec

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
NUMERIC, CATEGORICAL = ["a", "b", "c", "d"], ["k", "n"]


def _messy_fleet(groups=40, seed=0):
    """Windows with what the log holds in practice: NaN, inf, a non-number, constants, ties, empty windows."""
    rng = np.random.default_rng(seed)
    frames = []
    for g in range(groups):
        n = 0 if g % 9 == 0 else int(rng.integers(1, 400))
        f = pd.DataFrame(
            {
                "a": rng.normal(g, 1 + g % 3, n),
                "b": rng.exponential(2, n).round(1),
                "c": np.full(n, 3.0),
                "d": rng.integers(0, 21, n),  # values on the bucket edges: np.histogram's one-ULP corrections
                "k": rng.choice(["x", "y", "z", "w"], n),
                "n": rng.integers(0, 5, n),
            }
        )
        f.loc[f.index[: n // 10], "a"] = np.nan
        f.loc[f.index[: n // 20], "k"] = None
        if g == 5:
            f["b"] = f["b"].astype(object)
            f.loc[f.index[0], "b"] = "oops"
        if g == 3:
            f.loc[f.index[1], "a"] = np.inf
        f["g"] = g
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def _baselines(groups, seed=1):
    rng = np.random.default_rng(seed)
    return [
        distributions(
            pd.DataFrame(
                {
                    "a": rng.normal(g, 1, 500),
                    "b": rng.exponential(2, 500),
                    "c": rng.normal(3, 0.1, 500) if g % 2 else np.full(500, 3.0),
                    "d": rng.integers(0, 31, 500),
                    "k": rng.choice(["x", "y", "z"], 500),
                    "n": rng.integers(0, 6, 500),
                }
            ),
            NUMERIC,
            CATEGORICAL,
        )
        for g in range(groups)
    ]


def test_fleet_pass_is_the_per_segment_job_value_for_value():
    frame, groups = _messy_fleet(), 40
    one_by_one = [distributions(frame[frame["g"] == g], NUMERIC, CATEGORICAL) for g in range(groups)]
    at_once = fleet_distributions(frame, frame["g"].to_numpy(), groups, NUMERIC, CATEGORICAL)
    assert at_once == one_by_one
    assert [list(s["features"]["k"]["values"]) for s in at_once] == [
        list(s["features"]["k"]["values"]) for s in one_by_one
    ]  # the same order too: the report's top values do not move
    baselines = _baselines(groups)
    expected = [
        compare(b, c, NUMERIC + CATEGORICAL, {"b": 0.2}, 0.3) for b, c in zip(baselines, one_by_one, strict=True)
    ]
    found = fleet_compare(baselines, at_once, NUMERIC + CATEGORICAL, {"b": 0.2}, 0.3)
    assert [[r.to_dict() for r in row] for row in found] == [[r.to_dict() for r in row] for row in expected]
    shuffled = frame.sample(frac=1.0, random_state=3)  # rows of all segments interleaved, as a shared log holds them
    assert fleet_distributions(shuffled, shuffled["g"].to_numpy(), groups, NUMERIC, []) == [
        distributions(shuffled[shuffled["g"] == g], NUMERIC, []) for g in range(groups)
    ]
    distances = [r.distance for row in found for r in row if r.distance is not None]
    assert len(distances) > 100 and len(set(distances)) > 50  # real distances were compared, not Nones


def test_bad_windows_are_reported_with_a_reason_never_a_silent_zero():
    frame = _messy_fleet(groups=3)
    frame = frame[frame["g"] != 0]  # group 0 is an empty window
    absent = [set(), {"b", "k"}, set()]  # group 1's requests never carried b nor k
    stats = fleet_distributions(frame, frame["g"].to_numpy(), 3, NUMERIC, CATEGORICAL, absent)
    [empty, missing, fine] = fleet_compare(_baselines(3), stats, NUMERIC + CATEGORICAL)
    assert all(r.distance is None and not r.anomaly for r in empty)
    assert all(r.note == "the serving window has no rows: nothing to compare" for r in empty)
    by_feature = {r.feature: r for r in missing}
    for name in ("b", "k"):
        assert by_feature[name].distance is None and by_feature[name].anomaly
        assert by_feature[name].note == f"feature {name!r} is absent from the serving data"
    assert by_feature["a"].distance is not None and not by_feature["a"].note
    assert all(r.distance is not None for r in fine)


# The twin: endpoints, their request log, the same reports as monitor_endpoint.

FEATURES = ["tenure_months", "monthly_charges", "support_calls", "data_usage_gb", "plan", "contract", "payment_method"]


@pytest.fixture
def fleet(platform, trained_models, spec):
    for name, model in [("north", trained_models[0]), ("south", trained_models[1]), ("east", None)]:
        endpoint = f"churn-{name}"
        platform.endpoints.create(endpoint, labels={"fleet": "churn", "segment": name}, request_logging_rate=1.0)
        if model is not None:
            platform.registry.upload_version(endpoint, model, aliases=["champion"])
            platform.endpoints.deploy(endpoint, endpoint, "champion")
    spec = parse_spec(spec.model_dump(mode="json") | {"monitoring": {"window_hours": 1.0, "min_rows": 50}})
    return platform, spec


def _log(platform, endpoint_id, rows, at, drop=()):
    writer = RequestLogWriter(platform.home)
    deployed = platform.endpoints.get(endpoint_id).deployed_models[0]
    columns = [f for f in FEATURES if f not in drop]
    instances = [{f: (None if v != v else v) for f, v in row.items()} for row in rows[columns].to_dict("records")]
    writer.log(endpoint_id, deployed, instances, [{}] * len(instances), at=at)
    writer.close()


def test_monitor_fleet_gives_each_endpoint_what_monitor_endpoint_gives(fleet):
    platform, spec = fleet
    normal = make_churn(rows_per_segment=300, segments=1, seed=21)
    shifted = normal.assign(tenure_months=normal["tenure_months"] + 60)
    _log(platform, "churn-north", normal.iloc[:150], T0 + timedelta(minutes=10))
    _log(platform, "churn-north", shifted.iloc[150:], T0 + timedelta(minutes=70))
    _log(platform, "churn-south", normal.iloc[:120], T0 + timedelta(minutes=70), drop=("plan", "support_calls"))
    now = T0 + timedelta(minutes=100)
    reports = monitor_fleet(spec, platform, platform.home, now=now)
    single = [monitor_endpoint(spec, platform, platform.home, r.endpoint_id, now=now) for r in reports]
    assert [r.to_dict() for r in reports] == [r.to_dict() for r in single]
    by_endpoint = {r.endpoint_id: r for r in reports}
    north, south, east = by_endpoint["churn-north"], by_endpoint["churn-south"], by_endpoint["churn-east"]
    assert "skew tenure_months" in north.anomalies and "drift tenure_months" in north.anomalies
    assert {"skew plan", "skew support_calls"} <= set(south.anomalies)
    assert {r.feature: r.note for r in south.skew}["plan"] == "feature 'plan' is absent from the serving data"
    assert "drift needs 50 rows in both windows (previous: 0)" in south.note
    assert east.note == "nothing is deployed on this endpoint" and east.skew == [] and east.drift == []
