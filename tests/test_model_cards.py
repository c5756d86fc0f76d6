"""Model cards: written at registration from real models' evaluation and lineage, stored with the version,
printed by `fleetops models --card`, and summarised in the Vertex version's description and labels.

The models are real (tests/model_kinds.py: north's XGBoost trees, north's ensemble of trees and a Keras
linear model, the fleet's global trees standing for south); nothing of ours is mocked.
"""

import hashlib
import json
import re
import shutil
from types import SimpleNamespace

import pytest
from google.auth.credentials import AnonymousCredentials

from fleetops import training_steps
from fleetops.data.sample import SAMPLE_SPEC, make_churn
from fleetops.evaluation.metrics import headline
from fleetops.fingerprints import directory_sha256
from fleetops.model_card import (
    CARD_JSON,
    CARD_MARKDOWN,
    DESCRIPTION_LIMIT,
    LABEL_MODEL_CARD_SHA256,
    build_card,
    card_markdown,
    card_summary,
    read_card,
)
from fleetops.platform import connect, local_uri
from fleetops.spec import parse_spec
from fleetops.training.artifact import read_metadata
from fleetops_cli.cli import main
from tests.fake_vertex import FakeVertex

IMAGE = "us-docker.pkg.dev/proj-1/fleetops/components:abc123"


@pytest.fixture(scope="module")
def run(tmp_path_factory, kind_artifacts):
    """Run 1 registers north's trees and south's global model; run 2 north's ensemble; on one local twin."""
    root = tmp_path_factory.mktemp("cards")
    churn = make_churn(rows_per_segment=300, segments=2, seed=3)
    churn.to_parquet(root / "raw.parquet")
    spec = parse_spec(SAMPLE_SPEC.format(source=root / "churn.csv"))
    training_steps.split_dataset(spec, root / "raw.parquet", root / "dataset.parquet")
    first, second = root / "run1", root / "run2"
    shutil.copytree(kind_artifacts["gbt"], first / "north")
    shutil.copytree(kind_artifacts["global"], first / "south")
    shutil.copytree(kind_artifacts["ensemble"], second / "north")
    platform = connect(local_uri(root / "home"))
    evaluated1 = training_steps.evaluate_shard(spec, platform, root / "dataset.parquet", first, ["north", "south"])
    registered1 = training_steps.register_shard(spec, platform, first, evaluated1, pipeline_job="run-1")
    evaluated2 = training_steps.evaluate_shard(spec, platform, root / "dataset.parquet", second, ["north"])
    registered2 = training_steps.register_shard(spec, platform, second, evaluated2, pipeline_job="run-2")
    return SimpleNamespace(
        root=root,
        spec=spec,
        platform=platform,
        first=first,
        second=second,
        evaluated=[*evaluated1, *evaluated2],
        registered=[*registered1, *registered2],
        directories=[first / "north", first / "south", second / "north"],
    )


def _stored(platform, row):
    version = platform.registry.get_version(row["model_id"], row["version_id"])
    path = platform.registry.artifact_path(version)
    return version, path, read_card(path)


