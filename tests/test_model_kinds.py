"""Boosted trees and ensembles after training: evaluation, registration, the fleet summary, `fleetops models`,
cost, batch prediction and monitoring, on the local twin (and registration on the Vertex stand-in).

The models are real (tests/model_kinds.py: XGBoost trees for north, an ensemble of those trees and a Keras
linear model for north, the fleet's global trees standing for south); nothing of ours is mocked. Two runs
register them: run 1 north's trees, run 2 north's ensemble and south's global model.
"""

import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from fleetops import cost, training_steps
from fleetops.batch import NOT_FOUND, fleet_batch_predict
from fleetops.data.sample import SAMPLE_SPEC, make_churn
from fleetops.data.split import SPLIT_COLUMN, TEST
from fleetops.errors import UserError
from fleetops.evaluation.metrics import classification_metrics
from fleetops.evaluation.report import evaluation_report, summarize, summary_head
from fleetops.fingerprints import directory_sha256
from fleetops.model_card import CARD_FILES
from fleetops.monitoring.jobs import monitor_fleet
from fleetops.names import METADATA_IDENTITY, MODEL_METADATA_FILE, MODEL_STATISTICS_FILE
from fleetops.platform import connect, local_uri
from fleetops.serving.predictor import Predictor
from fleetops.serving.request_log import read_request_log
from fleetops.spec import PREBUILT_TF_IMAGE, parse_spec
from fleetops.training.artifact import load_artifact, read_metadata, save_artifact
from fleetops.training.segments import SEGMENT_COLUMN, encode_labels
from fleetops_cli.cli import _registry_listing
from tests.model_kinds import FAILED_DNN


def _spec(source):
    base = parse_spec(SAMPLE_SPEC.format(source=source)).model_dump(mode="json")
    training = base["training"] | {"candidates": ["segment", "global"]}
    monitoring = base["monitoring"] | {"window_hours": 1.0, "min_rows": 50}
    return parse_spec(base | {"architectures": ["linear", "dnn", "gbt", "ensemble"], "training": training} | {
        "monitoring": monitoring
    })  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory, kind_artifacts):
    """Both runs evaluated and registered on one local twin."""
    root = tmp_path_factory.mktemp("kinds-run")
    churn = make_churn(rows_per_segment=300, segments=2, seed=3)
    churn.to_csv(root / "churn.csv", index=False)
    churn.to_parquet(root / "raw.parquet")
    spec = _spec(root / "churn.csv")
    training_steps.split_dataset(spec, root / "raw.parquet", root / "dataset.parquet")
    dataset = root / "dataset.parquet"
    first, second = root / "run1", root / "run2"
    shutil.copytree(kind_artifacts["gbt"], first / "north")
    shutil.copytree(kind_artifacts["ensemble"], second / "north")
    shutil.copytree(kind_artifacts["global"], second / "south")
    platform = connect(local_uri(root / "home"))
    evaluated1 = training_steps.evaluate_shard(spec, platform, dataset, first, ["north"])
    registered1 = training_steps.register_shard(spec, platform, first, evaluated1, pipeline_job="run-1")
    evaluated2 = training_steps.evaluate_shard(spec, platform, dataset, second, ["north", "south"])
    registered2 = training_steps.register_shard(spec, platform, second, evaluated2, pipeline_job="run-2")
    return SimpleNamespace(
        root=root,
        spec=spec,
        dataset=dataset,
        churn=churn,
        first=first,
        second=second,
        platform=platform,
        evaluated=[*evaluated1, *evaluated2],
        registered=[*registered1, *registered2],
        runs=[(evaluated1, registered1), (evaluated2, registered2)],
    )


def _by(rows, segment):
    return [r for r in rows if r["segment"] == segment]


# -- evaluation ------------------------------------------------------------------------------------


