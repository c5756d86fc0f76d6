"""A seeded generator of a realistic customer-churn table, one segment per region.

Each region has its own relationship between features and churn (so a model
per segment beats one global model), churn is imbalanced (~15-30%), and some
values are missing, as in real CRM exports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

REGIONS = ("north", "south", "east", "west", "central", "coastal", "mountain", "metro")
PLANS = ("basic", "standard", "premium")
CONTRACTS = ("monthly", "annual", "two_year")
PAYMENT = ("card", "bank", "invoice", "voucher")

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


def make_churn(rows_per_segment: int = 600, segments: int = 4, seed: int = 7) -> pd.DataFrame:
    """Generate the churn table: `segments` regions of `rows_per_segment` customers each."""
    if not 1 <= segments <= len(REGIONS):
        raise ValueError(f"segments must be between 1 and {len(REGIONS)}, got {segments}")
    if rows_per_segment < 1:
        raise ValueError(f"rows_per_segment must be positive, got {rows_per_segment}")
    rng = np.random.default_rng(seed)
    frames = [_region(region, index, rows_per_segment, rng) for index, region in enumerate(REGIONS[:segments])]
    df = pd.concat(frames, ignore_index=True)
    df.insert(0, "customer_id", [f"c{i:07d}" for i in range(len(df))])
    return df


def write_sample(path: str | Path, rows_per_segment: int = 600, segments: int = 4, seed: int = 7) -> Path:
    """Write the churn table to CSV or Parquet (by extension) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = make_churn(rows_per_segment, segments, seed)
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        raise ValueError(f"sample path must end in .csv or .parquet, got {path}")
    return path


def _region(region: str, index: int, n: int, rng: np.random.Generator) -> pd.DataFrame:
    # Region-specific effects: what drives churn differs from region to region.
    price_weight = [1.6, 0.4, 1.0, 0.2, 1.2, 0.8, 0.5, 1.4][index]
    support_weight = [0.3, 1.2, 0.6, 1.0, 0.4, 0.9, 1.3, 0.2][index]
    base_rate = [-1.6, -1.2, -1.9, -1.0, -1.4, -1.7, -1.1, -1.5][index]

    tenure = rng.gamma(2.0, 14.0, n).clip(0, 72).round()
    plan = rng.choice(PLANS, n, p=[0.5, 0.35, 0.15])
    contract = rng.choice(CONTRACTS, n, p=[0.55, 0.3, 0.15])
    payment = rng.choice(PAYMENT, n, p=[0.45, 0.3, 0.2, 0.05])
    plan_price = pd.Series(plan).map({"basic": 30.0, "standard": 55.0, "premium": 90.0}).to_numpy()
    charges = (plan_price + rng.normal(0, 8, n) + 5 * index).round(2)
    support = rng.poisson(0.8 + 0.6 * support_weight, n).astype(float)
    usage = rng.lognormal(2.0 + 0.1 * index, 0.6, n).round(2)

    logit = (
        base_rate
        - 0.045 * tenure
        + price_weight * (charges - 55) / 25
        + support_weight * (support - 1.5) / 1.2
        + np.where(contract == "monthly", 1.1, np.where(contract == "annual", -0.3, -1.2))
        + np.where(payment == "voucher", 0.7, 0.0)
        - 0.15 * np.log1p(usage)
    )
    churned = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)

    df = pd.DataFrame(
        {
            "region": region,
            "tenure_months": tenure,
            "monthly_charges": charges,
            "support_calls": support,
            "data_usage_gb": usage,
            "plan": plan,
            "contract": contract,
            "payment_method": payment,
            "churned": churned,
        }
    )
    # Missing values, as in real exports: some usage unknown, some payment methods blank.
    df.loc[rng.random(n) < 0.04, "data_usage_gb"] = np.nan
    df["payment_method"] = df["payment_method"].astype(object)
    df.loc[rng.random(n) < 0.03, "payment_method"] = None
    return df
