"""Model inputs from the base array, by index arithmetic: windows are never materialized.

A sample at step ``t`` sees the window ``[t - T + 1, t]``. Its price channels are the levels'
distance from their own mid plus the mid's path relative to the mid at ``t`` (both in bps), so
the model sees the price trajectory without any data after ``t``. Channels are then
standardized with statistics fitted on training windows only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRICE_CHANNELS = (0, 2)


def gather_windows(base: np.ndarray, mids: np.ndarray, steps: np.ndarray, window: int) -> np.ndarray:
    """(B, T, L, 4, K) float32 raw features of the windows ending at ``steps``."""
    index = steps[:, None] + np.arange(1 - window, 1)
    # One vectorized gather: the only copy is the batch itself.
    return with_mid_path(base[index], mids[index])


def with_mid_path(book: np.ndarray, mids: np.ndarray) -> np.ndarray:
    """Add each step's mid relative to the window's last mid (bps) to the price channels.

    ``book`` (B, T, L, 4, K) base-array windows (modified in place), ``mids`` (B, T, K).
    """
    path_bps = (1e4 * np.log(mids / mids[:, -1:, :])).astype(np.float32)
    for channel in PRICE_CHANNELS:
        book[:, :, :, channel, :] += path_bps[:, :, None, :]
    return book


def calendar(timestamps_ns: np.ndarray) -> np.ndarray:
    """(B, 2) float32: the fraction of the UTC day elapsed and the day of week (Monday = 0)."""
    seconds = timestamps_ns // 10**9
    # 1970-01-01 was a Thursday (day 3 when Monday is 0).
    return np.stack([(seconds % 86_400) / 86_400, ((seconds // 86_400) + 3) % 7], axis=1).astype(np.float32)


@dataclass(frozen=True)
class Normalizer:
    """Per-channel (L, 4, K) mean and std of window features."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(
        cls, base: np.ndarray, mids: np.ndarray, train_steps: np.ndarray, window: int, n: int, seed: int
    ) -> Normalizer:
        """Fit on up to ``n`` windows drawn (seeded) from the training steps only."""
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(train_steps, size=min(n, len(train_steps)), replace=False))
        sample = np.concatenate(
            [gather_windows(base, mids, part, window) for part in np.array_split(chosen, max(1, len(chosen) // 512))]
        )
        flat = sample.reshape(-1, *sample.shape[2:]).astype(np.float64)
        std = flat.std(axis=0)
        return cls(mean=flat.mean(axis=0).astype(np.float32), std=np.where(std > 1e-9, std, 1.0).astype(np.float32))

    def apply(self, windows: np.ndarray) -> np.ndarray:
        windows -= self.mean
        windows /= self.std
        return windows


@dataclass
class WindowSource:
    """Everything needed to assemble normalized model inputs for any sample step."""

    base: np.ndarray  # (S, L, 4, K) float32, typically memory-mapped
    mids: np.ndarray  # (S, K) float64
    timestamps: np.ndarray  # (S,) int64 ns
    window: int
    normalizer: Normalizer

    def inputs(self, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        windows = self.normalizer.apply(gather_windows(self.base, self.mids, steps, self.window))
        return windows, calendar(self.timestamps[steps])
