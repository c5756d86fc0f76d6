"""Hyperparameter tuning: Vertex's parameter rules, local Optuna trials as processes, failures, resume.

Tuning on Vertex (a HyperparameterTuningJob through the stand-in) is tests/test_tuning_vertex.py.
"""

import json

import optuna
import pytest
import yaml

from fleetops import training_steps
from fleetops.data.sample import SAMPLE_SPEC, write_sample
from fleetops.errors import SpecError, UserError
from fleetops.evaluation.report import evaluation_report
from fleetops.platform import connect, local_uri
from fleetops.spec import parse_spec
from fleetops.tuning.adapter import apply_parameters
from fleetops.tuning.local import study_name, trainer_flags, tune_segment


def _spec(source, **tuning):
    base = yaml.safe_load(SAMPLE_SPEC.format(source=source))
    base["training"] |= {"epochs": 3}
    base["tuning"] = {"enabled": True, "max_trial_count": 3, "parallel_trial_count": 2, **tuning}
    return parse_spec(base)


def _with_trials(spec, max_trial_count):
    """The same study with a bigger budget (a rerun resumes it)."""
    tuning = spec.tuning.model_dump(mode="json") | {"max_trial_count": max_trial_count}
    return parse_spec(spec.model_dump(mode="json") | {"tuning": tuning})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    work = tmp_path_factory.mktemp("tuning")
    data = write_sample(work / "churn.csv", rows_per_segment=300, segments=1, seed=2)
    spec = _spec(data, parameters={"learning_rate": {"type": "double", "min": 0.001, "max": 0.1}})
    training_steps.ingest(spec, connect(local_uri(work / "home")), work / "raw.parquet")
    training_steps.split_dataset(spec, work / "raw.parquet", work / "dataset.parquet")
    return data, work / "dataset.parquet"


@pytest.mark.parametrize(
    "tuning, message",
    [
        (
            {"algorithm": "grid", "parameters": {"dropout": {"type": "double", "min": 0, "max": 0.5}}},
            "grid search cannot enumerate double parameter(s) ['dropout']",
        ),
        (
            {"parameters": {"learning_rate": {"type": "double", "min": 0, "max": 0.1, "scale": "log"}}},
            "a log scale needs min > 0, got 0",
        ),
        (
            {"parameters": {"momentum": {"type": "double", "min": 0, "max": 1}}},
            "parameters ['momentum'] are not trainer flags",
        ),
        ({"parameters": {"batch_size": {"type": "discrete", "values": ["big"]}}}, "discrete values must be numbers"),
        ({"parameters": {"epochs": {"type": "integer", "min": 5, "max": 5}}}, "min 5 must be below max 5"),
        ({"parameters": {}}, "tuning is enabled but declares no parameters"),
        (
            {"metric": "rSquared", "parameters": {"epochs": {"type": "integer", "min": 1, "max": 3}}},
            "tuning.metric 'rSquared' is not a binary_classification metric",
        ),
    ],
)
def test_vertex_parameter_rules_name_the_parameter(tuning, message):
    with pytest.raises(
        SpecError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")
    ):
        _spec("x.csv", **tuning)


def test_flags_and_applied_parameters():
    assert trainer_flags({"batch_size": 64.0, "learning_rate": 0.01, "hidden_units": "16,8"}) == [
        "--batch-size",
        "64",
        "--hidden-units",
        "16,8",
        "--learning-rate",
        "0.01",
    ]
    spec = _spec("x.csv", parameters={"epochs": {"type": "integer", "min": 1, "max": 3}})
    params, architectures = apply_parameters(spec, {"hidden_units": "12,4", "architecture": "linear", "epochs": 2.0})
    assert params.hidden_units == [12, 4] and params.epochs == 2 and [a.value for a in architectures] == ["linear"]


