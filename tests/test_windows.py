"""The windowed dataset: exact windows by index arithmetic, no copies of the base array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.dataset import build_dataset, load_dataset, save_dataset
from bmlt_assets.core.plan import memory_plan
from bmlt_assets.core.representation import rolling_standardize
from bmlt_assets.core.splits import eligible_steps
from bmlt_assets.core.train import batch_loader
from bmlt_assets.core.windows import gather_windows
from tests.helpers import synthetic_days


def test_windows_equal_slow_reference_slicing(tiny_config: PlatformConfig) -> None:
    data = build_dataset(synthetic_days(tiny_config), tiny_config)
    base, mids, window = data.source.base, data.source.mids, tiny_config.dataset.window_steps
    steps = data.parts["train"].steps[[0, 7, 123, -1]]
    fast = gather_windows(base, mids, steps, window)
    for row, t in enumerate(steps):
        reference = base[t - window + 1 : t + 1].copy()  # (T, L, 4, K), sliced one window at a time
        path = 1e4 * np.log(mids[t - window + 1 : t + 1] / mids[t])  # (T, K)
        reference[:, :, 0, :] += path[:, None, :].astype(np.float32)
        reference[:, :, 2, :] += path[:, None, :].astype(np.float32)
        np.testing.assert_array_equal(fast[row], reference)
    # The mid path ends at zero: the last step of every window is priced relative to itself.
    np.testing.assert_allclose(fast[:, -1, :, 0, :], base[steps][:, :, 0, :], atol=1e-6)


def test_excluded_windows_really_cross_a_gap() -> None:
    rng = np.random.default_rng(3)
    valid = rng.random(500) > 0.03
    window = 20
    kept = eligible_steps(valid, window, np.ones(500, dtype=bool))
    for t in range(window - 1, 500):
        spans_gap = not valid[t - window + 1 : t + 1].all()
        assert (t in kept) != spans_gap, t


def test_the_dataset_memory_maps_the_base_array_and_never_copies_it(
    tmp_path: Path, tiny_config: PlatformConfig
) -> None:
    data = build_dataset(synthetic_days(tiny_config), tiny_config)
    save_dataset([data], tmp_path, tiny_config)
    loaded = load_dataset(tmp_path, tiny_config)
    assert isinstance(loaded.source.base, np.memmap) and Path(loaded.source.base.filename) == tmp_path / "base.npy"
    steps = loaded.parts["train"].steps[:64]
    windows, _ = loaded.source.inputs(steps)
    assert not np.shares_memory(windows, loaded.source.base)  # a batch is its own small array
    assert isinstance(loaded.source.base, np.memmap)  # still mapped after gathering
    np.testing.assert_array_equal(loaded.source.inputs(steps)[0], data.source.inputs(steps)[0])


def test_loader_workers_give_identical_batches(tiny_config: PlatformConfig) -> None:
    data = build_dataset(synthetic_days(tiny_config), tiny_config)
    part = data.parts["train"]
    order = np.random.default_rng(0).permutation(256).tolist()
    serial = list(batch_loader(data, part, order, batch_size=32, workers=0))
    parallel = list(batch_loader(data, part, order, batch_size=32, workers=2))
    assert len(serial) == 8 and torch.equal(serial[0][2], torch.from_numpy(part.classes[order[:32]]))
    for (w0, c0, y0), (w1, c1, y1) in zip(serial, parallel):
        assert torch.equal(w0, w1) and torch.equal(c0, c1) and torch.equal(y0, y1)


def test_rolling_normalization_uses_past_data_only() -> None:
    rng = np.random.default_rng(0)
    base = rng.random((300, 3, 4, 2)).astype(np.float32)
    valid = np.ones((300, 2), dtype=bool)
    out, still_valid = rolling_standardize(base.copy(), valid, lookback=40)
    changed = base.copy()
    changed[200:] *= 3.0
    out_changed, _ = rolling_standardize(changed, valid, lookback=40)
    np.testing.assert_array_equal(out[:200], out_changed[:200])
    assert not still_valid[:19].any() and still_valid[20:].all()
    np.testing.assert_array_equal(out[:, :, 0::2], base[:, :, 0::2])  # prices untouched
    assert abs(out[100:, :, 1::2].mean()) < 0.3


def test_memory_plan_matches_the_arrays(tiny_config: PlatformConfig) -> None:
    plan = memory_plan(tiny_config)
    day = synthetic_days(tiny_config)[0].tensors
    assert plan["base_tensor_bytes_per_day"] == day.base.nbytes
    assert plan["dataset_base_bytes"] == day.base.nbytes * len(tiny_config.data.dates)
    assert plan["companion_bytes_per_day"] == sum(
        getattr(day, name).nbytes for name in ("mids", "quotes", "valid", "timestamps")
    )
    window = tiny_config.dataset.window_steps
    assert plan["batch_bytes"] == tiny_config.training.batch_size * window * day.base[0].nbytes
