"""Release pipelines: promote or roll back the canaries of a fleet."""

from kfp import dsl

from components import serving


@dsl.pipeline(name="fleetops-promote", description="Give every canary of a fleet all of its endpoint's traffic.")
def fleet_promote(fleet_name: str, platform: str = "local") -> str:
    task = serving.promote_canaries(fleet_name=fleet_name, platform=platform)
    task.set_caching_options(False)
    return task.output


@dsl.pipeline(name="fleetops-rollback", description="Undeploy every canary of a fleet, restoring the previous models.")
def fleet_rollback(fleet_name: str, platform: str = "local") -> str:
    task = serving.rollback_canaries(fleet_name=fleet_name, platform=platform)
    task.set_caching_options(False)
    return task.output
