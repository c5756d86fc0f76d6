"""Deterministic train/validation/test split by hashing a key column.

A row's split depends only on its key (or, without a key, its contents), so it
stays in the same split across runs, data refreshes and reorderings: the test
set never leaks into a later training run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fleetops.errors import UserError
from fleetops.spec import SplitFractions

SPLIT_COLUMN = "__split"
TRAIN, VALIDATION, TEST = "train", "validation", "test"
_BUCKETS = 10_000


def assign_splits(df: pd.DataFrame, fractions: SplitFractions, key: str | None = None) -> pd.Series:
    """Return a Series of 'train' / 'validation' / 'test' for each row of `df`."""
    if key is not None:
        if key not in df.columns:
            raise UserError(f"split_key column {key!r} is not in the data; columns are {list(df.columns)}")
        hashed = pd.util.hash_pandas_object(df[key].astype(str), index=False)
    else:
        hashed = pd.util.hash_pandas_object(df, index=False)
    bucket = (hashed.to_numpy() % np.uint64(_BUCKETS)).astype(np.int64)
    train_end = int(round(fractions.train * _BUCKETS))
    validation_end = train_end + int(round(fractions.validation * _BUCKETS))
    labels = np.where(bucket < train_end, TRAIN, np.where(bucket < validation_end, VALIDATION, TEST))
    return pd.Series(labels, index=df.index, name=SPLIT_COLUMN)


def with_splits(df: pd.DataFrame, fractions: SplitFractions, key: str | None = None) -> pd.DataFrame:
    """A copy of `df` with the split column added."""
    out = df.copy()
    out[SPLIT_COLUMN] = assign_splits(df, fractions, key)
    return out
