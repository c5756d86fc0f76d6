"""Bias and fairness in evaluation: Vertex's bias metrics per slice against the rest, and the promotion gate.

The metrics are checked on small arrays computed by hand here (and against fairlearn's MetricFrame);
the gate through `evaluate_shard` / `register_shard` with a real trained model on the local twin.
"""

import shutil

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame, selection_rate, true_negative_rate
from sklearn.metrics import accuracy_score, recall_score

from fleetops import training_steps
from fleetops.data.sample import make_churn
from fleetops.data.split import SPLIT_COLUMN, TEST, with_splits
from fleetops.data.validation import segment_values
from fleetops.errors import NotFoundError, SpecError
from fleetops.evaluation import fairness as f
from fleetops.evaluation.report import evaluation_report, summarize
from fleetops.spec import parse_spec
from fleetops.training.segments import SEGMENT_COLUMN

# Slice "a" (6 rows) against the rest "b" (4 rows), binary, positive class 1.
GROUPS = np.array(["a"] * 6 + ["b"] * 4)
TRUTH = np.array([1, 1, 1, 0, 0, 0, 1, 0, 0, 0])
PREDICTED = np.array([1, 1, 0, 1, 1, 0, 1, 1, 0, 0])
# a: tp=2 fn=1 fp=2 tn=1; b: tp=1 fn=0 fp=1 tn=2.


def scores_of(predicted, k=2):
    """Probabilities whose argmax is `predicted`."""
    out = np.full((len(predicted), k), 0.1 / (k - 1))
    out[np.arange(len(predicted)), predicted] = 0.9
    return out


def report_of(task, groups, truth, scores, min_rows=1):
    return f.column_report(task, "g", f.counts(task, groups, truth, scores), min_rows)


def by_value(report):
    return {s["value"]: s for s in report["slices"]}


def test_binary_metrics_match_the_hand_computed_definitions():
    a = by_value(report_of(f.BINARY, GROUPS, TRUTH, scores_of(PREDICTED)))["a"]
    assert a["counts"] == {"tp": 2, "fp": 2, "fn": 1, "tn": 1}
    assert (a["rows"], a["rest_rows"]) == (6, 4)
    expected = {
        f.POPULATION: (6 - 4) / (6 + 4),
        f.DPPTL: 3 / 6 - 1 / 4,  # true positive labels
        f.DPPPL: 4 / 6 - 2 / 4,  # predicted positive labels
        f.ACCURACY: 3 / 6 - 3 / 4,
        f.RECALL: 2 / 3 - 1 / 1,
        f.SPECIFICITY: 1 / 3 - 2 / 3,
        f.ERROR_TYPES: 1 / 2 - 0 / 1,  # FN/FP
    }
    assert a["metrics"] == pytest.approx(expected) and a["undefined"] == {}
    # The rest's row is the same comparison the other way round: every difference changes sign.
    b = by_value(report_of(f.BINARY, GROUPS, TRUTH, scores_of(PREDICTED)))["b"]
    assert b["metrics"] == pytest.approx({k: -v for k, v in expected.items()})


def test_the_rates_are_fairlearns_metric_frame_by_group():
    rng = np.random.default_rng(0)
    groups = rng.choice(["x", "y", "z"], 400)
    truth = rng.integers(0, 2, 400)
    predicted = np.where(rng.random(400) < 0.7, truth, 1 - truth)
    report = by_value(report_of(f.BINARY, groups, truth, scores_of(predicted), min_rows=20))
    rates = {
        f.DPPPL: selection_rate,
        f.ACCURACY: accuracy_score,
        f.RECALL: recall_score,
        f.SPECIFICITY: true_negative_rate,
    }
    for value in ("x", "y", "z"):
        inside = groups == value
        frame = MetricFrame(metrics=rates, y_true=truth, y_pred=predicted, sensitive_features=inside)
        labels = MetricFrame(metrics=selection_rate, y_true=truth, y_pred=truth, sensitive_features=inside)
        for name in rates:
            difference = frame.by_group.loc[True, name] - frame.by_group.loc[False, name]
            assert report[value]["metrics"][name] == pytest.approx(difference)
        assert report[value]["metrics"][f.DPPTL] == pytest.approx(labels.by_group[True] - labels.by_group[False])


