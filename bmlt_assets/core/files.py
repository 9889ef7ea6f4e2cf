"""File helpers every writer uses: atomic writes, Parquet/JSON/array IO and integrity checks.

Every write goes to a temporary name in the same folder and is renamed into place, so a killed
process never leaves a half-written file and readers see either the old or the new version.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow.parquet as pq


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
        except Exception as error:
            return f"{file.name}: {error}"
    return None


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
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
    row_bytes = max(1, int(frame.estimated_size()) // max(frame.height, 1))
    rows = max(256, ROW_GROUP_BYTES // row_bytes)
    return atomic_write(
        path, lambda tmp: frame.write_parquet(tmp, compression="zstd", statistics=True, row_group_size=rows)
    )


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
    mode: Literal["r"] | None = "r" if mmap else None
    return {name: np.load(directory / f"{name}.npy", mmap_mode=mode) for name in names}


def directory_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _landing_days(frame: pl.DataFrame, base_dir: str | Path, market: str, stem: str) -> dict[Path, pl.DataFrame]:
    if not frame.height:
        return {}
    day = pl.from_epoch(pl.col("receive_ts"), time_unit="ns").dt.date().alias("date")
    by_day = frame.with_columns(day).partition_by("date", as_dict=True)
    return {
        landing_root(base_dir, market) / f"date={date}" / f"{stem}.parquet": rows.drop("date")
        for (date,), rows in sorted(by_day.items())
    }


def landing_targets(frame: pl.DataFrame, base_dir: str | Path, market: str, stem: str) -> list[Path]:
    """The files ``write_landing_days`` would write for these arguments."""
    return list(_landing_days(frame, base_dir, market, stem))


def landing_depth(path: Path) -> int | None:
    """Levels per side of a landing file (the width of its fixed-size ``bid_px``), or None when
    it cannot be read or has no such column."""
    try:
        kind = pq.read_schema(path).field("bid_px").type
    except (OSError, KeyError, ValueError):
        return None
    return getattr(kind, "list_size", None)


def write_landing_days(frame: pl.DataFrame, base_dir: str | Path, market: str, stem: str) -> list[Path]:
    """Snapshots split by UTC receive day into ``<landing>/date=YYYY-MM-DD/<stem>.parquet``."""
    return [write_parquet(rows, path) for path, rows in _landing_days(frame, base_dir, market, stem).items()]
