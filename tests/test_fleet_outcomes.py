"""One segment never stops the fleet: failures, the global model as fallback, and the fleet summary."""

import pandas as pd
import pytest

from fleetops import training_steps
from fleetops.data.sample import SAMPLE_SPEC, make_churn
from fleetops.errors import UserError
from fleetops.evaluation.report import summarize
from fleetops.spec import parse_spec
from fleetops.training.packed import train_global
from fleetops.training.segments import read_outcome, train_shard

FAST = {"epochs": 8, "batch_size": 32, "hidden_units": [8], "early_stopping_patience": 3, "seed": 5}


def _spec(source, **sections):
    base = parse_spec(SAMPLE_SPEC.format(source=source)).model_dump(mode="json")
    base["training"] |= FAST | sections.pop("training", {})
    return parse_spec(base | sections)


@pytest.fixture
def dataset(tmp_path):
    """Three regions and a 'small' one of 2 rows (too few for a validation split), split as the pipeline does."""
    churn = make_churn(rows_per_segment=240, segments=3, seed=4)
    small = churn.head(2).assign(region="small", customer_id=["s1", "s2"], churned=[0, 1])
    pd.concat([churn, small]).to_parquet(tmp_path / "raw.parquet")
    spec = _spec("x.csv")
    training_steps.split_dataset(spec, tmp_path / "raw.parquet", tmp_path / "dataset.parquet")
    return tmp_path / "dataset.parquet"


@pytest.mark.parametrize("policy", ["skip", "global", "fail"])
def test_a_segment_that_fails_training_gets_the_policy(tmp_path, dataset, policy):
    spec = _spec("x.csv", training={"trainer": "per_segment"}, segment_failures={"policy": policy})
    segments = ["north", "small"]
    found = None
    if policy == "global":
        found = train_global(pd.read_parquet(dataset), spec, tmp_path / "global", log=lambda *_: None)
    if policy == "fail":
        with pytest.raises(UserError, match="segment 'small' has .* validation rows"):
            train_shard(dataset, spec, segments, tmp_path / "out", log=lambda *_: None)
        return
    outcome = train_shard(dataset, spec, segments, tmp_path / "out", log=lambda *_: None, global_model=found)
    assert [r.segment for r in outcome.results] == ["north"]
    if policy == "skip":
        assert list(outcome.failed) == ["small"] and "validation rows" in outcome.failed["small"]
        assert read_outcome(tmp_path / "out")["failed"] == outcome.failed
    else:
        assert outcome.fallback == ["small"] and not outcome.failed


def test_fallback_segments_are_evaluated_registered_and_summarized(tmp_path, dataset, platform):
    spec = _spec("x.csv", segment_failures={"policy": "global"})
    found = train_global(pd.read_parquet(dataset), spec, tmp_path / "global", log=lambda *_: None)
    outcome = train_shard(
        dataset, spec, ["north", "south"], tmp_path / "shard", log=lambda *_: None, global_model=found,
        fallback={"small": "has 2 row(s); at least 50 are needed", "atlantis": "has no rows in the data"},
    )  # fmt: skip
    evaluations = training_steps.evaluate_shard(
        spec, platform, dataset, tmp_path / "shard", ["north", "south"], fallback=outcome.fallback
    )
    by_segment = {e["segment"]: e for e in evaluations}
    assert (
        by_segment["atlantis"]["metrics"] == {} and "has no test rows" in by_segment["atlantis"]["undefined"]["auRoc"]
    )
    assert by_segment["atlantis"]["fallback"]["model"] == "global"
    # No champion yet and no test rows: the global model's validation metric makes it the first champion.
    assert by_segment["atlantis"]["promote"] and "first champion" in by_segment["atlantis"]["reason"]
    registered = training_steps.register_shard(spec, platform, tmp_path / "shard", evaluations)
    registered += training_steps.failed_rows(spec, {"east": "training failed: ValueError: boom"})
    version = platform.registry.get_version("churn-atlantis", "champion")
    assert version.lineage["fallback"]["model"] == "global"

    outcomes = {"rows": {"north": 240, "south": 240, "small": 2}, "skipped": {"gone": "has no rows"}, "fallback": {}}
    summary = summarize(registered, evaluations, outcomes, spec)
    head = summary.split("## Segments")[0]
    assert "| segments | 6 |" in head and "| served by the fleet's global model | 2 |" in head
    assert "| skipped | 1 |" in head and "| failed in training | 1 |" in head
    assert "pooled test auRoc" in head and "per-segment test auRoc | mean" in head
    assert "- east: failed: training failed: ValueError: boom" in head and "- gone: skipped: has no rows" in head
    assert "| atlantis (global model) | churn-atlantis | 1 |" in summary and "vNone" not in summary
    with pytest.raises(UserError, match=r"2 of 6 segment\(s\) \(33%\) were skipped or failed"):
        training_steps.check_failures(spec, registered, outcomes)
    training_steps.check_failures(spec, registered[:-1], {"skipped": {}})  # nothing lost: no error


