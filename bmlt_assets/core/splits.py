"""Chronological train/validation/test split, purged by label horizon and window.

All positions are global step indices on the dataset's uniform time grid. A sample at step ``t``
reads features from ``[t - window + 1, t]`` and its labels from ``(t, t + horizon]``. A sample is
kept in a part only if its label interval ends before the first feature step of the next part's
first sample, minus an embargo: nothing a model trains on overlaps what it is judged on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    boundaries: tuple[int, int]  # first step of val, first step of test

    def parts(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "val": self.val, "test": self.test}


def eligible_steps(valid: np.ndarray, window: int, label_ok: np.ndarray, stride: int = 1) -> np.ndarray:
    """Steps whose whole window is valid and whose labels exist, on a ``stride`` grid."""
    invalid_before = np.concatenate([[0], np.cumsum(~valid)])
    steps = np.arange(window - 1, len(valid))
    window_clean = invalid_before[steps + 1] == invalid_before[steps + 1 - window]
    steps = steps[window_clean & label_ok[steps]]
    return steps[steps % stride == 0]


def purge_limit(next_first_step: int, window: int, horizon: int, embargo: int) -> int:
    """The last step a sample may have when the next part starts at ``next_first_step``."""
    return next_first_step - window - horizon - embargo


def chronological_split(
    steps: np.ndarray, fractions: tuple[float, float, float], window: int, horizon: int, embargo: int
) -> Split:
    """Split sorted eligible ``steps`` by count into consecutive parts, then purge each boundary."""
    if len(steps) < 3:
        raise ValueError(f"only {len(steps)} eligible samples: need data for train, val and test")
    n_train = int(round(fractions[0] * len(steps)))
    n_val = int(round(fractions[1] * len(steps)))
    val_start, test_start = int(steps[n_train]), int(steps[n_train + n_val])
    train = steps[:n_train]
    val = steps[n_train : n_train + n_val]
    train = train[train <= purge_limit(val_start, window, horizon, embargo)]
    val = val[val <= purge_limit(test_start, window, horizon, embargo)]
    test = steps[n_train + n_val :]
    if not (len(train) and len(val) and len(test)):
        raise ValueError(
            f"after purging, a part is empty (train={len(train)}, val={len(val)}, test={len(test)}): "
            "use more days or a shorter window, horizon or embargo"
        )
    return Split(train=train, val=val, test=test, boundaries=(val_start, test_start))