def test_every_registered_version_carries_a_card_matching_its_evaluation_and_lineage(run):
    assert [(r["segment"], r["version_id"], r["created"]) for r in run.registered] == [
        ("north", "1", True),
        ("south", "1", True),
        ("north", "2", True),
    ]
    for row, evaluation, directory in zip(run.registered, run.evaluated, run.directories, strict=True):
        version, path, (card, markdown) = _stored(run.platform, row)
        metadata = read_metadata(directory)
        details, parameters = card["model_details"], card["model_parameters"]
        assert card["schema_version"] == "0.0.2"
        assert details["name"] == row["model_id"]
        assert details["owners"] == [{"name": "growth", "contact": "registry label team"}]
        # The identity is the model's, which the card does not change; the artifact's bytes include the card.
        assert details["version"]["name"] == version.identity_sha256 == metadata["identity_sha256"]
        assert version.artifact_sha256 == directory_sha256(path)
        references = {r["reference"] for r in details["references"]}
        assert f"fleet spec sha256 {version.lineage['spec_sha256']}" in references
        assert f"pipeline job {version.lineage['pipeline_job']}" in references
        assert parameters["architecture"] == version.lineage["architecture"] == row["architecture"]
        assert [f["key"] for f in parameters["input_format_map"]] == [
            *run.spec.features.numeric,
            *run.spec.features.categorical,
        ]
        training, testing = parameters["data"]
        assert (training["sha256"], training["rows"]) == (
            version.lineage["data_sha256"],
            version.lineage["rows"]["train"],
        )
        assert training["validation_rows"] == version.lineage["rows"]["validation"]
        assert testing["rows"] == evaluation["test_rows"] > 0

        metrics = card["quantitative_analysis"]["performance_metrics"]
        overall = {m["type"]: float(m["value"]) for m in metrics if not m["slice"]}
        assert overall == pytest.approx(headline(evaluation["metrics"]))
        assert overall["auRoc"] == pytest.approx(version.lineage["test_value"])
        assert evaluation["slices"], "the spec slices on plan"
        for s in evaluation["slices"]:
            sliced = {m["type"]: float(m["value"]) for m in metrics if m["slice"] == f"plan={s['value']}"}
            assert sliced == pytest.approx(s["metrics"])

        ours = card["fleetops"]
        assert ours["champion"] == {
            "promoted": row["promoted"],
            "reason": evaluation["reason"],
            "champion_version": evaluation["champion_version"],
            "champion_value": evaluation["champion_value"],
        }
        assert ours["selection"]["chosen"] == version.lineage["selection"]["chosen"]
        for name, values in version.lineage["selection"]["candidates"].items():
            assert ours["selection"]["candidates"][name]["test"] == pytest.approx(values["test"], abs=1e-4)

        # The JSON's sha256 is a label (64 hex: what a Vertex label value holds), the Markdown is stored beside it.
        assert version.labels[LABEL_MODEL_CARD_SHA256] == hashlib.sha256((path / CARD_JSON).read_bytes()).hexdigest()
        assert (path / CARD_MARKDOWN).read_text() == markdown == card_markdown(card)
        assert evaluation["reason"] in markdown and f"# Model card: {row['model_id']}" in markdown
        assert version.description == card_summary(card) and len(version.description) <= DESCRIPTION_LIMIT


def test_the_card_describes_each_architecture_its_selection_and_its_caveats(run):
    (_, _, (trees, trees_md)), (_, _, (standing, _)), (_, _, (ensemble, ensemble_md)) = [
        _stored(run.platform, row) for row in run.registered
    ]
    assert trees["model_parameters"]["model_architecture"].startswith("gbt: gradient-boosted decision trees")
    assert "| gbt **chosen** | 0.8234 | 0.8012 |" in trees_md
    # north's dnn candidate failed in training (tests/model_kinds.py): a caveat, with why.
    limitations = [x["description"] for x in trees["considerations"]["limitations"]]
    assert "candidate dnn failed to train: training failed: ValueError: injected for the test" in limitations
    # The test split is ~45 rows per segment here: too few to trust its metrics much, and the card says so.
    assert any(x.startswith("small test split: ") for x in limitations)
    text = standing["model_parameters"]["model_architecture"]
    assert text.startswith("global_gbt: the fleet's global model (gradient-boosted decision trees (XGBoost))")
    assert "features fixed for this segment: region=south" in text
    assert ensemble["model_parameters"]["model_architecture"].endswith("members and weights: gbt 0.6, linear 0.4")
    assert ensemble["fleetops"]["selection"]["chosen"] == "ensemble"
    # The evaluation's fairness results (the spec slices on plan), as its report shows them.
    assert ensemble["quantitative_analysis"]["fairness"]["columns"][0]["column"] == "plan"
    assert "### Fairness\n\n| plan | rows | rest | population |" in ensemble_md
    ethics = ensemble["considerations"]["ethical_considerations"][0]
    assert "measured in the evaluation" in ethics["mitigation_strategy"]


def test_fairness_results_and_undefined_metrics_are_carried_as_the_evaluation_gives_them(run):
    evaluation = dict(run.evaluated[0])
    fairness = {
        "plan": [
            {"slice": "premium", "metric": "recall_difference", "value": 0.125, "rows": 31},
            {"slice": "basic", "metric": "accuracy_difference", "value": None, "reason": "4 rows, fewer than 20"},
        ],
        "gate": {"passed": False, "reason": "recall_difference 0.125 above max_abs 0.1"},
    }
    evaluation["fairness"] = fairness
    evaluation["undefined"] = {"recall": "recall is undefined: no positive labels in the test split"}
    metadata = read_metadata(run.first / "north")
    card = build_card(run.spec, metadata, evaluation, identity=metadata["identity_sha256"])
    assert card["quantitative_analysis"]["fairness"] == fairness
    markdown = card_markdown(card)
    assert "- plan:\n  - slice premium, metric recall_difference, value 0.1250, rows 31" in markdown
    assert "  - slice basic, metric accuracy_difference, value undefined, reason 4 rows, fewer than 20" in markdown
    assert "- gate:\n  - passed: False\n  - reason: recall_difference 0.125 above max_abs 0.1" in markdown
    assert {"type": "recall", "value": "undefined", "slice": ""} in card["quantitative_analysis"]["performance_metrics"]
    assert "recall undefined: recall is undefined: no positive labels in the test split" in [
        x["description"] for x in card["considerations"]["limitations"]
    ]
    assert "measured in the evaluation" in card["considerations"]["ethical_considerations"][0]["mitigation_strategy"]
    json.dumps(card, allow_nan=False)  # finite JSON throughout


