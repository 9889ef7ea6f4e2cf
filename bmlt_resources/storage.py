"""Where assets live: a local folder or an object store (``storage.uri``).

Layout under ``<storage.uri>/<config name>/``:

    snapshots/date=YYYY-MM-DD.parquet        orderbook_snapshots (zstd Parquet)
    quarantine/date=YYYY-MM-DD.parquet       malformed snapshots with their reason
    snapshot_gaps/date=YYYY-MM-DD.json       the source's recorded gaps of that day (book_tensors masks them)
    snapshot_checks/date=YYYY-MM-DD.json     snapshots_are_sound's verdict (book_tensors refuses a failed day)
    tensors/date=YYYY-MM-DD/                 book_tensors (.npy, memory-mappable, + meta.json)
    returns/date=YYYY-MM-DD/                 forward_returns
    dataset/                                 training_dataset
    model/                                   trained_model checkpoint
    report/                                  evaluation_report

Beside them, ``training-checkpoint.pt`` (the resumable training state) and ``training-result.pt``
(torchrun's result, handed back), in the store, so that a pod anywhere resumes or hands back.
Folders are committed as immutable versions with a pointer (``commit``, ``core.files.atomic_directory``);
a reader resolves the pointer once (``require``) and reads that version only.
What must stay on a local disk (``PlatformConfig.local_dir``) is under ``root``: ``hpo/`` (sqlite
or journal tuning studies). Real data arrives
in ``<local_dir>/landing/<market>/date=YYYY-MM-DD/*.parquet`` (shared by all configs), in the
snapshot schema of ``bmlt_assets.core.book``.
"""

from __future__ import annotations

import datetime as dt
import json
from contextlib import AbstractContextManager
from pathlib import Path

import dagster as dg
import polars as pl

from bmlt_assets.core.book import trim_depth
from bmlt_assets.core.config import PlatformConfig
from bmlt_assets.core.days import DayReturns, DayTensors, OutdatedPartitionError, SnapshotFiles
from bmlt_assets.core.files import (
    META,
    CorruptPartitionError,
    MissingPartitionError,
    StoredPath,
    VersionPolicy,
    atomic_directory,
    integrity_problem,
    is_remote,
    landing_root,
    read_parquet,
    resolve_version,
    stage,
    storage_root,
)