def test_each_kind_is_measured_by_the_runtime_that_serves_it(run):
    (trees,), (ensemble, standing) = run.runs[0][0], run.runs[1][0]
    directories = {"trees": run.first / "north", "ensemble": run.second / "north", "standing": run.second / "south"}
    for name, evaluation in {"trees": trees, "ensemble": ensemble, "standing": standing}.items():
        runtimes = evaluation["runtimes"]
        served = Predictor.load(directories[name]).runtime
        assert runtimes["serving"] == served and list(runtimes["variants"]) == [served]
        figures = runtimes["variants"][served]
        assert figures["load_ms"] > 0 and figures["first_ms"] > 0 and figures["p50_ms"] > 0
        assert "max_delta" not in figures and "metric_delta" not in figures  # nothing to compare it with
        assert runtimes["skipped"] == {} and runtimes["metric"] == "auRoc"

    assert trees["runtimes"]["serving"] == "xgboost"
    assert trees["runtimes"]["variants"]["xgboost"]["bytes"] == (run.first / "north" / "model.ubj").stat().st_size
    members = run.second / "north" / "members"
    # The model card is written into the artifact at registration, after this was measured.
    model_files = [f for f in (run.second / "north").rglob("*") if f.is_file() and f.name not in CARD_FILES]
    whole = sum(f.stat().st_size for f in model_files)
    assert ensemble["runtimes"]["variants"]["ensemble"]["bytes"] == whole
    assert ensemble["runtimes"]["variants"]["ensemble"]["members"] == {
        "gbt": "xgboost",
        "linear": Predictor.load(members / "linear").runtime,  # its LiteRT flatbuffer, as it serves alone
    }
    assert standing["runtimes"]["variants"]["ensemble"]["members"] == {"global": "xgboost"}

    report = evaluation_report([trees, ensemble])
    assert "**Runtimes** (serving: xgboost)" in report and "**Runtimes** (serving: ensemble)" in report
    assert re.search(r"\| xgboost \| \d+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|  \|  \|", report)
    assert "- the runtime serving each member: gbt xgboost, linear " in report


def test_test_metrics_are_those_of_the_artifacts_scores(run):
    data = pd.read_parquet(run.dataset)
    directories = {("north", 0): run.first / "north", ("north", 1): run.second / "north"}
    directories[("south", 1)] = run.second / "south"
    for (segment, index), directory in directories.items():
        [evaluation] = _by(run.runs[index][0], segment)
        test = data[(data[SEGMENT_COLUMN] == segment) & (data[SPLIT_COLUMN] == TEST)]
        artifact = load_artifact(directory)
        expected = classification_metrics(
            encode_labels(test["churned"], artifact.classes), artifact.scores(test), ["0", "1"]
        )
        assert evaluation["test_rows"] == len(test) > 0
        assert evaluation["metrics"]["auRoc"] == pytest.approx(expected["auRoc"])
        assert evaluation["architecture"] == read_metadata(directory)["architecture"]


def test_the_evaluation_report_shows_each_candidate_the_choice_and_the_failures(run):
    (trees,), (ensemble, standing) = run.runs[0][0], run.runs[1][0]
    assert trees["selection"]["chosen"] == "gbt" and trees["selection"]["failed"] == {"dnn": FAILED_DNN}
    report = evaluation_report([trees, ensemble, standing])
    north, south = report.split("## south")
    assert (
        "**Model selection** on validation auRoc, maximize: chose gbt: gbt has the best validation auRoc: 0.8234 "
        "(next: linear 0.7712)"
    ) in north
    assert "| candidate | validation auRoc | test auRoc |" in north
    assert "| linear | 0.7712 | 0.7655 |" in north and "| gbt **chosen** | 0.8234 | 0.8012 |" in north
    assert f"- dnn failed: {FAILED_DNN}" in north
    assert "chose ensemble: ensemble has the best validation auRoc" in north
    assert "| ensemble **chosen** |" in north and "| gbt | " in north.split("chose ensemble")[1]
    assert "chose global (serves global_gbt): the global model (gbt) has the best validation auRoc" in south
    assert "| gbt | 0.7301 | 0.7222 |" in south and "| global (gbt) **chosen** | 0.7533 | 0.7480 |" in south
    # A model trained before selection records shows none.
    assert "Model selection" not in evaluation_report([trees | {"selection": None}])


# -- registration ----------------------------------------------------------------------------------


