"""A seeded generator of a realistic customer-churn table, one segment per region.

Each region has its own relationship between features and churn (so a model
per segment beats one global model), churn is imbalanced (~15-30%), and some
values are missing, as in real CRM exports.

Any fleet size from 1 to MAX_SEGMENTS regions: the first eight are the named
REGIONS, the rest are `region-00008`, `region-00009`, ... with effects drawn
from the seed. Up to eight segments the table is exactly what earlier versions
generated for the same arguments, so tests and the demo keep their data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

REGIONS = ("north", "south", "east", "west", "central", "coastal", "mountain", "metro")
PLANS = ("basic", "standard", "premium")
CONTRACTS = ("monthly", "annual", "two_year")
PAYMENT = ("card", "bank", "invoice", "voucher")

MAX_SEGMENTS = 100_000
GENERATED_PREFIX = "region-"
MAX_SIZE_SPREAD = 2.0

SAMPLE_SPEC = """\
name: churn
task: binary_classification
label: churned
data:
  source: {source}
  segment_column: region
  split_key: customer_id
features:
  numeric: [tenure_months, monthly_charges, support_calls, data_usage_gb]
  categorical: [plan, contract, payment_method]
architectures: [linear, dnn]
training:
  epochs: 30
  batch_size: 64
  learning_rate: 0.01
  hidden_units: [16, 8]
  early_stopping_patience: 4
  seed: 7
evaluation:
  primary_metric: auRoc
  promote_if_better_by: 0.005
  slice_columns: [plan]
registry:
  labels: {{team: growth}}
monitoring:
  # support_calls is a small count (0-8): equal-width buckets over different ranges split its
  # integer values differently on each side, so its Jensen-Shannon divergence runs high
  # without any drift. A looser threshold for it, as Vertex users set per feature.
  feature_thresholds: {{support_calls: 0.6}}
"""


def make_churn(rows_per_segment: int = 600, segments: int = 4, seed: int = 7, size_spread: float = 0.0) -> pd.DataFrame:
    """Generate the churn table: `segments` regions of about `rows_per_segment` customers each.

    Args:
        rows_per_segment: Customers per region; with `size_spread`, the median region size.
        segments: How many regions, 1 to MAX_SEGMENTS: the named REGIONS first, then the
            generated ones (see `segment_name`).
        seed: Seeds every draw: the same arguments give the same table.
        size_spread: 0 gives every region `rows_per_segment` customers. Above 0 (up to
            MAX_SIZE_SPREAD), region sizes are lognormal with this sigma around
            `rows_per_segment`, as real segments are: 0.5 puts most within 0.4x-2.7x.

    Returns:
        One row per customer: `customer_id` (unique), `region`, the features and `churned` (0/1).

    Raises:
        ValueError: An argument is out of range; the message names it and what is allowed.
    """
    _check_arguments(rows_per_segment, segments, size_spread)
    rng = np.random.default_rng(seed)
    sizes = _segment_sizes(rows_per_segment, segments, seed, size_spread)
    named = min(segments, len(REGIONS))
    # The named regions draw one after another from `rng`, exactly as before generated regions
    # existed, so their data for a given seed never changes.
    parts = [_customers(rng, int(sizes[index]), *_named_effects(index)) for index in range(named)]
    if segments > named:
        # One set of draws for all generated regions at once, each row carrying its region's
        # effects: a set of draws per region would cost seconds for thousands of regions.
        effects = np.repeat(_generated_effects(seed, segments - named), sizes[named:], axis=0)
        parts.append(_customers(rng, len(effects), *effects.T))
    return _table(parts, sizes)


def write_sample(
    path: str | Path, rows_per_segment: int = 600, segments: int = 4, seed: int = 7, size_spread: float = 0.0
) -> Path:
    """Write the churn table to CSV or Parquet (by extension) and return the path.

    Args:
        path: Where to write; must end in `.csv` or `.parquet`. Missing folders are created.
        rows_per_segment: As for `make_churn`.
        segments: As for `make_churn`.
        seed: As for `make_churn`.
        size_spread: As for `make_churn`.

    Returns:
        The path written.

    Raises:
        ValueError: The extension is neither `.csv` nor `.parquet`, or an argument is out of range.
    """
    # Checked before generating: a typo in the extension should not cost a large table's generation.
    check_sample_path(path)
    return save_table(make_churn(rows_per_segment, segments, seed, size_spread), path)


def save_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a generated table to CSV or Parquet (by extension), creating folders; return the path.

    Raises:
        ValueError: The extension is neither `.csv` nor `.parquet`.
    """
    path = check_sample_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def check_sample_path(path: str | Path) -> Path:
    """`path` as a Path if it ends in `.csv` or `.parquet`.

    Raises:
        ValueError: It ends in anything else.
    """
    path = Path(path)
    if path.suffix not in (".csv", ".parquet"):
        raise ValueError(f"sample path must end in .csv or .parquet, got {path}")
    return path