def test_failed_trials_are_recorded_and_the_study_goes_on(dataset, tmp_path):
    data, path = dataset
    # hidden_units "0" is refused by the trainer: that trial fails, the others run.
    spec = _spec(
        data,
        algorithm="grid",
        max_trial_count=3,
        max_failed_trial_count=1,
        parameters={
            "hidden_units": {"type": "categorical", "values": ["8", "0", "4"]},
            "architecture": {"type": "categorical", "values": ["dnn"]},
        },
    )
    (tmp_path / "spec.json").write_text(spec.to_json())
    result = tune_segment(spec, tmp_path / "spec.json", path, "north", tmp_path / "study", log=lambda *_: None)
    states = {t.parameters["hidden_units"]: t.state for t in result.trials}
    assert states == {"8": "SUCCEEDED", "0": "FAILED", "4": "SUCCEEDED"}
    failed = next(t for t in result.trials if t.state == "FAILED")
    assert "hidden_units" in failed.error and failed.seconds > 0
    assert result.best_parameters["hidden_units"] in {"8", "4"} and result.goal == "maximize"
    assert all(t.metric == "auRoc" for t in result.trials)

    strict = _spec(
        data,
        algorithm="grid",
        max_trial_count=3,
        max_failed_trial_count=1,
        parameters={
            "hidden_units": {"type": "categorical", "values": ["0", "-1", "8"]},
            "architecture": {"type": "categorical", "values": ["dnn"]},
        },
    )
    (tmp_path / "strict.json").write_text(strict.to_json())
    with pytest.raises(UserError, match="over max_failed_trial_count 1"):
        tune_segment(strict, tmp_path / "strict.json", path, "north", tmp_path / "strict", log=lambda *_: None)


def test_an_interrupted_study_resumes_without_repeating_finished_trials(dataset, tmp_path):
    data, path = dataset
    spec = _spec(
        data,
        max_trial_count=2,
        parallel_trial_count=1,
        parameters={
            "learning_rate": {"type": "double", "min": 0.001, "max": 0.1, "scale": "log"},
            "architecture": {"type": "categorical", "values": ["linear"]},
        },
    )
    (tmp_path / "spec.json").write_text(spec.to_json())
    first = tune_segment(spec, tmp_path / "spec.json", path, "north", tmp_path / "study", log=lambda *_: None)
    assert len(first.trials) == 2
    # A run that died mid-trial leaves a RUNNING trial behind.
    study = optuna.load_study(
        study_name=study_name(spec, "north"), storage=f"sqlite:///{tmp_path / 'study' / 'study.sqlite3'}"
    )
    study.ask(
        {
            "learning_rate": optuna.distributions.FloatDistribution(0.001, 0.1, log=True),
            "architecture": optuna.distributions.CategoricalDistribution(["linear"]),
        }
    )
    more = _with_trials(spec, 3)
    assert study_name(more, "north") == study_name(spec, "north")  # a bigger budget is the same study
    ran = []
    resumed = tune_segment(more, tmp_path / "spec.json", path, "north", tmp_path / "study", log=ran.append)
    assert len(ran) == 1  # only the missing trial ran
    assert [t.trial_id for t in resumed.trials[:2]] == [t.trial_id for t in first.trials]
    assert len(resumed.trials) == 3


def test_training_tunes_first_and_records_the_trials(dataset, tmp_path, platform):
    from fleetops.training.artifact import read_metadata
    from fleetops.training.segments import train_shard

    data, path = dataset
    spec = _spec(
        data,
        max_trial_count=2,
        parameters={
            "learning_rate": {"type": "double", "min": 0.005, "max": 0.05, "scale": "log"},
            "architecture": {"type": "categorical", "values": ["linear", "dnn"]},
        },
    )
    with pytest.raises(UserError, match="pass tuner=platform.tune"):
        train_shard(path, spec, ["north"], tmp_path / "untuned", log=lambda *_: None)
    [result] = train_shard(path, spec, ["north"], tmp_path / "model", log=lambda *_: None, tuner=platform.tune).results
    assert list((platform.home / "tuning" / "north").glob("study.sqlite3"))  # the study is the platform's
    assert not list((tmp_path / "model").rglob("*.sqlite3"))  # never in the model folder
    tuning = read_metadata(result.artifact_dir)["tuning"]
    assert tuning["scope"] == "per_segment" and len(tuning["trials"]) == 2
    assert result.architecture == tuning["best_parameters"]["architecture"]
    assert (
        read_metadata(result.artifact_dir)["hyperparameters"]["learning_rate"]
        == tuning["best_parameters"]["learning_rate"]
    )
    evaluations = training_steps.evaluate_shard(spec, platform, path, tmp_path / "model", ["north"])
    assert len(evaluations[0]["tuning"]["trials"]) == 2  # the trials, in the evaluation output
    report = evaluation_report(evaluations)
    assert (
        "**Tuning** (per_segment)" in report
        and "| trial | state | auRoc | seconds | architecture | learning_rate |" in report
    )
    [registered] = training_steps.register_shard(spec, platform, tmp_path / "model", evaluations)
    lineage = platform.registry.get_version("churn-north", registered["version_id"]).lineage
    assert lineage["tuning"]["trials"] == 2 and lineage["tuning"]["best_parameters"] == tuning["best_parameters"]


