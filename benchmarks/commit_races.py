"""Three concurrency experiments on one partition in object storage (a moto_server on loopback).

    python -m benchmarks.commit_races [--rounds 15] [--out FILE.json]

1. **re-commit while reading**: a writer re-commits a partition ``rounds`` times, each time with
   new content, while readers poll it, each read from a fresh local folder (a new pod: nothing
   staged). Counted: reads, reads that found no partition (MissingPartitionError), reads that were
   refused as corrupt or returned files of two versions.
2. **two writers at once**: per round two writers commit different content to the same partition
   at the same moment. Counted: rounds whose final partition is not one writer's whole version
   (mixed or corrupt), rounds where both writers reported success with different content, and
   losers that failed with ConcurrentCommitError.
3. **writer killed mid-upload**: a committed version, then a writer of new content killed at its
   k-th S3 write (every k its commit makes). Counted: rounds after which the previous version is
   no longer readable whole.

The same functions run in ``tests/test_commit_races.py`` (``make test-slow``); they use only
``StorageResource.commit`` and ``require``, so they also measure an older checkout's code
(``PYTHONPATH=<its tree> python -m benchmarks.commit_races``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bmlt_assets.core.files import read_meta, save_arrays, write_json
from bmlt_resources.storage import StorageResource

DAY = dt.date(2025, 1, 6)
SIZE = 1 << 18  # float32 values per file: 1 MiB, so an upload takes long enough to be caught in flight
MUTATING = {"put_object", "delete_object", "delete_objects", "create_multipart_upload", "upload_part", "copy_object"}


class Killed(Exception):
    """A writer's death at one S3 call: nothing after it runs. (An Exception, not a BaseException:
    fsspec's event-loop bridge swallows BaseExceptions, and the writer would carry on.)"""


def s3_storage(endpoint: str, bucket: str, local_dir: Path, **policy: float) -> StorageResource:
    return StorageResource(
        uri=f"s3://{bucket}/races", endpoint_url=endpoint, local_dir=str(local_dir), config_name="races", **policy
    )


def elsewhere(storage: StorageResource, local_dir: Path) -> StorageResource:
    """The same store seen from another machine: its own local disk, nothing staged."""
    return StorageResource(**{**storage.model_dump(), "local_dir": str(local_dir)})


def commit(storage: StorageResource, version: int) -> None:
    with storage.commit(storage.tensors(DAY)) as staging:
        save_arrays(staging, {"base": np.full(SIZE, version, np.float32), "mids": np.full(SIZE, version, np.float64)})
        write_json({"version": version}, staging / "meta.json")


def read(storage: StorageResource) -> tuple[str, int | None]:
    """One read: ("ok", version), ("missing", None), ("corrupt", None) or ("mixed", None)."""
    try:
        folder = storage.require(storage.tensors(DAY), "book_tensors", DAY)
        version = read_meta(folder)["version"]
        values = {float(np.unique(np.load(folder / f"{name}.npy"))[0]) for name in ("base", "mids")}
    except Exception as error:  # the kind is the outcome
        return ("missing" if type(error).__name__ == "MissingPartitionError" else "corrupt"), None
    return ("ok", version) if values == {float(version)} else ("mixed", None)


@dataclass
class RecommitWhileReading:
    commits: int
    reads: int
    missing: int
    corrupt: int
    mixed: int


def recommit_while_reading(
    storage: StorageResource, scratch: Path, commits: int, readers: int = 3
) -> RecommitWhileReading:
    commit(storage, 0)
    outcomes: list[str] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            outcomes.append(read(elsewhere(storage, scratch / uuid.uuid4().hex))[0])

    threads = [threading.Thread(target=poll) for _ in range(readers)]
    for thread in threads:
        thread.start()
    try:
        for version in range(1, commits + 1):
            commit(storage, version)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    return RecommitWhileReading(
        commits, len(outcomes), outcomes.count("missing"), outcomes.count("corrupt"), outcomes.count("mixed")
    )


