"""File helpers every writer uses: atomic writes and commits, Parquet/JSON/array IO, integrity checks.

Storage is a local folder or an object store (``s3://``, through universal-pathlib and s3fs). A
local path is a ``pathlib.Path``; a remote one is a ``UPath`` that is not (``is_remote``).

- A single file (Parquet, JSON) is written whole: locally to a temporary sibling that is fsynced,
  renamed into place and its folder fsynced; remotely as one PUT, which S3 makes visible atomically.
- A folder partition is committed by ``atomic_directory``: all its files first, its ``meta.json``
  last, recording each file's sha256 and size and the partition's content hash. Readers treat a
  folder without meta.json as absent.
  - Local: the files go into a fresh version folder beside the partition (``.<name>.v-<id>``);
    files, meta.json and folders are fsynced; then a symlink ``<name>`` -> that version replaces
    the old one with one ``os.replace`` and the parent folder is fsynced. Every open of
    ``<name>/<file>`` finds a complete version, old or new, never none; the old version is deleted
    after a grace of SUPERSEDED_GRACE_S for readers that resolved the symlink just before the swap.
  - Remote: meta.json is deleted first (the partition is absent from then on), the files are put,
    meta.json is put last. A writer killed on the way leaves no partition.
- ``stage`` gives memory-mapped readers a local copy of a remote partition in
  ``<staged>/<content hash>/``, verified against the recorded hashes. A content hash names
  immutable bytes, so a staged copy is never stale. fsspec's file caches are not used: one served
  an overwritten object's old bytes.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from typing_extensions import TypeIs
from upath import UPath

META = "meta.json"
StoredPath = Path | UPath  # a local Path, or a remote UPath (which is not a Path)
P = TypeVar("P", bound=StoredPath)


def is_remote(path: StoredPath) -> TypeIs[UPath]:
    return not isinstance(path, Path)


def storage_root(uri: str, endpoint_url: str | None = None) -> StoredPath:
    """``storage.uri`` as a path: a local folder, or an s3:// prefix (credentials from the environment)."""
    if not uri.startswith("s3://"):
        return Path(uri)
    # No listings cache: another process's commits must be seen at once.
    options: dict[str, Any] = {"use_listings_cache": False}
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    return UPath(uri, **options)


def landing_root(local_dir: str | Path, market: str) -> Path:
    """Where recorded and imported books of a market land: ``<root>/date=YYYY-MM-DD/*.parquet``."""
    return Path(local_dir) / "landing" / market


class MissingPartitionError(FileNotFoundError):
    """An upstream partition is not in storage; the message says what to materialize."""


class CorruptPartitionError(ValueError):
    """An upstream partition is in storage but unreadable (truncated, overwritten by hand...)."""


def read_meta(folder: StoredPath) -> dict[str, Any]:
    return json.loads((folder / META).read_text())


def integrity_problem(path: StoredPath) -> str | None:
    """Why ``path`` (a Parquet or JSON file, or a local partition folder) cannot be read, or None.

    Cheap: it reads Parquet footers and .npy headers, compares sizes with those meta.json
    recorded, and maps (never loads) array data, so a truncated file is caught before anyone
    reads garbage from it.
    """
    if path.suffix:
        return _file_problem(path, path.name)
    try:
        recorded = read_meta(path).get("files")
    except Exception as error:
        return f"{META}: {error}"
    if recorded is None:  # written before meta.json recorded its files
        recorded = {file.name: None for file in path.iterdir()}
    for name, info in sorted(recorded.items()):
        file = path / name
        try:
            size = file.stat().st_size
        except OSError as error:
            return f"{name}: {error}"
        if info is not None and size != info["bytes"]:
            return f"{name}: {size} bytes, but {META} recorded {info['bytes']}"
        problem = _file_problem(file, name)
        if problem:
            return problem
    return None


def _file_problem(file: StoredPath, name: str) -> str | None:
    try:
        if file.suffix == ".parquet":
            with file.open("rb") as handle:  # remote: a ranged GET or two, not the whole file
                _ = pq.ParquetFile(handle).metadata  # reads and checks the footer
        elif file.suffix == ".npy":
            np.load(file if isinstance(file, Path) else file.open("rb"), mmap_mode="r")
        elif file.suffix == ".json":
            json.loads(file.read_text())
    except Exception as error:
        return f"{name}: {error}"
    return None


@contextmanager
def readable(path: StoredPath) -> Iterator[Path]:
    """A local file to read ``path`` from: itself, or a remote file's download, deleted afterwards.
    (pyarrow streams a Parquet file's row groups several times faster from a local file than
    through fsspec's ranged reads, and downloading costs one GET.)"""
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="bmlt-get-") as folder:
        local = Path(folder) / path.name
        path.fs.get_file(path.path, str(local))
        yield local


