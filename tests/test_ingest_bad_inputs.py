"""Bad recordings at `bmlt import`, by class: each gets one line naming the file (and the line) and
the fix, exit 2, no traceback; a valid file in an unusual form (CRLF) is imported; receive times
that step back are imported in file order with a warning naming the file and line."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from bmlt_assets.core.config import PROJECT_ROOT
from tests.helpers import real_recording, write_config
from tests.tardis_archive import incremental_rows, snapshot25_rows

FORMATS = {"snapshot25": "tardis-book-snapshot", "incremental": "tardis-incremental"}


def _bmlt_import(path: Path, fmt: str, folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    folder.mkdir(exist_ok=True)
    config = write_config(folder)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bmlt_assets.cli",
            "import",
            str(path),
            "--format",
            fmt,
            "--config",
            str(config),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PROJECT_ROOT,
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line printed for the bad input (log lines start with a time stamp)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line and not re.match(r"\d\d:\d\d:\d\d ", line)]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def tables() -> dict[str, pl.DataFrame]:
    """The first 300 rows of each tardis form of the real recording, as text columns."""
    return {
        "snapshot25": snapshot25_rows(real_recording()).head(300).cast(pl.String),
        "incremental": incremental_rows(real_recording()).head(3000).cast(pl.String),
    }


def _write(table: pl.DataFrame, path: Path, line_ending: str = "\n") -> Path:
    text = table.write_csv(line_terminator=line_ending)
    path.write_text(text, newline="")
    return path


@pytest.mark.parametrize("form", FORMATS)
def test_a_csv_missing_some_amount_columns_names_them(tmp_path: Path, tables: dict, form: str) -> None:
    dropped = "bids[3].amount" if form == "snapshot25" else "amount"
    path = _write(tables[form].drop(dropped), tmp_path / "missing.csv")
    line = _one_line(_bmlt_import(path, FORMATS[form], tmp_path))
    assert f"{path}: not a tardis" in line and f"its header lacks {dropped}" in line
    assert "pass a file whose header starts" in line


@pytest.mark.parametrize("form", FORMATS)
def test_a_valid_crlf_csv_imports_like_its_lf_twin(tmp_path: Path, tables: dict, form: str) -> None:
    """All 25 levels: the header's last column, which a CRLF file ends with a carriage return."""
    books = {}
    for ending, name in (("\n", "lf"), ("\r\n", "crlf")):
        path = _write(tables[form], tmp_path / f"{name}.csv", ending)
        done = _bmlt_import(path, FORMATS[form], tmp_path / name, "--json", "--levels", "25")
        assert done.returncode == 0, done.stderr
        books[name] = json.loads(done.stdout)
    assert books["crlf"]["snapshots"] == books["lf"]["snapshots"] > 0
    assert books["crlf"]["first"] == books["lf"]["first"] and books["crlf"]["last"] == books["lf"]["last"]


@pytest.mark.parametrize("form", [*FORMATS, "binance-ws"])
def test_a_value_that_is_not_a_number_names_file_and_line(tmp_path: Path, tables: dict, form: str) -> None:
    if form == "binance-ws":
        with gzip.open(real_recording(), "rt") as recording:
            lines = recording.read().splitlines()
        bad = next(i for i, text in enumerate(lines) if i > 20 and "depthUpdate" in text)
        stamp, payload = lines[bad].split(" ", 1)
        message = json.loads(payload)
        message["data"]["a"][0][1] = "n/a"
        lines[bad] = f"{stamp} {json.dumps(message)}"
        path = tmp_path / "recording.txt"
        path.write_text("\n".join(lines) + "\n")
        line = _one_line(_bmlt_import(path, "binance-ws", tmp_path))
        assert f"{path}:{bad + 1}: " in line and "n/a" in line
        return
    column = "bids[0].price" if form == "snapshot25" else "amount"
    row = 41  # file line 43: the header is line 1
    table = tables[form].with_columns(
        pl.when(pl.int_range(pl.len()) == row).then(pl.lit("n/a")).otherwise(pl.col(column)).alias(column)
    )
    path = _write(table, tmp_path / "bad.csv")
    line = _one_line(_bmlt_import(path, FORMATS[form], tmp_path))
    assert f"{path}:{row + 2}: {column} is 'n/a', not a number" in line and "re-download" in line


@pytest.mark.parametrize("form", FORMATS)
def test_a_header_only_file_says_there_is_nothing_to_import(tmp_path: Path, tables: dict, form: str) -> None:
    path = _write(tables[form].clear(), tmp_path / "header-only.csv")
    line = _one_line(_bmlt_import(path, FORMATS[form], tmp_path))
    assert str(path) in line and ("no rows below the header" in line or "no book" in line)
    assert "concat" not in line


@pytest.mark.parametrize("form", ["binance-ws", "incremental"])
def test_receive_times_that_step_back_are_imported_with_a_warning(tmp_path: Path, tables: dict, form: str) -> None:
    """Imported in file order (the sync rules follow update ids), never silently: one warning line
    with the file, the line of the first step and its size."""
    if form == "binance-ws":
        with gzip.open(real_recording(), "rt") as recording:
            lines = recording.read().splitlines()
        at = 2000
        previous = int(lines[at - 1].split(" ", 1)[0])
        lines[at] = f"{previous - 5 * 10**9} {lines[at].split(' ', 1)[1]}"
        path = tmp_path / "stepped.txt"
        path.write_text("\n".join(lines) + "\n")
        line_number = at + 1
    else:
        table = tables["incremental"]
        at = 2500
        local = table["local_timestamp"].cast(pl.Int64)
        stepped = pl.Series(
            "local_timestamp", [local[at - 1] - 5_000_000 if i == at else v for i, v in enumerate(local)]
        )
        path = _write(table.with_columns(stepped.cast(pl.String)), tmp_path / "stepped.csv")
        line_number = at + 2
    done = _bmlt_import(path, "binance-ws" if form == "binance-ws" else FORMATS[form], tmp_path, "--json")
    assert done.returncode == 0 and "Traceback" not in done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, done.stderr
    assert f"{path}:{line_number}: receive time steps back 5.000 s" in warnings[0]
    assert "check the recorder's clock" in warnings[0]
    steps = json.loads(done.stdout)["time_steps_back"]
    assert steps == [{"file": str(path), "line": line_number, "steps": 1, "largest_s": 5.0}]
