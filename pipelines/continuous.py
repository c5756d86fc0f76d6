"""Continuous training: monitor the fleet; where skew or drift is found, retrain those segments, canary, promote."""

from kfp import dsl

from components import monitoring, serving
from fleetops.names import OUTPUT_ANOMALIES, OUTPUT_FLEET_NAME, OUTPUT_RETRAIN_SPEC, OUTPUT_RETURN_VALUE
from pipelines.training import fleet_training


@dsl.pipeline(
    name="fleetops-continuous-training",
    description="Monitor skew and drift; retrain only the flagged segments, canary the new champions, promote them.",
)
def continuous_training(fleet_spec: str, platform: str = "local", serving_image: str = ""):
    monitor_task = monitoring.monitor(fleet_spec=fleet_spec, platform=platform)
    monitor_task.set_caching_options(False)
    with dsl.If(monitor_task.outputs[OUTPUT_RETURN_VALUE] == True, name="drift-found"):  # noqa: E712 (a KFP condition)
        plan = monitoring.plan_retraining(fleet_spec=fleet_spec, anomalies=monitor_task.outputs[OUTPUT_ANOMALIES])
        retrain = fleet_training(
            fleet_spec=plan.outputs[OUTPUT_RETRAIN_SPEC], platform=platform, serving_image=serving_image
        )
        promote = serving.promote_canaries(fleet_name=plan.outputs[OUTPUT_FLEET_NAME], platform=platform)
        promote.after(retrain)
        promote.set_caching_options(False)
