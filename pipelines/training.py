"""The fleet training pipeline: one compiled spec for a fleet of any size.

The fleet spec and the platform are runtime parameters; the fan-out over
shards of segments is decided at run time by the validate step, so the
compiled spec does not grow with the fleet.
"""

from kfp import dsl

from components import data, evaluation, registry, serving, training, tuning

PIPELINE_NAME = "fleetops-training"


@dsl.pipeline(
    name=PIPELINE_NAME, description="Train, evaluate, register and canary-deploy one model per segment of a fleet."
)
def fleet_training(fleet_spec: str, platform: str = "local", serving_image: str = "") -> str:
    """Args:
    fleet_spec: The fleet spec (YAML or JSON text).
    platform: `local:///abs/home` or `vertex://PROJECT/REGION?...`.
    serving_image: Serving container for models registered on Vertex ('' = the spec's).
    """
    ingest_task = data.ingest(fleet_spec=fleet_spec, platform=platform).set_display_name("ingest")
    # The source may change between runs with the same parameters: always read it.
    ingest_task.set_caching_options(False)
    validate_task = data.validate(fleet_spec=fleet_spec, raw_data=ingest_task.outputs["raw_data"])
    split_task = data.split(fleet_spec=fleet_spec, raw_data=ingest_task.outputs["raw_data"]).after(validate_task)

    # Tuning once for the whole fleet (scope: fleet); per-segment tuning happens inside each train step.
    tune_task = tuning.tune(fleet_spec=fleet_spec, platform=platform, dataset=split_task.outputs["dataset"])
    with dsl.ParallelFor(validate_task.outputs["Output"], name="shards") as shard:
        train_task = training.train(
            fleet_spec=fleet_spec,
            platform=platform,
            dataset=split_task.outputs["dataset"],
            shard=shard,
            tuning=tune_task.outputs["trials"],
        )
        evaluate_task = evaluation.evaluate(
            fleet_spec=fleet_spec,
            platform=platform,
            dataset=split_task.outputs["dataset"],
            model=train_task.outputs["model"],
            shard=shard,
        )
        # The champion and the registry change between runs: never reuse an old answer.
        evaluate_task.set_caching_options(False)
        register_task = registry.register(
            fleet_spec=fleet_spec,
            platform=platform,
            model=train_task.outputs["model"],
            evaluation=evaluate_task.outputs["evaluation"],
            pipeline_job=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            serving_image=serving_image,
        )
        register_task.set_caching_options(False)
        # New champions go out as canaries (or to fresh endpoints) when the spec's serving.deploy says so.
        serving.deploy(
            fleet_spec=fleet_spec, platform=platform, registered=register_task.outputs["registered"]
        ).set_caching_options(False)

    summary_task = registry.summarize(registrations=dsl.Collected(register_task.outputs["Output"]))
    summary_task.set_caching_options(False)
    return summary_task.outputs["Output"]