def test_registration_records_the_artifact_its_architecture_and_the_selection(run):
    registry = run.platform.registry
    expected = {
        ("churn-north", "1"): (run.first / "north", "gbt", "xgboost"),
        ("churn-north", "2"): (run.second / "north", "ensemble", "ensemble"),
        ("churn-south", "1"): (run.second / "south", "global_gbt", "ensemble"),
    }
    for (model_id, version_id), (directory, architecture, runtime) in expected.items():
        version = registry.get_version(model_id, version_id)
        sha = directory_sha256(directory)
        assert version.artifact_sha256 == sha == directory_sha256(registry.artifact_path(version))
        assert version.identity_sha256 == read_metadata(directory)[METADATA_IDENTITY]
        assert version.labels["architecture"] == architecture == version.lineage["architecture"]
        assert version.lineage["runtimes"]["serving"] == runtime
        # The stored copy loads and serves as the artifact did.
        assert Predictor.load(registry.artifact_path(version), version.artifact_sha256).runtime == runtime
    [row] = _by(run.runs[0][1], "north")
    assert row["architecture"] == "gbt" and row["created"]
    lineage = registry.get_version("churn-north", "1").lineage["selection"]
    assert lineage == {
        "metric": "auRoc",
        "chosen": "gbt",
        "reason": "gbt has the best validation auRoc: 0.8234 (next: linear 0.7712)",
        # Rounded to 4 places: the lineage is kept short.
        "candidates": {"linear": {"validation": 0.7712, "test": 0.7655}, "gbt": {"validation": 0.8234, "test": 0.8012}},
        "failed": ["dnn"],  # the reasons stay in the artifact and the evaluation report
    }
    standing = registry.get_version("churn-south", "1").lineage["selection"]
    assert standing["chosen"] == "global"
    assert standing["candidates"]["global"] == {"validation": 0.7533, "test": 0.748, "architecture": "gbt"}


def test_the_same_gbt_model_registered_again_adds_no_version(run, tmp_path):
    registry = run.platform.registry
    (evaluated, _), spec = run.runs[0], run.spec
    again = training_steps.register_shard(spec, run.platform, run.first, evaluated, pipeline_job="rerun")
    assert [(r["version_id"], r["created"]) for r in again] == [("1", False)]
    # The same model saved again (a rerun of training on the same data) is the same identity.
    artifact = load_artifact(run.first / "north")
    metadata = {k: v for k, v in artifact.metadata.items() if k not in ("format", METADATA_IDENTITY, "encoding")}
    statistics = json.loads((run.first / "north" / MODEL_STATISTICS_FILE).read_text())
    resaved = save_artifact(artifact.model, metadata, statistics, tmp_path / "north")
    assert read_metadata(resaved)[METADATA_IDENTITY] == artifact.metadata[METADATA_IDENTITY]
    [evaluation] = training_steps.evaluate_shard(spec, run.platform, run.dataset, tmp_path, ["north"])
    [row] = training_steps.register_shard(spec, run.platform, tmp_path, [evaluation], pipeline_job="retrained")
    assert not row["created"] and row["version_id"] == "1"
    assert [v.version_id for v in registry.list_versions("churn-north")] == ["1", "2"]


def test_a_failed_registration_on_the_twin_leaves_no_version(run, tmp_path):
    platform = connect(local_uri(tmp_path / "home"))
    evaluated = run.runs[1][0]
    # Where south's artifact would be stored there is a file: the batch fails inside its transaction,
    # after north's ensemble (members and all) was staged and moved into place.
    (platform.registry.store / "churn-south").write_text("not a folder")
    with pytest.raises(FileExistsError):
        training_steps.register_shard(run.spec, platform, run.second, evaluated)
    assert platform.registry.list_models() == []
    files = [
        f.relative_to(platform.registry.store).as_posix() for f in platform.registry.store.rglob("*") if f.is_file()
    ]
    assert files == ["churn-south"]  # the blocking file only: no member of the ensemble was left
    assert not any((platform.registry.store / ".staging").iterdir())
    (platform.registry.store / "churn-south").unlink()
    rows = training_steps.register_shard(run.spec, platform, run.second, evaluated)
    assert [(r["segment"], r["version_id"], r["created"]) for r in rows] == [("north", "1", True), ("south", "1", True)]


