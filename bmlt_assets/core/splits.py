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

    def thinned(self, stride: int) -> Split:
        """Training and validation on every ``stride``-th step (neighbouring windows overlap almost
        entirely, so they add training time, not information); the test part keeps every step, so
        that the reported figures use all the data there is."""
        return Split(self.train[self.train % stride == 0], self.val[self.val % stride == 0], self.test, self.boundaries)


def eligible_steps(valid: np.ndarray, window: int, label_ok: np.ndarray) -> np.ndarray:
    """Steps whose whole window is valid and whose labels exist."""
    invalid_before = np.concatenate([[0], np.cumsum(~valid)])
    steps = np.arange(window - 1, len(valid))
    window_clean = invalid_before[steps + 1] == invalid_before[steps + 1 - window]
    return steps[window_clean & label_ok[steps]]


def purge_limit(next_first_step: int, window: int, horizon: int, embargo: int) -> int:
    """The last step a sample may have when the next part starts at ``next_first_step``."""
    return next_first_step - window - horizon - embargo


def _purged_split(
    train: np.ndarray, val: np.ndarray, test: np.ndarray, window: int, horizon: int, embargo: int
) -> Split:
    """Consecutive parts, each purged against the next (see the module docstring)."""
    if not (len(train) and len(val) and len(test)):
        raise ValueError("not enough eligible samples for train, val and test: use more days")
    val_start, test_start = int(val[0]), int(test[0])
    train = train[train <= purge_limit(val_start, window, horizon, embargo)]
    val = val[val <= purge_limit(test_start, window, horizon, embargo)]
    if not (len(train) and len(val)):
        raise ValueError(
            f"after purging, a part is empty (train={len(train)}, val={len(val)}, test={len(test)}): "
            "use more days or a shorter window, horizon or embargo"
        )
    return Split(train=train, val=val, test=test, boundaries=(val_start, test_start))


def chronological_split(
    steps: np.ndarray, fractions: tuple[float, float, float], window: int, horizon: int, embargo: int
) -> Split:
    """Split sorted eligible ``steps`` by count into consecutive parts, then purge each boundary."""
    n_train = int(round(fractions[0] * len(steps)))
    n_val = int(round(fractions[1] * len(steps)))
    return _purged_split(
        steps[:n_train], steps[n_train : n_train + n_val], steps[n_train + n_val :], window, horizon, embargo
    )


def walk_forward_splits(
    steps: np.ndarray,
    fractions: tuple[float, float, float],
    folds: int,
    mode: str,
    window: int,
    horizon: int,
    embargo: int,
) -> list[Split]:
    """``folds`` consecutive test blocks (each ``test`` fraction of the samples) at the end of the
    timeline, oldest first. Each fold validates on the block just before its test block and trains
    on everything before that (``expanding``) or on the last ``train`` fraction of it (``rolling``).
    Every boundary is purged like the chronological split; no fold ever trains on its future."""
    n = len(steps)
    n_train, n_val, n_test = (int(round(f * n)) for f in fractions)
    splits = []
    for k in range(folds):
        test_end = n - (folds - 1 - k) * n_test
        test_start = test_end - n_test
        val_start = test_start - n_val
        train_start = 0 if mode == "expanding" else max(0, val_start - n_train)
        if val_start <= train_start:
            raise ValueError(f"walk-forward fold {k} has no training samples: use fewer folds or more days")
        splits.append(
            _purged_split(
                steps[train_start:val_start],
                steps[val_start:test_start],
                steps[test_start:test_end],
                window,
                horizon,
                embargo,
            )
        )
    return splits
