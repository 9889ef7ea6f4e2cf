"""File helpers every writer uses: atomic writes and commits, Parquet/JSON/array IO, integrity checks.

Storage is a local folder or an object store (``s3://``, through universal-pathlib and s3fs). A
local path is a ``pathlib.Path``; a remote one is a ``UPath`` that is not (``is_remote``).

- A single file (Parquet, JSON) is written whole: locally to a temporary sibling that is fsynced,
  renamed into place and its folder fsynced; remotely as one PUT, which S3 makes visible atomically.
- A folder partition is committed by ``atomic_directory`` as a new immutable **version**, and a
  pointer names the current one; its meta.json records each file's sha256 and size and the
  partition's content hash. Readers resolve the pointer once and read that version only.
  - Local (and shared volumes): the version is a folder beside the partition (``.<name>.v-<id>``),
    fsynced; the pointer is the symlink ``<name>``, replaced with one ``os.replace`` under the
    partition's lock (``.<name>.lock``), and the parent fsynced.
  - Remote: the version's files go under ``<name>/versions/<id>/``; the pointer is ``<name>/meta.json``
    (the version's meta plus its id), written by one PUT that is conditional (``If-Match`` the ETag
    read when the writer started, ``If-None-Match: *`` for a new partition). A writer killed before
    that PUT leaves the previous version current and whole.
  - Two writers of one partition: the second to swap finds the pointer moved since it started and
    fails with ``ConcurrentCommitError`` (its version discarded), unless the content is the same.
  - Superseded versions are deleted by later commits per ``VersionPolicy``: after a grace, and
    locally never while a reader's lease names them (docs/design.md §9.5 states the rule).
- ``stage`` gives memory-mapped readers a local copy of a remote partition in
  ``<staged>/<content hash>/``, verified against the recorded hashes, the folder bounded by
  least-recently-used eviction. A content hash names immutable bytes, so a staged copy is never
  stale. fsspec's file caches are not used: one served an overwritten object's old bytes.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from fsspec.asyn import sync
from typing_extensions import TypeIs
from upath import UPath

from bmlt_assets.core.config import PlatformConfig

META = "meta.json"
ROW_GROUP_BYTES = 16 * 2**20  # uncompressed, of a Parquet row group we write and of a batch we read
log = logging.getLogger(__name__)
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


def landing_root(base: str | StoredPath, market: str) -> StoredPath:
    """Where recorded and imported books of a market land: ``<base>/landing/<market>/date=YYYY-MM-DD/*.parquet``."""
    return (Path(base) if isinstance(base, str) else base) / "landing" / market


def landing_base(config: PlatformConfig) -> StoredPath:
    """The landing zone's parent, shared by every config: the object store itself when
    ``storage.uri`` is s3:// (so a step on any machine reads what a recorder wrote), else
    ``PlatformConfig.local_dir``."""
    if config.storage.is_remote:
        return storage_root(config.storage.uri, config.storage.endpoint_url)
    return config.local_dir


class MissingPartitionError(FileNotFoundError):
    """An upstream partition is not in storage; the message says what to materialize."""


class CorruptPartitionError(ValueError):
    """An upstream partition is in storage but unreadable (truncated, overwritten by hand...)."""


def read_meta(folder: StoredPath) -> dict[str, Any]:
    """A partition's meta.json; remotely the pointer, read by one GET (s3fs's file reader raises
    FileExpired when the object changes between its HEAD and its GET)."""
    if is_remote(folder):
        pointer = _read_pointer(folder)
        if pointer.meta is None:
            raise FileNotFoundError(f"{folder}/{META}")
        return pointer.meta
    return json.loads((folder / META).read_text())


def integrity_problem(path: StoredPath) -> str | None:
    """Why ``path`` (a Parquet or JSON file, or a local partition folder) cannot be read, or None.

    Cheap: it reads Parquet footers and .npy headers, compares sizes with those meta.json
    recorded, and maps (never loads) array data, so a truncated file is caught before anyone
    reads garbage from it.
    """
    if path.suffix and not (isinstance(path, Path) and path.is_dir()):  # version folders have dotted names
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


@contextmanager
def local_files(parts: Sequence[StoredPath | pl.DataFrame]) -> Iterator[list[Path | pl.DataFrame]]:
    """The parts with each remote file downloaded (``readable``: deleted afterwards), local files
    and frames as they are."""
    with ExitStack() as stack:
        yield [part if isinstance(part, pl.DataFrame | Path) else stack.enter_context(readable(part)) for part in parts]


def read_parquet(path: StoredPath, columns: list[str] | None = None) -> pl.DataFrame:
    with readable(path) as source:
        return pl.read_parquet(source, columns=columns)


def parquet_batches(path: Path, batch_bytes: int | None = None) -> Iterator[pl.DataFrame]:
    """A local Parquet file's rows in order, about ``batch_bytes`` (default :data:`ROW_GROUP_BYTES`)
    of them in memory at a time (a row's size taken from the schema: the file's own sizes are of
    its encoded pages, often ten times smaller)."""
    file = pq.ParquetFile(path, pre_buffer=False)
    row_bytes = sum(16 * getattr(field.type, "list_size", 1) for field in file.schema_arrow)
    for batch in file.iter_batches(batch_size=max(64, (batch_bytes or ROW_GROUP_BYTES) // row_bytes)):
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        yield frame


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def atomic_write(path: P, write: Callable[[Path], object]) -> P:
    """``write(temporary)`` fills a local file that then becomes ``path`` whole (see the module doc)."""
    if not isinstance(path, Path):
        with tempfile.TemporaryDirectory(prefix="bmlt-put-") as folder:
            temporary = Path(folder) / path.name
            write(temporary)
            _put_in_place(temporary, path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path)
    try:
        write(temporary)
        _put_in_place(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _put_in_place(temporary: Path, path: StoredPath) -> None:
    """Make the finished local file ``temporary`` the file ``path``, whole: a remote one by one PUT;
    a local one fsynced, renamed into place (on the same file system) and its folder fsynced."""
    if is_remote(path):
        path.fs.put_file(str(temporary), path.path)
        return
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(temporary, path)
    _fsync_directory(path.parent)  # makes the rename itself survive a power loss


def _fsync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_parquet(frame: pl.DataFrame, path: P) -> P:
    """zstd Parquet in row groups of about 16 MiB uncompressed, so readers can stream a
    partition group by group instead of loading it whole (see day_tensors_from_parquet)."""
    row_bytes = max(1, int(frame.estimated_size()) // max(frame.height, 1))
    rows = max(256, ROW_GROUP_BYTES // row_bytes)
    return atomic_write(
        path, lambda tmp: frame.write_parquet(tmp, compression="zstd", statistics=True, row_group_size=rows)
    )


class ParquetStream:
    """One Parquet file written a frame at a time, in row groups of about :data:`ROW_GROUP_BYTES`
    (what ``write_parquet`` writes whole), and published whole at the end as ``atomic_write``
    publishes: memory holds one row group, never the file.

    Until ``publish``, the rows are in a hidden temporary file: beside ``path`` when it is local,
    or in ``scratch`` (which must be on the same file system as a local ``path``; any local folder
    for a remote one), so that nothing is created where ``path`` goes before it is published.
    ``discard`` (or leaving a ``with`` block by an exception) deletes it."""

    def __init__(self, path: StoredPath, schema: dict[str, pl.DataType], scratch: Path | None = None):
        self.path, self.schema, self.rows = path, schema, 0
        if scratch is None:
            scratch = Path(tempfile.gettempdir()) if is_remote(path) else path.parent
        scratch.mkdir(parents=True, exist_ok=True)
        self.temporary = scratch / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        self._writer: pq.ParquetWriter | None = None
        self._buffered: list[pl.DataFrame] = []
        self._buffered_bytes = 0

    def write(self, frame: pl.DataFrame) -> None:
        if not frame.height:
            return
        self._buffered.append(frame)
        self._buffered_bytes += int(frame.estimated_size())
        self.rows += frame.height
        if self._buffered_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._buffered and self._writer is not None:
            return
        frame = pl.concat(self._buffered) if self._buffered else pl.DataFrame(schema=self.schema)
        table = frame.to_arrow()
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.temporary, table.schema, compression="zstd", write_statistics=True)
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self._buffered, self._buffered_bytes = [], 0

    def publish(self) -> StoredPath:
        """Close the file and make it ``path``, whole (an empty file of the schema if nothing was written)."""
        try:
            self._flush()
            assert self._writer is not None
            self._writer.close()
            self._writer = None
            _put_in_place(self.temporary, self.path)
        finally:
            self.discard()
        return self.path

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._buffered = []
        self.temporary.unlink(missing_ok=True)

    def __enter__(self) -> ParquetStream:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is not None:
            self.discard()


def write_json(payload: Any, path: P) -> P:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str)))


@dataclass(frozen=True)
class VersionPolicy:
    """When the versions a commit supersedes are deleted (docs/design.md §9.5); ``storage.versions``.

    A superseded version is deleted ``grace_s`` after it was superseded at the earliest, and on a
    local or shared volume never while a reader's lease on it is live. A version no pointer ever
    named (a writer killed before its swap) is deleted once ``orphan_age_s`` old: it may belong to
    a commit still uploading until then."""

    grace_s: float = 900.0
    orphan_age_s: float = 86_400.0
    lease_ttl_s: float = 300.0  # a lease counts while refreshed within this (it is refreshed every ttl/4)
    conditional_writes: bool = True  # S3 If-Match / If-None-Match on the pointer (False: a server without them)


DEFAULT_POLICY = VersionPolicy()
VERSIONS = "versions"  # remote: <partition>/versions/<id>/<files>; <partition>/meta.json names the current one


class ConcurrentCommitError(RuntimeError):
    """Another writer committed the same partition while this one was writing. This writer's
    version was discarded and nothing was overwritten: the partition holds the other one, whole."""


@contextmanager
def atomic_directory(
    path: StoredPath, staged: Path | None = None, policy: VersionPolicy = DEFAULT_POLICY, cache_bytes: int | None = None
) -> Iterator[Path]:
    """Yield an empty local folder to fill (a ``meta.json`` of the writer's own fields included);
    on success it is committed as a new version of ``path``, its meta.json holding every file's
    sha256 and size and the content hash (see the module doc). On failure ``path`` is left as it
    was. Raises :class:`ConcurrentCommitError` when another writer committed other content to
    ``path`` after this one started; identical content committed by another writer is a success.

    A remote partition is assembled in ``staged`` (default: the system's temporary folder) and,
    once committed, stays there as its staged copy (``stage``, bounded by ``cache_bytes``), so that
    readers on this machine do not download what it just uploaded."""
    if is_remote(path):
        started_from = _read_pointer(path)
        if staged is not None:
            staged.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=".commit-", dir=staged))
        try:
            yield folder
            _seal(folder, durable=False)
            _publish(folder, path, started_from, policy)
            if staged is not None:
                kept = _keep_as(folder, staged / read_meta(folder)["content_hash"])
                _evict(staged, cache_bytes, keep=kept)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    assert isinstance(path, Path)
    path.parent.mkdir(parents=True, exist_ok=True)
    started_from_target = _target(path)
    version = path.with_name(f".{path.name}.v-{uuid.uuid4().hex[:12]}")
    version.mkdir()
    try:
        yield version
        _seal(version, durable=True)
        _swap_in(version, path, started_from_target, policy)
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
    for derived in ("files", "content_hash", "version_id", "superseded_versions"):
        meta.pop(derived, None)
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


def _conflict(path: StoredPath, theirs: dict[str, Any] | None) -> ConcurrentCommitError:
    which = f"content {theirs['content_hash'][:12]}" if theirs else "its removal"
    return ConcurrentCommitError(
        f"{path} was committed by another writer while this one was writing ({which}); this writer's version "
        "was discarded and nothing was overwritten. Two runs materialized the same partition at once: "
        "re-run this one if its result is the one wanted"
    )


# --- local and shared volumes: a symlink to the current version folder ---------------------------


def _target(path: Path) -> str | None:
    """The version folder ``path`` names now: its symlink's target, "" for a real folder written by
    an older bmlt, None when there is no partition."""
    if path.is_symlink():
        return os.readlink(path)
    return "" if path.exists() else None


@contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """An exclusive lock between the writers of one partition (flock; NFS clients map it to a
    POSIX lock the server arbitrates)."""
    with open(lock_file, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _swap_in(version: Path, path: Path, started_from: str | None, policy: VersionPolicy) -> None:
    """Point the symlink ``path`` at ``version`` atomically, unless another writer committed since
    this one started (see ``atomic_directory``); then record the version it superseded and collect
    what the policy lets go."""
    parent = path.parent
    with _locked(parent / f".{path.name}.lock"):
        current = _target(path)
        ours = read_meta(version)["content_hash"]
        if current and _content_hash_or_none(path) == ours and integrity_problem(path.parent / current) is None:
            shutil.rmtree(version, ignore_errors=True)  # the same bytes are committed already, intact
            return
        if current != started_from:
            raise _conflict(path, _meta_or_none(path))
        link = parent / f".{path.name}.link-{uuid.uuid4().hex[:8]}"
        os.symlink(version.name, link)
        replaced = None
        if current:
            replaced = current
            os.replace(link, path)
        elif current == "":  # a real folder written by an older bmlt
            replaced = f".{path.name}.v-legacy-{uuid.uuid4().hex[:8]}"
            if _exchange(link, path):
                os.replace(link, parent / replaced)  # the old folder, now under the link's name
            else:  # no atomic exchange on this system: moved aside first, a one-time gap
                os.replace(path, parent / replaced)
                os.replace(link, path)
        else:
            os.replace(link, path)
        _fsync_directory(parent)
        _collect_local(path, policy, superseded=replaced)


def _record_file(path: Path) -> Path:
    return path.with_name(f".{path.name}.superseded.json")


def _leases(path: Path) -> Path:
    return path.with_name(f".{path.name}.leases")


def collect_superseded(path: StoredPath, policy: VersionPolicy = DEFAULT_POLICY) -> None:
    """Delete the versions of ``path`` that ``policy`` lets go (commits do it too)."""
    if is_remote(path):
        pointer = _read_pointer(path)
        if pointer.meta is not None:
            _collect_remote(path, pointer.meta, [], policy)
        return
    assert isinstance(path, Path)
    with _locked(path.parent / f".{path.name}.lock"):
        _collect_local(path, policy)


def _collect_local(path: Path, policy: VersionPolicy, superseded: str | None = None) -> None:
    """Under the partition's lock: note ``superseded`` (a version folder's name), then delete every
    superseded version past its grace that no live lease names, and orphans past their age."""
    record_file, now = _record_file(path), time.time()
    record: dict[str, float] = json.loads(record_file.read_text()) if record_file.exists() else {}
    if superseded:
        record[superseded] = now
    leased = _leased_versions(path, policy.lease_ttl_s, now)
    for name, at in list(record.items()):
        if now - at >= policy.grace_s and name not in leased:
            shutil.rmtree(path.parent / name, ignore_errors=True)
            del record[name]
    current = _target(path)
    for folder in path.parent.glob(f".{path.name}.v-*"):
        if folder.name in record or folder.name == current or folder.name in leased:
            continue
        with suppress(FileNotFoundError):
            if now - folder.stat().st_mtime >= policy.orphan_age_s:
                shutil.rmtree(folder, ignore_errors=True)
    if record or record_file.exists():
        write_json(record, record_file)


def _leased_versions(path: Path, ttl_s: float, now: float) -> set[str]:
    """Versions of ``path`` a reader holds a live lease on; expired lease files are removed."""
    held: set[str] = set()
    folder = _leases(path)
    if not folder.is_dir():
        return held
    for lease in folder.iterdir():
        try:
            age = now - lease.stat().st_mtime
        except FileNotFoundError:
            continue
        if age < ttl_s:
            held.add(lease.name.split("@", 1)[0])
        else:
            lease.unlink(missing_ok=True)
    return held


class _Leases:
    """Read leases this process holds on local version folders, refreshed by one daemon thread
    and released when the process exits."""

    def __init__(self) -> None:
        self.held: dict[Path, float] = {}  # lease file -> its ttl
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.changed = threading.Event()  # a new lease may need a shorter refresh interval

    def take(self, version: Path, ttl_s: float) -> None:
        partition = version.name[1:].split(".v-", 1)[0]
        folder = version.parent / f".{partition}.leases"
        folder.mkdir(exist_ok=True)
        lease = folder / f"{version.name}@{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        lease.touch()
        with self.lock:
            self.held[lease] = ttl_s
            self.changed.set()
            if self.thread is None:
                self.thread = threading.Thread(target=self._refresh, name="bmlt-leases", daemon=True)
                self.thread.start()
                atexit.register(self.release)

    def _refresh(self) -> None:
        while True:
            with self.lock:
                held = dict(self.held)
            for lease in held:
                with suppress(OSError):
                    os.utime(lease)  # the server's time on NFS, the same clock collectors compare with
            self.changed.wait(max(0.05, min(held.values(), default=60.0) / 4))
            self.changed.clear()

    def release(self) -> None:
        with self.lock:
            for lease in self.held:
                lease.unlink(missing_ok=True)
            self.held.clear()


LEASES = _Leases()


def resolve_version(path: Path, policy: VersionPolicy = DEFAULT_POLICY) -> Path:
    """The version folder a local partition names now, leased for this process's lifetime: a
    reader resolves the pointer once and reads that version only, which is never collected while
    the lease lives (memory maps on NFS fault with ESTALE or SIGBUS once a file is deleted on
    another client)."""
    target = _target(path)
    if not target:  # a real folder written by an older bmlt
        return path
    version = path.parent / target
    LEASES.take(version, policy.lease_ttl_s)
    if not version.is_dir():
        if _target(path) == target:  # deleted by hand: the partition is gone
            raise FileNotFoundError(f"{path} names {target}, which does not exist")
        return resolve_version(path, policy)  # collected between the readlink and the lease: moved on
    return version


def _content_hash_or_none(path: StoredPath) -> str | None:
    meta = _meta_or_none(path)
    return meta.get("content_hash") if meta else None


def _meta_or_none(path: StoredPath) -> dict[str, Any] | None:
    try:
        return read_meta(path)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


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


# --- object storage: immutable version prefixes and a pointer written by one conditional PUT --------


@dataclass(frozen=True)
class _Pointer:
    etag: str | None  # None: no partition
    meta: dict[str, Any] | None


def _bucket_key(path: UPath) -> tuple[str, str]:
    bucket, key, _ = path.fs.split_path(path.path)
    return bucket, key


async def _get_with_etag(fs: Any, bucket: str, key: str) -> tuple[bytes, str]:
    response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    try:
        return await response["Body"].read(), response["ETag"]
    finally:
        response["Body"].close()


def _read_pointer(path: UPath) -> _Pointer:
    """meta.json and its ETag from one GET (two requests could pair one version's tag with another's body)."""
    bucket, key = _bucket_key(path / META)
    try:
        body, etag = sync(path.fs.loop, _get_with_etag, path.fs, bucket, key)
    except FileNotFoundError:
        return _Pointer(None, None)
    return _Pointer(etag, json.loads(body))


def _precondition_failed(error: BaseException) -> bool:
    """s3fs raises FileExistsError for If-None-Match and a bare OSError (caused by botocore's
    PreconditionFailed, or ConditionalRequestConflict when two conditional writes overlap) for If-Match."""
    if isinstance(error, FileExistsError):
        return True
    code = getattr(error.__cause__, "response", {}).get("Error", {}).get("Code")
    return code in ("PreconditionFailed", "ConditionalRequestConflict")


def _put_pointer(path: UPath, meta: dict[str, Any], expected: _Pointer, conditional: bool) -> bool:
    """Write meta.json with one PUT, only if it is still ``expected``; False when it was not."""
    bucket, key = _bucket_key(path / META)
    body = json.dumps(meta, indent=2, sort_keys=True, default=str).encode()
    condition = {}
    if conditional:
        condition = {"IfMatch": expected.etag} if expected.etag else {"IfNoneMatch": "*"}
    try:
        sync(path.fs.loop, path.fs._call_s3, "put_object", Bucket=bucket, Key=key, Body=body, **condition)
    except OSError as error:
        if conditional and _precondition_failed(error):
            return False
        raise
    path.fs.invalidate_cache(path.path)
    return True


def version_prefix(path: UPath, meta: dict[str, Any]) -> str:
    """Where the files of the version ``meta`` names are (a partition written before versions: beside it)."""
    prefix = path.path.rstrip("/")
    return f"{prefix}/{VERSIONS}/{meta['version_id']}" if meta.get("version_id") else prefix


def _intact(path: UPath, meta: dict[str, Any]) -> bool:
    """Whether every file of the version ``meta`` names is stored with its recorded size (one listing)."""
    source = version_prefix(path, meta)
    try:
        sizes = {
            key.removeprefix(f"{source}/"): info["size"] for key, info in path.fs.find(source, detail=True).items()
        }
    except FileNotFoundError:
        return False
    return all(sizes.get(name) == info["bytes"] for name, info in meta["files"].items())


def _publish(folder: Path, path: UPath, started_from: _Pointer, policy: VersionPolicy) -> None:
    """Upload a sealed folder as a new version and point meta.json at it (see the module doc)."""
    meta = read_meta(folder)
    now = _read_pointer(path)
    if now.meta is not None and now.meta.get("content_hash") == meta["content_hash"] and _intact(path, now.meta):
        return  # these bytes are committed already (by us before, or by a concurrent writer)
    if now.etag != started_from.etag:
        raise _conflict(path, now.meta)
    version = f"{time.time_ns() // 1_000_000:013d}-{uuid.uuid4().hex[:8]}"
    prefix = f"{path.path.rstrip('/')}/{VERSIONS}/{version}"
    files = sorted(meta["files"])
    path.fs.put([str(folder / name) for name in files], [f"{prefix}/{name}" for name in files])
    wall = time.time()
    superseded = list((now.meta or {}).get("superseded_versions", []))
    if now.meta is not None:
        superseded.append({"version": now.meta.get("version_id", ""), "at": wall})
    expired = [entry for entry in superseded if wall - entry["at"] >= policy.grace_s]
    pointer = {
        **meta,
        "version_id": version,
        "superseded_versions": [entry for entry in superseded if entry not in expired],
    }
    if not _put_pointer(path, pointer, now, policy.conditional_writes):
        path.fs.rm(prefix, recursive=True)
        theirs = _read_pointer(path).meta
        if theirs is not None and theirs.get("content_hash") == meta["content_hash"]:
            return
        raise _conflict(path, theirs)
    _collect_remote(
        path, pointer, expired, policy, legacy=now.meta if now.meta and not now.meta.get("version_id") else None
    )


def _collect_remote(
    path: UPath,
    pointer: dict[str, Any],
    expired: list[dict[str, Any]],
    policy: VersionPolicy,
    legacy: dict[str, Any] | None = None,
) -> None:
    """Delete ``expired`` versions, and versions no pointer names that are older than the orphan age."""
    fs, prefix = path.fs, path.path.rstrip("/")
    doomed = [f"{prefix}/{VERSIONS}/{entry['version']}" for entry in expired if entry["version"]]
    if legacy is not None and any(not entry["version"] for entry in expired):
        doomed += [f"{prefix}/{name}" for name in legacy["files"]]
    named = {pointer["version_id"], *(entry["version"] for entry in pointer.get("superseded_versions", []))}
    newest: dict[str, float] = {}
    with suppress(FileNotFoundError):
        for key, info in fs.find(f"{prefix}/{VERSIONS}", detail=True).items():
            version = key.removeprefix(f"{prefix}/{VERSIONS}/").split("/", 1)[0]
            modified = info.get("LastModified")
            stamp = modified.timestamp() if modified is not None else time.time()
            newest[version] = max(newest.get(version, 0.0), stamp)
    now = time.time()
    doomed += [
        f"{prefix}/{VERSIONS}/{version}"
        for version, stamp in newest.items()
        if version not in named and now - stamp >= policy.orphan_age_s
    ]
    for target in doomed:
        with suppress(FileNotFoundError):
            fs.rm(target, recursive=True)


def stage(path: UPath, staged: Path, cache_bytes: int | None = None) -> Path:
    """A local, verified copy of the remote partition ``path``: ``<staged>/<content hash>/``.

    The pointer is resolved once per attempt and only the version it names is read; when that
    version is collected while being read (a reader slower than the grace), the pointer is
    resolved again. Raises FileNotFoundError when there is no meta.json, CorruptPartitionError
    when a file's bytes differ from the sha256 meta.json recorded. ``cache_bytes`` bounds the
    staged folder (least recently used copies go first)."""
    for _ in range(3):
        meta = read_meta(path)
        folder = staged / meta["content_hash"]
        if folder.is_dir():
            with suppress(FileNotFoundError):
                os.utime(folder)  # used now: the last to be evicted
                return folder
        staged.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=".stage-", dir=staged))
        try:
            names = sorted(meta["files"])
            for name in names:
                (temporary / name).parent.mkdir(parents=True, exist_ok=True)
            source = version_prefix(path, meta)
            try:
                path.fs.get([f"{source}/{name}" for name in names], [str(temporary / name) for name in names])
            except FileNotFoundError as error:
                if _content_hash_or_none(path) != meta["content_hash"]:
                    continue  # superseded and collected while we read: resolve the pointer again
                raise CorruptPartitionError(
                    f"a file of the version {META} names is missing ({error}); the version is damaged"
                ) from None
            for name in names:
                if _sha256(temporary / name) != meta["files"][name]["sha256"]:
                    raise CorruptPartitionError(
                        f"{name}: its bytes differ from the sha256 {META} recorded (overwritten while read, or damaged)"
                    )
            own = {key: value for key, value in meta.items() if key not in ("version_id", "superseded_versions")}
            (temporary / META).write_text(json.dumps(own, indent=2, sort_keys=True))
            kept = _keep_as(temporary, folder)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        _evict(staged, cache_bytes, keep=kept)
        return kept
    raise CorruptPartitionError(f"{path} was re-committed three times while being read; try again")


def _keep_as(temporary: Path, folder: Path) -> Path:
    """Rename a complete staged copy into place, unless the same content got there first."""
    try:
        os.rename(temporary, folder)
    except OSError:
        if not folder.is_dir():
            raise
    return folder


# A staged copy used this recently is never evicted: its reader may not have opened it yet.
RECENTLY_USED_S = 600.0


def _evict(staged: Path, cache_bytes: int | None, keep: Path) -> None:
    """Delete least recently used staged copies until the folder holds at most ``cache_bytes``.
    Deleting a copy a process has mapped is safe on a local disk (the mapping keeps the inode),
    which is why ``storage.cache_dir`` must be local (the pod's ephemeral storage)."""
    if cache_bytes is None:
        return
    copies = []
    for folder in staged.iterdir():
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        with suppress(FileNotFoundError):
            size = sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())
            copies.append((folder.stat().st_mtime, folder, size))
    total = sum(size for _, _, size in copies)
    now = time.time()
    for used, folder, size in sorted(copies, key=lambda copy: copy[0]):
        if total <= cache_bytes:
            break
        if folder == keep or now - used < RECENTLY_USED_S:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        total -= size
    if total > cache_bytes:
        log.warning(
            "staged copies take %.1f GB, over storage.cache_max_gb (%.1f GB), all of them used in the last %.0f s",
            total / 1e9,
            cache_bytes / 1e9,
            RECENTLY_USED_S,
        )


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


class LandingDays:
    """Books streamed into the landing zone, split by UTC receive day into
    ``<landing>/date=YYYY-MM-DD/<stem>.parquet`` (a ``ParquetStream`` each, kept in ``scratch``
    until ``publish``): memory holds a row group per day, never the import."""

    def __init__(self, base: StoredPath, market: str, stem: str, scratch: Path | None = None):
        self.base, self.market, self.stem, self.scratch = base, market, stem, scratch
        self.days: dict[str, ParquetStream] = {}
        self.symbols: set[str] = set()

    def path(self, day: str) -> StoredPath:
        return landing_root(self.base, self.market) / f"date={day}" / f"{self.stem}.parquet"

    def add(self, books: pl.DataFrame) -> None:
        if not books.height:
            return
        day = pl.from_epoch(pl.col("receive_ts"), time_unit="ns").dt.date().alias("date")
        by_day = books.with_columns(day).partition_by("date", as_dict=True, maintain_order=True)
        for (date,), rows in by_day.items():
            key = str(date)
            if key not in self.days:
                schema = dict(books.schema)
                self.days[key] = ParquetStream(self.path(key), schema, self.scratch)
            self.days[key].write(rows.drop("date"))
        self.symbols.update(books["symbol"].unique().to_list())

    @property
    def targets(self) -> list[StoredPath]:
        """The files ``publish`` will write, by day."""
        return [self.path(day) for day in sorted(self.days)]

    def publish(self) -> list[StoredPath]:
        try:
            return [self.days[day].publish() for day in sorted(self.days)]
        finally:
            self.discard()

    def discard(self) -> None:
        for stream in self.days.values():
            stream.discard()

    def __enter__(self) -> LandingDays:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is not None:
            self.discard()


def landing_depth(path: StoredPath) -> int | None:
    """Levels per side of a landing file (the width of its fixed-size ``bid_px``), or None when
    it cannot be read or has no such column."""
    try:
        with path.open("rb") as handle:  # remote: a ranged GET of the footer
            kind = pq.read_schema(handle).field("bid_px").type
    except (OSError, KeyError, ValueError):
        return None
    return getattr(kind, "list_size", None)


def write_landing_days(frame: pl.DataFrame, base: StoredPath, market: str, stem: str) -> list[StoredPath]:
    """Snapshots split by UTC receive day into ``<landing>/date=YYYY-MM-DD/<stem>.parquet``."""
    with LandingDays(base, market, stem) as days:
        days.add(frame)
        return days.publish()