def test_a_column_with_one_value_has_no_rest_and_every_metric_is_undefined():
    [only] = report_of(f.BINARY, np.array(["a"] * 5), TRUTH[:5], scores_of(PREDICTED[:5]))["slices"]
    assert set(only["metrics"].values()) == {None}
    assert only["undefined"][f.RECALL] == (
        "recallDifference is undefined: column g has one value ('a') in the 5 test rows, "
        "so there is no rest to compare with"
    )
    assert set(only["undefined"]) == set(f.METRICS)


def test_a_rate_on_too_few_rows_is_undefined_with_the_counts():
    # 30 rows in "a" with 4 positives; 25 in "b" with 12 positives; the default rule (20).
    groups = np.array(["a"] * 30 + ["b"] * 25)
    truth = np.array([1] * 4 + [0] * 26 + [1] * 12 + [0] * 13)
    a = by_value(report_of(f.BINARY, groups, truth, scores_of(truth), min_rows=f.MIN_ROWS))["a"]
    assert a["metrics"][f.ACCURACY] == 0.0  # a real 0: both groups are predicted perfectly
    assert a["metrics"][f.DPPTL] == pytest.approx(4 / 30 - 12 / 25)
    assert a["metrics"][f.RECALL] is None
    assert a["undefined"][f.RECALL] == (
        "recallDifference is undefined: slice g=a has 4 true positive rows and the rest has 12 true positive rows "
        "(at least 20 needed)"
    )
    assert a["metrics"][f.SPECIFICITY] is None  # the rest has 13 negatives
    assert "the rest has 13 true negative rows (at least 20 needed)" in a["undefined"][f.SPECIFICITY]
    # A perfect model makes no false positive: FN/FP has no value, and says so.
    assert a["metrics"][f.ERROR_TYPES] is None
    assert a["undefined"][f.ERROR_TYPES] == (
        "differenceInRatioOfErrorTypes is undefined: FN/FP needs a false positive, and slice g=a has no false "
        "positive (30 rows) and the rest has no false positive (25 rows)"
    )


def test_multiclass_keeps_accuracy_and_regression_population_size_only():
    groups = np.array(["a"] * 3 + ["b"] * 2)
    truth = np.array([0, 1, 2, 2, 1])
    predicted = np.array([0, 1, 1, 2, 0])  # a: 2 of 3 right, b: 1 of 2
    a = by_value(report_of(f.MULTICLASS, groups, truth, scores_of(predicted, k=3)))["a"]
    assert a["counts"] == {"correct": 2, "wrong": 1}
    assert a["metrics"][f.ACCURACY] == pytest.approx(2 / 3 - 1 / 2)
    assert a["metrics"][f.POPULATION] == pytest.approx(1 / 5)
    assert a["metrics"][f.RECALL] is None
    assert a["undefined"][f.RECALL] == (
        "recallDifference is undefined: a multiclass model has no positive class (one-vs-rest per class is not "
        "computed)"
    )
    a = by_value(report_of(f.REGRESSION, groups, np.arange(5.0), np.arange(5.0)))["a"]
    assert a["counts"] == {"rows": 3} and a["metrics"][f.POPULATION] == pytest.approx(1 / 5)
    assert a["metrics"][f.ACCURACY] is None
    assert a["undefined"][f.ACCURACY] == "accuracyDifference is undefined: a regression model has no classes"