def test_vertex_s_tensorflow_container_is_refused_for_trees_and_ensembles(run, tmp_path):
    platform = connect(local_uri(tmp_path / "home"))
    with pytest.raises(
        UserError,
        match=r"the model of segment 'north' \(architecture ensemble\) is an ensemble of models, and the serving "
        r"image .*tf2-cpu.* is Vertex's prebuilt TensorFlow container.*pass the fleetops image as the pipeline's "
        r"serving_image \(`fleetops submit --serving-image IMAGE`\) or set registry.serving_image",
    ):
        training_steps.register_shard(run.spec, platform, run.second, run.runs[1][0], serving_image=PREBUILT_TF_IMAGE)
    assert platform.registry.list_models() == []
    # A pooled fleet registers for that container: the global model standing for a segment (an ensemble,
    # whatever its architecture) cannot be, and nothing is exported or registered.
    base = run.spec.model_dump(mode="json")
    # (The spec refuses pool with the global candidate; these artifacts come from a run that had it.)
    pooled = parse_spec(
        base
        | {
            "architectures": ["linear", "dnn"],
            "serving": base["serving"] | {"cohosting": "pool"},
            "training": base["training"] | {"candidates": ["segment"]},
        }
    )
    south = _by(run.runs[1][0], "south")
    with pytest.raises(UserError, match=r"segment 'south' \(architecture global_gbt\).*set serving.cohosting: none"):
        training_steps.register_shard(pooled, platform, run.second, south)
    assert platform.registry.list_models() == [] and not (run.second / "south" / "savedmodel").exists()
    # The twin serves every kind with its own server: no image is needed there.
    rows = training_steps.register_shard(run.spec, platform, run.first, run.runs[0][0])
    assert rows[0]["created"]


# -- the fleet summary and `fleetops models` -------------------------------------------------------


def test_the_summary_counts_the_architectures_the_segments_chose(run):
    evaluated, registered = run.runs[1]
    outcomes = {"rows": {"north": 300, "south": 300}, "skipped": {}, "fallback": {}}
    summary = summarize(registered, evaluated, outcomes, run.spec)
    head = summary.split("## Segments")[0]
    assert "| architectures | ensemble 1, global_gbt 1 |" in head
    assert "candidates that failed" not in head
    first = summarize(*reversed(run.runs[0]), outcomes, run.spec)  # registrations, evaluations
    assert "| architectures | gbt 1 |" in first and "| candidates that failed to train | dnn in 1 segment(s) |" in first


def test_a_large_fleet_s_summary_head_keeps_the_architecture_counts(run):
    counts = {"gbt": 40, "ensemble": 15, "dnn": 4, "global_gbt": 1}
    architectures = [a for a, n in counts.items() for _ in range(n)]
    rows, evaluations = [], []
    for i, architecture in enumerate(architectures):
        segment = f"s{i:03d}"
        rows.append(
            {
                "segment": segment,
                "model_id": f"churn-{segment}",
                "version_id": "1",
                "promoted": True,
                "metric": "auRoc",
                "value": 0.8,
                "champion_version": None,
                "champion_value": None,
                "architecture": architecture,
            }
        )
        failed = {"dnn": FAILED_DNN} if i % 20 == 0 else {}
        evaluations.append({"segment": segment, "selection": {"chosen": architecture, "failed": failed}})
    summary = summarize(rows, evaluations, {"skipped": {}}, run.spec)
    head = summary_head(summary, "gs://bucket/summary.md")
    assert "| architectures | gbt 40, ensemble 15, dnn 4, global_gbt 1 |" in head
    assert "| candidates that failed to train | dnn in 3 segment(s) |" in head
    assert "The table of all 60 segments is in the run's summary: gs://bucket/summary.md" in head
    assert "| s000 |" not in head and "| s000 |" in summary
    # Rows from before architectures were recorded are counted by their evaluation's, or not at all.
    old = [{k: v for k, v in r.items() if k != "architecture"} for r in rows[:2]]
    evaluated = [{"segment": r["segment"], "architecture": "gbt"} for r in old]
    assert "| architectures | gbt 2 |" in summarize(old, evaluated, {"skipped": {}}, run.spec)
    assert "architectures" not in summarize(old, None, {"skipped": {}}, run.spec).split("## Segments")[0]


