"""The sample generator at any fleet size, and `fleetops sample`."""

import hashlib
import math
import re

import numpy as np
import pandas as pd
import pytest

from fleetops.data.sample import MAX_SEGMENTS, REGIONS, make_churn, segment_name, write_sample
from fleetops.names import model_id
from fleetops.spec import load_spec
from fleetops_cli.cli import main


def _csv_sha256(frame: pd.DataFrame) -> str:
    return hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()


# SHA-256 of make_churn(...).to_csv(index=False) from the generator as it was before it grew past
# eight regions: tests, notebooks and the demo rely on exactly this data.
@pytest.mark.parametrize(
    "rows, segments, seed, sha256",
    [
        (600, 4, 7, "34b33d90c41e1d821d7882b6bd6d0cb25c3e5f41c2c10ff7d17fd463f6dd7af5"),
        (50, 8, 3, "54f6d1810998e52df5938d19c76b92973446f4c15e4fc54b64fee82d0de541c9"),
        (20, 1, 5, "832e796c4f0d7ee89dad6066e0b04ce46b0500eddbe68e4e2b4a02893b1a6bca"),
        (7, 8, 0, "e357452352c73a5ef79f7d4bef358433f44636f56c11538684582f7f0af248ee"),
    ],
)
def test_up_to_eight_segments_the_data_is_unchanged(rows, segments, seed, sha256):
    frame = make_churn(rows, segments, seed)
    assert _csv_sha256(frame) == sha256
    assert frame["payment_method"].dtype == object  # blanks stay None, as before


def test_any_number_of_segments_gets_distinct_sortable_id_safe_names():
    frame = make_churn(rows_per_segment=300, segments=50, seed=2)
    names = list(frame["region"].unique())
    assert names == [segment_name(i) for i in range(50)]
    assert names[:8] == list(REGIONS) and names[8:10] == ["region-00008", "region-00009"]
    assert sorted(names[8:]) == names[8:]  # zero-padded: sorting keeps position order
    assert segment_name(MAX_SEGMENTS - 1) == "region-99999"
    for name in names:
        assert model_id("churn", name) == f"churn-{name}"  # no hash suffix needed
        assert re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", model_id("churn", name))
    assert (frame.groupby("region", sort=False).size() == 300).all()
    assert frame["customer_id"].is_unique and len(frame) == 15_000
    # Each generated region has its own effects: its churn rate, and what drives churn, differ.
    generated = frame[frame["region"].isin(names[8:])].groupby("region")
    rates = generated["churned"].mean()
    assert rates.nunique() > 20 and rates.max() - rates.min() > 0.15
    support_effect = generated[["support_calls", "churned"]].corr().xs("churned", level=1)["support_calls"]
    assert support_effect.max() - support_effect.min() > 0.3
    assert 0.05 < frame["churned"].mean() < 0.4
    assert frame["data_usage_gb"].isna().any() and frame["payment_method"].isna().any()
    charges = frame.groupby("region")["monthly_charges"].mean()
    assert charges[names[8:]].between(35, 110).all()  # generated effects stay in the named ones' ranges
    assert list(frame.dtypes) == list(make_churn(300, 8, 2).dtypes)


def test_large_fleets_are_seeded():
    a, b = make_churn(5, 2_000, seed=11), make_churn(5, 2_000, seed=11)
    pd.testing.assert_frame_equal(a, b)
    assert not a["churned"].equals(make_churn(5, 2_000, seed=12)["churned"])
    assert a["region"].nunique() == 2_000 and a["region"].iloc[-1] == "region-01999"


def test_size_spread_varies_segment_sizes_and_is_off_by_default():
    sizes = make_churn(200, 60, seed=4, size_spread=0.5).groupby("region").size()
    assert sizes.nunique() > 30 and sizes.min() >= 1
    assert 120 < sizes.median() < 330  # lognormal around rows_per_segment
    named = make_churn(200, 3, seed=4, size_spread=0.5)
    assert named["region"].nunique() == 3 and named["customer_id"].is_unique
    assert make_churn(200, 3, seed=4, size_spread=0.0).equals(make_churn(200, 3, seed=4))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"segments": 0}, "segments must be between 1 and 100,000, got 0"),
        ({"segments": MAX_SEGMENTS + 1}, "segments must be between 1 and 100,000, got 100001"),
        ({"rows_per_segment": 0}, "rows_per_segment must be at least 1, got 0"),
        ({"size_spread": -0.1}, "size_spread must be between 0 and 2.0, got -0.1"),
        ({"size_spread": math.nan}, "size_spread must be between 0 and 2.0, got nan"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_churn(**kwargs)


def test_write_sample_checks_the_extension_first(tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.csv or \.parquet, got .*churn\.txt"):
        write_sample(tmp_path / "churn.txt", segments=MAX_SEGMENTS)
    path = write_sample(tmp_path / "deep" / "churn.parquet", rows_per_segment=10, segments=9, seed=1)
    assert len(pd.read_parquet(path)) == 90


def test_cli_writes_the_sample_and_a_spec_that_finds_it(tmp_path, capsys):
    data, spec_path = tmp_path / "data" / "churn.csv", tmp_path / "specs" / "fleet.yaml"
    argv = ["sample", str(data), "--segments", "12", "--rows", "30", "--seed", "3", "--spec", str(spec_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"wrote 360 rows, 12 segments to {data}" in out and f"fleetops run {spec_path}" in out
    written = pd.read_csv(data)
    assert len(written) == 360 and written["region"].nunique() == 12
    assert written["churned"].equals(make_churn(30, 12, 3)["churned"])
    spec = load_spec(spec_path)
    assert spec.data.source == str(data.resolve()) and spec.data.segment_column == "region"
    assert "../data/churn.csv" in spec_path.read_text()  # relative: the two folders can move together


def test_cli_sample_names_the_flag_at_fault(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "c.csv"), "--segments", "0"]) == 2
    assert "error: --segments must be between 1 and 100,000, got 0" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "c.csv"), "--rows", "-5"]) == 2
    assert "error: --rows must be at least 1, got -5" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "c.txt")]) == 2
    assert "must end in .csv or .parquet" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_generated_region_effects_do_not_depend_on_the_fleet_size():
    # Region sizes and effects come from streams of their own, by position: region-00008 is the
    # same kind of region in a fleet of 9 and of 30 (its customers differ, its churn drivers not).
    small = make_churn(3000, 9, seed=5)
    large = make_churn(3000, 30, seed=5)
    for frame in (small, large):
        assert frame.loc[frame["region"] == "region-00008", "monthly_charges"].size == 3000
    means = [f.loc[f["region"] == "region-00008", "monthly_charges"].mean() for f in (small, large)]
    assert np.isclose(*means, atol=1.0)
