import pytest

from fleetops.data.sample import SAMPLE_SPEC
from fleetops.errors import SpecError
from fleetops.spec import Task, duplicate_keys, load_spec, parse_spec


def test_sample_spec_is_valid():
    spec = parse_spec(SAMPLE_SPEC.format(source="x.csv"))
    assert spec.task is Task.BINARY
    assert spec.primary_metric == "auRoc" and spec.metric_goal == "maximize"
    assert spec.features.all[:2] == ["tenure_months", "monthly_charges"]


def test_every_problem_is_listed_with_field_and_value():
    text = """
name: Churn!
task: clustering
label: churned
data: {source: x.csv, segmnt_column: region}
features: {numeric: [a], categorical: [b]}
training: {epochs: zero}
"""
    with pytest.raises(SpecError) as caught:
        parse_spec(text)
    message = str(caught.value)
    assert "name:" in message and "'Churn!'" in message
    assert "task:" in message and "'clustering'" in message
    assert "data.segmnt_column: unknown field" in message
    assert "training.epochs" in message and "'zero'" in message
    assert len(caught.value.problems) == 4


def test_cross_field_rules():
    base = SAMPLE_SPEC.format(source="x.csv")
    with pytest.raises(SpecError, match="label 'churned' is also listed as a feature"):
        parse_spec(base.replace("categorical: [plan,", "categorical: [churned, plan,"))
    with pytest.raises(SpecError, match="primary_metric 'rSquared' is not a binary_classification metric"):
        parse_spec(base.replace("primary_metric: auRoc", "primary_metric: rSquared"))
    with pytest.raises(SpecError, match="sum to 1.0"):
        parse_spec(
            base.replace(
                "split_key: customer_id", "split_key: customer_id\n  split: {train: 0.9, validation: 0.2, test: 0.1}"
            )
        )


def test_not_a_mapping_and_bad_yaml():
    with pytest.raises(SpecError, match="must be a mapping"):
        parse_spec("- a\n- b\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        parse_spec("name: [unclosed")


def test_a_key_given_twice_is_refused_with_its_path_and_lines():
    text = SAMPLE_SPEC.format(source="x.csv")
    lines = text.splitlines()
    epochs = next(i for i, line in enumerate(lines) if line.strip().startswith("epochs:"))
    indent = lines[epochs][: len(lines[epochs]) - len(lines[epochs].lstrip())]
    lines.insert(epochs + 1, f"{indent}epochs: 50")
    lines.insert(1, "name: other")
    with pytest.raises(SpecError) as caught:
        parse_spec("\n".join(lines))
    message = str(caught.value)
    assert "training.epochs: given twice (lines" in message
    assert f"and {epochs + 3})" in message  # both insertions shift the second epochs to this line
    assert "name: given twice (lines 1 and 2)" in message
    # The same key in different mappings, and a mapping reused through an alias, are no duplicates.
    assert duplicate_keys("a: &shared {x: 1, y: 2}\nb: *shared\nc: {x: 3}\nd: [{x: 1}, {x: 2}]\n") == []
    assert duplicate_keys("d: [{x: 1, x: 2}]\n") == ["d.0.x: given twice (lines 1 and 1); keep one of them"]


def test_load_spec_resolves_relative_data_path(tmp_path):
    (tmp_path / "fleet.yaml").write_text(SAMPLE_SPEC.format(source="data/churn.csv"))
    spec = load_spec(tmp_path / "fleet.yaml")
    assert spec.data.source == str(tmp_path / "data" / "churn.csv")
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "missing.yaml")


def test_spec_round_trips_through_json():
    spec = parse_spec(SAMPLE_SPEC.format(source="x.csv"))
    assert parse_spec(spec.to_json()) == spec
    assert spec.fingerprint() == parse_spec(spec.to_json()).fingerprint()
