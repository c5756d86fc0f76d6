import numpy as np
import pandas as pd
import pytest

from fleetops.data.sample import make_churn
from fleetops.data.sources import read_file, source_kind
from fleetops.data.split import SPLIT_COLUMN, assign_splits, with_splits
from fleetops.data.validation import numeric_statistics, statistics, validate
from fleetops.errors import UserError
from fleetops.spec import ShardingSpec
from fleetops.training_steps import ingest, plan_shards


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


def test_a_malformed_csv_line_fails_ingest_naming_the_file_and_line(spec, platform, churn_csv, tmp_path):
    # Training data is read whole or not at all: a line that does not split into the header's
    # columns (here one field short, which pandas padded with a null) is named, not trained on.
    lines = churn_csv.read_text().splitlines()
    lines[6] = lines[6].rsplit(",", 1)[0]
    churn_csv.write_text("\n".join(lines) + "\n")
    expected = f"CSV file '{churn_csv}' cannot be parsed: line 7 has 9 field(s), the header has 10: {lines[6]!r}"
    with pytest.raises(UserError) as raised:
        ingest(spec, platform, tmp_path / "raw.parquet")
    assert str(raised.value) == f"{expected} (1 malformed line(s) in all; the first is shown)"


def test_bad_csv_lines_are_numbered_as_an_editor_numbers_them(tmp_path):
    path = tmp_path / "rows.csv"
    text = 'id,note,n\r\n1,a,1\r\n\r\n2,b,2,2\r\n3,"two\r\nlines",3\r\n4,c\r\n"5\r\n6",d,5,6\r\n\r\n7,e\r\n8,f,8\r\n'
    path.write_bytes(text.encode())
    bad_lines = []
    frame = read_file(path, bad_lines)
    assert frame["id"].tolist() == [1, 3, 8] and frame["note"].tolist() == ["a", "two\r\nlines", "f"]
    editor = text.split("\r\n")
    assert [(b.line, b.fields, b.expected) for b in bad_lines] == [(4, 4, 3), (7, 2, 3), (8, 4, 3), (11, 2, 3)]
    assert [editor[b.line - 1] for b in bad_lines] == ["2,b,2,2", "4,c", '"5', "7,e"]


def test_csv_columns_are_typed_as_pandas_read_csv_typed_them(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text(",id,id,day,at,flag,note,n\n0,a,1,2024-01-31,10:00,True,,1\n1,b,2,2024-02-01,11:30,False,None,NA\n")
    pd.testing.assert_frame_equal(read_file(path), pd.read_csv(path))


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


def _with_policy(spec, policy="skip", fraction=0.1, **data):
    return spec.model_copy(
        update={
            "data": spec.data.model_copy(update=data),
            "segment_failures": spec.segment_failures.model_copy(
                update={"policy": policy, "max_failed_fraction": fraction}
            ),
        }
    )


def test_a_segment_problem_gets_the_failure_policy_not_a_failed_fleet(spec):
    churn = make_churn(rows_per_segment=200, segments=8, seed=3)
    tiny = churn[churn.region == "north"].head(1).assign(region="tiny")  # a segment of 1 row
    single = churn[churn.region == "south"].head(80).assign(region="one-class", churned=0)
    empty_feature = churn[churn.region == "east"].head(80).assign(region="no-usage", data_usage_gb=np.nan)
    df = pd.concat([churn, tiny, single, empty_feature], ignore_index=True)
    listed = [*sorted(df.region.unique()), "atlantis"]  # named in the spec, absent from the data

    report = validate(df, _with_policy(spec, "skip", 0.5, segments=listed))
    assert report.ok, report.problems
    assert report.skipped == {
        "atlantis": "has no rows in the data (named in data.segments; 11 segment(s) present)",
        "one-class": "has a single label value '0'; a classifier needs at least two",
        "tiny": "has 1 row(s); at least 50 are needed (data.min_rows_per_segment)",
    }
    assert "no-usage" in report.trainable and "north" in report.trainable and "tiny" not in report.trainable
    assert any("'data_usage_gb' is missing in every row of segment(s) no-usage" in w for w in report.warnings)
    assert "## Skipped segments (3)" in report.to_markdown()

    report = validate(df, _with_policy(spec, "skip", 0.1, segments=listed))  # 3 of 12 is more than 10%
    assert any("3 of 12 segment(s) (25%) cannot be trained, more than" in p for p in report.problems)

    report = validate(df, _with_policy(spec, "global", segments=listed))
    assert report.ok and set(report.fallback) == {"atlantis", "one-class", "tiny"} and not report.skipped

    report = validate(df, _with_policy(spec, "fail", segments=listed))
    assert "segment 'tiny' has 1 row(s); at least 50 are needed (data.min_rows_per_segment) " in report.problems[-1]
    assert len(report.problems) == 3


def test_a_segment_without_test_rows_is_a_segment_problem(spec):
    churn = make_churn(rows_per_segment=300, segments=2, seed=3)
    small = churn[churn.region == "north"].head(2).assign(region="small", churned=[0, 1])  # 2 rows, 3 splits
    report = validate(pd.concat([churn, small]), _with_policy(spec, "skip", 0.5, min_rows_per_segment=2))
    assert report.skipped["small"].startswith("has no ") and "rows after the split (train" in report.skipped["small"]


def test_ten_thousand_segments_validate_and_plan_in_one_pass(spec):
    df = make_churn(rows_per_segment=12, segments=10_000, seed=1)
    report = validate(df, _with_policy(spec, "skip", 1.0, min_rows_per_segment=10))
    assert len(report.segments) == 10_000 and report.ok
    shards = plan_shards(report.trainable, spec.sharding)
    assert len(shards) <= 100 and sum(len(s["segments"]) for s in shards) == len(report.trainable)
    assert len(report.to_markdown().splitlines()) < 200  # a readable report, not 10,000 lines


def test_shards_are_sized_by_work():
    sharding = ShardingSpec()
    rows = {f"s{i:04d}": 400 + i % 7 for i in range(1000)}
    shards = plan_shards(rows, sharding)
    assert len(shards) == 2 and abs(len(shards[0]["segments"]) - len(shards[1]["segments"])) < 10  # rows balanced
    assert len(plan_shards({k: rows[k] for k in list(rows)[:10]}, sharding)) == 2  # keep both task slots busy
    assert len(plan_shards({f"s{i}": 10 for i in range(20_000)}, sharding)) == 40  # at most 500 per task
    assert len(plan_shards({f"s{i}": 10 for i in range(200_000)}, sharding)) == 100  # Vertex's collection limit
    skewed = plan_shards({"big": 10_000, **{f"s{i:03d}": 100 for i in range(100)}}, sharding)
    assert ["big"] in [s["segments"] for s in skewed]  # similar sizes share a pack: the big one runs alone
    fixed = plan_shards(rows, ShardingSpec(models_per_task=1))
    assert len(fixed) == 100 and all(len(s["segments"]) == 10 for s in fixed)
    spread = plan_shards(rows, sharding, fallback={"tiny": "has 1 row(s)", "gone": "has no rows"})
    assert sorted(n for s in spread for n in s["fallback"]) == ["gone", "tiny"]
    assert spread[0]["fallback"] == {"gone": "has no rows"}
    with pytest.raises(UserError, match="no segments to train"):
        plan_shards({}, sharding)


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
