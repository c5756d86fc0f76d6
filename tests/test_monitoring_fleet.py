"""The fleet pass: every segment and feature at once, identical to the per-endpoint job; bad windows reported."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from fleetops.data.sample import make_churn
from fleetops.errors import UserError
from fleetops.monitoring.alerts import send_alerts
from fleetops.monitoring.calibrate import calibrate, calibration_tests, null_distances, p_value, reset_cache
from fleetops.monitoring.compare import compare, distributions
from fleetops.monitoring.fleet import (
    FleetStatistics,
    fleet_compare,
    fleet_distributions,
    fleet_findings,
    fleet_statistics,
    windows_distributions,
    windows_frame,
)
from fleetops.monitoring.jobs import monitor_endpoint, monitor_fleet
from fleetops.monitoring.report import render_markdown
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


def test_the_arrays_hold_every_distance_and_verdict_of_the_per_segment_job():
    """What alerts and the scorecard read (the arrays) is what the reports say, case by case."""
    frame, groups = _messy_fleet(seed=4), 40
    rng = np.random.default_rng(9)
    many = pd.DataFrame({"a": rng.normal(0, 1, 4000), "b": 1.0, "c": 3.0, "d": 1, "n": 2, "g": 7})
    many["k"] = [f"v{i}" for i in rng.integers(0, 1500, 4000)]  # more distinct values than the reports keep
    frame = pd.concat([frame, many], ignore_index=True)  # and segment 7's rows no longer one after the other
    baselines = _baselines(groups, seed=5)
    for b in baselines[::5]:
        del b["features"]["b"]  # a feature the model's statistics do not have: reported, never an alert
    baselines[3]["features"]["n"] = baselines[3]["features"]["a"]  # the baseline's type differs from the window's
    one_by_one = [distributions(frame[frame["g"] == g], NUMERIC, CATEGORICAL) for g in range(groups)]
    expected = [
        compare(b, c, NUMERIC + CATEGORICAL, {"k": 0.1}, 0.2) for b, c in zip(baselines, one_by_one, strict=True)
    ]
    stats = fleet_statistics(frame, frame["g"].to_numpy(), groups, NUMERIC, CATEGORICAL)
    for currents in (stats, FleetStatistics.from_dicts(one_by_one, NUMERIC + CATEGORICAL)):
        found = fleet_findings(baselines, currents, NUMERIC + CATEGORICAL, {"k": 0.1}, 0.2)
        assert found.anomaly.tolist() == [[r.anomaly for r in row] for row in expected]
        assert [[None if d != d else d for d in row] for row in found.distance.tolist()] == [
            [r.distance for r in row] for row in expected
        ]
        assert [[r.to_dict() for r in row] for row in found.results()] == [
            [r.to_dict() for r in row] for row in expected
        ]
    assert len(stats.to_dicts()[7]["features"]["k"]["values"]) == 1000
    assert found.anomaly.any() and not found.anomaly.all()
    assert {r.kind for row in expected for r in row} >= {"numeric", "categorical", "unknown"}


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


# The calibrated policy.


def test_policy_settings_are_validated(spec):
    base = spec.model_dump(mode="json")
    assert parse_spec(base).monitoring.policy == "fixed"  # Vertex's rule stays the default
    assert parse_spec(base | {"monitoring": {"policy": "calibrated", "alpha": 0.05}}).monitoring.alpha == 0.05
    for bad in (
        {"policy": "adaptive"},
        {"alpha": 0.0},
        {"alpha": 0.6},
        {"false_discovery_rate": 1.0},
        {"resamples": 5},
    ):
        with pytest.raises(UserError):
            parse_spec(base | {"monitoring": bad})


def test_p_values_have_the_plus_one_correction_and_resamples_are_seeded_and_cached():
    expected = np.array([50.0, 30, 20])
    null = null_distances("jensen_shannon", expected, 200, 999, seed=4)
    assert null_distances("jensen_shannon", expected, 200, 999, seed=4) is null  # cached per baseline and size
    reset_cache()
    assert np.array_equal(null_distances("jensen_shannon", expected, 200, 999, seed=4), null)  # seeded
    assert not np.array_equal(null_distances("jensen_shannon", expected, 50, 999, seed=4), null)
    assert p_value(0.0, null) == 1.0
    assert p_value(float(null[-1]), null) == 2 / 1000  # the largest resample itself: (1 + 1) / (B + 1)
    assert 0 < p_value(float(null[-1]) * 3, null) <= 1 / 1000  # beyond every resample: the fitted tail
    assert 0.4 < p_value(float(np.median(null)), null) < 0.6


def _synthetic_fleet(segments, sizes, drift=()):
    rng = np.random.default_rng(8)
    baselines = []
    for s in range(segments):
        training = pd.DataFrame(
            {"a": rng.normal(s, 1, 5000), "b": rng.gamma(2, 1, 5000), "k": rng.choice(["x", "y", "z"], 5000)}
        )
        baselines.append(distributions(training, ["a", "b"], ["k"]))
    windows = []
    for s, n in enumerate(sizes):
        window = pd.DataFrame({"a": rng.normal(s, 1, n), "b": rng.gamma(2, 1, n), "k": rng.choice(["x", "y", "z"], n)})
        if s in drift:
            window["a"] += 1.0
        windows.append(window)
    return baselines, windows


def _judge(baselines, windows, threshold=0.3, policy="calibrated"):
    frame, groups, _ = windows_frame(windows, ["a", "b", "k"])
    currents = windows_distributions(windows, ["a", "b"], ["k"])
    found = fleet_compare(baselines, currents, ["a", "b", "k"], {}, threshold)
    if policy == "calibrated":
        calibrate(calibration_tests(found, baselines, currents, frame, groups, ["a", "b"]), 0.01, 0.05, 999, 0)
    return found


def test_calibrated_is_quiet_on_small_windows_where_a_fixed_threshold_alerts_and_finds_real_drift():
    sizes = [40, 60, 80, 100, 150, 200, 300, 500, 1000, 2000] * 3
    baselines, windows = _synthetic_fleet(len(sizes), sizes, drift={4, 17})
    fixed = _judge(baselines, windows, threshold=0.05, policy="fixed")
    noisy = [s for s, row in enumerate(fixed) if any(r.anomaly for r in row) and s not in {4, 17}]
    assert len(noisy) >= 5  # a threshold low enough to matter alerts on the noise of small windows
    calibrated = _judge(baselines, windows)
    alerting = {s for s, row in enumerate(calibrated) if any(r.anomaly for r in row)}
    assert alerting == {4, 17}
    [shifted] = [r for r in calibrated[17] if r.anomaly]
    assert shifted.feature == "a" and shifted.policy == "calibrated" and shifted.p_value < 1e-4
    low, high = shifted.no_drift_range
    assert 0 <= low < high < shifted.distance and shifted.threshold == high
    quiet = calibrated[0][0]
    assert quiet.policy == "calibrated" and quiet.p_value > 1e-3 and quiet.distance <= 1.0
    assert calibrated[0][0].no_drift_range[1] > calibrated[9][0].no_drift_range[1]  # 40 rows vary more than 2,000


def test_calibrated_keeps_the_other_reasons_to_alert_and_reports_empty_windows():
    sizes = [300, 300, 0]
    baselines, windows = _synthetic_fleet(3, sizes)
    windows[1] = windows[1].drop(columns=["k"])
    found = _judge(baselines, windows)
    assert not any(r.anomaly for r in found[0])
    [absent] = [r for r in found[1] if r.feature == "k"]
    assert absent.anomaly and absent.note == "feature 'k' is absent from the serving data" and absent.p_value is None
    assert all(r.distance is None and not r.anomaly and "no rows" in r.note for r in found[2])


def test_monitor_fleet_under_the_calibrated_policy_reports_range_and_policy(fleet):
    platform, spec = fleet
    spec = parse_spec(
        spec.model_dump(mode="json") | {"monitoring": {"window_hours": 1.0, "min_rows": 50, "policy": "calibrated"}}
    )
    normal = make_churn(rows_per_segment=300, segments=1, seed=21)
    _log(platform, "churn-north", normal.assign(tenure_months=normal["tenure_months"] + 60), T0 + timedelta(minutes=70))
    _log(platform, "churn-south", normal.iloc[:120], T0 + timedelta(minutes=70), drop=("plan",))
    reports = {r.endpoint_id: r for r in monitor_fleet(spec, platform, platform.home, now=T0 + timedelta(minutes=100))}
    north, south = reports["churn-north"], reports["churn-south"]
    assert "skew tenure_months" in north.anomalies and "skew plan" in south.anomalies
    tenure = {r.feature: r for r in north.skew}["tenure_months"].to_dict()
    assert tenure["policy"] == "calibrated" and tenure["distance"] > tenure["no_drift_range"][1]
    markdown = render_markdown("churn", list(reports.values()))
    assert "| north | skew tenure_months |" in markdown and "| calibrated |" in markdown
    alone = monitor_endpoint(spec, platform, platform.home, "churn-north", now=T0 + timedelta(minutes=100))
    assert "skew tenure_months" in alone.anomalies and {r.policy for r in alone.skew} == {"calibrated"}
    [alert] = [a for a in send_alerts("churn", [north]) if a["segment"] == "north"]
    detail = {d["finding"]: d for d in alert["details"]}["skew tenure_months"]
    assert detail["policy"] == "calibrated" and len(detail["no_drift_range"]) == 2