class StorageResource(dg.ConfigurableResource):
    """Paths of every asset of one config, local or remote, and the local folder beside them."""

    uri: str  # storage.uri: a local folder or s3://bucket/prefix
    endpoint_url: str | None = None
    local_dir: str  # PlatformConfig.local_dir: the uri itself when local, else storage.cache_dir
    config_name: str
    cache_max_gb: float = 50.0  # storage.cache_max_gb: the staged copies' bound
    conditional_writes: bool = True
    grace_s: float = 900.0  # storage.versions
    orphan_age_s: float = 86_400.0
    lease_ttl_s: float = 300.0

    @classmethod
    def for_config(cls, config: PlatformConfig) -> StorageResource:
        s = config.storage
        return cls(
            uri=s.uri,
            endpoint_url=s.endpoint_url,
            local_dir=str(config.local_dir),
            config_name=config.name,
            cache_max_gb=s.cache_max_gb,
            conditional_writes=s.conditional_writes,
            **s.versions.model_dump(),
        )

    @property
    def policy(self) -> VersionPolicy:
        return VersionPolicy(self.grace_s, self.orphan_age_s, self.lease_ttl_s, self.conditional_writes)

    @property
    def cache_bytes(self) -> int:
        return int(self.cache_max_gb * 1e9)

    @property
    def store(self) -> StoredPath:
        """This config's partitions (a ``UPath`` when remote)."""
        return storage_root(self.uri, self.endpoint_url) / self.config_name

    @property
    def root(self) -> Path:
        """This config's local folder (resume checkpoints, tuning studies); the store's when it is local."""
        return Path(self.local_dir) / self.config_name

    @property
    def hpo(self) -> Path:
        """Where a sqlite or journal tuning study lives (``hpo.storage``)."""
        return self.root / "hpo"

    @property
    def training_state(self) -> StoredPath:
        """The latest model's resumable training state (``core.train.TrainState``), written every
        epoch where the partitions are (the object store with s3://): a killed or preempted run
        resumes, on any machine."""
        return self.store / "training-checkpoint.pt"

    @property
    def handed_back(self) -> StoredPath:
        """Where torchrun's rank 0 leaves its training result for the step that launched it."""
        return self.store / "training-result.pt"

    @property
    def staged(self) -> Path:
        """Verified local copies of remote partitions, one folder per content hash."""
        return Path(self.local_dir) / "staged"

    def snapshots(self, date: dt.date) -> StoredPath:
        return self.store / "snapshots" / f"date={date.isoformat()}.parquet"

    def quarantine(self, date: dt.date) -> StoredPath:
        return self.store / "quarantine" / f"date={date.isoformat()}.parquet"

    def snapshot_gaps(self, date: dt.date) -> StoredPath:
        return self.store / "snapshot_gaps" / f"date={date.isoformat()}.json"

    def snapshot_check(self, date: dt.date) -> StoredPath:
        return self.store / "snapshot_checks" / f"date={date.isoformat()}.json"

    def snapshot_files(self, date: dt.date) -> SnapshotFiles:
        """The files of one day of orderbook_snapshots (``core.days.DaySnapshots`` reads and writes them)."""
        return SnapshotFiles(
            self.snapshots(date), self.quarantine(date), self.snapshot_gaps(date), self.snapshot_check(date)
        )

    def tensors(self, date: dt.date) -> StoredPath:
        return self.store / "tensors" / f"date={date.isoformat()}"

    def returns(self, date: dt.date) -> StoredPath:
        return self.store / "returns" / f"date={date.isoformat()}"

    @property
    def dataset(self) -> StoredPath:
        return self.store / "dataset"

    @property
    def model(self) -> StoredPath:
        return self.store / "model"

    @property
    def report(self) -> StoredPath:
        return self.store / "report"

    def commit(self, path: StoredPath) -> AbstractContextManager[Path]:
        """A local folder to fill; on success it becomes the partition ``path`` (core.files.atomic_directory)."""
        return atomic_directory(path, self.staged, self.policy, self.cache_bytes)

    def committed(self, path: StoredPath) -> bool:
        """Whether a folder partition has its meta.json (is visible to readers), or a file exists."""
        return (path / META if path.suffix == "" else path).exists()

    def materialize_command(self, asset: str, date: dt.date | None = None) -> str:
        """The command that materializes ``asset`` (of ``date``), under this config's asset key."""
        partition = f" --partition {date.isoformat()}" if date else ""
        return f"dagster asset materialize -m bmlt_assets.definitions --select {self.config_name}/{asset}{partition}"

    def require(self, path: StoredPath, asset: str, date: dt.date | None = None) -> Path:
        """The folder partition ``path``, if it was fully written and is readable, as the local folder
        of the version its pointer names now (a remote one staged, for memory maps; a local one
        leased while this process lives); else an error naming what to materialize."""
        found = self._readable(path, asset, date)
        assert isinstance(found, Path)  # a folder partition is always staged locally
        return found

    def require_tensors(self, date: dt.date) -> DayTensors:
        """book_tensors of ``date``, memory-mapped; else an error naming what to materialize."""
        folder = self.require(self.tensors(date), "book_tensors", date)
        try:
            return DayTensors.load(folder)
        except OutdatedPartitionError as error:
            raise OutdatedPartitionError(f"{error}: {self.materialize_command('book_tensors', date)}") from None

    def require_returns(self, date: dt.date) -> DayReturns:
        """forward_returns of ``date``, memory-mapped; else an error naming what to materialize."""
        return DayReturns.load(self.require(self.returns(date), "forward_returns", date))

    def require_file(self, path: StoredPath, asset: str, date: dt.date | None = None) -> StoredPath:
        """The file partition ``path`` as it is (local or remote), if it was fully written and is
        readable; else an error naming what to materialize."""
        return self._readable(path, asset, date)

    def _readable(self, path: StoredPath, asset: str, date: dt.date | None) -> StoredPath:
        problem = None
        if self.committed(path):
            try:
                if path.suffix:
                    readable = path
                elif is_remote(path):
                    readable = stage(path, self.staged, self.cache_bytes)
                else:
                    readable = resolve_version(Path(path), self.policy)
            except FileNotFoundError:  # removed by hand meanwhile
                problem = None
            except CorruptPartitionError as error:
                problem = str(error)
            else:
                problem = integrity_problem(readable)
                if problem is None:
                    return readable
        hint = self.materialize_command(asset, date)
        where = f" for {date.isoformat()}" if date else ""
        if problem is not None:
            raise CorruptPartitionError(f"{asset}{where} at {path} is corrupt ({problem}); re-materialize it: {hint}")
        raise MissingPartitionError(f"{asset}{where} is missing at {path}; materialize it first: {hint}")


class LandingZoneResource(dg.ConfigurableResource):
    """Real snapshots recorded or imported into the landing zone (see ``bmlt record``/``import``);
    a :class:`~bmlt_assets.core.sources.BookSource` without an oracle."""

    base: str  # core.files.landing_base: PlatformConfig.local_dir, or storage.uri when it is s3://
    endpoint_url: str | None = None
    market: str
    depth: int

    def _day(self, date: dt.date) -> StoredPath:
        return landing_root(storage_root(self.base, self.endpoint_url), self.market) / f"date={date.isoformat()}"

    def snapshots(self, date: dt.date, symbols: list[str]) -> pl.DataFrame:
        frame = pl.concat([read_parquet(f) for f in self.snapshot_parts(date, symbols)], how="vertical")
        return trim_depth(frame.filter(pl.col("symbol").is_in(symbols)), self.depth)

    def snapshot_parts(self, date: dt.date, symbols: list[str]) -> list[StoredPath]:
        """The day's landing files, every update's books of any symbols and depth: orderbook_snapshots
        reads them a row group at a time."""
        folder = self._day(date)
        # Unfinished local writes are '.<name>.tmp-*' (never matched); a remote file appears whole.
        files: list[StoredPath] = sorted(folder.glob("*.parquet"), key=str)
        if not files:
            raise MissingPartitionError(
                f"no landing files for {date.isoformat()} in {folder}; record that day with "
                "`bmlt record --config configs/binance.yaml` or import a recording with `bmlt import`"
            )
        return files

    def gaps(self, date: dt.date, symbols: list[str]) -> list[dict]:
        """Intervals the recorder lost (``*.gaps.json`` beside its files; see core/sources/binance/recorder.py)."""
        paths: list[StoredPath] = sorted(self._day(date).glob("*.gaps.json"), key=str)
        found = [gap for path in paths for gap in json.loads(path.read_text())]
        return [gap for gap in found if gap["symbol"] in symbols]

    def oracle(self) -> None:
        """Real markets hide their generating process: no oracle."""
        return None
