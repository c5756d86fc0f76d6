"""Co-hosting (serving.cohosting: pool): the spec, the SavedModel export, registering for the TF container.

Deploying into the pool, canaries and rollbacks are in tests/test_endpoints_vertex.py and tests/test_deployment.py.
"""

import pytest

from fleetops.errors import SpecError
from fleetops.spec import PREBUILT_TF_IMAGE, parse_spec

EUROPE_TF = "europe-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"


def _with(spec, **sections):
    document = spec.model_dump(mode="json")
    return parse_spec(document | {name: document[name] | changes for name, changes in sections.items()})


def test_the_spec_field_and_its_refusals(spec):
    assert spec.serving.cohosting == "none" and spec.serving_pool is None
    pooled = _with(spec, serving={"cohosting": "pool"})
    assert pooled.serving_pool == "churn-pool"
    assert _with(spec, serving={"cohosting": "pool", "pool_id": "shared-cpu"}).serving_pool == "shared-cpu"
    # Another prebuilt TensorFlow CPU image (another region's copy) is co-hostable too.
    assert _with(spec, serving={"cohosting": "pool"}, registry={"serving_image": EUROPE_TF}).serving_pool

    with pytest.raises(SpecError) as custom:
        _with(spec, serving={"cohosting": "pool"}, registry={"serving_image": "us-docker.pkg.dev/p/r/fleetops:1"})
    assert "registry.serving_image 'us-docker.pkg.dev/p/r/fleetops:1' is a custom container" in str(custom.value)
    assert f"fleetops then uses {PREBUILT_TF_IMAGE}" in str(custom.value)
    with pytest.raises(SpecError) as gpu:
        _with(spec, serving={"cohosting": "pool", "machine_type": "a2-highgpu-1g"})
    assert "serving: machine_type 'a2-highgpu-1g' comes with GPUs" in str(gpu.value)
    with pytest.raises(SpecError, match="serving: pool_id 'p1' is set but cohosting is 'none'"):
        _with(spec, serving={"pool_id": "p1"})
    with pytest.raises(SpecError, match="serving.pool_id: String should match pattern"):
        _with(spec, serving={"cohosting": "pool", "pool_id": "Pool_1"})
    with pytest.raises(SpecError, match="serving.cohosting: Input should be 'none' or 'pool'"):
        _with(spec, serving={"cohosting": "endpoint"})
    # Without co-hosting a GPU machine and a custom image stay allowed.
    _with(spec, serving={"machine_type": "a2-highgpu-1g"}, registry={"serving_image": "img"})