def test_fleet_wide_pools_every_segments_test_rows():
    frame = pd.DataFrame({"g": GROUPS})
    first = f.evaluate(f.BINARY, frame.iloc[:7], ["g"], TRUTH[:7], scores_of(PREDICTED[:7]), min_rows=1)
    second = f.evaluate(f.BINARY, frame.iloc[7:], ["g"], TRUTH[7:], scores_of(PREDICTED[7:]), min_rows=1)
    pooled = f.pool(f.BINARY, [first, second, None], min_rows=1)
    whole = f.evaluate(f.BINARY, frame, ["g"], TRUTH, scores_of(PREDICTED), min_rows=1)
    assert pooled["segments"] == 2
    assert pooled["columns"] == whole["columns"]


def test_gate_checks_every_value_and_skips_undefined_ones_with_the_reason():
    report = f.evaluate(f.BINARY, pd.DataFrame({"g": GROUPS}), ["g"], TRUTH, scores_of(PREDICTED), min_rows=4)
    gate = parse_spec(_spec_dict(fairness=[{"slice": "plan", "metric": "accuracyDifference", "max_abs": 0.2}]))
    gate = gate.evaluation.fairness[0].model_copy(update={"slice": "g"})
    a, b = f.check_gates(report, [gate])
    assert a["broken"] is True and a["measured"] == pytest.approx(-0.25)
    assert a["note"] == "accuracyDifference on g=a is -0.2500: |-0.2500| is above max_abs 0.2 (6 rows against 4)"
    assert b["broken"] is True and b["measured"] == pytest.approx(0.25)
    recall = gate.model_copy(update={"metric": "recallDifference"})
    [a, b] = f.check_gates(report, [recall])
    assert a["broken"] is None and a["measured"] is None  # the rest has 1 positive
    assert a["note"].startswith("recallDifference is undefined: slice g=a has 3 true positive rows and the rest")


def _spec_dict(**evaluation):
    from fleetops.data.sample import SAMPLE_SPEC

    base = parse_spec(SAMPLE_SPEC.format(source="x.csv")).model_dump(mode="json")
    return base | {"evaluation": base["evaluation"] | evaluation}


def test_spec_validation_names_the_field():
    gates = [
        {"slice": "plan", "metric": "recallDiff", "max_abs": 0.1},
        {"slice": "tenure_months", "metric": "recallDifference", "max_abs": 0.1},
        {"slice": "plan", "metric": "recallDifference", "max_abs": -1},
        {"slice": "plan", "metric": "recallDifference"},
    ]
    with pytest.raises(SpecError) as caught:
        parse_spec(_spec_dict(fairness=gates))
    message = str(caught.value)
    assert "evaluation.fairness.0.metric: unknown fairness metric; allowed: differenceInPopulationSize" in message
    assert "evaluation.fairness.2.max_abs" in message and "evaluation.fairness.3.max_abs: required" in message
    with pytest.raises(SpecError, match=r"evaluation.fairness.0.slice: 'tenure_months' must be a categorical"):
        parse_spec(_spec_dict(fairness=gates[1:2]))
    regression = _spec_dict(fairness=[{"slice": "plan", "metric": "recallDifference", "max_abs": 0.1}])
    regression |= {"task": "regression", "evaluation": regression["evaluation"] | {"primary_metric": None}}
    with pytest.raises(SpecError, match="fairness.0.metric: recallDifference is never defined for a regression"):
        parse_spec(regression)
    spec = parse_spec(_spec_dict(fairness=[{"slice": "contract", "metric": "recallDifference", "max_abs": 0.1}]))
    assert spec.evaluation.fairness_columns == ["plan", "contract"]


@pytest.fixture
def north(tmp_path, trained_models):
    """Segment north's split rows (enough for ~60 test rows a plan), its new model, and contract made constant."""
    base = parse_spec(_spec_dict())
    rows = make_churn(rows_per_segment=1200, segments=1, seed=3)
    rows = with_splits(rows, base.data.split, base.data.split_key)
    rows[SEGMENT_COLUMN] = segment_values(rows, base)
    rows["contract"] = "monthly"
    dataset = tmp_path / "dataset.parquet"
    rows.to_parquet(dataset, index=False)
    shutil.copytree(trained_models[0], tmp_path / "model" / "north")
    return dataset, tmp_path / "model", rows[rows[SPLIT_COLUMN] == TEST]


