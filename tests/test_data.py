import numpy as np
import pandas as pd
import pytest

from fleetops.data.sample import make_churn
from fleetops.data.sources import source_kind
from fleetops.data.split import SPLIT_COLUMN, assign_splits, with_splits
from fleetops.data.validation import numeric_statistics, statistics, validate
from fleetops.errors import UserError


def test_sample_data_is_seeded_and_realistic():
    a, b = make_churn(400, 3, seed=1), make_churn(400, 3, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert sorted(a["region"].unique()) == ["east", "north", "south"]
    assert 0.05 < a["churned"].mean() < 0.4  # imbalanced
    assert a["data_usage_gb"].isna().any() and a["payment_method"].isna().any()
    rates = a.groupby("region")["churned"].mean()
    assert rates.max() - rates.min() > 0.02  # segments differ


def test_source_kinds():
    assert source_kind("data/x.csv") == "file"
    assert source_kind("x.parquet") == "file"
    assert source_kind("  select * from t") == "sql"
    assert source_kind("WITH a AS (SELECT 1) SELECT * FROM a") == "sql"
    assert source_kind("bq://my-project.ds.table") == "table"
    with pytest.raises(UserError, match="bq://project.dataset.table"):
        source_kind("bq://nodots")
    with pytest.raises(UserError, match="is not understood"):
        source_kind("data.txt")


def test_local_platform_reads_files_sql_and_tables(platform, churn, churn_csv, tmp_path):
    assert len(platform.read_table(str(churn_csv))) == len(churn)
    parquet = tmp_path / "c.parquet"
    churn.to_parquet(parquet)
    assert len(platform.read_table(str(parquet))) == len(churn)
    north = platform.read_table(f"SELECT * FROM '{churn_csv}' WHERE region = 'north'")
    assert set(north["region"]) == {"north"}
    platform.write_table(churn, "bq://my-project.crm.churn")
    assert len(platform.read_table("bq://my-project.crm.churn")) == len(churn)
    with pytest.raises(UserError, match="failed in DuckDB"):
        platform.read_table("SELECT * FROM no_such_table")
    with pytest.raises(UserError, match="does not exist"):
        platform.read_table(str(tmp_path / "missing.csv"))


def test_split_is_deterministic_by_key_and_close_to_fractions(spec, churn):
    first = assign_splits(churn, spec.data.split, "customer_id")
    shuffled = churn.sample(frac=1, random_state=0)
    again = assign_splits(shuffled, spec.data.split, "customer_id")
    assert (first == again.reindex(first.index)).all()  # a row keeps its split whatever the order
    shares = first.value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.06 and abs(shares["test"] - 0.15) < 0.05
    assert set(with_splits(churn, spec.data.split)[SPLIT_COLUMN]) == {"train", "validation", "test"}
    with pytest.raises(UserError, match="split_key column 'nope'"):
        assign_splits(churn, spec.data.split, "nope")


def test_valid_data_passes(spec, churn):
    report = validate(churn, spec)
    assert report.ok, report.problems
    assert report.segments == {"north": 300, "south": 300}
    assert "passed" in report.to_markdown()


def test_every_data_problem_is_named(spec, churn):
    bad = churn.drop(columns=["contract"]).copy()
    report = validate(bad, spec)
    assert "column 'contract' (features.categorical) is missing from the data" in report.problems

    bad = churn.copy()
    bad["tenure_months"] = bad["tenure_months"].astype(object)
    bad.loc[5, "tenure_months"] = "ten"
    bad.loc[1, "churned"] = 2
    bad.loc[7, "region"] = None
    report = validate(bad, spec)
    text = "\n".join(report.problems)
    assert "numeric feature 'tenure_months' has non-numeric value 'ten' in 1 row(s) (first at row 5)" in text
    assert "label 'churned' has 3 distinct value(s) ['0', '1', '2']" in text
    assert "segment_column 'region' is empty in 1 row(s) (first at row 7)" in text
    assert "FAILED" in report.to_markdown()
    with pytest.raises(UserError, match="data validation found 3 problem"):
        report.raise_if_failed()


def test_empty_and_small_segments(spec, churn):
    listed = spec.model_copy(update={"data": spec.data.model_copy(update={"segments": ["north", "atlantis"]})})
    report = validate(churn, listed)
    assert any("segment 'atlantis' (data.segments) has no rows" in p for p in report.problems)
    small = pd.concat([churn, churn[churn.region == "north"].head(5).assign(region="tiny")])
    report = validate(small, spec)
    assert any("segment 'tiny' has 5 row(s); at least 50 are needed" in p for p in report.problems)


def test_numeric_statistics_are_tfdv_style():
    stats = numeric_statistics(pd.Series([0.0, 1.0, 2.0, np.nan, 10.0]))
    assert stats["missing"] == 1 and stats["count"] == 4
    assert stats["histogram"]["boundaries"][0] == 0.0 and stats["histogram"]["boundaries"][-1] == 10.0
    assert len(stats["histogram"]["counts"]) == 10 and sum(stats["histogram"]["counts"]) == 4
    constant = numeric_statistics(pd.Series([3.0, 3.0]))
    assert constant["histogram"] == {"boundaries": [3.0, 3.0], "counts": [2]}


def test_statistics_cover_features_and_label(spec, churn):
    stats = statistics(churn, spec)
    assert stats["rows"] == len(churn)
    assert stats["features"]["plan"]["type"] == "categorical"
    assert stats["features"]["payment_method"]["missing"] > 0
    assert set(stats["label"]["churned"]["values"]) == {"0", "1"}
