"""With storage.uri s3://, the state a step leaves for the next one lives in the object store, so
a preempted pod resumes on another node: the tardis downloads, the landing zone and the training
resume checkpoint. Each test plays two machines: two local folders, one bucket (moto)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bmlt_assets.core.book import snapshot_schema
from bmlt_assets.core.config import load_config
from bmlt_assets.core.dataset import build_dataset
from bmlt_assets.core.files import landing_base, landing_root, storage_root, write_landing_days
from bmlt_assets.core.train import EpochRecord, train
from bmlt_resources.storage import LandingZoneResource
from bmlt_resources.tardis import TardisArchiveResource
from tests.helpers import real_recording, synthetic_days, write_config
from tests.services import S3
from tests.tardis_archive import ArchiveServer, gzip_csv, incremental_rows

DAY = dt.date(2024, 8, 9)


def _tardis(server: ArchiveServer, machine: Path, s3: S3) -> TardisArchiveResource:
    return TardisArchiveResource(
        exchange="binance",
        data_type="incremental_book_L2",
        market="spot",
        depth=20,
        download_dir=str(machine / "tardis"),
        endpoint=server.endpoint,
        mirror=f"s3://{s3.bucket}/runs/tardis",
        mirror_endpoint_url=s3.endpoint_url,
    )


def test_a_tardis_day_downloaded_on_one_machine_is_not_downloaded_again_on_another(
    tmp_path: Path, s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TARDIS_API_KEY", "key")
    with ArchiveServer() as server:
        server.add("binance", "incremental_book_L2", DAY, "BTCUSDT", gzip_csv(incremental_rows(real_recording(), 1)))
        first = _tardis(server, tmp_path / "pod-a", s3).snapshots(DAY, ["BTC/USDT"])
        assert len(server.requests) == 1
        assert s3.keys("runs/tardis/") == ["runs/tardis/binance/incremental_book_L2/2024/08/09/BTCUSDT.csv.gz"]
        again = _tardis(server, tmp_path / "pod-b", s3).snapshots(DAY, ["BTC/USDT"])  # preempted, elsewhere
        assert len(server.requests) == 1  # from the mirror, verified again, never from the archive
    assert again.equals(first)


def test_a_damaged_copy_in_the_mirror_is_fetched_again_from_the_archive_and_replaced(
    tmp_path: Path, s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parsing finds the cut (beyond the first MiB, which inspection reads); the next copy comes
    from the archive, not the mirror, and the whole file replaces the mirror's."""
    monkeypatch.setenv("TARDIS_API_KEY", "key")
    key = "runs/tardis/binance/incremental_book_L2/2024/08/09/BTCUSDT.csv.gz"
    body = gzip_csv(incremental_rows(real_recording(), 1))
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=body[: len(body) // 2])
    with ArchiveServer() as server:
        server.add("binance", "incremental_book_L2", DAY, "BTCUSDT", body)
        books = _tardis(server, tmp_path / "pod", s3).snapshots(DAY, ["BTC/USDT"])
        assert len(server.requests) == 1
    assert books.height > 3000
    assert s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read() == body


def test_the_landing_zone_is_in_the_object_store(tmp_path: Path, s3: S3) -> None:
    config = load_config(
        write_config(tmp_path, {"storage": {"uri": f"s3://{s3.bucket}/runs", "endpoint_url": s3.endpoint_url}})
    )
    base = landing_base(config)
    assert str(landing_root(base, "spot")) == f"s3://{s3.bucket}/runs/landing/spot"
    books = pl.DataFrame(
        {
            "exchange_ts": [1_723_161_600_000_000_000],
            "receive_ts": [1_723_161_600_000_000_000],
            "symbol": ["BTC/USDT"],
            "update_id": [1],
            "bid_px": [[100.0]],
            "bid_qty": [[1.0]],
            "ask_px": [[101.0]],
            "ask_qty": [[1.0]],
        },
        schema=snapshot_schema(1),
    )
    write_landing_days(books, base, "spot", "import-test")
    assert s3.keys("runs/landing/") == ["runs/landing/spot/date=2024-08-09/import-test.parquet"]
    # A step on another machine (nothing local) reads it.
    zone = LandingZoneResource(base=str(base), endpoint_url=s3.endpoint_url, market="spot", depth=1)
    assert zone.snapshots(DAY, ["BTC/USDT"])["update_id"].to_list() == [1]


class Preempted(Exception):
    pass


def test_a_training_preempted_on_one_machine_resumes_from_the_object_store_on_another(
    tmp_path: Path, s3: S3, tiny_config
) -> None:
    config = tiny_config.model_copy(
        update={"training": tiny_config.training.model_copy(update={"epochs": 3, "early_stopping_patience": 3})}
    )
    data = build_dataset(synthetic_days(config), config)
    checkpoint = storage_root(f"s3://{s3.bucket}/runs/tiny", s3.endpoint_url) / "training-checkpoint.pt"

    def preempt_after_the_first_epoch(record: EpochRecord) -> None:
        if record.epoch == 1:
            raise Preempted

    with pytest.raises(Preempted):
        train(config, data, preempt_after_the_first_epoch, checkpoint)
    assert s3.keys("runs/tiny/") == ["runs/tiny/training-checkpoint.pt"]
    resumed = train(config, data, checkpoint=checkpoint)  # no local file involved: "another machine"
    uninterrupted = train(config, data)
    assert resumed.resumed_from == 1
    assert [r.val_log_loss for r in resumed.history] == pytest.approx([r.val_log_loss for r in uninterrupted.history])
    np.testing.assert_allclose(
        resumed.model.state_dict()["heads.0.weight"].numpy(), uninterrupted.model.state_dict()["heads.0.weight"].numpy()
    )