def test_a_model_that_breaks_a_gate_is_registered_but_not_champion(platform, north):
    dataset, model_dir, test = north
    gates = [
        {"slice": "plan", "metric": "accuracyDifference", "max_abs": 0.0},
        {"slice": "plan", "metric": "recallDifference", "max_abs": 1.0},
        {"slice": "contract", "metric": "differenceInPopulationSize", "max_abs": 0.5},
    ]
    spec = parse_spec(_spec_dict(fairness=gates, slice_columns=["plan", "contract"]))
    [evaluation] = training_steps.evaluate_shard(spec, platform, dataset, model_dir, ["north"])

    report = evaluation["fairness"]
    plan, contract = report["columns"]
    assert [s["value"] for s in plan["slices"]] == sorted(test["plan"].astype(str).unique())
    for s in plan["slices"]:
        assert s["rows"] == (test["plan"] == s["value"]).sum() and s["rest_rows"] == len(test) - s["rows"]
        assert s["rows"] >= f.MIN_ROWS and s["metrics"][f.ACCURACY] is not None
    [only] = contract["slices"]
    assert only["undefined"][f.POPULATION].endswith(
        f"has one value ('monthly') in the {len(test)} test rows, so there is no rest to compare with"
    )

    assert evaluation["promote"] is False
    assert evaluation["reason"].startswith(
        "not promoted: breaks the fairness gate (evaluation.fairness[0]: accuracyDifference on plan="
    )
    assert (
        "so the segment has no champion until a model passes (without the gate: the segment has no champion;"
        in evaluation["reason"]
    )
    broken = [g for g in report["gates"] if g["broken"]]
    assert {g["gate"] for g in broken} == {"evaluation.fairness[0]"}
    assert {g["gate"] for g in report["gates"] if g["broken"] is None} >= {"evaluation.fairness[2]"}

    markdown = evaluation_report([evaluation])
    assert "slice minus the rest; positive class '1')" in markdown
    assert "| plan | rows | rest | population | DPPTL | DPPPL | accuracy | recall | specificity | FN/FP |" in markdown
    assert "- evaluation.fairness[0]: **broken**: accuracyDifference on plan=" in markdown
    assert "- evaluation.fairness[2]: not checked: differenceInPopulationSize is undefined: column contract" in markdown
    assert "no rest to compare with" in markdown
    table = markdown.split("**Fairness**")[1].split("**Fairness gates**")[0]
    assert "| monthly | 176 | 0 | undefined | undefined |" in table.replace(str(len(test)), "176")
    assert " undefined: column contract has one value ('monthly')" in table

    [registered] = training_steps.register_shard(spec, platform, model_dir, [evaluation])
    assert registered["promoted"] is False and registered["reason"] == evaluation["reason"]
    assert registered["version_id"] == "1" and "champion" not in registered["aliases"]
    summary = summarize([registered])  # the run summary says why a model was kept from champion
    assert "## Kept from champion by a fairness gate (1)" in summary
    assert f"- north: {registered['reason']}" in summary
    with pytest.raises(NotFoundError):
        platform.registry.get_version("churn-north", "champion")

    # The same model within every gate takes the alias.
    gates[0]["max_abs"] = 1.0
    spec = parse_spec(_spec_dict(fairness=gates, slice_columns=["plan", "contract"]))
    [evaluation] = training_steps.evaluate_shard(spec, platform, dataset, model_dir, ["north"])
    assert evaluation["promote"] is True and "fairness" not in evaluation["reason"]
    assert [g["broken"] for g in evaluation["fairness"]["gates"] if g["gate"] == "evaluation.fairness[0]"] == [
        False
    ] * len(plan["slices"])


