"""Vertex's skew/drift distances: hand-computed cases, scipy as an independent reference, TFDV's figures."""

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon

from fleetops.monitoring.compare import compare, distributions
from fleetops.monitoring.distance import histogram, jensen_shannon, l_infinity


def test_rebucketing_by_hand():
    # P: 4 in [0,2]; Q: 4 in [1,3]. Union segments [0,1],[1,2],[2,3]: p=(.5,.5,0), q=(0,.5,.5), m=(.25,.5,.25).
    p = {"boundaries": [0.0, 2.0], "counts": [4.0]}
    q = {"boundaries": [1.0, 3.0], "counts": [4.0]}
    assert jensen_shannon(p, q) == pytest.approx(0.5)


def test_same_boundaries_agree_with_scipy():
    rng = np.random.default_rng(1)
    for _ in range(20):
        p = {"boundaries": list(range(11)), "counts": rng.integers(0, 50, 10).astype(float).tolist()}
        q = {"boundaries": list(range(11)), "counts": rng.integers(1, 50, 10).astype(float).tolist()}
        assert jensen_shannon(p, q) == pytest.approx(jensenshannon(p["counts"], q["counts"], base=2) ** 2, abs=1e-12)


def test_the_documented_expectations():
    rng = np.random.default_rng(7)
    same = [jensen_shannon(histogram(rng.normal(size=20_000)), histogram(rng.normal(size=20_000))) for _ in range(10)]
    assert 0.005 < np.mean(same) < 0.03  # TFDV: about 0.015, from the tails' different min/max
    shifted = jensen_shannon(histogram(rng.normal(size=20_000)), histogram(rng.normal(0.7, 1.3, 20_000)))
    assert 0.07 < shifted < 0.12  # TFDV: about 0.10
    assert jensen_shannon(histogram(np.arange(100.0)), histogram(np.arange(100.0) + 1000)) == 1.0


def test_point_buckets_and_empty_sides():
    assert jensen_shannon(histogram(np.full(10, 3.0)), histogram(np.full(4, 3.0))) == 0.0
    assert jensen_shannon(histogram(np.full(10, 3.0)), histogram(np.full(4, 4.0))) == 1.0
    assert jensen_shannon(histogram(np.array([np.nan, np.nan])), histogram(np.arange(5.0))) is None
    assert histogram(np.array([1.0, np.nan, np.inf, 2.0]))["counts"] == [1.0] + [0.0] * 8 + [1.0]


def test_l_infinity_by_hand():
    assert l_infinity({"a": 2, "b": 2}, {"a": 1, "c": 3}) == pytest.approx(0.75)  # value c: |0 - 0.75|
    assert l_infinity({"a": 1}, {"a": 5}) == 0.0
    assert l_infinity({}, {"a": 1}) is None


def test_compare_reports_every_kind_of_problem():
    rng = np.random.default_rng(3)
    baseline_frame = pd.DataFrame(
        {"x": rng.normal(size=2000), "y": rng.normal(size=2000), "c": rng.choice(["a", "b"], 2000)}
    )
    baseline = distributions(baseline_frame, ["x", "y", "gone"], ["c"])
    current = pd.DataFrame(
        {"x": rng.normal(3, 1, 500), "y": [None] * 500, "c": rng.choice(["a", "b"], 500), "new": 1.0}
    )
    results = {
        r.feature: r
        for r in compare(baseline, distributions(current, ["x", "y", "new"], ["c"]), ["x", "y", "c", "new"])
    }
    assert results["x"].anomaly and results["x"].distance > 0.3 and results["x"].metric == "jensen_shannon"
    assert (
        results["y"].distance is None
        and results["y"].anomaly
        and "every value is missing in the serving window (missing rate 0% -> 100%)" in results["y"].note
    )
    assert not results["c"].anomaly and results["c"].metric == "l_infinity" and results["c"].distance < 0.1
    assert "is not in the baseline" in results["new"].note and not results["new"].anomaly

    typed = pd.DataFrame({"x": ["1.5", "abc"] * 50, "y": rng.normal(size=100), "c": ["a"] * 100})
    changed = {r.feature: r for r in compare(baseline, distributions(typed, ["x", "y"], ["c"]), ["x", "c"])}
    assert changed["x"].anomaly and "type changed" in changed["x"].note and "'abc'" in changed["x"].note
    assert changed["c"].distance == pytest.approx(0.5, abs=0.05)

    empty = compare(baseline, distributions(baseline_frame.iloc[:0], ["x"], ["c"]), ["x", "c"])
    assert all(r.distance is None and not r.anomaly and "no rows" in r.note for r in empty)
    with pytest.raises(ValueError, match="threshold 1.5 must be in"):
        compare(baseline, baseline, ["x"], default_threshold=1.5)


def test_thresholds_per_feature_alert_strictly_above():
    base = distributions(pd.DataFrame({"c": ["a"] * 5 + ["b"] * 5}), [], ["c"])
    cur = distributions(pd.DataFrame({"c": ["a"] * 8 + ["b"] * 2}), [], ["c"])
    [at] = compare(base, cur, ["c"], thresholds={"c": 0.3})
    assert at.distance == pytest.approx(0.3) and not at.anomaly  # equal to the threshold: no alert
    [below] = compare(base, cur, ["c"], thresholds={"c": 0.29})
    assert below.anomaly


def test_agrees_with_the_independent_reference():
    from benchmarks.drift_reference import reference_jsd, reference_linf

    rng = np.random.default_rng(11)
    for shift, spread in [(0.0, 1.0), (0.5, 1.2), (2.0, 0.5)]:
        a, b = rng.normal(size=3000), rng.normal(shift, spread, 2000)
        assert jensen_shannon(histogram(a), histogram(b)) == pytest.approx(reference_jsd(a, b), abs=1e-9)
    a, b = list(rng.choice(["x", "y", "z"], 500)), list(rng.choice(["x", "y", "w"], 300))
    base = distributions(pd.DataFrame({"c": a}), [], ["c"])["features"]["c"]["values"]
    cur = distributions(pd.DataFrame({"c": b}), [], ["c"])["features"]["c"]["values"]
    assert l_infinity(base, cur) == pytest.approx(reference_linf(a, b), abs=1e-12)


def test_a_value_on_an_inner_edge_is_counted_in_the_lower_bucket_as_tfdv_does():
    """Integer features (counts, ratings) sit on the edges: TFDV's [b0, b1], (b1, b2], ... not numpy's [b0, b1)."""
    from fleetops.data.validation import numeric_statistics

    ratings = np.array([0, 1, 1, 2, 3, 3, 3, 4, 5, 10], dtype=float)  # edges 0, 1, 2, ..., 10
    hist = histogram(ratings)
    assert hist["boundaries"] == [float(b) for b in range(11)]
    # 1 -> [0, 1]; 2 -> (1, 2]; 3 -> (2, 3]; 4 -> (3, 4]; 5 -> (4, 5]; 10 -> (9, 10]; 0 -> [0, 1] (the first is closed)
    assert hist["counts"] == [3.0, 1.0, 3.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert hist["counts"] != np.histogram(ratings, bins=10, range=(0, 10))[0].astype(float).tolist()
    # The training statistics (the skew baseline) use the very same histogram.
    assert numeric_statistics(pd.Series(ratings))["histogram"] == hist
    # And a shifted copy of the same integer data is no drift at all on TFDV's buckets.
    assert jensen_shannon(hist, histogram(ratings.copy())) == 0.0