def read_parquet(path: StoredPath) -> pl.DataFrame:
    with readable(path) as source:
        return pl.read_parquet(source)


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def atomic_write(path: P, write: Callable[[Path], object]) -> P:
    """``write(temporary)`` fills a local file that then becomes ``path`` whole (see the module doc)."""
    if not isinstance(path, Path):
        with tempfile.TemporaryDirectory(prefix="bmlt-put-") as folder:
            temporary = Path(folder) / path.name
            write(temporary)
            path.fs.put_file(str(temporary), path.path)
        return path
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


def write_parquet(frame: pl.DataFrame, path: P) -> P:
    """zstd Parquet in row groups of about 16 MiB uncompressed, so readers can stream a
    partition group by group instead of loading it whole (see day_tensors_from_parquet)."""
    row_bytes = max(1, int(frame.estimated_size()) // max(frame.height, 1))
    rows = max(256, ROW_GROUP_BYTES // row_bytes)
    return atomic_write(
        path, lambda tmp: frame.write_parquet(tmp, compression="zstd", statistics=True, row_group_size=rows)
    )


def write_json(payload: Any, path: P) -> P:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str)))


@contextmanager
def atomic_directory(path: StoredPath, staged: Path | None = None) -> Iterator[Path]:
    """Yield an empty local folder to fill (a ``meta.json`` of the writer's own fields included);
    on success it is committed as ``path``, its meta.json last, with every file's sha256 and size
    and the content hash added (see the module doc). On failure ``path`` is left as it was.

    A remote partition is assembled in ``staged`` (default: the system's temporary folder) and,
    once committed, stays there as its staged copy (``stage``), so that readers on this machine
    do not download what it just uploaded."""
    if is_remote(path):
        if staged is not None:
            staged.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=".commit-", dir=staged))
        try:
            yield folder
            _seal(folder, durable=False)
            _publish(folder, path)
            if staged is not None:
                _keep_as(folder, staged / read_meta(folder)["content_hash"])
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    assert isinstance(path, Path)
    path.parent.mkdir(parents=True, exist_ok=True)
    version = path.with_name(f".{path.name}.v-{uuid.uuid4().hex[:12]}")
    version.mkdir()
    try:
        yield version
        _seal(version, durable=True)
        _swap_in(version, path)
    except BaseException:
        shutil.rmtree(version, ignore_errors=True)
        raise


def _seal(folder: Path, durable: bool) -> None:
    """Record every file's sha256 and size and the content hash in meta.json, written last; with
    ``durable``, fsync the files, meta.json and every folder."""
    meta_file = folder / META
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    files = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p != meta_file):
        files[file.relative_to(folder).as_posix()] = {"sha256": _sha256(file, durable), "bytes": file.stat().st_size}
    meta.pop("files", None)
    meta.pop("content_hash", None)
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, info in files.items():
        digest.update(f"{name}={info['sha256']};".encode())
    write_json({**meta, "files": files, "content_hash": digest.hexdigest()}, meta_file)
    if durable:
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            _fsync_directory(sub)
        _fsync_directory(folder)


def _sha256(file: Path, fsync: bool = False) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        if fsync:
            os.fsync(handle.fileno())
    return digest.hexdigest()


# A reader that read the old symlink just before the swap walks into the old version's folder a
# moment later: that folder is deleted only after this long.
SUPERSEDED_GRACE_S = 1.0


def _swap_in(version: Path, path: Path) -> None:
    """Point the symlink ``path`` at ``version`` atomically, then delete the version it replaced.

    Versions left by a writer killed before its swap are never pointed to; they are hidden
    (``.<name>.v-*``) and safe to delete by hand. They are not deleted here, as they may belong to a
    commit still in progress."""
    parent = path.parent
    link = parent / f".{path.name}.link-{uuid.uuid4().hex[:8]}"
    os.symlink(version.name, link)
    replaced = None
    if path.is_symlink():
        replaced = parent / os.readlink(path)
        os.replace(link, path)
    elif path.exists():  # a real folder written by an older bmlt
        replaced = parent / f".{path.name}.v-legacy-{uuid.uuid4().hex[:8]}"
        if _exchange(link, path):
            os.replace(link, replaced)  # the old folder, now under the link's name
        else:  # no atomic exchange on this system: moved aside first, a one-time gap
            os.replace(path, replaced)
            os.replace(link, path)
    else:
        os.replace(link, path)
    _fsync_directory(parent)
    if replaced is not None and replaced != version:
        time.sleep(SUPERSEDED_GRACE_S)
        shutil.rmtree(replaced, ignore_errors=True)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two names atomically (Linux renameat2 with RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_cwd, rename_exchange = -100, 2
    if renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), rename_exchange) == 0:
        return True
    if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(second))


