"""Training component: the models of one shard of the fleet."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.image import fleetops_component


@fleetops_component
def train_global(
    fleet_spec: str,
    dataset: Input[Dataset],
    segments: Input[Artifact],
    tuning: Input[Artifact],
    global_model: Output[Model],
):
    """Train the fleet's global model on every segment's rows, when the spec needs one.

    It is needed for `training.warm_start: global` (each segment is fine-tuned from it) and for
    `segment_failures.policy: global` (a segment that cannot train its own model serves it); with
    `training.candidates: [segment, global]` the global candidate (the segment as a feature) is trained
    too, into `candidate/`, and competes with each segment's own models. Otherwise this step only says
    so; the compiled pipeline is the same either way.

    Args:
        fleet_spec: The fleet spec, YAML or JSON text.
        dataset: The split dataset.
        segments: The validate step's segment outcomes.
        tuning: The tune step's study; its `best_parameters` apply here too.
        global_model: Output. One standalone artifact per architecture and `global.json` naming the best.
    """
    import json
    from pathlib import Path

    from fleetops.spec import parse_spec

    spec = parse_spec(fleet_spec)
    Path(global_model.path).mkdir(parents=True, exist_ok=True)
    needs_global = spec.training.warm_start == "global" or spec.segment_failures.policy == "global"
    needs_candidate = "global" in spec.training.candidates
    if not (needs_global or needs_candidate):
        global_model.metadata["trained"] = False
        return

    import pandas as pd  # after the check: a run that needs no global model does not pay TensorFlow's import

    from fleetops.training.packed import train_global, train_global_candidate
    from fleetops.training.segments import fleet_classes
    from fleetops.tuning.adapter import apply_parameters

    with open(tuning.path) as handle:
        tuned = json.load(handle).get("best_parameters")
    params, architectures = apply_parameters(spec, tuned) if tuned else (None, None)
    rows = pd.read_parquet(dataset.path)
    classes = fleet_classes(dataset.path, spec)
    with open(segments.path) as handle:
        outcomes = json.load(handle)
    global_model.metadata.update({"trained": True, "fleet_segments": len(outcomes["rows"])})
    if needs_global:
        result = train_global(
            rows, spec, global_model.path, params=params, architectures=architectures, classes=classes
        )
        global_model.metadata["architecture"] = result.architecture
    if needs_candidate:
        candidate = train_global_candidate(
            rows, spec, global_model.path, params=params, architectures=architectures, classes=classes
        )
        global_model.metadata["candidate_architecture"] = candidate.architecture


@fleetops_component
def train(
    fleet_spec: str,
    platform: str,
    dataset: Input[Dataset],
    shard: dict,
    tuning: Input[Artifact],
    global_model: Input[Model],
    cpu_limit: str,
    memory_limit: str,
    model: Output[Model],
):
    """Train every segment of a shard packed (or one at a time when tuned per segment), keeping the best.

    Args:
        fleet_spec: The fleet spec, YAML or JSON text.
        platform: Platform URI; it tunes each segment when the spec says so, outside the model folder.
        dataset: The split dataset.
        shard: {"shard": i, "segments": [...], "fallback": {segment: reason}} from the validate step.
        tuning: The tune step's study; its `best_parameters` (tuned once for the fleet) apply to every segment.
        global_model: The fleet's global model: the warm start, and what `fallback` segments are given;
            its `candidate/` (when trained) competes with each segment's own models.
        cpu_limit: The CPUs this task's machine was asked for (recorded with the models).
        memory_limit: The memory this task's machine was asked for (recorded with the models).
        model: Output. A folder with one model artifact per segment (`<segment slug>/`) and `outcome.json`
            (segments given the global model, segments whose training failed and why).
    """
    import json
    from pathlib import Path

    from fleetops.platform import connect
    from fleetops.spec import parse_spec
    from fleetops.training.packed import GLOBAL_FILE, load_global, load_global_candidate
    from fleetops.training.segments import train_shard

    with open(tuning.path) as handle:
        tuned = json.load(handle).get("best_parameters")
    trained_global = (Path(global_model.path) / GLOBAL_FILE).is_file()
    spec = parse_spec(fleet_spec)
    outcome = train_shard(
        dataset.path,
        spec,
        shard["segments"],
        model.path,
        tuned=tuned,
        tuner=connect(platform).tune,
        fallback=shard.get("fallback") or {},
        global_model=load_global(global_model.path) if trained_global else None,
        global_candidate=load_global_candidate(global_model.path, spec),
    )
    machine = {"cpu_limit": cpu_limit, "memory_limit": memory_limit}
    # Counts only: an artifact's metadata travels inside every downstream task's command line, which has a
    # size limit; the per-segment outcome is in the model folder (`outcome.json`).
    counts = {"models": len(outcome.results), "fallback": len(outcome.fallback), "failed": len(outcome.failed)}
    model.metadata.update({"shard": shard["shard"], "machine": machine, **counts})
