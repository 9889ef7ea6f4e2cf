"""The training dataset: consecutive days joined on one grid, samples as step indices, labels,
and everything fitted on the training part only (class edges, normalization).

Nothing here copies windows: a sample is an integer step; its window is gathered on demand from
the memory-mapped base array (see ``windows.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.days import DayReturns, DayTensors, LabelledDay
from bmlt_assets.core.files import META, load_arrays, save_arrays, write_json
from bmlt_assets.core.labels import class_edges, classify
from bmlt_assets.core.representation import QUOTE_LEVELS, has_current_quotes
from bmlt_assets.core.splits import PARTS, Split, chronological_split, eligible_steps, walk_forward_splits
from bmlt_assets.core.windows import Normalizer, WindowSource

log = logging.getLogger(__name__)
GRID_ARRAYS = ["base", "mids", "quotes", "timestamps"]
PART_FIELDS = ["steps", "classes", "edges", "returns", "previous", "volatility"]


@dataclass
class Part:
    steps: np.ndarray  # (N,) global step of each sample
    classes: np.ndarray  # (N, H) int64
    edges: np.ndarray  # (N, H, C-1) class edges in log-return units
    returns: np.ndarray  # (N, H) realized forward log return
    previous: np.ndarray  # (N, H) class of the label that ended at t (known at t), -1 if unknown
    volatility: np.ndarray  # (N,) trailing per-step volatility at t

    def __len__(self) -> int:
        return len(self.steps)


@dataclass
class TrainingData:
    source: WindowSource
    quotes: np.ndarray  # (S, len(QUOTE_FIELDS), K) raw top quotes: costs and the order-book baselines read these
    parts: dict[str, Part]
    n_classes: int
    horizons: list[int]  # steps
    symbols: list[str]
    target: str

    @property
    def shape(self) -> tuple[int, ...]:
        return self.source.base.shape


def fold_count(config: PlatformConfig) -> int:
    return config.dataset.folds if config.dataset.split == "walk_forward" else 1


def build_folds(days: list[LabelledDay], config: PlatformConfig) -> list[TrainingData]:
    """Join labelled days (consecutive dates) and split them: one dataset per fold, oldest first
    (a chronological split is a single fold). All folds share the grid arrays; each has its own
    parts, class edges and normalizer, fitted on its own training part."""
    joined = {name: np.concatenate([getattr(day.tensors, name) for day in days]) for name in DayTensors.ARRAYS}
    joined |= {name: np.concatenate([getattr(day.returns, name) for day in days]) for name in DayReturns.ARRAYS}
    target = config.data.symbols.index(config.target)
    returns = joined["returns"][:, :, target]
    volatility = joined["volatility"][:, target]
    # Every sample needs its trailing volatility, whatever the edges: the evaluation's regimes
    # are its terciles, and every edges option then sees the same samples.
    label_ok = np.isfinite(returns).all(axis=1) & np.isfinite(volatility) & (volatility > 0)
    d, window, horizon = config.dataset, config.dataset.window_steps, max(config.horizon_steps)
    steps = eligible_steps(np.asarray(joined["valid"].all(axis=1)), window, label_ok)
    fractions = (d.train_fraction, d.val_fraction, d.test_fraction)
    if d.split == "walk_forward":
        splits = walk_forward_splits(
            steps, fractions, d.folds, d.walk_forward_window, window, horizon, config.embargo_steps
        )
    else:
        splits = [chronological_split(steps, fractions, window, horizon, config.embargo_steps)]
    folds = [_fold(joined, returns, volatility, split.thinned(d.sample_stride), config) for split in splits]
    for k, fold in enumerate(folds):
        sizes = ", ".join(f"{name} {len(part):,}" for name, part in fold.parts.items())
        log.info("fold %s of %s: %s samples over %s steps", k + 1, len(folds), sizes, len(joined["timestamps"]))
    return folds


def build_dataset(days: list[LabelledDay], config: PlatformConfig) -> TrainingData:
    """The dataset of the latest fold: the only one of a chronological split."""
    return build_folds(days, config)[-1]


def _fold(
    joined: dict[str, np.ndarray], returns: np.ndarray, volatility: np.ndarray, split: Split, config: PlatformConfig
) -> TrainingData:
    horizons, window = config.horizon_steps, config.dataset.window_steps
    parts_steps = split.parts()
    parts_edges = {
        name: np.empty((len(s), len(horizons), config.labels.n_classes - 1)) for name, s in parts_steps.items()
    }
    all_steps = np.concatenate(list(parts_steps.values()))
    in_train = np.zeros(len(all_steps), dtype=bool)
    in_train[: len(split.train)] = True
    bounds = np.cumsum([0] + [len(s) for s in parts_steps.values()])
    previous = np.full((len(all_steps), len(horizons)), -1)
    for i, h in enumerate(horizons):
        # Quantile edges are fitted on the training samples only (``in_train``).
        edges = class_edges(config.labels, returns[all_steps, i], volatility[all_steps], h, in_train)
        for j, name in enumerate(PARTS):
            parts_edges[name][:, i] = edges[bounds[j] : bounds[j + 1]]
        # The label that ended at t (return over (t - h, t]) is known at t: persistence's input.
        before = all_steps - h
        known = (before >= 0) & np.isfinite(returns[before, i])
        if config.labels.edges == "volatility_scaled":
            known &= np.isfinite(volatility[before])
            before_edges = (
                np.asarray(config.labels.volatility_edges)[None, :] * (volatility[before] * np.sqrt(h))[:, None]
            )
        else:
            before_edges = edges
        previous[known, i] = classify(returns[before, i], before_edges)[known]

    parts = {}
    for name, part_steps in parts_steps.items():
        part_returns = returns[part_steps]
        classes = np.stack(
            [classify(part_returns[:, i], parts_edges[name][:, i]) for i in range(len(horizons))], axis=1
        )
        rows = slice(bounds[PARTS.index(name)], bounds[PARTS.index(name) + 1])
        parts[name] = Part(part_steps, classes, parts_edges[name], part_returns, previous[rows], volatility[part_steps])

    normalizer = Normalizer.fit(
        joined["base"], joined["mids"], split.train, window, config.dataset.norm_fit_samples, config.seed
    )
    source = WindowSource(joined["base"], joined["mids"], joined["timestamps"], window, normalizer)
    return TrainingData(
        source, joined["quotes"], parts, config.labels.n_classes, horizons, config.data.symbols, config.target
    )


def save_dataset(folds: list[TrainingData], directory: Path, config: PlatformConfig) -> None:
    """The grid arrays once, then each fold's normalizer and parts under a ``fold<k>_`` prefix,
    and the meta.json: the config it was built with, the grid's shape and the number of folds."""
    grid = folds[-1].source
    arrays = {"base": grid.base, "mids": grid.mids, "quotes": folds[-1].quotes, "timestamps": grid.timestamps}
    for k, data in enumerate(folds):
        arrays |= {f"fold{k}_norm_mean": data.source.normalizer.mean, f"fold{k}_norm_std": data.source.normalizer.std}
        for name, part in data.parts.items():
            arrays |= {f"fold{k}_{name}_{field}": getattr(part, field) for field in PART_FIELDS}
    save_arrays(directory, arrays)
    meta = {"config": config.model_dump(mode="json"), "shape": list(grid.base.shape), "folds": len(folds)}
    write_json(meta, directory / META)


def load_dataset(directory: Path, config: PlatformConfig, fold: int = -1) -> TrainingData:
    """Open one fold of a saved dataset (default: the latest); the base array is memory-mapped."""
    k = range(fold_count(config))[fold]
    if not has_current_quotes(directory):
        raise FileNotFoundError(
            f"the dataset at {directory} predates the stored quotes of the top {QUOTE_LEVELS} levels (quotes.npy); "
            "re-materialize book_tensors and training_dataset"
        )
    grid = load_arrays(directory, GRID_ARRAYS, mmap=True)
    norm = load_arrays(directory, [f"fold{k}_norm_mean", f"fold{k}_norm_std"])
    parts = {name: Part(**{f: np.load(directory / f"fold{k}_{name}_{f}.npy") for f in PART_FIELDS}) for name in PARTS}
    source = WindowSource(
        grid["base"],
        grid["mids"],
        grid["timestamps"],
        config.dataset.window_steps,
        Normalizer(norm[f"fold{k}_norm_mean"], norm[f"fold{k}_norm_std"]),
    )
    return TrainingData(
        source, grid["quotes"], parts, config.labels.n_classes, config.horizon_steps, config.data.symbols, config.target
    )