def _publish(folder: Path, path: UPath) -> None:
    """Put a sealed folder's files under ``path``, meta.json last (see the module doc)."""
    fs, prefix = path.fs, path.path.rstrip("/")
    with suppress(FileNotFoundError):
        fs.rm_file(f"{prefix}/{META}")  # the partition is absent from here until the new meta.json
    files = sorted(read_meta(folder)["files"])
    inside = [key for key in fs.find(prefix) if key.startswith(f"{prefix}/")]
    stale = [key for key in inside if key.removeprefix(f"{prefix}/") not in files]
    if stale:
        fs.rm(stale)
    fs.put([str(folder / name) for name in files], [f"{prefix}/{name}" for name in files])
    fs.put_file(str(folder / META), f"{prefix}/{META}")


def stage(path: UPath, staged: Path) -> Path:
    """A local, verified copy of the remote partition ``path``: ``<staged>/<content hash>/``.

    Raises FileNotFoundError when it has no meta.json, CorruptPartitionError when a file's bytes
    differ from the hash meta.json recorded (overwritten while read, or damaged)."""
    meta = read_meta(path)
    folder = staged / meta["content_hash"]
    if folder.is_dir():
        return folder
    staged.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=".stage-", dir=staged))
    try:
        names = sorted(meta["files"])
        for name in names:
            (temporary / name).parent.mkdir(parents=True, exist_ok=True)
        prefix = path.path.rstrip("/")
        path.fs.get([f"{prefix}/{name}" for name in names], [str(temporary / name) for name in names])
        for name in names:
            if _sha256(temporary / name) != meta["files"][name]["sha256"]:
                raise CorruptPartitionError(
                    f"{name}: its bytes differ from the sha256 {META} recorded (overwritten while read, or damaged)"
                )
        (temporary / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        _keep_as(temporary, folder)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return folder


def _keep_as(temporary: Path, folder: Path) -> None:
    """Rename a complete staged copy into place, unless the same content got there first."""
    try:
        os.rename(temporary, folder)
    except OSError:
        if not folder.is_dir():
            raise


def save_arrays(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", np.ascontiguousarray(array))


def load_arrays(directory: Path, names: list[str], mmap: bool = False) -> dict[str, np.ndarray]:
    mode: Literal["r"] | None = "r" if mmap else None
    return {name: np.load(directory / f"{name}.npy", mmap_mode=mode) for name in names}


def directory_bytes(path: StoredPath) -> int:
    """Bytes of a file, or of a partition's files as its meta.json recorded them."""
    if path.suffix:
        return path.stat().st_size
    recorded = read_meta(path).get("files")
    if recorded is None:  # written before meta.json recorded its files
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return sum(info["bytes"] for info in recorded.values())


def _landing_days(frame: pl.DataFrame, local_dir: str | Path, market: str, stem: str) -> dict[Path, pl.DataFrame]:
    if not frame.height:
        return {}
    day = pl.from_epoch(pl.col("receive_ts"), time_unit="ns").dt.date().alias("date")
    by_day = frame.with_columns(day).partition_by("date", as_dict=True)
    return {
        landing_root(local_dir, market) / f"date={date}" / f"{stem}.parquet": rows.drop("date")
        for (date,), rows in sorted(by_day.items())
    }


def landing_targets(frame: pl.DataFrame, local_dir: str | Path, market: str, stem: str) -> list[Path]:
    """The files ``write_landing_days`` would write for these arguments."""
    return list(_landing_days(frame, local_dir, market, stem))


def landing_depth(path: Path) -> int | None:
    """Levels per side of a landing file (the width of its fixed-size ``bid_px``), or None when
    it cannot be read or has no such column."""
    try:
        kind = pq.read_schema(path).field("bid_px").type
    except (OSError, KeyError, ValueError):
        return None
    return getattr(kind, "list_size", None)


def write_landing_days(frame: pl.DataFrame, local_dir: str | Path, market: str, stem: str) -> list[Path]:
    """Snapshots split by UTC receive day into ``<landing>/date=YYYY-MM-DD/<stem>.parquet``."""
    return [write_parquet(rows, path) for path, rows in _landing_days(frame, local_dir, market, stem).items()]
