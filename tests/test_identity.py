"""A model version's identity is its weights, data and spec, not its zip: a rerun on identical data adds no version."""

import json
import shutil
import time

import numpy as np
import pytest

from fleetops import training_steps
from fleetops.data.sample import SAMPLE_SPEC, make_churn
from fleetops.data.split import with_splits
from fleetops.data.validation import segment_values
from fleetops.evaluation.report import summarize
from fleetops.fingerprints import directory_sha256, model_identity_sha256
from fleetops.model_card import remove_card
from fleetops.names import MODEL_METADATA_FILE, MODEL_STATISTICS_FILE, segment_slug
from fleetops.spec import parse_spec
from fleetops.training.artifact import load_artifact, read_metadata
from fleetops.training.segments import SEGMENT_COLUMN, train_segment

SEGMENT = "north"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three training runs of one tiny model: `a` and `b` on identical data and settings, `c` with another seed."""
    root = tmp_path_factory.mktemp("identity")
    base = parse_spec(SAMPLE_SPEC.format(source="x.csv")).model_dump(mode="json")
    spec = parse_spec(base | {"architectures": ["linear"], "training": base["training"] | {"epochs": 2, "seed": 1}})
    rows = with_splits(make_churn(rows_per_segment=200, segments=1, seed=3), spec.data.split, spec.data.split_key)
    rows[SEGMENT_COLUMN] = segment_values(rows, spec)
    rows.to_parquet(root / "dataset.parquet", index=False)
    model_dirs, saved = {}, -1e9
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        # Keras stamps the save time to the second: start over a second after the last save,
        # so that identical runs really get different zips.
        time.sleep(max(0.0, 1.1 - (time.monotonic() - saved)))
        params = spec.training.model_copy(update={"seed": seed})
        train_segment(rows, spec, SEGMENT, root / name / segment_slug(SEGMENT), params=params)
        saved = time.monotonic()
        model_dirs[name] = root / name
    return spec, root / "dataset.parquet", model_dirs


def _artifact(model_dir):
    return model_dir / segment_slug(SEGMENT)


def test_identical_training_gives_one_identity_though_the_zips_differ(runs):
    _, _, model_dirs = runs
    a, b, c = (_artifact(model_dirs[name]) for name in "abc")
    assert directory_sha256(a) != directory_sha256(b)  # the .keras zip records when it was saved
    identity = read_metadata(a)["identity_sha256"]
    assert read_metadata(b)["identity_sha256"] == identity
    assert read_metadata(c)["identity_sha256"] != identity  # another seed, other weights

    # The identity is recomputable from the saved artifact: it hashes what was stored.
    loaded = load_artifact(a)
    statistics = json.loads((a / MODEL_STATISTICS_FILE).read_text())
    assert model_identity_sha256(loaded.model, loaded.metadata, statistics) == identity
    # Timings and trial records are not identity; the data is.
    timed = loaded.metadata | {"tuning": {"trials": [{"seconds": 12.5}]}, "epochs_trained": 99}
    assert model_identity_sha256(loaded.model, timed, statistics) == identity
    other_data = loaded.metadata | {"data_sha256": "0" * 64}
    assert model_identity_sha256(loaded.model, other_data, statistics) != identity

    # One weight moved by the smallest step a float32 can take is another model.
    weights = loaded.model.get_weights()
    weights[0] = weights[0].copy()
    weights[0].flat[0] = np.nextafter(weights[0].flat[0], np.float32(np.inf))
    loaded.model.set_weights(weights)
    assert model_identity_sha256(loaded.model, loaded.metadata, statistics) != identity


def _register(spec, platform, dataset, model_dir, **changes):
    evaluations = [e | changes for e in training_steps.evaluate_shard(spec, platform, dataset, model_dir, [SEGMENT])]
    [row] = training_steps.register_shard(spec, platform, model_dir, evaluations)
    return row


def test_a_rerun_on_identical_data_adds_no_version_and_a_change_adds_one(runs, platform):
    spec, dataset, model_dirs = runs
    first = _register(spec, platform, dataset, model_dirs["a"])
    rerun = _register(spec, platform, dataset, model_dirs["b"])
    assert first["created"] and first["promoted"]
    assert not rerun["created"] and not rerun["promoted"]  # the same model cannot beat itself
    assert rerun["version_id"] == first["version_id"] == "1"
    version = platform.registry.get_version("churn-north", "1")
    assert version.identity_sha256 == read_metadata(_artifact(model_dirs["a"]))["identity_sha256"]
    assert version.artifact_sha256 == directory_sha256(_artifact(model_dirs["a"]))  # the stored bytes
    summary = summarize([rerun])
    assert "| north | churn-north | 1 (unchanged, no new version) | auRoc |" in summary

    changed = _register(spec, platform, dataset, model_dirs["c"], promote=True)
    assert changed["created"] and changed["version_id"] == "2"
    assert platform.registry.get_version("churn-north", "champion").version_id == "2"

    # The unchanged model wins again (say the new champion was rolled back): it keeps
    # its version and takes the aliases the upload could not give an existing version.
    again = _register(spec, platform, dataset, model_dirs["b"], promote=True)
    assert not again["created"] and again["version_id"] == "1"
    assert set(again["aliases"]) == {"champion", "default"}
    assert [v.version_id for v in platform.registry.list_versions("churn-north")] == ["1", "2"]


def test_an_artifact_without_identity_still_registers_on_its_bytes(runs, platform, tmp_path):
    spec, dataset, model_dirs = runs
    old = tmp_path / "old"
    shutil.copytree(model_dirs["a"], old)
    metadata_file = _artifact(old) / MODEL_METADATA_FILE
    metadata = json.loads(metadata_file.read_text())
    del metadata["identity_sha256"]  # as saved before identities existed
    metadata_file.write_text(json.dumps(metadata))
    remove_card(_artifact(old))  # the copy has the card an earlier test's registration wrote
    saved = directory_sha256(_artifact(old))
    first = _register(spec, platform, dataset, old)
    retry = _register(spec, platform, dataset, old)
    assert first["created"] and not retry["created"] and retry["version_id"] == first["version_id"]
    # Its identity is its bytes as saved: the model card registration writes into it is no part of them.
    version = platform.registry.get_version("churn-north", first["version_id"])
    assert version.identity_sha256 == saved
    assert version.artifact_sha256 == directory_sha256(platform.registry.artifact_path(version)) != saved


def test_segment_data_hashes_from_one_pass_equal_each_segments_own():
    from fleetops.data.sample import make_churn
    from fleetops.fingerprints import frame_sha256, frame_sha256_by

    df = make_churn(rows_per_segment=50, segments=5, seed=2)
    df["__split"] = "train"
    by = frame_sha256_by(df, "region", drop=("__split",))
    assert len(by) == 5
    for name, rows in df.groupby("region"):
        assert by[str(name)] == frame_sha256(rows.drop(columns=["__split"]))