def segment_name(index: int) -> str:
    """The name of the region at 0-based position `index` in a generated table.

    The first eight are REGIONS; after them `region-00008`, `region-00009`, ...: the number is
    the position, zero-padded to the width of MAX_SEGMENTS - 1 so that names sort in position
    order, and the name is already a valid Vertex model id part (see `fleetops.names.segment_slug`).
    """
    if index < len(REGIONS):
        return REGIONS[index]
    return f"{GENERATED_PREFIX}{index:0{len(str(MAX_SEGMENTS - 1))}d}"


# Effects of the named regions, by position: what drives churn differs from region to region.
_PRICE_WEIGHTS = (1.6, 0.4, 1.0, 0.2, 1.2, 0.8, 0.5, 1.4)
_SUPPORT_WEIGHTS = (0.3, 1.2, 0.6, 1.0, 0.4, 0.9, 1.3, 0.2)
_BASE_RATES = (-1.6, -1.2, -1.9, -1.0, -1.4, -1.7, -1.1, -1.5)

# Ranges of the generated regions' effects, spanning the named ones': (price weight, support
# weight, base rate, monthly charge offset, log-mean of data usage).
_EFFECT_LOW = np.array([0.2, 0.2, -1.9, 0.0, 2.0])
_EFFECT_HIGH = np.array([1.6, 1.3, -1.0, 35.0, 2.7])

_PLAN_PRICE = np.array([30.0, 55.0, 90.0])  # by position in PLANS
_CONTRACT_EFFECT = np.array([1.1, -0.3, -1.2])  # by position in CONTRACTS: monthly contracts churn
_PAYMENT_EFFECT = np.array([0.0, 0.0, 0.0, 0.7])  # by position in PAYMENT: voucher payers churn


def _check_arguments(rows_per_segment: int, segments: int, size_spread: float) -> None:
    if not 1 <= segments <= MAX_SEGMENTS:
        raise ValueError(f"segments must be between 1 and {MAX_SEGMENTS:,}, got {segments}")
    if rows_per_segment < 1:
        raise ValueError(f"rows_per_segment must be at least 1, got {rows_per_segment}")
    if not 0 <= size_spread <= MAX_SIZE_SPREAD:  # also rejects NaN
        raise ValueError(f"size_spread must be between 0 and {MAX_SIZE_SPREAD}, got {size_spread}")


def _segment_sizes(rows_per_segment: int, segments: int, seed: int, size_spread: float) -> np.ndarray:
    if size_spread == 0:
        return np.full(segments, rows_per_segment)
    # A stream of its own, so spreading sizes leaves the main stream's draw order as it is; and a
    # region's size depends only on its position, not on how many regions follow it.
    draws = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1]).lognormal(0.0, size_spread, segments)
    return np.maximum(1, np.rint(rows_per_segment * draws)).astype(int)


