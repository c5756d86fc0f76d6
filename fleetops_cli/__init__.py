"""The `fleetops` command and what it runs on this machine.

`cli` is the command (`setup.py`'s console script); `demo` is `fleetops demo`; `local_run` is the
kfp.local child process of a local pipeline run (`fleetops.platform.local.pipeline_runs` starts
`python -m fleetops_cli.local_run`); `submit` sends a compiled pipeline to a KFP cluster;
`child_server` starts server processes and waits until they answer. Unlike the `fleetops` library,
this package may import kfp.
"""
