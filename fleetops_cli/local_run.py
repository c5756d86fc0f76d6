"""The child process of a local pipeline run: the compiled template under kfp.local.

`fleetops.platform.local.pipeline_runs.run_compiled` starts it (`python -m fleetops_cli.local_run TEMPLATE
RUN_DIR PIPELINE_ROOT`), follows its log and reports progress; here is the only kfp of a local run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _child(template: str, run_dir: str, pipeline_root: str) -> int:
    from kfp import components, local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root)
    arguments = json.loads((Path(run_dir) / "arguments.json").read_text())
    pipeline = components.load_component_from_file(template)
    task = pipeline(**arguments)
    outputs = {name: _jsonable(value) for name, value in task.outputs.items()}
    (Path(run_dir) / "outputs.json").write_text(json.dumps(outputs, indent=2))
    return 0


def _jsonable(value: Any) -> Any:
    if hasattr(value, "uri"):
        return {"uri": value.uri, "metadata": dict(getattr(value, "metadata", {}))}
    return value


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:4]))
