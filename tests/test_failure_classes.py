"""Failures by class, at the edge: each class of error a user can meet (a file the user may not
write, a DAGSTER_HOME that is no folder, object storage without credentials or without a server,
a damaged store, a date without a partition, ...) is one line that names the file or setting and
the fix, exit 2, no traceback, whichever command meets it; `--log-level debug` adds the traceback.
One subprocess per class, as a user runs the commands."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from bmlt_assets.core.config import PROJECT_ROOT, load_config
from tests.helpers import TINY, real_recording, write_config
from tests.services import free_port

BIN = Path(sys.executable).parent


def _run(*args: str | Path, env: dict[str, str] | None = None, root_may_override: bool = True):
    command = [str(BIN / "bmlt"), *map(str, args)]
    if not root_may_override and os.geteuid() == 0:
        # Root ignores file modes; without these capabilities it meets them as any user does.
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *command]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=180, cwd=PROJECT_ROOT, env={**os.environ, **(env or {})}
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The failure's one line: exit 2, no traceback, and nothing else on stderr but log lines."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not re.match(r"\d\d:\d\d:\d\d ", line)]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _read_only(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    return folder


def test_permission_denied_names_the_folder_the_setting_and_the_fix(tmp_path: Path) -> None:
    data = _read_only(tmp_path / "data")
    config = write_config(tmp_path)
    line = _one_line(_run("import", real_recording(), "--config", config, root_may_override=False))
    assert line == (
        f"{data}: permission denied (storage.uri is {data}): give this user access to it "
        f"(ls -ld {data}; chown or chmod), or point storage.uri at another folder"
    )
    assert not list(data.iterdir())  # refused before anything was read or written

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / ".dagster_home" / "dagster.yaml", home)
    _read_only(home)
    line = _one_line(_run("backfill", "--config", config, env={"DAGSTER_HOME": str(home)}, root_may_override=False))
    at = re.escape(str(home))
    assert re.fullmatch(
        rf"{at}/\S+: permission denied \(DAGSTER_HOME is {at}\): give this user access to {at} "
        rf"\(ls -ld {at}; chown or chmod\), or point DAGSTER_HOME at another folder",
        line,
    ), line


def test_a_dagster_home_that_is_no_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-home"
    line = _one_line(_run("backfill", "--config", write_config(tmp_path), env={"DAGSTER_HOME": str(missing)}))
    assert line == (
        f"DAGSTER_HOME {missing} is not a folder: create it (mkdir -p {missing}), or point DAGSTER_HOME at the "
        "folder of the instance's dagster.yaml"
    )


def _object_storage_config(tmp_path: Path, endpoint: str) -> Path:
    return write_config(
        tmp_path, {"storage": {"uri": "s3://bmlt-test/prefix", "endpoint_url": endpoint, "cache_dir": "cache"}}
    )


NO_AWS = {
    "AWS_ACCESS_KEY_ID": "",
    "AWS_SECRET_ACCESS_KEY": "",
    "AWS_SESSION_TOKEN": "",
    "AWS_PROFILE": "",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def test_object_storage_without_credentials_or_without_a_server(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    config = _object_storage_config(tmp_path, endpoint)
    without_keys = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")} | NO_AWS
    result = subprocess.run(
        [str(BIN / "bmlt"), "summary", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=180,
        env={key: value for key, value in without_keys.items() if value},
    )
    assert _one_line(result) == (
        "storage.uri s3://bmlt-test/prefix: no object-store credentials: export AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE); they never go in the config"
    )
    keys = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true"}
    line = _one_line(_run("summary", "--config", config, env=keys))
    assert line == (
        f"storage.uri s3://bmlt-test/prefix: nothing answers at {endpoint}: start the object store, or fix "
        "storage.endpoint_url in the config"
    )


def test_a_damaged_mlflow_store(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    config.local_dir.mkdir(parents=True)
    (config.local_dir / "mlflow.db").write_bytes(b"not a database, " * 256)
    line = _one_line(_run("report", "0123abcd", "--config", write_config(tmp_path)))
    assert line == (
        f"{config.tracking_uri}: the MLflow store cannot be read (file is not a database): move the file aside "
        "(MLflow starts a new one) or restore it from a backup, or point mlflow.tracking_uri elsewhere"
    )


def test_a_file_where_a_folder_belongs(tmp_path: Path) -> None:
    occupied = tmp_path / "data"
    occupied.write_text("a file, not the data folder")
    line = _one_line(_run("import", real_recording(), "--config", write_config(tmp_path)))
    assert line == (
        f"{occupied}: a part of this path is a file, where a folder belongs (storage.uri is {occupied}): "
        "point storage.uri at another folder"
    )


def test_deeply_nested_yaml(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(TINY.read_text() + "labels:\n  horizons_s: " + "[" * 3000 + "]" * 3000 + "\n")
    assert _one_line(_run("validate", "--config", path)) == (
        f"invalid config: {path}: nested too deeply to read (hundreds of levels); a config has a few levels of "
        "sections, as in configs/default.yaml"
    )


def test_a_tab_in_yaml_is_named_as_one(tmp_path: Path) -> None:
    path = tmp_path / "tab.yaml"
    path.write_text(TINY.read_text().replace("  cadence_ms:", "\tcadence_ms:"))
    line = _one_line(_run("validate", "--config", path))
    assert re.fullmatch(
        rf"invalid config: {re.escape(str(path))}: a tab at line \d+, column 1: YAML indents and separates with "
        "spaces only; replace it with spaces",
        line,
    )


def test_days_without_a_partition_are_refused_before_any_work(tmp_path: Path) -> None:
    early = write_config(tmp_path, {"data": {"start_date": "2017-07-01"}}, name="early.yaml")
    assert _one_line(_run("validate", "--config", early)) == (
        f"invalid config: {early}: data: start_date 2017-07-01 is before 2017-07-14, the first day of the daily "
        "partitions (Binance spot's opening): use 2017-07-14 or later"
    )
    config = write_config(tmp_path)
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    home = tmp_path / "home"
    home.mkdir()
    for flags, expected in (
        (["--from", "2017-01-01", "--to", "2017-07-20"], "--from 2017-01-01 is before 2017-07-14"),
        (["--to", tomorrow.isoformat()], f"--to {tomorrow} is not over yet (UTC)"),
    ):
        assert _one_line(_run("backfill", "--config", config, *flags, env={"DAGSTER_HOME": str(home)})).startswith(
            expected
        )
    assert not list(home.iterdir())  # no instance was even opened


def test_backfill_checks_its_dates_before_importing_dagster(tmp_path: Path) -> None:
    """--to before --from is refused at once: the answer does not wait for Dagster's import."""
    script = (
        "import sys; from bmlt_assets.cli import main; "
        f"status = main(['backfill', '--config', {str(write_config(tmp_path))!r}, "
        "'--from', '2025-01-07', '--to', '2025-01-06']); "
        "assert 'dagster' not in sys.modules, 'dagster was imported'; sys.exit(status)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert _one_line(result) == "--to 2025-01-06 is before --from 2025-01-07; give the first day, then the last"


def test_an_unreachable_mlflow_fails_in_seconds_naming_the_uri(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, {"mlflow": {"tracking_uri": uri}})
    started = time.monotonic()
    line = _one_line(_run("report", "0123abcd", "--config", config))
    assert time.monotonic() - started < 60  # MLflow's own retries take over 4 minutes
    assert line.startswith(f"MLflow tracking store {uri!r} is unreachable") and "mlflow.tracking_uri" in line


def test_debug_keeps_the_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-home"
    env = {"DAGSTER_HOME": str(missing)}
    result = _run("backfill", "--config", write_config(tmp_path), "--log-level", "debug", env=env)
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr and "DagsterInvariantViolationError" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith(f"DAGSTER_HOME {missing} is not a folder")


@pytest.mark.slow  # two `dagster job execute` processes; test_bad_inputs keeps a quick one for a bad config
def test_the_code_location_explains_by_class_too(tmp_path: Path) -> None:
    """`dagster` loading a location meets the same classes: one line, exit 2."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / ".dagster_home" / "dagster.yaml", home)
    occupied = tmp_path / "data"
    occupied.write_text("a file")
    for config, expected in (
        (tmp_path / "gone.yaml", f"invalid config: BMLT_CONFIG={tmp_path / 'gone.yaml'}: no such file"),
        (write_config(tmp_path), f"{occupied}: a part of this path is a file, where a folder belongs"),
    ):
        env = {**os.environ, "BMLT_CONFIG": str(config), "DAGSTER_HOME": str(home)}
        result = subprocess.run(
            [str(BIN / "dagster"), "job", "execute", "-m", "bmlt_assets.definitions", "-j", "ingest_job"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=PROJECT_ROOT,
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.rstrip().splitlines()[-1].startswith(expected), result.stderr


# --- bmlt import: nothing a user has is replaced, nothing unusable passes silently -------------


def test_two_recordings_of_one_day_under_one_name_keep_both_books(tmp_path: Path) -> None:
    """Two recorder hosts' `depth.gz` of the same day: each import lands in a file of its own."""
    full = real_recording().read_bytes()
    lines = gzip.decompress(full).splitlines(keepends=True)
    first_half = gzip.compress(b"".join(lines[: len(lines) // 2]))
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    host_a.mkdir()
    host_b.mkdir()
    (host_a / "depth.gz").write_bytes(first_half)
    (host_b / "depth.gz").write_bytes(full)
    config = write_config(tmp_path)
    imported = {}
    for host in (host_a, host_b):
        result = _run("import", host / "depth.gz", "--config", config, "--json")
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        (imported[host],) = summary["written"]
        assert pl.read_parquet(imported[host]).height == summary["snapshots"]
    assert imported[host_a] != imported[host_b]
    landing = Path(imported[host_a]).parent
    books = sum(pl.read_parquet(path).height for path in landing.glob("*.parquet"))
    assert books == 3449 + pl.read_parquet(imported[host_a]).height  # the whole recording, and the half
    again = _run("import", host_b / "depth.gz", "--config", config, "--json")  # the same bytes: its own file
    assert json.loads(again.stdout)["written"] == [imported[host_b]] and len(list(landing.glob("*.parquet"))) == 2


def test_a_recording_of_symbols_the_config_does_not_list(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"data": {"symbols": ["ETH/USDT", "SOL/USDT"]}})
    line = _one_line(_run("import", real_recording(), "--config", config))
    assert line == (
        f"cannot import: {real_recording()} holds books of BTC/USDT, which {config} does not list in "
        "data.symbols ['ETH/USDT', 'SOL/USDT']: add them there, or pass the --config that lists them"
    )
    assert not (load_config(config).local_dir / "landing").exists()
