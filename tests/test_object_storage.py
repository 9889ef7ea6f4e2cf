"""Object storage (storage.uri: s3://...) on a loopback moto_server, and the local commit."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
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
    local_report = json.loads((local_store.require(local_store.report, "r") / "metrics.json").read_text())
    remote_report = json.loads((remote_store.require(remote_store.report, "r") / "metrics.json").read_text())
    assert remote_report == local_report

    keys = s3.keys("runs/tiny/")
    for day in remote.data.dates:
        assert f"runs/tiny/snapshots/date={day}.parquet" in keys
        assert {f"runs/tiny/{kind}/date={day}/meta.json" for kind in ("tensors", "returns")} <= set(keys)
        assert any(key.startswith(f"runs/tiny/tensors/date={day}/versions/") for key in keys)
    assert {"runs/tiny/dataset/meta.json", "runs/tiny/model/meta.json", "runs/tiny/report/meta.json"} <= set(keys)
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


def _pointer(s3: S3, prefix: str) -> dict:
    return json.loads(s3.client().get_object(Bucket=s3.bucket, Key=f"{prefix}meta.json")["Body"].read())


def _version_keys(s3: S3, prefix: str) -> dict[str, list[str]]:
    """The keys of each stored version of a partition, by version id."""
    versions: dict[str, list[str]] = {}
    for key in s3.keys(f"{prefix}versions/"):
        version, name = key.removeprefix(f"{prefix}versions/").split("/", 1)
        versions.setdefault(version, []).append(name)
    return versions


def test_a_writer_killed_before_its_pointer_leaves_the_previous_version_and_its_debris_is_collected(
    tmp_path: Path, s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = _storage(tmp_path, s3)
    _commit(storage, 1)
    prefix = f"runs/tiny/tensors/date={DAY}/"
    (first,) = _version_keys(s3, prefix)

    def killed_at_the_pointer(*args, **kwargs) -> bool:
        raise KeyboardInterrupt("killed before meta.json")

    monkeypatch.setattr(files, "_put_pointer", killed_at_the_pointer)
    with pytest.raises(KeyboardInterrupt):
        _commit(storage, 2)
    monkeypatch.undo()
    assert len(_version_keys(s3, prefix)) == 2  # version 2 was uploaded whole, and is named by nothing
    version, arrays = _read(_elsewhere(storage, tmp_path / "reader"))
    assert version == 1 and (arrays["base"] == 1).all() and (arrays["mids"] == 1).all()

    # A later commit collects the orphan once it is older than the policy's orphan age, and keeps
    # the version it superseded for the grace.
    patient = StorageResource(**{**storage.model_dump(), "orphan_age_s": 0.0})
    _commit(patient, 3)
    stored = _version_keys(s3, prefix)
    assert len(stored) == 2 and first in stored  # version 3 and the superseded version 1
    assert _pointer(s3, prefix)["superseded_versions"] == [{"version": first, "at": pytest.approx(time.time(), abs=60)}]
    version, arrays = _read(_elsewhere(storage, tmp_path / "another-reader"))
    assert version == 3 and (arrays["base"] == 3).all()

    # Past its grace the superseded version goes too.
    _commit(StorageResource(**{**patient.model_dump(), "grace_s": 0.0}), 4)
    assert list(_version_keys(s3, prefix)) == [_pointer(s3, prefix)["version_id"]]  # no grace: 1 and 3 went


def test_a_legacy_partition_is_superseded_and_collected_like_a_version(tmp_path: Path, s3: S3) -> None:
    """A partition written before versions (files beside meta.json) stays readable, and its files
    go once a versioned commit superseded it past the grace."""
    storage = StorageResource(**{**_storage(tmp_path, s3).model_dump(), "grace_s": 0.0})
    prefix = f"runs/tiny/tensors/date={DAY}/"
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    save_arrays(legacy, {"base": np.full(10, 7, np.float32), "mids": np.full(10, 7.0)})
    write_json({"version": 7}, legacy / "meta.json")
    files._seal(legacy, durable=False)
    client = s3.client()
    for name in ("base.npy", "mids.npy", "meta.json"):
        client.put_object(Bucket=s3.bucket, Key=f"{prefix}{name}", Body=(legacy / name).read_bytes())
    assert _read(_elsewhere(storage, tmp_path / "reader"))[0] == 7
    _commit(storage, 8)
    _commit(storage, 9)  # the legacy files were superseded by 8 more than grace_s = 0 ago
    assert not [key for key in s3.keys(prefix) if key.endswith(".npy") and "/versions/" not in key]
    assert _read(_elsewhere(storage, tmp_path / "reader-2"))[0] == 9


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
    prefix = f"runs/tiny/tensors/date={DAY}/"
    base_key = f"{prefix}versions/{_pointer(s3, prefix)['version_id']}/base.npy"
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
    storage = StorageResource(**{**_storage(tmp_path).model_dump(), "grace_s": 0.05})
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
    # Past the grace one version is left: the symlink's target; the older run's real folder is gone too.
    time.sleep(0.1)
    files.collect_superseded(target, storage.policy)
    assert target.is_symlink()
    versions = [p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.v-")]
    assert versions == [os.readlink(target)]


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


def test_two_local_writers_leave_one_whole_version_and_the_loser_is_told(tmp_path: Path) -> None:
    storage = _storage(tmp_path)
    start, errors = threading.Barrier(2), []

    def write(version: int) -> None:
        with storage.commit(storage.tensors(DAY)) as staging:
            save_arrays(staging, {"base": np.full(1000, version, np.float32), "mids": np.full(1000, version)})
            write_json({"version": version}, staging / "meta.json")
            start.wait()  # both have started before either swaps
        return None

    def guarded(version: int) -> None:
        try:
            write(version)
        except files.ConcurrentCommitError as error:
            errors.append(str(error))

    threads = [threading.Thread(target=guarded, args=(version,)) for version in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 1 and "committed by another writer while this one was writing" in errors[0]
    version, arrays = _read(storage)
    assert version in (1, 2) and (arrays["base"] == version).all() and (arrays["mids"] == version).all()
    # The loser's version folder was discarded: one version on disk.
    assert len(list(storage.tensors(DAY).parent.glob(f".date={DAY}.v-*"))) == 1


def test_a_leased_local_version_outlives_its_grace_and_goes_once_released(tmp_path: Path) -> None:
    """A reader that mapped a version (on NFS, a deleted mapped file faults with ESTALE or SIGBUS
    on the reading client) keeps it past the grace while its lease is refreshed."""
    storage = StorageResource(**{**_storage(tmp_path).model_dump(), "grace_s": 0.0, "lease_ttl_s": 0.4})
    _commit(storage, 1)
    folder = storage.require(storage.tensors(DAY), "book_tensors", DAY)  # resolved once, leased
    mapped = load_arrays(folder, ["base"], mmap=True)["base"]
    _commit(storage, 2)
    time.sleep(1.0)  # past the grace and more than the lease's ttl: only its refreshes keep it
    _commit(storage, 3)
    assert folder.is_dir() and (mapped == 1).all()
    files.LEASES.release()
    time.sleep(0.5)  # the lease is now older than its ttl
    files.collect_superseded(storage.tensors(DAY), storage.policy)
    assert not folder.exists()
    assert _read(storage)[0] == 3


def test_the_staged_copies_are_bounded_least_recently_used_first(
    tmp_path: Path, s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "RECENTLY_USED_S", 0.0)
    storage = _storage(tmp_path, s3)
    reader = StorageResource(**{**_elsewhere(storage, tmp_path / "reader").model_dump(), "cache_max_gb": 3e-5})
    days = [DAY + dt.timedelta(days=k) for k in range(3)]
    for day in days:  # about 12 kB per staged copy; the bound holds two
        with storage.commit(storage.tensors(day)) as staging:
            save_arrays(staging, {"base": np.full(1000, day.day, np.float32), "mids": np.full(1000, day.day)})
    first = reader.require(reader.tensors(days[0]), "book_tensors", days[0])
    second = reader.require(reader.tensors(days[1]), "book_tensors", days[1])
    time.sleep(0.05)
    assert reader.require(reader.tensors(days[0]), "book_tensors", days[0]) == first  # used again: now the newest
    time.sleep(0.05)
    third = reader.require(reader.tensors(days[2]), "book_tensors", days[2])
    assert first.is_dir() and third.is_dir() and not second.exists()