def test_the_report_pools_the_segments_fairness(tmp_path, platform, north):
    dataset, model_dir, test = north
    shutil.copytree(model_dir / "north", model_dir / "south")
    rows = pd.read_parquet(dataset)
    south = rows.assign(**{SEGMENT_COLUMN: "south", "region": "south"})
    pd.concat([rows, south]).to_parquet(dataset, index=False)
    spec = parse_spec(_spec_dict())
    evaluations = training_steps.evaluate_shard(spec, platform, dataset, model_dir, ["north", "south"])
    pooled = f.pool(spec.task.value, [e["fairness"] for e in evaluations])
    # The same model on the same rows twice: counts double, the rates stay, each rest doubles too.
    [plan] = pooled["columns"]
    [one] = evaluations[0]["fairness"]["columns"]
    assert [s["rows"] for s in plan["slices"]] == [2 * s["rows"] for s in one["slices"]]
    gained = 0
    for mine, fleet_wide in zip(one["slices"], plan["slices"], strict=True):
        for name, value in mine["metrics"].items():
            if value is not None:
                assert fleet_wide["metrics"][name] == pytest.approx(value)
            else:  # a rate short of rows in one segment may have enough pooled over the fleet
                gained += fleet_wide["metrics"][name] is not None
    assert gained > 0
    markdown = evaluation_report(evaluations)
    assert "## Fairness over all 2 segments (their test rows pooled)" in markdown


def test_a_segment_without_test_rows_reports_no_slices_and_its_gates_unchecked():
    report = f.evaluate(f.BINARY, pd.DataFrame({"g": []}), ["g"], None, None)
    assert report["columns"] == [{"column": "g", "rows": 0, "slices": []}]
    gate = parse_spec(_spec_dict(fairness=[{"slice": "plan", "metric": "accuracyDifference", "max_abs": 0.1}]))
    [check] = f.check_gates(report, [gate.evaluation.fairness[0].model_copy(update={"slice": "g"})])
    assert check["broken"] is None and check["note"] == "accuracyDifference on g: no test rows"
    assert "- g: no test rows" in f.markdown_lines(report | {"gates": [check]})


def test_the_reason_names_each_broken_gate_by_its_worst_value_and_the_champion_stays():
    report = f.evaluate(f.BINARY, pd.DataFrame({"plan": GROUPS}), ["plan"], TRUTH, scores_of(PREDICTED), min_rows=1)
    gates = [
        {"slice": "plan", "metric": "accuracyDifference", "max_abs": 0.1},  # a: -0.25, b: +0.25
        {"slice": "plan", "metric": "differenceInPopulationSize", "max_abs": 0.1},  # a: +0.2, b: -0.2
        {"slice": "plan", "metric": "recallDifference", "max_abs": 0.6},  # a: -1/3, b: +1/3: within
    ]
    spec = parse_spec(_spec_dict(fairness=gates))
    result = {"fairness": report, "promote": True, "reason": "new auRoc 0.9 beats champion v3", "champion_version": "3"}
    decided = training_steps._fairness_gate(spec, result)
    assert decided["promote"] is False
    assert decided["reason"] == (
        "not promoted: breaks the fairness gate (evaluation.fairness[0]: accuracyDifference on plan=a is -0.2500: "
        "|-0.2500| is above max_abs 0.1 (6 rows against 4), and 1 more value(s) of plan; evaluation.fairness[1]: "
        "differenceInPopulationSize on plan=a is +0.2000: |0.2000| is above max_abs 0.1 (6 rows against 4), and 1 "
        "more value(s) of plan), so champion v3 stays (without the gate: new auRoc 0.9 beats champion v3)"
    )
    assert [c["broken"] for c in decided["fairness"]["gates"]] == [True, True, True, True, False, False]
    # Not promoted anyway: the reason keeps the rule's words and adds the breach.
    kept = training_steps._fairness_gate(spec, result | {"promote": False, "reason": "new auRoc 0.8 does not beat v3"})
    assert "promote" not in kept
    assert kept["reason"].startswith("new auRoc 0.8 does not beat v3; it also breaks the fairness gate (")


