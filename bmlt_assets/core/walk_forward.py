"""Walk-forward (decision 5): a model per earlier fold, saved beside the latest, which is the one
registered. ``core.evaluation.evaluate_folds`` scores every fold's model on its own test block,
oldest first, for performance over time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bmlt_assets.core.calibration import Calibration, validation_calibration
from bmlt_assets.core.checkpoint import CHECKPOINT, model_spec, save_checkpoint
from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.dataset import TrainingData, fold_count, load_dataset
from bmlt_assets.core.models import OrderBookClassifier

log = logging.getLogger(__name__)


@dataclass
class FoldModel:
    data: TrainingData
    model: OrderBookClassifier
    calibration: list[Calibration]
    config: PlatformConfig  # as tuned for this fold


# (fold, its dataset) -> the config that fold trains with: tuning, when enabled, sees only that
# fold's training and validation parts, which precede its test part (nested walk-forward).
FoldConfigurer = Callable[[int, TrainingData], PlatformConfig]
# (fold, its config, its dataset) -> its trained model, with its epochs logged: in this process,
# or by torchrun's ranks (training.launcher).
FoldTrainer = Callable[[int, PlatformConfig, TrainingData], OrderBookClassifier]


def train_earlier_folds(
    config: PlatformConfig, dataset_dir: Path, configure: FoldConfigurer, fit: FoldTrainer
) -> list[FoldModel]:
    """A calibrated model for every fold but the latest."""
    folds = []
    for k in range(fold_count(config) - 1):
        fold = load_dataset(dataset_dir, config, fold=k)
        fold_config = configure(k, fold)
        log.info("walk-forward: training the model of fold %s of %s", k + 1, fold_count(config))
        model = fit(k, fold_config, fold)
        folds.append(FoldModel(fold, model, validation_calibration(model, fold), fold_config))
    return folds


def fold_checkpoint(model_dir: Path, fold: int, n_folds: int) -> Path:
    return model_dir / CHECKPOINT if fold == n_folds - 1 else model_dir / f"fold{fold}" / CHECKPOINT


def save_fold_checkpoints(model_dir: Path, folds: list[FoldModel]) -> None:
    for k, fold in enumerate(folds):
        path = fold_checkpoint(model_dir, k, len(folds) + 1)
        path.parent.mkdir()
        spec = model_spec(fold.config, fold.data, fold.calibration)
        save_checkpoint(path, fold.model, fold.data.source.normalizer, spec)