def test_fleetops_models_shows_each_version_s_architecture_and_choice(run):
    listing = _registry_listing(run.root / "home")
    north = next(line for line in listing.splitlines() if line.startswith("  churn-north"))
    assert re.search(
        r"v1( \[[a-z, ]+\])? auRoc 0\.\d{4} \(gbt\), v2( \[[a-z, ]+\])? auRoc 0\.\d{4} \(ensemble\)$", north
    )
    assert re.search(
        r"\n    v1 chose gbt: gbt has the best validation auRoc: 0\.8234 \(next: linear 0\.7712\); failed: dnn\n",
        listing,
    )
    assert "\n    v2 chose ensemble: ensemble has the best validation auRoc" in listing
    assert (
        "\n    v1 chose global: the global model (gbt) has the best validation auRoc: 0.7533 (next: gbt 0.7301)\n"
        in listing
    )
    assert re.search(r"churn-south +v1 \[champion, default\] auRoc 0\.\d{4} \(global_gbt\)", listing)


# -- cost --------------------------------------------------------------------------------------------


def test_cost_prices_trees_and_ensembles_by_what_serves_them(run):
    registry = run.platform.registry
    trees = registry.get_version("churn-north", "1").lineage["runtimes"]
    ensemble = registry.get_version("churn-north", "2").lineage["runtimes"]
    standing = registry.get_version("churn-south", "1").lineage["runtimes"]
    figures = cost.runtime_figures(trees)
    assert figures == {
        "model_mb": cost.MODEL_MB_BY_RUNTIME["xgboost"],
        "p50_ms": trees["variants"]["xgboost"]["p50_ms"],
        "load_ms": trees["variants"]["xgboost"]["load_ms"],
    }
    linear = ensemble["variants"]["ensemble"]["members"]["linear"]
    assert cost.runtime_figures(ensemble)["model_mb"] == pytest.approx(
        cost.ENSEMBLE_OVERHEAD_MB + cost.MODEL_MB_BY_RUNTIME["xgboost"] + cost.MODEL_MB_BY_RUNTIME[linear]
    )
    assert cost.runtime_figures(standing)["model_mb"] == pytest.approx(
        cost.ENSEMBLE_OVERHEAD_MB + cost.MODEL_MB_BY_RUNTIME["xgboost"]
    )
    # An ensemble measured without its members' runtimes has no memory figure rather than a made-up one.
    bare = {"serving": "ensemble", "variants": {"ensemble": {"p50_ms": 0.5, "load_ms": 3.0}}}
    assert cost.runtime_figures(bare) == {"p50_ms": 0.5, "load_ms": 3.0}

    inputs = cost.serving_inputs(run.spec, cost.load_prices(), run.root / "home", run.platform)
    assert inputs.model_mb.source == "mean of 2 of 2 models' evaluated runtimes"
    champions = [registry.get_version(m, "champion").lineage["runtimes"] for m in ("churn-north", "churn-south")]
    mean = sum(cost.runtime_figures(r)["model_mb"] for r in champions) / 2
    assert inputs.model_mb.value == pytest.approx(mean)
    # A fleet of trees and ensembles cannot go into a deployment resource pool.
    options = {o.name: o for o in cost.serving_options(inputs, cost.load_prices(), "us-central1")}
    assert not options["pool"].fits and options["pool"].fits_on is None
    assert any(
        "architectures ['gbt', 'ensemble'] are served by our container only" in p for p in options["pool"].problems
    )
    assert options["dedicated"].fits


# -- batch prediction and monitoring -----------------------------------------------------------------


def _scores(table):
    return np.array([row["scores"] for row in table["prediction"]])


