"""The champion rule when the primary metric is undefined on a segment's test split, and how it is reported.

Real models (the session's `trained_models`) scored on rows whose test split holds one
class, against the local twin's registry; no pipeline runs.
"""

import json
import shutil

import pytest

from fleetops import training_steps
from fleetops.data.sample import make_churn
from fleetops.data.split import SPLIT_COLUMN, TEST, with_splits
from fleetops.data.validation import segment_values
from fleetops.evaluation.report import evaluation_report, summarize
from fleetops.training.segments import SEGMENT_COLUMN
from fleetops_cli.cli import _registry_listing

ONE_CLASS = "auRoc is undefined: the test split of segment 'north' has only class '0'"


@pytest.fixture
def one_class_test(tmp_path, spec, trained_models):
    """A split dataset for segment 'north' whose test rows are all label 0, and a new model for it."""
    rows = make_churn(rows_per_segment=300, segments=1, seed=3)
    rows = with_splits(rows, spec.data.split, spec.data.split_key)
    rows[SEGMENT_COLUMN] = segment_values(rows, spec)
    rows.loc[rows[SPLIT_COLUMN] == TEST, spec.label] = 0
    dataset = tmp_path / "dataset.parquet"
    rows.to_parquet(dataset, index=False)
    shutil.copytree(trained_models[0], tmp_path / "model" / "north")
    return dataset, tmp_path / "model"


def test_without_a_champion_it_becomes_the_first_on_its_validation_metric(spec, platform, one_class_test, tmp_path):
    dataset, model_dir = one_class_test
    [evaluation] = training_steps.evaluate_shard(spec, platform, dataset, model_dir, ["north"])

    assert evaluation["metrics"]["auRoc"] is None and evaluation["metrics"]["auPrc"] is None
    assert evaluation["undefined"]["auRoc"].startswith(ONE_CLASS)
    assert evaluation["undefined"]["auPrc"].startswith("auPrc is undefined: the test split of segment 'north'")
    assert evaluation["promote"] is True
    assert evaluation["reason"].startswith(f"the segment has no champion and {ONE_CLASS}")
    assert "promoted as the first champion on validation auRoc 0." in evaluation["reason"]
    assert "and test logLoss 0." in evaluation["reason"]

    report = evaluation_report([evaluation])
    assert "| auRoc | undefined |" in report and "| auPrc | undefined |" in report
    assert f"- {ONE_CLASS}" in report and "promote: yes." in report
    # The one-class slices too. (Below, the fairness table's 0s are real: no positive label in any slice
    # makes DPPTL 0 - 0; recall, which needs positives, is undefined there.)
    metrics_part = report.split("**Fairness**")[0]
    assert "plan=" in metrics_part and "| 0.0000 |" not in metrics_part
    assert "recallDifference undefined: slice plan=basic has 0 true positive rows" in report

    [registered] = training_steps.register_shard(spec, platform, model_dir, [evaluation])
    assert registered["promoted"] and registered["value"] is None
    assert platform.registry.get_version("churn-north", "champion").version_id == registered["version_id"]
    summary = summarize([registered])
    assert "| north | churn-north | 1 | auRoc | undefined | none | v1 |" in summary
    assert "vNone" not in summary and "0.0000" not in summary
    assert f"- north: the segment has no champion and {ONE_CLASS}" in summary

    listing = _registry_listing(tmp_path / "home")
    assert "v1 [champion, default] auRoc undefined" in listing


def test_an_undefined_metric_does_not_unseat_a_champion(spec, platform, one_class_test, trained_models, tmp_path):
    dataset, model_dir = one_class_test
    platform.registry.upload_version(
        "churn-north", trained_models[1], aliases=["champion"], lineage={"primary_metric": "auRoc", "test_value": 0.8}
    )
    [evaluation] = training_steps.evaluate_shard(spec, platform, dataset, model_dir, ["north"])

    assert evaluation["promote"] is False
    assert evaluation["champion_version"] == "1" and evaluation["champion_value"] is None  # same rows, one class
    assert evaluation["reason"].startswith(f"not promoted: {ONE_CLASS}")
    assert evaluation["reason"].endswith("so nothing shows the new model beats champion v1, which stays champion")

    [registered] = training_steps.register_shard(spec, platform, model_dir, [evaluation])
    assert not registered["promoted"]
    assert platform.registry.get_version("churn-north", "champion").version_id == "1"
    summary = summarize([registered])
    assert "| north | churn-north | 2 | auRoc | undefined | v1 n/a | v1 |" in summary
    assert f"- north: not promoted: {ONE_CLASS}" in summary
    assert "vNone" not in summary and "0.0000" not in summary

    listing = _registry_listing(tmp_path / "home")
    assert "churn-north" in listing and "v1 [champion, default] auRoc 0.8000, v2 auRoc undefined" in listing


def test_without_any_defined_evidence_it_is_not_promoted_and_says_why(spec):
    metrics = {"auRoc": None, "auPrc": None, "logLoss": None}
    why = "auRoc is undefined: the test split of segment 'north' has only class '0' (45 rows)"
    promote, reason = training_steps._first_champion(spec, "the segment has no champion", metrics, why, {"auRoc": None})
    assert promote is False
    assert reason == (
        f"not promoted: {why}; validation auRoc and test logLoss are undefined too, so nothing shows the model "
        "works (the segment has no champion)"
    )
    row = {
        "segment": "north",
        "model_id": "churn-north",
        "version_id": "1",
        "promoted": False,
        "metric": "auRoc",
        "value": None,
        "champion_version": None,
        "champion_value": None,
        "reason": reason,
    }
    summary = summarize([row])
    assert "| north | churn-north | 1 | auRoc | undefined | none | none |" in summary
    assert "vNone" not in summary and f"- north: {reason}" in summary


def test_a_defined_metric_still_follows_the_margin_rule(spec):
    promote, reason = training_steps._challenge(spec, "3", 0.81, "", 0.805, "")
    assert not promote and reason == "new auRoc 0.8100 does not beat champion v3 0.8050 by more than 0.005"
    promote, reason = training_steps._first_champion(spec, "the segment has no champion", {"auRoc": 0.81}, "", {})
    assert promote and reason == "the segment has no champion; new auRoc 0.8100 makes it the first champion"


def test_a_champion_that_cannot_score_the_data_is_treated_as_no_champion(
    spec, platform, one_class_test, trained_models, tmp_path
):
    dataset, model_dir = one_class_test
    stale = shutil.copytree(trained_models[1], tmp_path / "stale")
    metadata = json.loads((stale / "metadata.json").read_text())
    metadata["features"]["numeric"].append("retired_feature")  # today's data no longer has it
    (stale / "metadata.json").write_text(json.dumps(metadata))
    platform.registry.upload_version("churn-north", stale, aliases=["champion"])

    [evaluation] = training_steps.evaluate_shard(spec, platform, dataset, model_dir, ["north"])
    assert evaluation["promote"] is True and evaluation["champion_value"] is None
    assert evaluation["reason"].startswith("champion v1 cannot score the current data: cannot score: columns")
    assert f"and {ONE_CLASS}" in evaluation["reason"] and "promoted as the first champion on" in evaluation["reason"]
