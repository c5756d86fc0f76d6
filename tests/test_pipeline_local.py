"""The compiled training pipeline, run for real with kfp.local on the local twin."""

import json

import pytest

from fleetops.data.sample import SAMPLE_SPEC, make_churn
from fleetops.names import OUTPUT_RETURN_VALUE, pipeline_arguments
from fleetops.platform import connect, local_uri
from fleetops.platform.local.pipeline_runs import run_compiled
from fleetops.spec import parse_spec
from pipelines.compile import compile_all

pytestmark = pytest.mark.slow


def _spec_json(source) -> str:
    spec = parse_spec(SAMPLE_SPEC.format(source=source))
    fast = spec.training.model_copy(update={"epochs": 6, "hidden_units": [8]})
    return spec.model_copy(update={"training": fast}).to_json()


def test_fleet_trains_registers_and_refuses_bad_data(tmp_path):
    home = tmp_path / "home"
    data = tmp_path / "churn.csv"
    make_churn(rows_per_segment=250, segments=2, seed=5).to_csv(data, index=False)
    template = compile_all(tmp_path / "build")["fleet_training"]
    arguments = pipeline_arguments(_spec_json(data), local_uri(home))
    run = run_compiled(template, arguments, home, out=open(tmp_path / "progress.txt", "w"))
    assert run.ok, run.log_path.read_text()[-3000:]
    progress = (tmp_path / "progress.txt").read_text()
    for task in ("ingest", "validate", "split", "train", "evaluate", "register", "deploy", "summarize"):
        assert f"ok  {task}" in progress
    assert "| north | churn-north | 1 | auRoc |" in run.outputs[OUTPUT_RETURN_VALUE]

    registry = connect(local_uri(home)).registry
    assert registry.list_models({"fleet": "churn"}) == ["churn-north", "churn-south"]
    north = registry.get_version("churn-north", "champion")
    assert north.version_id == "1" and north.is_default
    assert north.labels["segment"] == "north" and north.labels["architecture"] in {"linear", "dnn"}
    assert north.lineage["pipeline_job"].startswith("fleetops-training")
    evaluation = registry.list_evaluations("churn-north")[0]
    assert 0.5 < evaluation.metrics["auRoc"] <= 1.0 and len(evaluation.metrics["confidenceMetrics"]) == 24
    assert any(s["feature"] == "plan" for s in evaluation.slices)
    # Each new champion went to its own endpoint with all the traffic.
    endpoint = connect(local_uri(home)).endpoints.get("churn-north")
    assert [(m.model_id, m.version_id) for m in endpoint.deployed_models] == [("churn-north", "1")]
    assert list(endpoint.traffic_split.values()) == [100] and endpoint.labels["fleet"] == "churn"

    # The ROC curve and confusion matrix the Vertex console renders, as the evaluate step logged them.
    outputs = sorted((home / "pipeline_root").glob("*/for-loop-1-iteration-*/evaluate/executor_output.json"))
    assert len(outputs) == 2
    logged = json.loads(outputs[0].read_text())["artifacts"]["classification_metrics"]["artifacts"][0]["metadata"]
    assert len(logged["confidenceMetrics"]) >= 2 and {"falsePositiveRate", "recall"} <= set(
        logged["confidenceMetrics"][0]
    )
    assert [s["displayName"] for s in logged["confusionMatrix"]["annotationSpecs"]] == ["0", "1"]

    # Bad data: the run stops at validate with a readable report; the registry is as it was.
    before = [(m, [v.version_id for v in registry.list_versions(m)]) for m in registry.list_models()]
    bad = make_churn(rows_per_segment=250, segments=2, seed=6)
    bad["monthly_charges"] = bad["monthly_charges"].astype(object)
    bad.loc[3, "monthly_charges"] = "twelve"
    bad.to_csv(data, index=False)
    failed_out = tmp_path / "failed.txt"
    failed = run_compiled(template, arguments, home, out=open(failed_out, "w"))
    assert not failed.ok
    shown = failed_out.read_text()
    assert "FAILED validate" in shown
    assert "numeric feature 'monthly_charges' has non-numeric value 'twelve'" in shown
    after = [(m, [v.version_id for v in registry.list_versions(m)]) for m in registry.list_models()]
    assert after == before


def test_a_fleet_of_trees_ensembles_and_the_global_candidate_runs_end_to_end(tmp_path):
    """architectures [linear, gbt, ensemble] with the global model competing: trained, chosen, registered and
    deployed on the twin, the choice visible in the summary and the registry's lineage."""
    from fleetops.serving.predictor import Predictor

    home = tmp_path / "home"
    data = tmp_path / "churn.csv"
    make_churn(rows_per_segment=200, segments=4, seed=5).to_csv(data, index=False)
    spec = parse_spec(SAMPLE_SPEC.format(source=data))
    document = spec.model_dump(mode="json")
    document["architectures"] = ["linear", "gbt", "ensemble"]
    document["training"] |= {"epochs": 6, "candidates": ["segment", "global"], "num_trees": 80}
    template = compile_all(tmp_path / "build")["fleet_training"]
    arguments = pipeline_arguments(parse_spec(document).to_json(), local_uri(home))
    run = run_compiled(template, arguments, home, out=open(tmp_path / "progress.txt", "w"))
    assert run.ok, run.log_path.read_text()[-3000:]
    assert "| architectures |" in run.outputs[OUTPUT_RETURN_VALUE]

    platform = connect(local_uri(home))
    chosen = {}
    for model in platform.registry.list_models({"fleet": "churn"}):
        version = platform.registry.get_version(model, "champion")
        selection = version.lineage["selection"]
        assert set(selection["candidates"]) == {"linear", "gbt", "ensemble", "global"}
        assert version.labels["architecture"] == version.lineage["architecture"]
        chosen[model] = version.lineage["architecture"]
    assert len(chosen) == 4 and set(chosen.values()) <= {"linear", "gbt", "ensemble", "global_linear", "global_gbt"}

    # Each champion is deployed, and loads as the twin's server loads it (its sha256 checked), whatever its kind.
    for model in chosen:
        version = platform.registry.get_version(model, "champion")
        endpoint = platform.endpoints.get(model)
        assert [(m.model_id, m.version_id) for m in endpoint.deployed_models] == [(model, version.version_id)]
        predictor = Predictor.load(platform.registry.artifact_path(version), version.artifact_sha256)
        instance = {c: 1.0 for c in predictor.numeric} | {c: "basic" for c in predictor.categorical}
        assert predictor.predict_columns(predictor.columns([instance])).shape == (1, 2)
