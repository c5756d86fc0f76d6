"""Submit a compiled pipeline to a Kubeflow Pipelines cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def submit_to_kfp(
    host: str,
    template_path: str | Path,
    arguments: dict[str, Any],
    *,
    run_name: str,
    experiment: str = "fleetops",
    enable_caching: bool | None = None,
) -> str:
    """Create a run on the KFP cluster at `host`; return its run id."""
    import kfp

    client = kfp.Client(host=host)
    run = client.create_run_from_pipeline_package(
        str(template_path),
        arguments=arguments,
        run_name=run_name,
        experiment_name=experiment,
        enable_caching=enable_caching,
    )
    return run.run_id