def test_a_shard_registered_halfway_and_run_again_registers_nothing_twice(tmp_path, dataset, platform):
    """A run killed after part of a fleet registered: the rerun adds only what is missing."""
    spec = _spec("x.csv")
    train_shard(dataset, spec, ["north", "south", "east"], tmp_path / "shard", log=lambda *_: None)
    evaluations = training_steps.evaluate_shard(spec, platform, dataset, tmp_path / "shard", ["north", "south", "east"])
    training_steps.register_shard(spec, platform, tmp_path / "shard", evaluations[:1])  # the run dies after one model
    # The rerun trains again from scratch (new artifact files) and registers the whole shard.
    train_shard(dataset, spec, ["north", "south", "east"], tmp_path / "again", log=lambda *_: None)
    evaluations = training_steps.evaluate_shard(spec, platform, dataset, tmp_path / "again", ["north", "south", "east"])
    rows = training_steps.register_shard(spec, platform, tmp_path / "again", evaluations)
    assert [(r["segment"], r["version_id"], r["created"]) for r in rows] == [
        ("north", "1", False),
        ("south", "1", True),
        ("east", "1", True),
    ]
    assert all(len(platform.registry.list_versions(f"churn-{s}")) == 1 for s in ("north", "south", "east"))


def test_a_segment_whose_packed_fit_diverges_fails_alone(tmp_path):
    """Labels near float32's limit make one segment's loss overflow: it is recorded, the others train."""
    import numpy as np

    rng = np.random.default_rng(1)
    n = 600
    df = pd.DataFrame({"id": np.arange(n), "seg": np.repeat(["a", "b", "wild"], n // 3), "x": rng.normal(size=n)})
    df["c"] = rng.choice(["u", "v"], n)
    df["y"] = 3 * df["x"] + rng.normal(size=n)
    df.loc[df.seg == "wild", "y"] = rng.choice([-3e38, 3e38], n // 3)
    spec = parse_spec(
        {
            "name": "t",
            "task": "regression",
            "label": "y",
            "data": {"source": "x.csv", "segment_column": "seg", "split_key": "id"},
            "features": {"numeric": ["x"], "categorical": ["c"]},
            "architectures": ["linear"],
            "training": FAST,
        }
    )
    df.to_parquet(tmp_path / "raw.parquet")
    training_steps.split_dataset(spec, tmp_path / "raw.parquet", tmp_path / "dataset.parquet")
    outcome = train_shard(tmp_path / "dataset.parquet", spec, ["a", "b", "wild"], tmp_path / "out", log=lambda *_: None)
    assert [r.segment for r in outcome.results] == ["a", "b"]
    diverged = "no candidate trained (linear: packed training diverged: no finite validation loss)"
    assert outcome.failed == {"wild": diverged}
    assert not (tmp_path / "out" / "wild").exists()