def test_batch_prediction_scores_each_kind_as_its_artifact_does(run, tmp_path):
    registry = run.platform.registry
    source = run.churn.set_index("customer_id")
    # Version 1: north's trees and south's global model; version 2: north's ensemble (south has none).
    for version, kinds in (("1", {"north": "gbt", "south": "ensemble"}), ("2", {"north": "ensemble"})):
        result = fleet_batch_predict(run.spec, run.platform, str(run.root / "churn.csv"), tmp_path / version, version)
        predictions = pd.read_parquet(result.predictions_path)
        errors = pd.read_parquet(result.errors_path)
        assert result.rows == len(run.churn) and result.predicted == 300 * len(kinds)
        for segment, kind in kinds.items():
            mine = predictions[predictions["region"] == segment]
            stored = registry.get_version(f"churn-{segment}", version)
            artifact = load_artifact(registry.artifact_path(stored))
            assert artifact.kind == kind and set(mine["version_id"]) == {version} and len(mine) == 300
            expected = artifact.scores(source.loc[mine["customer_id"]].reset_index())
            np.testing.assert_allclose(_scores(mine), expected, rtol=0, atol=1e-6)
            assert list(mine["prediction"].iloc[0]["classes"]) == ["0", "1"]
        if version == "2":
            assert len(errors) == 300 and set(errors["region"]) == {"south"}
            assert {e["code"] for e in errors["errors"]} == {NOT_FOUND}
            assert "has no version or alias '2'" in errors["errors"].iloc[0]["message"]
        else:
            assert errors.empty


def test_served_trees_and_ensembles_are_logged_and_monitored(run, tmp_path, serve):
    platform = connect(local_uri(tmp_path / "home"))
    for model_id, directory in (("churn-north", run.first / "north"), ("churn-north", run.second / "north")):
        platform.registry.upload_version(model_id, directory, is_default_version=False)
    platform.registry.upload_version("churn-south", run.second / "south")
    served = {"trees": ("churn-north", "1"), "ensemble": ("churn-north", "2"), "standing": ("churn-south", "1")}
    for endpoint, (model_id, version) in served.items():
        segment = model_id.removeprefix("churn-")
        platform.endpoints.create(endpoint, labels={"fleet": "churn", "segment": segment}, request_logging_rate=1.0)
        platform.endpoints.deploy(endpoint, model_id, version)
    server = serve(platform.home)
    features = run.spec.features.all
    rows = {segment: run.churn[run.churn["region"] == segment].head(120) for segment in ("north", "south")}
    for endpoint, (model_id, _) in served.items():
        instances = [
            {f: (None if v != v else v) for f, v in row.items()}
            for row in rows[model_id.removeprefix("churn-")][features].to_dict("records")
        ]
        for start in range(0, len(instances), 40):
            status, body = server.request(
                "POST",
                f"/v1/projects/local/locations/local/endpoints/{endpoint}:predict",
                {"instances": instances[start : start + 40]},
            )
            assert status == 200, body
    server.stop()  # flushes the log

    for endpoint, (model_id, version) in served.items():
        log = read_request_log(platform.home, endpoint)
        assert len(log) == 120 and set(log["version_id"]) == {version}
        artifact = load_artifact(platform.registry.artifact_path(platform.registry.get_version(model_id, version)))
        expected = artifact.scores(rows[model_id.removeprefix("churn-")])
        np.testing.assert_allclose(np.array([p["scores"] for p in log["prediction"]]), expected, rtol=0, atol=1e-5)

    reports = {
        r.endpoint_id: r
        for r in monitor_fleet(run.spec, platform, platform.home, now=datetime.now(UTC) + timedelta(minutes=1))
    }
    assert set(reports) == set(served)
    for endpoint, (model_id, version) in served.items():
        report = reports[endpoint]
        assert (report.segment, report.model_id, report.version_id, report.rows) == (
            model_id.removeprefix("churn-"),
            model_id,
            version,
            120,
        )
        # Skew against the statistics saved with each artifact: every feature judged, none skewed (same data).
        assert {r.feature for r in report.skew} == set(features)
        assert all(r.distance is not None for r in report.skew)
        assert not report.skew_anomaly, report.anomalies
        assert "drift needs 50 rows in both windows" in report.note
    stored = platform.registry.artifact_path(platform.registry.get_version("churn-south", "1"))
    assert (stored / MODEL_STATISTICS_FILE).is_file() and (stored / MODEL_METADATA_FILE).is_file()
