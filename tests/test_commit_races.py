"""The three concurrency experiments of benchmarks/commit_races.py against a loopback moto_server:
a partition re-committed while fresh readers poll it, two writers of one partition at once, and a
writer killed at each S3 write of its commit. On the code before immutable versions they gave 97
missing reads of 131, 5 of 15 partitions left mixed, and the previous version lost after 3 of 4
kills (benchmarks/commit_races_before.json)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.commit_races import killed_writer, recommit_while_reading, s3_storage, two_writers
from tests.services import S3

pytestmark = pytest.mark.slow  # about 10 s each on moto


def test_readers_never_miss_a_partition_that_is_being_re_committed(tmp_path: Path, s3: S3) -> None:
    result = recommit_while_reading(s3_storage(s3.endpoint_url, s3.bucket, tmp_path / "writer"), tmp_path, 15)
    assert result.reads > result.commits  # the readers really overlapped the commits
    assert (result.missing, result.corrupt, result.mixed) == (0, 0, 0)


def test_two_writers_of_one_partition_leave_one_whole_version_and_the_loser_is_told(tmp_path: Path, s3: S3) -> None:
    result = two_writers(s3_storage(s3.endpoint_url, s3.bucket, tmp_path / "writer"), tmp_path, 15)
    assert result.final_not_whole == 0
    assert result.both_reported_success == 0  # never two "successes" of different content
    assert result.losers_refused == result.rounds and result.other_failures == 0


def test_a_writer_killed_at_any_s3_write_leaves_the_previous_version_whole(tmp_path: Path, s3: S3) -> None:
    result = killed_writer(s3_storage(s3.endpoint_url, s3.bucket, tmp_path / "writer"), tmp_path)
    assert result.writes_per_commit >= 3  # two files and the pointer: every one of them was a kill point
    assert result.previous_lost == 0
