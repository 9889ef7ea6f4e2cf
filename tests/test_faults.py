"""Faults: interrupted writes, corrupt partitions, an unreachable MLflow, killed training runs,
and a model that cannot learn from shuffled labels."""

from __future__ import annotations

import errno
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from bmlt_assets.core.config import PlatformConfig, load_config
from bmlt_assets.core.dataset import PART_FIELDS, Part, build_dataset
from bmlt_assets.core.files import atomic_directory, atomic_write
from bmlt_assets.core.train import predict_logits, train
from bmlt_assets.definitions import INGEST_ASSETS, TRAINING_ASSETS, build_resources
from bmlt_assets.partitions import range_tags
from bmlt_resources.storage import StorageResource
from tests.helpers import synthetic_days, write_config

ALL = INGEST_ASSETS + TRAINING_ASSETS


def test_a_full_disk_during_a_write_keeps_the_old_file_and_leaves_no_debris(tmp_path: Path) -> None:
    target = tmp_path / "partition.bin"
    target.write_bytes(b"old partition")

    def disk_full(temporary: Path) -> None:
        temporary.write_bytes(b"half of the new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, disk_full)
    assert target.read_bytes() == b"old partition"
    assert [p.name for p in tmp_path.iterdir()] == ["partition.bin"]

    folder = tmp_path / "tensors"
    folder.mkdir()
    (folder / "meta.json").write_text("{}")
    with pytest.raises(OSError), atomic_directory(folder) as staging:
        (staging / "base.npy").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert [p.name for p in folder.iterdir()] == ["meta.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partition.bin", "tensors"]


def test_a_truncated_partition_is_reported_and_rebuilt_by_rematerializing(
    tiny_config_path: Path, tiny_config: PlatformConfig
) -> None:
    storage = StorageResource.for_config(tiny_config)
    instance = dg.DagsterInstance.ephemeral()
    day = "2025-01-06"

    def run(selection):
        return dg.materialize(
            ALL,
            selection=selection,
            resources=build_resources(tiny_config_path),
            instance=instance,
            partition_key=day,
            raise_on_error=False,
        )

    assert run(INGEST_ASSETS[:2]).success
    base = storage.tensors(tiny_config.data.start_date) / "base.npy"
    base.write_bytes(base.read_bytes()[: base.stat().st_size // 2])  # truncated, e.g. by a crash of a non-atomic tool
    failed = run([INGEST_ASSETS[2]])
    assert not failed.success
    message = str(failed.get_step_failure_events()[0].event_specific_data.error)
    assert (
        "book_tensors for 2025-01-06" in message
        and "is corrupt" in message
        and "base.npy" in message
        and "--partition 2025-01-06" in message
    )
    assert run([INGEST_ASSETS[1]]).success  # re-materialize the corrupt partition
    assert run([INGEST_ASSETS[2]]).success

    snapshots = storage.snapshots(tiny_config.data.start_date)
    snapshots.write_bytes(snapshots.read_bytes()[:1000])
    failed = run([INGEST_ASSETS[1]])
    assert "orderbook_snapshots for 2025-01-06" in str(failed.get_step_failure_events()[0].event_specific_data.error)


def test_an_unreachable_mlflow_fails_before_training_starts(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"mlflow": {"tracking_uri": "http://127.0.0.1:9"}})
    config = load_config(path)
    instance = dg.DagsterInstance.ephemeral()
    tags = range_tags(config.data.start_date, config.data.end_date)
    assert dg.materialize(
        ALL, selection=INGEST_ASSETS, resources=build_resources(path), instance=instance, tags=tags
    ).success
    result = dg.materialize(
        ALL, selection=TRAINING_ASSETS[1:2], resources=build_resources(path), instance=instance, raise_on_error=False
    )
    assert not result.success
    errors = " ".join(str(e.event_specific_data.error) for e in result.get_step_failure_events()) or str(
        result.all_events
    )
    assert "MLflow tracking store 'http://127.0.0.1:9' is unreachable" in errors
    assert not StorageResource.for_config(config).model.exists()


class Killed(RuntimeError):
    pass


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])  # the weight average resumes too
def test_a_killed_training_run_resumes_and_matches_an_uninterrupted_one(
    tmp_path: Path, tiny_config: PlatformConfig, ema_decay: float
) -> None:
    training = {"epochs": 4, "early_stopping_patience": 4, "ema_decay": ema_decay}
    config = tiny_config.model_copy(update={"training": tiny_config.training.model_copy(update=training)})
    data = build_dataset(synthetic_days(config), config)
    uninterrupted = train(config, data)

    checkpoint = tmp_path / "checkpoint.pt"

    def kill_after_second_epoch(record) -> None:
        if record.epoch == 2:
            raise Killed

    def keep_going(record) -> None:
        pass

    # Another dataset or another label config must start afresh, not resume foreign state.
    other_labels = config.labels.model_copy(update={"vol_lookback_s": config.labels.vol_lookback_s + 60})
    with pytest.raises(Killed):
        train(config, data, kill_after_second_epoch, checkpoint, data_fingerprint="data-a")
    assert train(config, data, keep_going, checkpoint, data_fingerprint="data-b").resumed_from == 0
    with pytest.raises(Killed):
        train(config, data, kill_after_second_epoch, checkpoint, data_fingerprint="data-a")
    relabelled = config.model_copy(update={"labels": other_labels})
    assert train(relabelled, data, keep_going, checkpoint, "data-a").resumed_from == 0

    with pytest.raises(Killed):
        train(config, data, kill_after_second_epoch, checkpoint)
    resumed = train(config, data, checkpoint=checkpoint)
    assert resumed.resumed_from == 2
    assert [r.val_log_loss for r in resumed.history] == [r.val_log_loss for r in uninterrupted.history]
    steps = data.parts["test"].steps
    np.testing.assert_array_equal(
        predict_logits(resumed.model, data, steps), predict_logits(uninterrupted.model, data, steps)
    )


