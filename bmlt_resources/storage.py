"""Where assets live on disk, and the atomic writes every asset uses.

Layout under ``<base_dir>/<config name>/``:

    snapshots/date=YYYY-MM-DD.parquet        orderbook_snapshots (zstd Parquet)
    quarantine/date=YYYY-MM-DD.parquet       malformed snapshots with their reason
    tensors/date=YYYY-MM-DD/                 book_tensors (.npy, memory-mappable, + meta.json)
    returns/date=YYYY-MM-DD/                 forward_returns
    dataset/                                 training_dataset
    model/                                   trained_model checkpoint
    report/                                  evaluation_report

Real data arrives in ``<base_dir>/landing/<market>/date=YYYY-MM-DD/*.parquet`` (shared by all
configs), in the snapshot schema of ``bmlt_assets.core.book``.

Every write goes to a temporary name in the same folder and is renamed into place, so a killed
process never leaves a half-written file and readers see either the old or the new version.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import polars as pl
import pyarrow.parquet as pq

from bmlt_assets.core.book import trim_depth


def landing_root(base_dir: str | Path, market: str) -> Path:
    """Where recorded and imported books of a market land: ``<root>/date=YYYY-MM-DD/*.parquet``."""
    return Path(base_dir) / "landing" / market


class MissingPartitionError(FileNotFoundError):
    """An upstream partition is not on disk; the message says what to materialize."""


class CorruptPartitionError(ValueError):
    """An upstream partition is on disk but unreadable (truncated, overwritten by hand...)."""


def integrity_problem(path: Path) -> str | None:
    """Why ``path`` (a Parquet file or a folder of .npy + meta.json) cannot be read, or None.

    Cheap: it reads Parquet footers and .npy headers and maps (never loads) array data, so a
    truncated file is caught before anyone reads garbage from it.
    """
    files = [path] if path.is_file() else sorted(path.iterdir())
    for file in files:
        try:
            if file.suffix == ".parquet":
                _ = pq.ParquetFile(file).metadata  # reads and checks the footer
            elif file.suffix == ".npy":
                np.load(file, mmap_mode="r")
            elif file.suffix == ".json":
                json.loads(file.read_text())
        except Exception as error:  # noqa: BLE001 - every failure to parse is corruption
            return f"{file.name}: {error}"
    return None


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path)
    try:
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        _fsync_directory(path.parent)  # makes the rename itself survive a power loss
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _fsync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


ROW_GROUP_BYTES = 16 * 2**20


def write_parquet(frame: pl.DataFrame, path: Path) -> Path:
    """zstd Parquet in row groups of about 16 MiB uncompressed, so readers can stream a
    partition group by group instead of loading it whole (see day_tensors_from_parquet)."""
    row_bytes = max(1, frame.estimated_size() // max(frame.height, 1))
    rows = max(256, ROW_GROUP_BYTES // row_bytes)
    return atomic_write(path, lambda tmp: frame.write_parquet(tmp, compression="zstd", statistics=True, row_group_size=rows))


def write_json(payload: Any, path: Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str)))


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``path`` as a whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _temporary_sibling(path)
    staging.mkdir()
    try:
        yield staging
        previous = _temporary_sibling(path)
        if path.exists():
            os.replace(path, previous)
        os.replace(staging, path)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_arrays(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", np.ascontiguousarray(array))


def load_arrays(directory: Path, names: list[str], mmap: bool = False) -> dict[str, np.ndarray]:
    mode = "r" if mmap else None
    return {name: np.load(directory / f"{name}.npy", mmap_mode=mode) for name in names}


def directory_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class StorageResource(dg.ConfigurableResource):
    """Paths of every asset for one config; local folders (object stores via a later issue)."""

    base_dir: str
    config_name: str

    @property
    def root(self) -> Path:
        return Path(self.base_dir) / self.config_name

    def snapshots(self, date: dt.date) -> Path:
        return self.root / "snapshots" / f"date={date.isoformat()}.parquet"

    def quarantine(self, date: dt.date) -> Path:
        return self.root / "quarantine" / f"date={date.isoformat()}.parquet"

    def tensors(self, date: dt.date) -> Path:
        return self.root / "tensors" / f"date={date.isoformat()}"

    def returns(self, date: dt.date) -> Path:
        return self.root / "returns" / f"date={date.isoformat()}"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def require(self, path: Path, asset: str, date: dt.date | None = None) -> Path:
        """``path`` if it was fully written and is readable, else an error naming what to materialize."""
        marker = path / "meta.json" if path.suffix == "" else path
        if marker.exists():
            problem = integrity_problem(path)
            if problem is None:
                return path
        if date is None:
            hint = f"dagster asset materialize -m bmlt_assets.definitions --select {asset}"
        else:
            hint = f"dagster asset materialize -m bmlt_assets.definitions --select {asset} --partition {date.isoformat()}"
        where = f" for {date.isoformat()}" if date else ""
        if marker.exists():
            raise CorruptPartitionError(f"{asset}{where} at {path} is corrupt ({problem}); re-materialize it: {hint}")
        raise MissingPartitionError(f"{asset}{where} is missing at {path}; materialize it first: {hint}")


class LandingZoneResource(dg.ConfigurableResource):
    """Real snapshots recorded or imported into the landing zone (see ``bmlt record``/``import``)."""

    base_dir: str
    market: str
    depth: int

    def snapshots(self, date: dt.date, symbols: list[str]) -> pl.DataFrame:
        folder = landing_root(self.base_dir, self.market) / f"date={date.isoformat()}"
        files = sorted(folder.glob("*.parquet"))  # unfinished writes are '.<name>.tmp-*': never matched
        if not files:
            raise MissingPartitionError(
                f"no landing files for {date.isoformat()} in {folder}; record that day with "
                "`bmlt record --config configs/binance.yaml` or import a recording with `bmlt import`"
            )
        frame = pl.concat([pl.read_parquet(f) for f in files], how="vertical")
        return trim_depth(frame.filter(pl.col("symbol").is_in(symbols)), self.depth)

    def gaps(self, date: dt.date, symbols: list[str]) -> list[dict]:
        """Intervals the recorder lost (``*.gaps.json`` beside its files; see core/recorder.py)."""
        folder = landing_root(self.base_dir, self.market) / f"date={date.isoformat()}"
        found = [gap for path in sorted(folder.glob("*.gaps.json")) for gap in json.loads(path.read_text())]
        return [gap for gap in found if gap["symbol"] in symbols]
