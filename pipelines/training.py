"""The fleet training pipeline: one compiled spec for a fleet of any size.

The fleet spec and the platform are runtime parameters; the fan-out over
shards of segments is decided at run time by the validate step, so the
compiled spec does not grow with the fleet.
"""

from kfp import dsl

from components import data, evaluation, registry, serving, training, tuning
from fleetops.names import (
    OUTPUT_DATASET,
    OUTPUT_EVALUATION,
    OUTPUT_GLOBAL_MODEL,
    OUTPUT_MODEL,
    OUTPUT_RAW_DATA,
    OUTPUT_REGISTERED,
    OUTPUT_RETURN_VALUE,
    OUTPUT_SEGMENTS,
    OUTPUT_TRIALS,
)

PIPELINE_NAME = "fleetops-training"


@dsl.pipeline(
    name=PIPELINE_NAME, description="Train, evaluate, register and canary-deploy one model per segment of a fleet."
)
def fleet_training(
    fleet_spec: str,
    platform: str = "local",
    serving_image: str = "",
    train_cpu_limit: str = "4",
    train_memory_limit: str = "16G",
) -> str:
    """Args:
    fleet_spec: The fleet spec (YAML or JSON text).
    platform: `local:///abs/home` or `vertex://PROJECT/REGION?...`.
    serving_image: Serving container for models registered on Vertex ('' = the spec's).
    train_cpu_limit: CPUs of each training task's machine on Vertex (a bigger fleet, a bigger machine;
        no recompiling). kfp.local ignores it.
    train_memory_limit: Memory of each training task's machine on Vertex, e.g. "16G".
    """
    ingest_task = data.ingest(fleet_spec=fleet_spec, platform=platform).set_display_name("ingest")
    # The source may change between runs with the same parameters: always read it.
    ingest_task.set_caching_options(False)
    validate_task = data.validate(fleet_spec=fleet_spec, raw_data=ingest_task.outputs[OUTPUT_RAW_DATA])
    split_task = data.split(fleet_spec=fleet_spec, raw_data=ingest_task.outputs[OUTPUT_RAW_DATA]).after(validate_task)

    # Tuning once for the whole fleet (scope: fleet); per-segment tuning happens inside each train step.
    tune_task = tuning.tune(fleet_spec=fleet_spec, platform=platform, dataset=split_task.outputs[OUTPUT_DATASET])
    # The fleet's global model, when the spec warm-starts from it or falls back to it (else a no-op).
    global_task = training.train_global(
        fleet_spec=fleet_spec,
        dataset=split_task.outputs[OUTPUT_DATASET],
        segments=validate_task.outputs[OUTPUT_SEGMENTS],
        tuning=tune_task.outputs[OUTPUT_TRIALS],
    )
    global_task.set_cpu_limit(train_cpu_limit).set_memory_limit(train_memory_limit)
    with dsl.ParallelFor(validate_task.outputs[OUTPUT_RETURN_VALUE], name="shards") as shard:
        train_task = training.train(
            fleet_spec=fleet_spec,
            platform=platform,
            dataset=split_task.outputs[OUTPUT_DATASET],
            shard=shard,
            tuning=tune_task.outputs[OUTPUT_TRIALS],
            global_model=global_task.outputs[OUTPUT_GLOBAL_MODEL],
            # Also as arguments: KFP 2.17 plumbs a parameter into a ParallelFor only when a task consumes it,
            # and the resource settings alone do not count (the loop would reference an undefined input).
            cpu_limit=train_cpu_limit,
            memory_limit=train_memory_limit,
        )
        train_task.set_cpu_limit(train_cpu_limit).set_memory_limit(train_memory_limit)
        evaluate_task = evaluation.evaluate(
            fleet_spec=fleet_spec,
            platform=platform,
            dataset=split_task.outputs[OUTPUT_DATASET],
            model=train_task.outputs[OUTPUT_MODEL],
            shard=shard,
        )
        # The champion and the registry change between runs: never reuse an old answer.
        evaluate_task.set_caching_options(False)
        register_task = registry.register(
            fleet_spec=fleet_spec,
            platform=platform,
            model=train_task.outputs[OUTPUT_MODEL],
            evaluation=evaluate_task.outputs[OUTPUT_EVALUATION],
            pipeline_job=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            serving_image=serving_image,
        )
        register_task.set_caching_options(False)
        # New champions go out as canaries (or to fresh endpoints) when the spec's serving.deploy says so.
        serving.deploy(
            fleet_spec=fleet_spec, platform=platform, registered=register_task.outputs[OUTPUT_REGISTERED]
        ).set_caching_options(False)

    summary_task = registry.summarize(
        fleet_spec=fleet_spec,
        registrations=dsl.Collected(register_task.outputs[OUTPUT_REGISTERED]),
        evaluations=dsl.Collected(evaluate_task.outputs[OUTPUT_EVALUATION]),
        segments=validate_task.outputs[OUTPUT_SEGMENTS],
    )
    summary_task.set_caching_options(False)
    return summary_task.outputs[OUTPUT_RETURN_VALUE]
