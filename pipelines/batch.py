"""Batch prediction pipeline: a table in, each row scored by its segment's champion."""

from kfp import dsl

from components import batch
from fleetops.names import OUTPUT_RETURN_VALUE


@dsl.pipeline(name="fleetops-batch-prediction", description="Score a table with each segment's model of a fleet.")
def fleet_batch_prediction(fleet_spec: str, source: str, platform: str = "local", version: str = "champion") -> str:
    task = batch.batch_predict(fleet_spec=fleet_spec, platform=platform, source=source, version=version)
    task.set_caching_options(False)  # the source and the champions change between runs
    return task.outputs[OUTPUT_RETURN_VALUE]