def test_registering_an_unchanged_model_again_adds_no_version_and_keeps_its_card(run):
    row = run.registered[0]
    before, path, (card, _) = _stored(run.platform, row)
    [evaluation] = training_steps.evaluate_shard(
        run.spec, run.platform, run.root / "dataset.parquet", run.first, ["north"]
    )
    [again] = training_steps.register_shard(run.spec, run.platform, run.first, [evaluation], pipeline_job="rerun")
    assert (again["version_id"], again["created"]) == (row["version_id"], False)
    assert [v.version_id for v in run.platform.registry.list_versions(row["model_id"])] == ["1", "2"]
    after, _, (kept, _) = _stored(run.platform, row)
    assert kept == card and kept["fleetops"]["pipeline_job"] == "run-1"  # the card registered with it
    assert after.artifact_sha256 == before.artifact_sha256 == directory_sha256(path)
    # The rerun's own card (in its run's folder) has the rerun's decision; its model is the same one.
    rerun, _ = read_card(run.first / "north")
    assert (
        rerun["fleetops"]["pipeline_job"] == "rerun" and rerun["fleetops"]["identity_sha256"] == after.identity_sha256
    )


def test_fleetops_models_card_prints_the_markdown_of_a_version_or_alias(run, capsys):
    home = str(run.root / "home")
    ensemble = run.registered[2]
    assert main(["models", "--home", home, "--card", f"churn-north@{ensemble['version_id']}"]) == 0
    printed = capsys.readouterr().out
    _, _, (_, markdown) = _stored(run.platform, ensemble)
    header, _, body = printed.partition("\n\n")
    assert body == markdown
    assert re.fullmatch(r"<!-- churn-north version 2, aliases now: .*; card sha256 matches its label -->", header)
    assert "Chose ensemble on validation auRoc" in body

    assert main(["models", "--home", home, "--card", "churn-south"]) == 0  # the default version
    assert "# Model card: churn-south" in capsys.readouterr().out
    champion = run.platform.registry.get_version("churn-north", "champion").version_id
    assert main(["models", "--home", home, "--card", "churn-north@champion"]) == 0
    assert f"<!-- churn-north version {champion}," in capsys.readouterr().out

    assert main(["models", "--home", home, "--card", "churn-north@9"]) == 2
    assert "error: " in capsys.readouterr().err


def test_a_version_registered_without_a_card_says_so(tmp_path, artifact_dirs, capsys):
    platform = connect(local_uri(tmp_path / "home"))
    platform.registry.upload_version("plain", artifact_dirs[0])
    assert main(["models", "--home", str(tmp_path / "home"), "--card", "plain@1"]) == 2
    assert "version 1 of model 'plain' has no model card" in capsys.readouterr().err


