"""Golden compiled specs: compile every pipeline, strip volatile fields, compare or rewrite.

python -m tests.golden_specs --write     refresh tests/golden/ after a deliberate change
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

GOLDEN = Path(__file__).parent / "golden"
VOLATILE = ("sdkVersion",)


def compiled_specs(image: str | None = None) -> dict[str, dict[str, Any]]:
    from pipelines.compile import compile_all

    with tempfile.TemporaryDirectory() as tmp:
        return {name: normalise(yaml.safe_load(path.read_text())) for name, path in compile_all(tmp, image).items()}


def normalise(spec: dict[str, Any]) -> dict[str, Any]:
    for key in VOLATILE:
        spec.pop(key, None)
    return spec


def write() -> None:
    GOLDEN.mkdir(exist_ok=True)
    for name, spec in compiled_specs().items():
        (GOLDEN / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=True))
        print(f"wrote {GOLDEN / name}.yaml")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
    else:
        print(__doc__)
