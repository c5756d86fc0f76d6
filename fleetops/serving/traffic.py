"""Vertex AI endpoint traffic arithmetic, exactly as google-cloud-aiplatform computes it.

A traffic split maps deployed-model id -> percent and sums to 100 (or is empty:
no traffic). In a deploy request the key "0" stands for the model being
deployed. The integer scaling and the "+1 to the first ones" fix-up below are
the SDK's `Endpoint._allocate_traffic` / `_unallocate_traffic`, float
arithmetic included, so the local twin and Vertex agree to the percent.
"""

from __future__ import annotations

from fleetops.errors import UserError

DEPLOYING_KEY = "0"


def check_split(split: dict[str, int], what: str = "traffic_split") -> None:
    """A split is empty or sums to exactly 100, with percentages in 0..100."""
    for key, value in split.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
            raise UserError(f"{what}[{key!r}] = {value!r}: each percentage must be an integer from 0 to 100")
    if split and sum(split.values()) != 100:
        raise UserError(
            f"{what} {split} sums to {sum(split.values())}: Vertex requires the traffic split to sum to exactly 100 "
            "(or to be empty, for no traffic)"
        )


def deploy_split(
    current: dict[str, int],
    new_id: str,
    traffic_percentage: int | None = None,
    traffic_split: dict[str, int] | None = None,
) -> dict[str, int]:
    """The endpoint's split after deploying `new_id`.

    Either `traffic_percentage` (the others are scaled down) or a full
    `traffic_split` in which the key "0" means the model being deployed.
    """
    if traffic_split is not None and traffic_percentage:
        raise UserError("give traffic_percentage or traffic_split, not both")
    if traffic_split is not None:
        check_split(traffic_split)
        unknown = sorted(set(traffic_split) - set(current) - {DEPLOYING_KEY})
        if unknown:
            raise UserError(
                f"traffic_split names deployed models {unknown} that are not on the endpoint; "
                f"deployed: {sorted(current)}, and '0' for the model being deployed"
            )
        return {(new_id if k == DEPLOYING_KEY else k): v for k, v in traffic_split.items()}
    percentage = 0 if traffic_percentage is None else traffic_percentage
    if not isinstance(percentage, int) or not 0 <= percentage <= 100:
        raise UserError(f"traffic_percentage {percentage!r} must be an integer from 0 to 100")
    if not current:
        if percentage == 0:
            percentage = 100
        elif percentage < 100:
            raise UserError(
                f"traffic_percentage {percentage} refused: the endpoint has no deployed models, "
                "so the first deployed model must take 100 (or 0, taken as 100)"
            )
    split = allocate(current, percentage)
    split[new_id] = split.pop(DEPLOYING_KEY)
    return split


def allocate(current: dict[str, int], percentage: int) -> dict[str, int]:
    """`Endpoint._allocate_traffic`: scale the others into 100 - percentage, then +1 fix-ups in order."""
    new_split: dict[str, int] = {}
    old_models_traffic = 100 - percentage
    if old_models_traffic:
        for deployed_model in current:
            new_split[deployed_model] = int(current[deployed_model] / 100 * old_models_traffic)
        _fix_up(new_split, old_models_traffic)
    new_split[DEPLOYING_KEY] = percentage
    return new_split


def undeploy_split(
    current: dict[str, int], deployed_id: str, traffic_split: dict[str, int] | None = None
) -> dict[str, int]:
    """The split after undeploying `deployed_id` (which is removed from it).

    `current` lists every deployed model, those with 0% included (as Vertex's split does).
    """
    if deployed_id not in current:
        raise UserError(f"deployed model {deployed_id!r} is not on the endpoint; deployed: {sorted(current)}")
    if traffic_split is not None:
        if traffic_split.get(deployed_id):
            raise UserError(
                f"traffic_split gives {traffic_split[deployed_id]}% to {deployed_id!r}, the model being undeployed: "
                "it must have 0 traffic"
            )
        check_split(traffic_split)
        _check_undeploy_split_not_empty(traffic_split, deployed_id)
        return {k: v for k, v in traffic_split.items() if k != deployed_id}
    if len(current) > 1 and current[deployed_id] == 100:
        raise UserError(
            f"undeploying {deployed_id!r} would leave the remaining traffic split at 0%: it holds 100% while other "
            "models are deployed; give them traffic first or pass a traffic_split"
        )
    split = unallocate(current, deployed_id)
    split.pop(deployed_id)
    return split


def _check_undeploy_split_not_empty(traffic_split: dict[str, int], deployed_id: str) -> None:
    """An undeploy's split must sum to 100: `Endpoint.undeploy` refuses an empty one, though its docstring allows it.

    The SDK checks `sum(traffic_split.values()) != 100` for any split given, so `{}` fails there
    with "Sum of all traffic within traffic split needs to be 100."; the twin refuses it the same way.
    """
    if not traffic_split:
        raise UserError(
            f"traffic_split {traffic_split} refused for undeploying {deployed_id!r}: an undeploy's traffic_split "
            "must sum to exactly 100 over the models that stay (Vertex's SDK refuses an empty one: 'Sum of all "
            "traffic within traffic split needs to be 100.'); pass no traffic_split to rescale the others "
            "(or to undeploy the last model)"
        )


def unallocate(current: dict[str, int], deployed_id: str) -> dict[str, int]:
    """`Endpoint._unallocate_traffic`: rescale the others to fill 100, +1 fix-ups in order; the target gets 0."""
    new_split = dict(current)
    del new_split[deployed_id]
    left = 100 - current[deployed_id]
    if left:
        for deployed_model in new_split:
            new_split[deployed_model] = int(current[deployed_model] / left * 100)
        _fix_up(new_split, 100)
    new_split[deployed_id] = 0
    return new_split


def _fix_up(split: dict[str, int], total: int) -> None:
    """The SDK's rounding repair: +1 to the first models, in order, until the split reaches `total`."""
    unallocated = total - sum(split.values())
    for deployed_model in split:
        if unallocated == 0:
            break
        split[deployed_model] += 1
        unallocated -= 1
