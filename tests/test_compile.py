"""Compiled specs: golden files, the components image, and a spec that does not grow with the fleet."""

import yaml

from components.image import DEFAULT_IMAGE
from fleetops import names
from pipelines.compile import compile_all, set_image
from tests.golden_specs import GOLDEN, compiled_specs


def test_compiled_specs_match_golden_files():
    for name, spec in compiled_specs().items():
        golden = yaml.safe_load((GOLDEN / f"{name}.yaml").read_text())
        assert spec == golden, f"{name} changed; if deliberate, run `make golden` and review the diff"


def test_every_executor_runs_our_image_without_installing_kfp(tmp_path):
    path = compile_all(tmp_path, image="europe-docker.pkg.dev/p/r/components:abc123")["fleet_training"]
    spec = yaml.safe_load(path.read_text())
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 10
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == "europe-docker.pkg.dev/p/r/components:abc123"
        assert "pip install" not in " ".join(container["command"])  # install_kfp_package=False
    default = yaml.safe_load(compile_all(tmp_path / "d")["fleet_training"].read_text())
    assert {e["container"]["image"] for e in default["deploymentSpec"]["executors"].values()} == {DEFAULT_IMAGE}


def test_set_image_refuses_a_non_uri(tmp_path):
    path = compile_all(tmp_path)["fleet_training"]
    try:
        set_image(path, "not an image")
    except ValueError as exc:
        assert "'not an image' is not a container image URI" in str(exc)
    else:
        raise AssertionError("expected ValueError")


def test_spec_does_not_depend_on_the_fleet():
    spec = compiled_specs()["fleet_training"]
    text = yaml.safe_dump(spec)
    assert "north" not in text and "churn" not in text  # no segment or fleet is baked in
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(inputs) == {
        names.PARAM_FLEET_SPEC,
        names.PARAM_PLATFORM,
        names.PARAM_SERVING_IMAGE,
        names.PARAM_TRAIN_CPU_LIMIT,
        names.PARAM_TRAIN_MEMORY_LIMIT,
    }
    assert set(names.pipeline_arguments("{}", "local")) <= set(inputs)
    loop = spec["root"]["dag"]["tasks"]["for-loop-1"]
    # The training machine is a run-time parameter, also inside the fan-out (a big fleet, a big machine).
    train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert train["resourceCpuLimit"] == "{{$.inputs.parameters['pipelinechannel--train_cpu_limit']}}"
    assert train["resourceMemoryLimit"] == "{{$.inputs.parameters['pipelinechannel--train_memory_limit']}}"
    loop_inputs = spec["components"]["comp-for-loop-1"]["inputDefinitions"]["parameters"]
    assert {"pipelinechannel--train_cpu_limit", "pipelinechannel--train_memory_limit"} <= set(loop_inputs)
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--validate-Output"
    assert spec["root"]["dag"]["tasks"]["ingest"]["cachingOptions"] == {}  # never cached


def test_the_shared_names_are_the_compiled_pipelines_own():
    """fleetops.names spells the keys components declare literally: each task and output read after a run, each
    parameter a run is given, is in the compiled specs (a renamed output or parameter fails here, not in a run)."""
    specs = compiled_specs()
    for pipeline in ("fleet_training", "continuous_training"):
        inputs = specs[pipeline]["root"]["inputDefinitions"]["parameters"]
        assert set(names.pipeline_arguments("{}", "local")) <= set(inputs), pipeline
    outputs = {}  # every component's outputs (artifacts and parameters), by component name
    for spec in specs.values():
        for component, body in spec["components"].items():
            defined = body.get("outputDefinitions", {})
            outputs[component.removeprefix("comp-")] = {*defined.get("artifacts", {}), *defined.get("parameters", {})}
    read_after_a_run = {
        names.TASK_VALIDATE: {names.OUTPUT_SEGMENTS},
        names.TASK_EVALUATE: {names.OUTPUT_EVALUATION},
        names.TASK_REGISTER: {names.OUTPUT_REGISTERED},
        names.TASK_SUMMARIZE: {names.OUTPUT_SUMMARY, names.OUTPUT_SCORECARD, names.OUTPUT_RETURN_VALUE},
        names.TASK_MONITOR: {names.OUTPUT_ANOMALIES, names.OUTPUT_REPORT, names.OUTPUT_RETURN_VALUE},
    }
    for task, wanted in read_after_a_run.items():
        assert wanted <= outputs[task], (task, wanted - outputs[task])
    every = {value for key, value in vars(names).items() if key.startswith("OUTPUT_")}
    assert every <= set().union(*outputs.values()), every - set().union(*outputs.values())