def _named_effects(index: int) -> tuple[float, float, float, float, float]:
    # Charge offset and usage log-mean computed as they always were, so the floats are the same.
    return _PRICE_WEIGHTS[index], _SUPPORT_WEIGHTS[index], _BASE_RATES[index], 5 * index, 2.0 + 0.1 * index


def _generated_effects(seed: int, count: int) -> np.ndarray:
    # Drawn from a stream of its own, one row per region: a generated region keeps its effects
    # whatever the number of regions after it.
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
    return rng.uniform(_EFFECT_LOW, _EFFECT_HIGH, size=(count, len(_EFFECT_LOW)))


def _customers(
    rng: np.random.Generator,
    n: int,
    price_weight: float | np.ndarray,
    support_weight: float | np.ndarray,
    base_rate: float | np.ndarray,
    charge_offset: float | np.ndarray,
    usage_log_mean: float | np.ndarray,
) -> dict[str, np.ndarray]:
    """`n` customers as columns of codes and values; each effect is one value or one per customer.

    The draws and the arithmetic are in a fixed order: changing either changes every generated
    table, including the ones tests and the demo rely on (tests/test_sample.py pins them).
    """
    tenure = rng.gamma(2.0, 14.0, n).clip(0, 72).round()
    plan = rng.choice(len(PLANS), n, p=[0.5, 0.35, 0.15])
    contract = rng.choice(len(CONTRACTS), n, p=[0.55, 0.3, 0.15])
    payment = rng.choice(len(PAYMENT), n, p=[0.45, 0.3, 0.2, 0.05])
    charges = (_PLAN_PRICE[plan] + rng.normal(0, 8, n) + charge_offset).round(2)
    support = rng.poisson(0.8 + 0.6 * support_weight, n).astype(float)
    usage = rng.lognormal(usage_log_mean, 0.6, n).round(2)

    logit = (
        base_rate
        - 0.045 * tenure
        + price_weight * (charges - 55) / 25
        + support_weight * (support - 1.5) / 1.2
        + _CONTRACT_EFFECT[contract]
        + _PAYMENT_EFFECT[payment]
        - 0.15 * np.log1p(usage)
    )
    churned = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)

    # Missing values, as in real exports: some usage unknown, some payment methods blank.
    usage[rng.random(n) < 0.04] = np.nan
    payment_missing = rng.random(n) < 0.03
    return {
        "tenure_months": tenure,
        "monthly_charges": charges,
        "support_calls": support,
        "data_usage_gb": usage,
        "plan": plan,
        "contract": contract,
        "payment_method": payment,
        "payment_missing": payment_missing,
        "churned": churned,
    }


def _table(parts: list[dict[str, np.ndarray]], sizes: np.ndarray) -> pd.DataFrame:
    columns = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    total = len(columns["churned"])
    # Seven digits as always; wider only when the table has more customers than that counts.
    width = max(7, len(str(total - 1)))
    payment = np.array(PAYMENT, dtype=object)[columns["payment_method"]]
    payment[columns["payment_missing"]] = None
    names = [segment_name(index) for index in range(len(sizes))]
    return pd.DataFrame(
        {
            "customer_id": [f"c{i:0{width}d}" for i in range(total)],
            "region": _labels(names, np.repeat(np.arange(len(names)), sizes)),
            "tenure_months": columns["tenure_months"],
            "monthly_charges": columns["monthly_charges"],
            "support_calls": columns["support_calls"],
            "data_usage_gb": columns["data_usage_gb"],
            "plan": _labels(PLANS, columns["plan"]),
            "contract": _labels(CONTRACTS, columns["contract"]),
            # Object dtype with None for the blanks, as this column always had.
            "payment_method": pd.Series(payment, dtype=object),
            "churned": columns["churned"],
        }
    )


def _labels(values: tuple[str, ...] | list[str], codes: np.ndarray) -> pd.Series:
    # Taking from a Series of the distinct values gives pandas' own string dtype without building
    # (and re-inferring) millions of Python strings.
    return pd.Series(values).take(codes).reset_index(drop=True)
