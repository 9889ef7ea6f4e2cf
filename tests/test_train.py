"""The training loop: reproducible, and the bf16 option trains."""

from __future__ import annotations

import numpy as np

from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.dataset import build_dataset
from bmlt_assets.core.train import train
from tests.helpers import synthetic_days


def _train(config: PlatformConfig, **training) -> list[tuple[float, float]]:
    config = config.model_copy(update={"training": config.training.model_copy(update=training)})
    data = build_dataset(synthetic_days(config), config)
    return [(r.train_loss, r.val_log_loss) for r in train(config, data).history]


def test_same_config_and_data_give_identical_training(tiny_config: PlatformConfig) -> None:
    first, second = _train(tiny_config), _train(tiny_config)
    assert first == second
    assert first != _train(tiny_config, seed=1)  # the seed really drives it


def test_bf16_autocast_trains(tiny_config: PlatformConfig) -> None:
    history = _train(tiny_config, precision="bf16")
    assert all(np.isfinite(loss) for pair in history for loss in pair)