def test_gbt_hyperparameters_are_tuned_like_the_others(dataset, tmp_path):
    """Trials are the trainer run as a process with gbt flags; the study keeps the best depth and rate."""
    data, path = dataset
    spec = _spec(
        data,
        algorithm="grid",
        max_trial_count=4,
        parameters={
            "max_depth": {"type": "discrete", "values": [2, 5]},
            "tree_learning_rate": {"type": "discrete", "values": [0.05, 0.3]},
            "architecture": {"type": "categorical", "values": ["gbt"]},
        },
    )
    (tmp_path / "spec.json").write_text(spec.to_json())
    result = tune_segment(spec, tmp_path / "spec.json", path, "north", tmp_path / "study", log=lambda *_: None)
    assert sorted((t.parameters["max_depth"], t.parameters["tree_learning_rate"]) for t in result.trials) == [
        (2, 0.05),
        (2, 0.3),
        (5, 0.05),
        (5, 0.3),
    ]
    assert all(t.state == "SUCCEEDED" and t.metric == "auRoc" for t in result.trials)
    best = max(result.trials, key=lambda t: t.value)
    assert result.best_parameters == best.parameters


def test_the_local_twin_keeps_work_folders_under_its_home(platform):
    assert platform.work_folder("tuning") == platform.home / "tuning" and (platform.home / "tuning").is_dir()
    for purpose in ("../elsewhere", "a/b", "", ".hidden", "Tuning", "x" * 64, None):
        with pytest.raises(UserError, match=f"work folder purpose {purpose!r} must be a simple folder name"):
            platform.work_folder(purpose)
    with pytest.raises(UserError, match="work folder purpose 'models' names a folder the local twin keeps"):
        platform.work_folder("models")


def test_local_tuning_resumes_from_the_platforms_work_folder(dataset, tmp_path):
    data, path = dataset
    spec = _spec(
        data,
        max_trial_count=1,
        parallel_trial_count=1,
        parameters={
            "learning_rate": {"type": "double", "min": 0.001, "max": 0.1, "scale": "log"},
            "architecture": {"type": "categorical", "values": ["linear"]},
        },
    )
    first = connect(local_uri(tmp_path / "home")).tune(spec, path, "north", log=lambda *_: None)
    assert first["scope"] == "per_segment" and first["metric"] == "auRoc" and len(first["trials"]) == 1
    assert (tmp_path / "home" / "tuning" / "north" / "study.sqlite3").is_file()
    more = _with_trials(spec, 2)
    ran = []
    again = connect(local_uri(tmp_path / "home")).tune(more, path, "north", log=ran.append)  # another process
    assert len(ran) == 1 and [t["trial_id"] for t in again["trials"]] == ["1", "2"]
    assert again["trials"][0] == first["trials"][0]


def test_the_fleet_tune_step_tunes_the_largest_segment_in_the_twins_work_folder(dataset, tmp_path):
    from kfp.dsl import Artifact, Dataset

    from components.tuning import tune

    data, path = dataset
    spec = _spec(
        data,
        scope="fleet",
        max_trial_count=1,
        parallel_trial_count=1,
        parameters={"architecture": {"type": "categorical", "values": ["linear"]}},
    )
    trials = Artifact(uri=str(tmp_path / "trials"))
    tune.python_func(
        fleet_spec=spec.to_json(), platform=local_uri(tmp_path / "home"), dataset=Dataset(uri=str(path)), trials=trials
    )
    study = json.loads((tmp_path / "trials").read_text())
    assert study["scope"] == "fleet" and study["best_parameters"] == {"architecture": "linear"}
    assert (tmp_path / "home" / "tuning" / "north" / "study.sqlite3").is_file()
    assert trials.metadata == {"segment": "north", "best_value": study["best_value"]}
