"""Dockerfile and cloudbuild.yaml: they parse, name files that exist, and their non-Docker steps run here."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_installs_the_package_from_files_that_exist():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.MULTILINE)
    sources = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ")]
    for names in sources:
        for name in names:
            assert (ROOT / name).exists(), f"Dockerfile copies {name}, which does not exist"
    assert "pip install" in text


def test_the_image_installs_and_checks_what_serving_every_model_kind_needs():
    """The components image is also the serving container: boosted trees need xgboost, LiteRT flatbuffers
    their interpreter; both come with setup.py's install_requires, and the build imports them."""
    text = (ROOT / "Dockerfile").read_text()
    setup = (ROOT / "setup.py").read_text()
    assert re.search(r'"xgboost-cpu==[\d.]+"', setup) and re.search(r'"ai-edge-litert==[\d.]+"', setup)
    # setup.py is copied before the dependency install (`pip install .`), which installs its install_requires.
    assert text.index("COPY setup.py") < text.index("pip install .") < text.index("pip uninstall -y fleetops")
    check = re.search(r'python -c "([^"]+)"', text).group(1)
    assert "xgboost" in check and "ai_edge_litert" in check and "fleetops.serving.predictor" in check
    subprocess.run([sys.executable, "-c", check], cwd=ROOT, check=True, capture_output=True)


def test_cloudbuild_steps_are_wired():
    build = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    ids = [s["id"] for s in build["steps"]]
    assert ids == ["test", "build-image", "push-image", "compile", "upload-templates"]
    assert build["images"] == ["${_IMAGE}"]
    for step in build["steps"][1:]:
        assert step["waitFor"] and set(step["waitFor"]) <= set(ids)
    makefile = (ROOT / "Makefile").read_text()
    for step in build["steps"]:
        if step.get("entrypoint") == "make":
            assert re.search(rf"^{step['args'][0]}:", makefile, re.MULTILINE), f"no make target {step['args'][0]}"


def test_test_step_is_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert block.strip().splitlines() == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    dry = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "pytest" in dry.stdout


def test_compile_and_upload_steps_run(tmp_path):
    build = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    steps = {s["id"]: s for s in build["steps"]}
    image = "us-central1-docker.pkg.dev/proj-1/fleetops/components:abc123"
    venv = Path(sys.executable).parent.parent
    args = [a.replace("${_IMAGE}", image).replace("build/pipelines", str(tmp_path)) for a in steps["compile"]["args"]]
    subprocess.run(["make", *args, f"VENV={venv}"], cwd=ROOT, check=True, capture_output=True)
    compiled = tmp_path / "fleet_training.yaml"
    assert image in compiled.read_text()

    upload = [
        a.replace("${_TEMPLATES_HOST}", "https://us-central1-kfp.pkg.dev/proj-1/fleetops-templates")
        .replace("${SHORT_SHA}", "abc123")
        .replace("build/pipelines/fleet_training.yaml", str(compiled))
        for a in steps["upload-templates"]["args"]
    ]
    result = subprocess.run(
        [sys.executable, *upload, "--dry-run"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert f"would upload {compiled}" in result.stdout and "'abc123', 'latest'" in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "pipelines.upload_templates", "--host", "http://x", str(compiled)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "must look like https://REGION-kfp.pkg.dev/PROJECT/REPO" in bad.stderr
