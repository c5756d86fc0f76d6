"""fleetops: MLOps on Vertex AI for fleets of models.

The library holds all the logic (no `kfp` import); `components/` and
`pipelines/` wrap it for Kubeflow Pipelines; `fleetops_cli/` is the
`fleetops` command and what it runs on this machine.
"""

__version__ = "0.1.0"
