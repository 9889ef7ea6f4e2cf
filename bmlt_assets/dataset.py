"""training_dataset: the configured date range as one purged, normalized, indexed dataset."""

import dagster as dg
import numpy as np

from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.dataset import TrainingData, build_folds, fold_count, load_dataset, save_dataset
from bmlt_assets.core.days import LabelledDay
from bmlt_assets.core.files import directory_bytes
from bmlt_assets.core.splits import PARTS
from bmlt_assets.metadata import markdown_table
from bmlt_assets.returns import forward_returns
from bmlt_assets.tensors import book_tensors
from bmlt_resources.settings import SettingsResource
from bmlt_resources.storage import StorageResource


def _iso(timestamp_ns: int) -> str:
    return str(np.datetime64(int(timestamp_ns), "ns").astype("datetime64[s]")) + "Z"


@dg.asset(
    pool="training_dataset",  # one writer at a time across runs (docs/design.md §9.5)
    deps=[book_tensors, forward_returns],
    group_name="training",
    kinds={"numpy"},
    description="Chronological or walk-forward split purged by window + horizon; "
    "class edges and normalization fitted on train.",
)
def training_dataset(
    context: dg.AssetExecutionContext, settings: SettingsResource, storage: StorageResource
) -> dg.MaterializeResult:
    config = settings.get()
    days = [LabelledDay(storage.require_tensors(date), storage.require_returns(date)) for date in config.data.dates]
    folds = build_folds(days, config)
    with storage.commit(storage.dataset) as staging:
        save_dataset(folds, staging, config)
    data = folds[-1]
    steps, levels, channels, assets = data.shape
    base_bytes = int(data.source.base.nbytes)
    samples = len(np.unique(np.concatenate([p.steps for fold in folds for p in fold.parts.values()])))
    dense_bytes = samples * config.dataset.window_steps * levels * channels * assets * 4
    context.log.info(f"dataset: {samples} samples over {steps} steps; base array {base_bytes / 1e6:.1f} MB")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": samples,
            "base_shape": dg.MetadataValue.json(list(data.shape)),
            "base_bytes": base_bytes,
            "dense_window_bytes_avoided": dense_bytes,
            "bytes_on_disk": directory_bytes(storage.dataset),
            "target_symbol": config.target,
            "splits": dg.MetadataValue.md(markdown_table(_split_rows(folds, config))),
        }
    )


def _split_rows(folds: list[TrainingData], config: PlatformConfig) -> list[dict]:
    """One row per fold and part: sample count, period and class shares per horizon."""
    timestamps = folds[-1].source.timestamps
    rows = []
    for k, fold in enumerate(folds):
        for name in PARTS:
            part = fold.parts[name]
            row = {
                "fold": k,
                "part": name,
                "samples": len(part),
                "first": _iso(timestamps[part.steps[0]]),
                "last": _iso(timestamps[part.steps[-1]]),
            }
            for i, horizon in enumerate(config.labels.horizons_s):
                counts = np.bincount(part.classes[:, i], minlength=fold.n_classes)
                row[f"classes[{horizon}s]"] = " ".join(f"{c / len(part):.2f}" for c in counts)
            rows.append(row)
    return rows


@dg.asset_check(
    asset=training_dataset,
    blocking=True,
    description="Every class holds at least quality.min_class_share of the training part, per horizon and fold.",
)
def training_classes_are_balanced(settings: SettingsResource, storage: StorageResource) -> dg.AssetCheckResult:
    config = settings.get()
    shares, failures = {}, []
    for k in range(fold_count(config)):
        classes = (
            load_dataset(storage.require(storage.dataset, "training_dataset"), config, fold=k).parts["train"].classes
        )
        for i, horizon in enumerate(config.labels.horizons_s):
            share = np.bincount(classes[:, i], minlength=config.labels.n_classes) / len(classes)
            shares[f"fold{k}_{horizon}s"] = [round(float(x), 4) for x in share]
            rare = np.flatnonzero(share < config.quality.min_class_share)
            if len(rare):
                failures.append(
                    f"fold {k}, {horizon}s: classes {rare.tolist()} below {config.quality.min_class_share:.1%} "
                    "of training samples; revisit labels.edges"
                )
    return dg.AssetCheckResult(
        passed=not failures,
        description="; ".join(failures) or "every class represented",
        metadata={"train_class_shares": dg.MetadataValue.json(shares)},
    )
