"""Walk-forward folds: purged like the chronological split, and never trained on the future."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from bmlt_assets.core.config import ConfigError, load_config
from bmlt_assets.core.splits import purge_limit, walk_forward_splits
from bmlt_assets.definitions import INGEST_ASSETS, TRAINING_ASSETS, build_resources
from bmlt_assets.partitions import range_tags
from bmlt_resources.storage import StorageResource
from tests.helpers import stored_dataset, tracked_run, write_config

WINDOW, HORIZON, EMBARGO = 10, 5, 2


@pytest.mark.parametrize("mode", ["expanding", "rolling"])
def test_folds_never_train_on_the_future(mode: str) -> None:
    steps = np.arange(9, 3000, 3)
    folds = walk_forward_splits(steps, (0.3, 0.1, 0.15), 3, mode, WINDOW, HORIZON, EMBARGO)
    assert len(folds) == 3
    for fold in folds:
        val_start, test_start = fold.boundaries
        assert fold.train.max() <= purge_limit(val_start, WINDOW, HORIZON, EMBARGO)
        assert fold.val.max() <= purge_limit(test_start, WINDOW, HORIZON, EMBARGO)
        assert fold.train.max() + HORIZON < val_start - WINDOW + 1  # labels end before val features start
    tests = [fold.test for fold in folds]
    for earlier, later in zip(tests, tests[1:]):
        assert earlier.max() < later.min()  # consecutive test blocks, oldest first
    assert tests[-1].max() == steps.max()  # the last fold tests on the end of the timeline
    if mode == "expanding":
        assert all(fold.train.min() == steps.min() for fold in folds)
        assert len(folds[0].train) < len(folds[1].train) < len(folds[2].train)
    else:
        sizes = [len(fold.train) for fold in folds]
        assert max(sizes) - min(sizes) <= 1 and folds[0].train.min() < folds[2].train.min()


def test_too_many_folds_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="leave no training data"):
        load_config(write_config(tmp_path, {"dataset": {"split": "walk_forward", "folds": 6, "test_fraction": 0.15}}))


def test_walk_forward_trains_a_model_per_fold_and_reports_over_time(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, {"dataset": {"split": "walk_forward", "folds": 2, "val_fraction": 0.15, "test_fraction": 0.2}}
    )
    config = load_config(path)
    assets, instance = INGEST_ASSETS + TRAINING_ASSETS, dg.DagsterInstance.ephemeral()
    tags = range_tags(config.data.start_date, config.data.end_date)
    assert dg.materialize(
        assets, selection=INGEST_ASSETS, resources=build_resources(path), instance=instance, tags=tags
    ).success
    result = dg.materialize(assets, selection=TRAINING_ASSETS, resources=build_resources(path), instance=instance)
    assert result.success
    storage = StorageResource.for_config(config)
    assert (storage.model / "fold0" / "checkpoint.pt").exists() and (storage.model / "checkpoint.pt").exists()
    saved = json.loads((storage.report / "metrics.json").read_text())
    folds = saved["walk_forward"]
    assert [f["fold"] for f in folds] == [0, 1]
    assert folds[0]["test_last_ns"] < folds[1]["test_first_ns"]
    assert all(np.isfinite(f["horizons"][0]["model"]["log_loss"]) for f in folds)
    # The latest fold's row is the full report's model on the same test block.
    assert folds[1]["horizons"][0]["model"]["log_loss"] == pytest.approx(
        saved["report"][0]["metrics"]["model"]["log_loss"]
    )
    markdown = (storage.report / "report.md").read_text()
    assert "## Walk-forward: performance over time" in markdown and "| mean |" in markdown


@pytest.mark.slow  # a study and a model per fold: about 11 s
def test_walk_forward_tuning_is_nested(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each fold's hyper-parameters come only from data before that fold's test part, and each
    fold's model is built with its own fold's best values: the workflow as a plain function call."""
    from bmlt_assets.training import workflow

    hpo = {
        "enabled": True,
        "n_trials": 2,
        "trial_epochs": 1,
        "pruner": "none",
        "search_space": {"model.lstm_hidden": {"type": "int", "low": 4, "high": 12, "step": 4}},
    }
    split = {"split": "walk_forward", "folds": 2, "val_fraction": 0.15, "test_fraction": 0.2}
    config = load_config(write_config(tmp_path, {"dataset": split, "hpo": hpo, "training": {"epochs": 1}}))
    seen = []
    real_tune = workflow.tune

    def spy(config, data, storage, logger, name):
        tuned_on = np.concatenate([data.parts["train"].steps, data.parts["val"].steps])
        seen.append({"name": name, "last_tuned": int(tuned_on.max()), "test_first": int(data.parts["test"].steps[0])})
        result = real_tune(config, data, storage, logger, name)
        seen[-1]["best"] = result.best_params["model.lstm_hidden"]
        return result

    monkeypatch.setattr(workflow, "tune", spy)
    storage = stored_dataset(config)
    dataset_dir = storage.require(storage.dataset, "training_dataset")
    fitted = workflow.fit(config, dataset_dir, tracker=tracked_run(config), storage=storage, data_fingerprint="data-a")

    assert len(seen) == 2 and seen[0]["name"] != seen[1]["name"]  # one study per fold
    assert seen[0]["test_first"] < seen[1]["test_first"]  # oldest fold first
    for fold in seen:
        assert fold["last_tuned"] < fold["test_first"]  # tuned on its own past only
    assert seen[0]["last_tuned"] < seen[1]["test_first"]
    (earlier,) = fitted.earlier
    for model, fold in ((earlier.model, seen[0]), (fitted.result.model, seen[1])):
        assert model.lstm.hidden_size == fold["best"]  # built with its own fold's best value
    assert fitted.config.model.lstm_hidden == seen[1]["best"] and fitted.tuning is not None
