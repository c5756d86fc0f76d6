"""Traffic arithmetic agrees with google-cloud-aiplatform's own, case by case."""

import itertools

import pytest
from google.cloud.aiplatform import models as sdk

from fleetops.errors import UserError
from fleetops.serving.traffic import allocate, deploy_split, unallocate, undeploy_split


def test_the_documented_example():
    assert deploy_split({"111": 70, "222": 30}, "333", traffic_percentage=10) == {"111": 63, "222": 27, "333": 10}


@pytest.mark.parametrize("percentage", [0, 1, 7, 10, 33, 50, 99, 100])
@pytest.mark.parametrize("split", [{"a": 100}, {"a": 70, "b": 30}, {"a": 33, "b": 33, "c": 34}, {"a": 1, "b": 99}])
def test_allocate_matches_the_sdk(split, percentage):
    assert allocate(split, percentage) == sdk.Endpoint._allocate_traffic(dict(split), percentage)


def test_unallocate_matches_the_sdk_on_many_splits():
    for a, b in itertools.product(range(0, 101, 7), range(0, 101, 11)):
        if a + b > 100:
            continue
        split = {"a": a, "b": b, "c": 100 - a - b}
        for target in split:
            if split[target] == 100:
                continue
            assert unallocate(split, target) == sdk.Endpoint._unallocate_traffic(dict(split), target)


def test_first_model_takes_all_traffic():
    assert deploy_split({}, "1") == {"1": 100}
    assert deploy_split({}, "1", traffic_percentage=100) == {"1": 100}
    with pytest.raises(UserError, match="no deployed models, so the first deployed model must take 100"):
        deploy_split({}, "1", traffic_percentage=20)


def test_full_split_uses_zero_for_the_new_model():
    assert deploy_split({"a": 100}, "b", traffic_split={"a": 80, "0": 20}) == {"a": 80, "b": 20}
    with pytest.raises(UserError, match="sums to 90: Vertex requires the traffic split to sum to exactly 100"):
        deploy_split({"a": 100}, "b", traffic_split={"a": 80, "0": 10})
    with pytest.raises(UserError, match=r"names deployed models \['zz'\]"):
        deploy_split({"a": 100}, "b", traffic_split={"zz": 80, "0": 20})
    with pytest.raises(UserError, match="integer from 0 to 100"):
        deploy_split({"a": 100}, "b", traffic_percentage=120)


def test_undeploy_rules():
    assert undeploy_split({"a": 90, "b": 10}, "b") == {"a": 100}
    assert undeploy_split({"a": 50, "b": 25, "c": 25}, "c") == {"a": 67, "b": 33}
    assert undeploy_split({"a": 100}, "a") == {}
    with pytest.raises(UserError, match="would leave the remaining traffic split at 0%"):
        undeploy_split({"a": 100, "b": 0}, "a")
    assert undeploy_split({"a": 100, "b": 0}, "a", traffic_split={"a": 0, "b": 100}) == {"b": 100}
    with pytest.raises(UserError, match="must have 0 traffic"):
        undeploy_split({"a": 60, "b": 40}, "a", traffic_split={"a": 10, "b": 90})
    with pytest.raises(UserError, match="'x' is not on the endpoint"):
        undeploy_split({"a": 100}, "x")