def test_a_champion_stays_when_the_new_model_breaks_a_gate(platform, north, trained_models):
    dataset, model_dir, _ = north
    platform.registry.upload_version("churn-north", trained_models[1], aliases=["champion"])
    gates = [{"slice": "plan", "metric": "differenceInPopulationSize", "max_abs": 0.0}]
    spec = parse_spec(_spec_dict(fairness=gates))
    [evaluation] = training_steps.evaluate_shard(spec, platform, dataset, model_dir, ["north"])
    assert evaluation["promote"] is False and evaluation["champion_version"] == "1"
    assert (
        "breaks the fairness gate (evaluation.fairness[0]: differenceInPopulationSize on plan="
        in (evaluation["reason"])
    )
    [registered] = training_steps.register_shard(spec, platform, model_dir, [evaluation])
    assert registered["version_id"] == "2" and not registered["promoted"]
    assert platform.registry.get_version("churn-north", "champion").version_id == "1"
    assert registered["reason"] == evaluation["reason"]


@pytest.mark.parametrize("task", ["multiclass_classification", "regression"])
def test_other_tasks_through_evaluate_shard_say_which_metrics_they_define(tmp_path, platform, task):
    from fleetops.data.split import TRAIN, VALIDATION
    from fleetops.data.validation import coerce_features, statistics
    from fleetops.training.artifact import save_artifact
    from fleetops.training.model import fit_vocabularies
    from fleetops.training.segments import class_names, encode_labels
    from fleetops.training.trees import fit_trees

    # The plan (3 classes) from the charges, or the charges from the rest; contract is the sensitive column.
    label = "plan" if task.startswith("multiclass") else "monthly_charges"
    numeric = [c for c in ("tenure_months", "monthly_charges", "support_calls", "data_usage_gb") if c != label]
    categorical = [c for c in ("plan", "contract", "payment_method") if c != label]
    base = _spec_dict(primary_metric=None, slice_columns=["contract"])
    spec = parse_spec(
        base | {"task": task, "label": label, "features": {"numeric": numeric, "categorical": categorical}}
    )
    rows = make_churn(rows_per_segment=1200, segments=1, seed=3)
    rows = with_splits(rows, spec.data.split, spec.data.split_key)
    rows[SEGMENT_COLUMN] = segment_values(rows, spec)
    rows.to_parquet(tmp_path / "dataset.parquet", index=False)
    typed = coerce_features(rows, numeric, categorical)
    train, validation = typed[typed[SPLIT_COLUMN] == TRAIN], typed[typed[SPLIT_COLUMN] == VALIDATION]
    classes = class_names(typed[label]) if spec.task.is_classification else []
    model, _ = fit_trees(
        train,
        validation,
        encode_labels(train[label], classes),
        encode_labels(validation[label], classes),
        spec.task,
        numeric,
        categorical,
        fit_vocabularies(train, spec),
        spec.training,
        len(classes),
    )
    metadata = {
        "task": task,
        "features": {"numeric": numeric, "categorical": categorical},
        "classes": classes,
        "architecture": "gbt",
    }
    save_artifact(model, metadata, statistics(train, spec), tmp_path / "model" / "north")

    [evaluation] = training_steps.evaluate_shard(
        spec, platform, tmp_path / "dataset.parquet", tmp_path / "model", ["north"]
    )
    [contract] = evaluation["fairness"]["columns"]
    assert evaluation["fairness"]["positive_class"] is None
    for s in contract["slices"]:
        defined = {name for name, value in s["metrics"].items() if value is not None}
        assert defined == set(f.DEFINED[task])
        assert set(s["undefined"]) == set(f.METRICS) - defined
    report = evaluation_report([evaluation])
    no_class = "a regression model has no classes" if task == "regression" else "has no positive class"
    assert no_class in report