def test_the_vertex_request_carries_the_card_summary_and_its_sha256_label(tmp_path, run, kind_artifacts):
    shard = tmp_path / "shard"
    shutil.copytree(kind_artifacts["gbt"], shard / "north")
    shutil.copytree(kind_artifacts["global"], shard / "south")
    with FakeVertex() as fake:
        vertex = connect(
            f"vertex://proj-1/us-central1?api_endpoint={fake.endpoint}", credentials=AnonymousCredentials()
        )
        rows = training_steps.register_shard(
            run.spec, vertex, shard, run.evaluated[:2], model_uri="gs://b/run/model", pipeline_job="job-1",
            serving_image=IMAGE,
        )  # fmt: skip
        uploads = fake.calls("POST", "models:upload")
        assert [r["created"] for r in rows] == [True, True] and len(uploads) == 2
        for upload, segment in zip(uploads, ("north", "south"), strict=True):
            model = upload["body"]["model"]
            card, _ = read_card(shard / segment)
            summary = card_summary(card)
            assert model["description"] == summary and len(summary) <= DESCRIPTION_LIMIT
            assert model["versionDescription"].startswith(summary + "\nlineage: ")
            assert f"Model card of churn-{segment}: " in summary and "Champion: promoted: " in summary
            assert (
                model["labels"][LABEL_MODEL_CARD_SHA256]
                == hashlib.sha256((shard / segment / CARD_JSON).read_bytes()).hexdigest()
            )
            assert re.fullmatch(r"[0-9a-f]{64}", model["labels"][LABEL_MODEL_CARD_SHA256])
            # The artifact's sha256 (the serving tamper check) covers the card; the identity is still the model's.
            assert model["labels"]["artifact-sha256"] == directory_sha256(shard / segment)
            assert model["labels"]["identity-sha256"] == read_metadata(shard / segment)["identity_sha256"]
            assert card["model_details"]["references"][-1] == {"reference": f"artifact gs://b/run/model/{segment}"}
        north = vertex.registry.get_version("churn-north", "1")
        assert north.description == card_summary(read_card(shard / "north")[0])
        assert north.lineage["selection"]["chosen"] == "gbt"  # the lineage after the card still reads back

        again = training_steps.register_shard(
            run.spec, vertex, shard, run.evaluated[:2], model_uri="gs://b/run/model", pipeline_job="job-1",
            serving_image=IMAGE,
        )  # fmt: skip
        assert [(r["version_id"], r["created"]) for r in again] == [("1", False), ("1", False)]
        assert len(fake.calls("POST", "models:upload")) == 2

        # Another run registering the same folder (say its train step was cached): on Vertex the folder is
        # version 1's artifact itself, so its card stays, and its bytes still match the version's sha256 label.
        before = (shard / "north" / CARD_JSON).read_bytes()
        later = training_steps.register_shard(
            run.spec, vertex, shard, run.evaluated[:2], model_uri="gs://b/run/model", pipeline_job="job-2",
            serving_image=IMAGE,
        )  # fmt: skip
        assert [(r["version_id"], r["created"]) for r in later] == [("1", False), ("1", False)]
        assert (shard / "north" / CARD_JSON).read_bytes() == before
        assert read_card(shard / "north")[0]["fleetops"]["pipeline_job"] == "job-1"
        assert directory_sha256(shard / "north") == vertex.registry.get_version("churn-north", "1").artifact_sha256
        # A copy of the folder elsewhere is no version's artifact: it gets the card of the run registering it.
        shutil.copytree(shard, tmp_path / "copy")
        [moved, _] = training_steps.register_shard(
            run.spec, vertex, tmp_path / "copy", run.evaluated[:2], model_uri="gs://b/copy/model",
            pipeline_job="job-3", serving_image=IMAGE,
        )  # fmt: skip
        assert (moved["version_id"], moved["created"]) == ("1", False)  # the same model: no version
        assert read_card(tmp_path / "copy" / "north")[0]["fleetops"]["pipeline_job"] == "job-3"


def test_a_long_card_summary_is_cut_to_the_description_budget(run):
    evaluation = dict(run.evaluated[0], reason="x" * 5000)
    metadata = read_metadata(run.first / "north")
    summary = card_summary(build_card(run.spec, metadata, evaluation, identity=None))
    assert len(summary) == DESCRIPTION_LIMIT and summary.endswith(f"full card: {CARD_MARKDOWN} in the artifact)")


def test_a_segment_without_test_rows_gets_a_card_with_its_undefined_metrics_and_why(tmp_path, run, kind_artifacts):
    shard = tmp_path / "shard"
    shutil.copytree(kind_artifacts["global"], shard / "nowhere")
    platform = connect(local_uri(tmp_path / "home"))
    evaluations = training_steps.evaluate_shard(
        run.spec, platform, run.root / "dataset.parquet", shard, [], ["nowhere"]
    )
    [row] = training_steps.register_shard(run.spec, platform, shard, evaluations, pipeline_job="empty")
    _, _, (card, markdown) = _stored(platform, row)
    assert card["model_parameters"]["data"][1]["rows"] == 0
    assert card["quantitative_analysis"]["performance_metrics"] == [
        {"type": "auRoc", "value": "undefined", "slice": ""}
    ]
    limitations = [x["description"] for x in card["considerations"]["limitations"]]
    assert limitations[0].startswith("small test split: 0 row(s)")
    assert f"auRoc undefined: {evaluations[0]['undefined']['auRoc']}" in limitations
    assert "segment 'nowhere' has no test rows (0 row(s) in all)" in markdown
    assert card["fleetops"]["champion"]["reason"] == evaluations[0]["reason"] and evaluations[0]["reason"] in markdown
