"""Object storage (storage.uri: s3://...) on a loopback moto_server, and the local commit."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import uuid
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pytest

from bmlt_assets.core import files
from bmlt_assets.core.config import ConfigError, PlatformConfig, load_config
from bmlt_assets.core.files import (
    CorruptPartitionError,
    MissingPartitionError,
    load_arrays,
    read_meta,
    read_parquet,
    save_arrays,
    write_json,
)
from bmlt_assets.definitions import CHECKS, INGEST_ASSETS, TRAINING_ASSETS, build_resources
from bmlt_assets.partitions import range_tags
from bmlt_assets.provenance import content_hash
from bmlt_resources.storage import StorageResource
from tests.helpers import write_config
from tests.services import S3

ALL_ASSETS = INGEST_ASSETS + TRAINING_ASSETS + CHECKS
DAY = dt.date(2025, 1, 6)


def _s3_config(folder: Path, s3: S3, prefix: str = "runs") -> Path:
    return write_config(folder, {"storage": {"uri": f"s3://{s3.bucket}/{prefix}", "endpoint_url": s3.endpoint_url}})


def _run_pipeline(config_path: Path, config: PlatformConfig) -> list[dg.ExecuteInProcessResult]:
    instance = dg.DagsterInstance.ephemeral()
    tags = range_tags(config.data.start_date, config.data.end_date)
    runs = [
        dg.materialize(
            ALL_ASSETS, selection=INGEST_ASSETS, resources=build_resources(config_path), instance=instance, tags=tags
        ),
        dg.materialize(
            ALL_ASSETS, selection=TRAINING_ASSETS, resources=build_resources(config_path), instance=instance
        ),
    ]
    assert all(run.success for run in runs)
    while (
        mlflow.active_run() is not None
    ):  # no job hook here ends it (see conftest), and the next run has another store
        mlflow.end_run()
    return runs


@pytest.mark.slow  # the whole tiny pipeline twice, on S3 and on local disk: about 25 s
def test_the_pipeline_on_s3_reports_what_the_local_run_reports(
    tmp_path: Path, s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"secret-{uuid.uuid4().hex}"  # moto takes any key; this one must never be written anywhere
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    (tmp_path / "local").mkdir()
    (tmp_path / "remote").mkdir()
    local_path, remote_path = write_config(tmp_path / "local"), _s3_config(tmp_path / "remote", s3)
    local, remote = load_config(local_path), load_config(remote_path)
    _run_pipeline(local_path, local)
    runs = _run_pipeline(remote_path, remote)

    local_store, remote_store = StorageResource.for_config(local), StorageResource.for_config(remote)
    local_report = json.loads((local_store.report / "metrics.json").read_text())
    remote_report = json.loads((remote_store.report / "metrics.json").read_text())
    assert remote_report == local_report

    keys = s3.keys("runs/tiny/")
    for day in remote.data.dates:
        assert f"runs/tiny/snapshots/date={day}.parquet" in keys
        assert {f"runs/tiny/{kind}/date={day}/meta.json" for kind in ("tensors", "returns")} <= set(keys)
        assert f"runs/tiny/tensors/date={day}/base.npy" in keys
    assert {"runs/tiny/dataset/meta.json", "runs/tiny/model/checkpoint.pt", "runs/tiny/report/metrics.json"} <= set(
        keys
    )
    # Nothing of the partitions was written to the local disk but verified staged copies.
    local_files = {p.relative_to(remote.local_dir).parts[0] for p in remote.local_dir.rglob("*") if p.is_file()}
    assert local_files <= {"staged", "mlflow.db", "mlartifacts"}
    assert not (remote.local_dir / "tiny" / "tensors").exists()
    # The same content hashes in both stores: the bytes are the same.
    assert content_hash(remote_store.tensors(DAY)) == content_hash(local_store.tensors(DAY))
    # The key is read from the environment only: not in the resources, the metadata or the stored config.
    events = json.dumps([str(event) for run in runs for event in run.all_events])
    assert secret not in events
    assert secret not in json.dumps(build_resources(remote_path)["storage"].model_dump())
    assert secret not in (remote_store.dataset / "meta.json").read_text()


def test_rematerializing_a_partition_on_s3_is_idempotent(tmp_path: Path, s3: S3) -> None:
    path = _s3_config(tmp_path, s3)
    instance = dg.DagsterInstance.ephemeral()
    seen = []
    for _ in range(2):
        result = dg.materialize(
            ALL_ASSETS,
            selection=INGEST_ASSETS[:2],
            resources=build_resources(path),
            instance=instance,
            partition_key=DAY.isoformat(),
        )
        assert result.success
        objects = {key: s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read() for key in s3.keys("runs/")}
        versions = {
            node: result.asset_materializations_for_node(node)[0].tags["dagster/data_version"]
            for node in ("orderbook_snapshots", "book_tensors")
        }
        seen.append((objects, versions))
    (first, first_versions), (second, second_versions) = seen
    assert sorted(first) == sorted(second) and first == second
    assert first_versions == second_versions
    meta = json.loads(first[f"runs/tiny/tensors/date={DAY}/meta.json"])
    assert sorted(meta["files"]) == ["base.npy", "mids.npy", "quotes.npy", "timestamps.npy", "valid.npy"]


def _storage(tmp_path: Path, s3: S3 | None = None) -> StorageResource:
    config = load_config(_s3_config(tmp_path, s3) if s3 else write_config(tmp_path))
    return StorageResource.for_config(config)


def _elsewhere(storage: StorageResource, local_dir: Path) -> StorageResource:
    """The same store seen from another machine: its own local disk, nothing staged yet."""
    return StorageResource(**{**storage.model_dump(), "local_dir": str(local_dir)})


def _commit(storage: StorageResource, version: int, size: int = 1000) -> None:
    with storage.commit(storage.tensors(DAY)) as staging:
        save_arrays(staging, {"base": np.full(size, version, dtype=np.float32), "mids": np.full(size, version)})
        write_json({"version": version}, staging / "meta.json")


def _read(storage: StorageResource) -> tuple[int, dict[str, np.ndarray]]:
    folder = storage.require(storage.tensors(DAY), "book_tensors", DAY)
    return read_meta(folder)["version"], load_arrays(folder, ["base", "mids"], mmap=True)


def test_a_writer_killed_before_its_meta_json_leaves_no_partition(
    tmp_path: Path, s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = _storage(tmp_path, s3)
    _commit(storage, 1)
    assert _read(storage)[0] == 1
    fs = storage.tensors(DAY).fs
    put_file = fs.put_file

    def killed_at_meta(local: str, remote: str, **kwargs) -> None:
        if remote.endswith("meta.json"):
            raise KeyboardInterrupt("killed before meta.json")
        put_file(local, remote, **kwargs)

    monkeypatch.setattr(fs, "put_file", killed_at_meta)
    with pytest.raises(KeyboardInterrupt):
        _commit(storage, 2)
    monkeypatch.undo()
    keys = s3.keys(f"runs/tiny/tensors/date={DAY}/")
    assert keys == [f"runs/tiny/tensors/date={DAY}/{name}" for name in ("base.npy", "mids.npy")]  # data, no meta
    assert not storage.committed(storage.tensors(DAY))
    with pytest.raises(MissingPartitionError, match="book_tensors for 2025-01-06 is missing"):
        _read(storage)  # version 1 is staged locally, and still not served
    prefix = f"runs/tiny/tensors/date={DAY}/"
    s3.client().put_object(Bucket=s3.bucket, Key=f"{prefix}debris.npy", Body=b"of some other writer")
    _commit(storage, 3)
    version, arrays = _read(_elsewhere(storage, tmp_path / "reader"))
    assert version == 3 and (arrays["base"] == 3).all() and (arrays["mids"] == 3).all()
    assert s3.keys(prefix) == [f"{prefix}{name}" for name in ("base.npy", "meta.json", "mids.npy")]  # debris gone


def test_a_reader_sees_an_overwritten_object_s_new_content(tmp_path: Path, s3: S3) -> None:
    """Stale-cache regression: staged copies are keyed by content hash, and single files are
    read from the store every time, so an overwrite is never answered with old bytes."""
    storage = _storage(tmp_path, s3)
    reader = _elsewhere(storage, tmp_path / "reader")
    _commit(storage, 1)
    assert _read(reader)[0] == 1 and _read(storage)[0] == 1
    _commit(storage, 2)  # the same keys, new bytes
    for where in (reader, storage):  # staged by download, and kept by the writer
        version, arrays = _read(where)
        assert version == 2 and (arrays["base"] == 2).all() and (arrays["mids"] == 2).all()

    check = storage.snapshot_check(DAY)
    write_json({"passed": True}, check)
    assert json.loads(check.read_text()) == {"passed": True}
    key = f"runs/tiny/snapshot_checks/date={DAY}.json"
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=b'{"passed": false}')  # another writer
    assert json.loads(check.read_text()) == {"passed": False}

    # A file replaced behind its meta.json's back is refused by a reader that has not staged it yet.
    base_key = f"runs/tiny/tensors/date={DAY}/base.npy"
    s3.client().put_object(Bucket=s3.bucket, Key=base_key, Body=b"\x93NUMPY not what meta.json recorded")
    with pytest.raises(CorruptPartitionError, match="base.npy: its bytes differ from the sha256"):
        _read(_elsewhere(storage, tmp_path / "another-reader"))


def test_snapshots_round_trip_through_s3(tmp_path: Path, s3: S3) -> None:
    path = _s3_config(tmp_path, s3)
    assert dg.materialize(
        ALL_ASSETS, selection=INGEST_ASSETS[:1], resources=build_resources(path), partition_key=DAY.isoformat()
    ).success
    storage = StorageResource.for_config(load_config(path))
    frame = read_parquet(storage.require_file(storage.snapshots(DAY), "orderbook_snapshots", DAY))
    assert frame["symbol"].unique().sort().to_list() == ["BTC/USDT", "ETH/USDT"]
    assert json.loads(storage.snapshot_check(DAY).read_text())["passed"] is True


def test_the_local_commit_never_leaves_the_partition_missing_or_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 50 ms is still thousands of times longer than a reader's path walk through the old symlink.
    monkeypatch.setattr(files, "SUPERSEDED_GRACE_S", 0.05)
    storage = _storage(tmp_path)
    target = storage.tensors(DAY)
    target.mkdir(parents=True)  # a real folder, as older runs left them
    (target / "meta.json").write_text('{"version": 0}')
    np.save(target / "base.npy", np.zeros(1000, dtype=np.float32))
    np.save(target / "mids.npy", np.zeros(1000))
    commits, reads, problems = 30, [], []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                version = json.loads((target / "meta.json").read_text())["version"]
                arrays = load_arrays(target, ["base", "mids"])
                for name, array in arrays.items():
                    if array.shape != (1000,) or len(np.unique(array)) != 1:
                        problems.append(f"{name} half-written: {np.unique(array)}")
                reads.append(version)
            except Exception as error:  # missing or unreadable: exactly what must never happen
                problems.append(f"{error!r}: {getattr(error, 'filename', '')}")

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for version in range(1, commits + 1):
            _commit(storage, version)
    finally:
        done.set()
        reader.join()
    assert not problems, problems[:5]
    assert len(reads) > commits and reads == sorted(reads)  # versions only move forward
    assert _read(storage)[0] == commits
    # One version is left: the symlink's target; the older run's real folder is gone too.
    assert target.is_symlink()
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, os.readlink(target)])


def test_the_local_commit_fsyncs_files_and_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = _storage(tmp_path)
    synced: list[str] = []
    fsync = os.fsync

    def recording(descriptor: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording)
    _commit(storage, 1)
    version = Path(os.path.realpath(storage.tensors(DAY)))
    assert {str(version / "base.npy"), str(version / "mids.npy")} <= set(synced)
    # meta.json is synced under its temporary name, before the rename that the folder's sync keeps.
    assert any(Path(path).parent == version and Path(path).name.startswith(".meta.json.tmp-") for path in synced)
    assert str(version) in synced  # the version folder's entries
    # The parent last: the symlink swap itself survives a power loss.
    assert synced[-1] == str(version.parent)


def test_storage_config_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="storage.base_dir was renamed storage.uri"):
        load_config(write_config(tmp_path, {"storage": {"base_dir": "data"}}, name="old.yaml"))
    with pytest.raises(ConfigError, match="must be a local folder or s3://bucket/prefix"):
        load_config(write_config(tmp_path, {"storage": {"uri": "gs://bucket/x"}}, name="gcs.yaml"))
    with pytest.raises(ConfigError, match="endpoint_url is for an s3:// uri"):
        load_config(write_config(tmp_path, {"storage": {"endpoint_url": "http://127.0.0.1:9000"}}, name="e.yaml"))
    remote = load_config(write_config(tmp_path, {"storage": {"uri": "s3://b/p/", "cache_dir": "c"}}, name="r.yaml"))
    assert remote.storage.uri == "s3://b/p" and remote.local_dir == tmp_path / "c"
    assert remote.tracking_uri == f"sqlite:///{tmp_path / 'c' / 'mlflow.db'}"