@dataclass
class TwoWriters:
    rounds: int
    final_not_whole: int  # the partition left mixed, corrupt or missing
    both_reported_success: int  # two different versions, both "committed"
    losers_refused: int  # the second writer failed with ConcurrentCommitError
    other_failures: int


def two_writers(storage: StorageResource, scratch: Path, rounds: int) -> TwoWriters:
    result = TwoWriters(rounds, 0, 0, 0, 0)

    def write(start: threading.Barrier, errors: list[Exception | None], slot: int, version: int) -> None:
        start.wait()
        try:
            commit(storage, version)
        except Exception as error:
            errors[slot] = error

    for round_ in range(rounds):
        start = threading.Barrier(2)
        errors: list[Exception | None] = [None, None]
        versions = (2 * round_ + 1, 2 * round_ + 2)
        threads = [threading.Thread(target=write, args=(start, errors, slot, v)) for slot, v in enumerate(versions)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        kind, final = read(elsewhere(storage, scratch / uuid.uuid4().hex))
        if kind != "ok" or final not in versions:
            result.final_not_whole += 1
        if errors == [None, None]:
            result.both_reported_success += 1
        for error in errors:
            if error is None:
                continue
            if type(error).__name__ == "ConcurrentCommitError":
                result.losers_refused += 1
            else:
                result.other_failures += 1
    return result


@contextmanager
def killed_at_write(storage: StorageResource, k: int) -> Iterator[list[str]]:
    """The store's client dies at its k-th mutating S3 call of the block (the calls made are listed)."""
    fs = storage.store.fs
    original = fs._call_s3
    made: list[str] = []

    async def call(method: str, *args: object, **kwargs: object) -> object:
        if method in MUTATING:
            made.append(method)
            if len(made) == k:
                raise Killed(f"killed at S3 write {k} ({method})")
        return await original(method, *args, **kwargs)

    fs._call_s3 = call
    try:
        yield made
    finally:
        fs._call_s3 = original


@dataclass
class KilledWriter:
    rounds: int
    previous_lost: int  # after the kill, the previously committed version was not readable whole
    writes_per_commit: int


def killed_writer(storage: StorageResource, scratch: Path) -> KilledWriter:
    """One round per S3 write a commit makes: the writer is killed at that write."""
    commit(storage, 1)
    with killed_at_write(storage, 0) as made:  # k=0 never fires: counts a whole commit's writes
        commit(storage, 2)
    writes = len(made)
    commit(storage, 1)
    lost = 0
    for k in range(1, writes + 1):
        try:
            with killed_at_write(storage, k):
                commit(storage, 100 + k)
        except Killed:
            pass
        kind, version = read(elsewhere(storage, scratch / uuid.uuid4().hex))
        if (kind, version) != ("ok", 1):
            lost += 1
            commit(storage, 1)  # the next round starts from a good version again
    return KilledWriter(writes, lost, writes)


def main() -> None:
    from tests.services import S3, running_moto

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "commit_races.json")
    args = parser.parse_args()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    with running_moto() as endpoint, tempfile.TemporaryDirectory() as tmp:
        s3 = S3(endpoint, f"races-{uuid.uuid4().hex[:8]}")
        os.environ.update(s3.environment())
        s3.client().create_bucket(Bucket=s3.bucket)
        scratch = Path(tmp)
        started = time.perf_counter()
        results = {}
        for name, experiment in (
            ("recommit_while_reading", lambda st: recommit_while_reading(st, scratch, args.rounds)),
            ("two_writers", lambda st: two_writers(st, scratch, args.rounds)),
            ("killed_writer", lambda st: killed_writer(st, scratch)),
        ):
            storage = s3_storage(endpoint, s3.bucket, scratch / f"{name}-writer")
            storage = StorageResource(**{**storage.model_dump(), "config_name": name})
            results[name] = asdict(experiment(storage))
            print(name, results[name], flush=True)
    report = {
        "code": os.environ.get("BMLT_CODE_LABEL", "this checkout"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": {"start": load_at_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