def test_shuffled_training_labels_give_chance_level_accuracy(tmp_path: Path) -> None:
    # A strong planted signal, so that the same model on the true labels clearly beats the prior.
    strong = {
        "data": {
            "synthetic": {
                "signal_half_life_s": 120,
                "signal_strength": 0.8,
                "imbalance_noise": 0.3,
                "regime_block_s": 3600,
            }
        },
        "training": {"max_train_samples": None, "epochs": 4, "learning_rate": 0.003},
        "model": {"conv_channels": 8, "inception_channels": 8, "lstm_hidden": 16},
    }
    config = load_config(write_config(tmp_path, strong))
    data = build_dataset(synthetic_days(config), config)
    test = data.parts["test"]

    def accuracy_and_bar(h: int, predicted: np.ndarray) -> tuple[float, float]:
        majority = np.bincount(test.classes[:, h], minlength=data.n_classes).max() / len(test)
        return float((predicted[:, h] == test.classes[:, h]).mean()), majority + 3 * np.sqrt(
            majority * (1 - majority) / len(test)
        )

    honest = predict_logits(train(config, data).model, data, test.steps).argmax(axis=2)
    accuracy, bar = accuracy_and_bar(1, honest)
    assert accuracy > bar  # the setup can detect learning

    train_part = data.parts["train"]
    shuffled = np.random.default_rng(0).permutation(len(train_part))
    data.parts["train"] = Part(
        **{name: getattr(train_part, name) for name in PART_FIELDS} | {"classes": train_part.classes[shuffled]}
    )
    blind = predict_logits(train(config, data).model, data, test.steps).argmax(axis=2)
    for h in range(len(data.horizons)):
        accuracy, bar = accuracy_and_bar(h, blind)
        assert accuracy < bar, (h, accuracy, bar)
