"""Compile every pipeline to YAML, optionally naming the components image."""

from __future__ import annotations

from pathlib import Path

import yaml
from kfp import compiler

from components.image import DEFAULT_IMAGE
from pipelines.batch import fleet_batch_prediction
from pipelines.continuous import continuous_training
from pipelines.serving import fleet_promote, fleet_rollback
from pipelines.training import fleet_training

PIPELINES = {
    "fleet_training": fleet_training,
    "fleet_batch_prediction": fleet_batch_prediction,
    "continuous_training": continuous_training,
    "fleet_promote": fleet_promote,
    "fleet_rollback": fleet_rollback,
}


def compile_all(output_dir: str | Path, image: str | None = None) -> dict[str, Path]:
    """Write `<name>.yaml` for each pipeline into `output_dir`; return the paths by name."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, pipeline in PIPELINES.items():
        path = output_dir / f"{name}.yaml"
        compiler.Compiler().compile(pipeline, str(path))
        if image and image != DEFAULT_IMAGE:
            set_image(path, image)
        paths[name] = path
    return paths


def set_image(path: str | Path, image: str) -> None:
    """Point every executor of a compiled spec at `image`."""
    if not image or any(c.isspace() for c in image):
        raise ValueError(f"image {image!r} is not a container image URI")
    path = Path(path)
    spec = yaml.safe_load(path.read_text())
    for executor in spec["deploymentSpec"]["executors"].values():
        if "container" in executor:
            executor["container"]["image"] = image
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
