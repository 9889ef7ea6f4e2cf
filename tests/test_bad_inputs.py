"""Bad inputs: every `bmlt` command, and the Dagster code location, answer a bad config or a bad
recording with one line that names the file or field, what is wrong and what to do, and exit 2
without a traceback."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import polars as pl
import pytest
import yaml

from bmlt_assets.core.config import PROJECT_ROOT, ConfigError, load_config
from bmlt_assets.core.sources.binance.sync import PROGRESS_EVERY_LINES
from bmlt_assets.core.sources.importer import import_recordings
from tests.helpers import TINY, real_recording, write_config

BIN = Path(sys.executable).parent
BAD_DATE = "2025-13-06"


def _bmlt(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bmlt_assets.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
    )


def _bad_date_config(folder: Path) -> Path:
    path = folder / "bad-date.yaml"
    path.write_text(re.sub(r"start_date: \S+", f"start_date: {BAD_DATE}", TINY.read_text()))
    return path


def _duplicate_key_config(folder: Path) -> tuple[Path, int, int]:
    """The tiny config with data.end_date given twice: (path, first line, second line)."""
    lines = TINY.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("end_date:"))
    lines.insert(first + 1, "  end_date: 2025-01-09")
    path = folder / "duplicate.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path, first + 1, first + 2


def _tardis_csv(folder: Path) -> Path:
    header = ["exchange", "symbol", "timestamp", "local_timestamp"]
    for i in range(25):
        header += [f"asks[{i}].price", f"asks[{i}].amount", f"bids[{i}].price", f"bids[{i}].amount"]
    row = ["binance", "BTCUSDT", "1723161600000000", "1723161600001500"]
    for i in range(25):
        row += [f"{61838.0 + i * 0.5:.2f}", "0.5", f"{61837.5 - i * 0.5:.2f}", "0.25"]
    path = folder / "book_snapshot_25.csv"
    path.write_text(",".join(header) + "\n" + ",".join(row) + "\n")
    return path


def _truncated_recording(folder: Path) -> tuple[Path, int]:
    """The real recording cut in half, and how many whole lines survive (counted independently)."""
    data = real_recording().read_bytes()
    half = data[: len(data) // 2]
    path = folder / "truncated_depth_ws.gz"
    path.write_bytes(half)
    return path, zlib.decompressobj(wbits=31).decompress(half).count(b"\n")


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "empty.gz").write_bytes(b"")
    (folder / "binary.bin").write_bytes(b"\x00\x01" + random.Random(0).randbytes(4094))
    (folder / "a-directory").mkdir()
    return {
        "config": write_config(tmp_path),
        "bad_date": _bad_date_config(tmp_path),
        "recording": real_recording(),
        "tardis": _tardis_csv(folder),
        "empty": folder / "empty.gz",
        "binary": folder / "binary.bin",
        "directory": folder / "a-directory",
    }


# name -> (arguments, fragments the one line must hold); "{key}" is replaced by files[key]
CASES: dict[str, tuple[list[str], list[str]]] = {
    "invalid date, validate": (
        ["validate", "--config", "{bad_date}"],
        ["invalid config: {bad_date}: data.start_date = '2025-13-06'", "month", "YYYY-MM-DD"],
    ),
    "invalid date, plan": (["plan", "--config", "{bad_date}"], ["{bad_date}: data.start_date", "YYYY-MM-DD"]),
    "invalid date, summary": (["summary", "--config", "{bad_date}"], ["{bad_date}: data.start_date", "YYYY-MM-DD"]),
    "invalid date, import": (
        ["import", "{recording}", "--config", "{bad_date}"],
        ["{bad_date}: data.start_date", "YYYY-MM-DD"],
    ),
    "spot recording as usdm": (
        ["import", "{recording}", "--market", "usdm", "--config", "{config}"],
        ["{recording} looks like a spot recording", "no 'pu'", "use --market spot"],
    ),
    "--levels 0": (
        ["import", "{recording}", "--levels", "0", "--config", "{config}"],
        ["--levels 0", "at least 1 level per side"],
    ),
    "--levels -1": (
        ["import", "{recording}", "--levels", "-1", "--config", "{config}"],
        ["--levels -1", "at least 1 level per side"],
    ),
    "websocket file as tardis": (
        ["import", "{recording}", "--format", "tardis-book-snapshot", "--config", "{config}"],
        ["{recording} is not a tardis book_snapshot_25 CSV", "use --format binance-ws"],
    ),
    "tardis file as websocket": (
        ["import", "{tardis}", "--format", "binance-ws", "--config", "{config}"],
        ["{tardis} is a tardis book_snapshot_25 CSV", "use --format tardis-book-snapshot"],
    ),
    "a directory": (
        ["import", "{directory}", "--config", "{config}"],
        ["{directory}: is a directory", "pass the recordings in it"],
    ),
    "an empty file": (["import", "{empty}", "--config", "{config}"], ["{empty} is empty", "nothing to import"]),
    "a binary file": (
        ["import", "{binary}", "--config", "{config}"],
        ["{binary} is a binary file, neither gzip nor text", "'<receive ns> <JSON>' lines"],
    ),
    "a binary file as tardis": (
        ["import", "{binary}", "--format", "tardis-book-snapshot", "--config", "{config}"],
        ["{binary} is a binary file", "tardis book_snapshot_25 CSV"],
    ),
    "a config directory": (["validate", "--config", "{directory}"], ["{directory}: is a directory"]),
}


def _message(result: subprocess.CompletedProcess[str]) -> str:
    """The one line the command printed for the bad input (log lines have a time stamp first)."""
    problems = [line for line in result.stderr.splitlines() if line and not re.match(r"\d\d:\d\d:\d\d ", line)]
    assert len(problems) == 1, result.stderr
    return problems[0]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_input_gets_one_clear_line_and_exit_2(files: dict[str, Path], case: str) -> None:
    arguments, fragments = CASES[case]
    result = _bmlt(*(argument.format(**files) for argument in arguments))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    line = _message(result)
    for fragment in fragments:
        assert fragment.format(**files) in line, line


def test_a_duplicate_key_is_an_error_naming_key_and_lines(tmp_path: Path) -> None:
    path, first, second = _duplicate_key_config(tmp_path)
    assert yaml.safe_load(path.read_text())["data"]["end_date"]  # plain YAML keeps the last one silently
    result = _bmlt("validate", "--config", path)
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert _message(result) == (
        f"invalid config: {path}: line {second}: duplicate key 'data.end_date' (first given at line {first}); "
        "a key may appear once per section: delete one of them"
    )


def test_merge_keys_may_still_override_and_valid_dates_still_parse(tmp_path: Path) -> None:
    raw = TINY.read_text().replace("model:\n", "defaults: &small\n  conv_channels: 2\nmodel:\n  <<: *small\n", 1)
    path = tmp_path / "merge.yaml"
    path.write_text(raw)
    with pytest.raises(ConfigError, match="defaults: unknown key"):  # the anchor's key, not a duplicate
        load_config(path)
    config = load_config(write_config(tmp_path))
    assert str(config.data.start_date) == "2025-01-06"


def test_a_truncated_gzip_keeps_the_books_before_the_damage_and_says_so(tmp_path: Path, files: dict) -> None:
    path, lines = _truncated_recording(tmp_path)
    result = _bmlt("import", path, "--config", files["config"], "--json")
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    summary = json.loads(result.stdout)
    books = summary["snapshots"]
    assert 1000 < books < 3449  # some, not all, of the whole recording's books
    (written,) = summary["written"]
    assert pl.read_parquet(written).height == books
    assert summary["damaged"] == [
        {"file": str(path), "lines": lines, "books": books, "reason": "gzip stream ended early"}
    ]
    landing = load_config(files["config"]).local_dir / "landing" / "spot"
    assert _message(result) == (
        f"{path} is truncated after {lines} lines (gzip stream ended early); the {books} books rebuilt before "
        f"the damage were written to {landing}: re-download or re-record it for the rest"
    )


def test_a_plain_recording_cut_mid_line_is_truncated_too(tmp_path: Path, files: dict) -> None:
    with gzip.open(real_recording(), "rt") as recording:
        head = "".join(next(recording) for _ in range(600))
    path = tmp_path / "cut.txt"
    path.write_text(head + head.splitlines()[-1][:40])  # 600 whole lines, then half a line
    result = _bmlt("import", path, "--config", files["config"])
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert f"{path} is truncated after 600 lines (its last line is cut off)" in _message(result)


def _landing_levels(path: str) -> int:
    return pl.read_parquet(path)["bid_px"].dtype.size  # type: ignore[attr-defined]


def test_import_takes_market_and_depth_from_the_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"data": {"depth": 7}})
    result = _bmlt("import", real_recording(), "--config", config, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["levels"] == 7 and summary["market"] == "spot"
    (written,) = summary["written"]
    assert "/landing/spot/" in written and _landing_levels(written) == 7

    (tmp_path / "usdm").mkdir()
    usdm = write_config(tmp_path / "usdm", {"data": {"market": "usdm"}})
    refused = _bmlt("import", real_recording(), "--config", usdm)
    assert refused.returncode == 2 and "use --market spot" in refused.stderr  # data.market was used
    assert _bmlt("import", real_recording(), "--market", "spot", "--config", usdm, "--json").returncode == 0


def test_a_landing_file_of_another_depth_is_overwritten_only_with_force(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    first = _bmlt("import", real_recording(), "--levels", "10", "--config", config, "--json")
    assert first.returncode == 0, first.stderr
    (target,) = json.loads(first.stdout)["written"]
    again = _bmlt("import", real_recording(), "--levels", "10", "--config", config)
    assert again.returncode == 0, again.stderr  # the same depth: a plain re-import

    deeper = _bmlt("import", real_recording(), "--levels", "12", "--config", config)
    assert deeper.returncode == 2 and "Traceback" not in deeper.stdout + deeper.stderr
    assert _message(deeper) == (
        f"cannot import: {target} holds books of 10 levels per side and this import has 12: "
        "pass --force to overwrite it, or --levels 10 to match it"
    )
    assert _landing_levels(target) == 10  # untouched

    forced = _bmlt("import", real_recording(), "--levels", "12", "--config", config, "--force")
    assert forced.returncode == 0, forced.stderr
    assert _landing_levels(target) == 12


def test_the_import_reports_progress_through_the_file(tmp_path: Path) -> None:
    calls: list[tuple[Path, int, int]] = []
    _, summary = import_recordings([real_recording()], "binance-ws", "spot", 20, lambda *call: calls.append(call))
    size = real_recording().stat().st_size
    assert summary.snapshots == 3449
    assert len(calls) == 41249 // PROGRESS_EVERY_LINES + 1  # every PROGRESS_EVERY_LINES lines, then the end
    assert [done for _, done, _ in calls] == sorted(done for _, done, _ in calls)
    assert 0 < calls[0][1] < size and calls[-1] == (real_recording(), size, size)


def test_the_import_logs_progress_when_stderr_is_no_terminal(monkeypatch, capsys, tmp_path: Path) -> None:
    from bmlt_assets import cli

    monkeypatch.setattr(cli._ImportProgress, "LOG_FROM_BYTES", 0)  # the real recording counts as large
    assert cli.main(["import", str(real_recording()), "--config", str(write_config(tmp_path))]) == 0
    shown = capsys.readouterr().err
    assert f"{real_recording().name}: 40% read" in shown and f"{real_recording().name}: 100% read" in shown


def _without_library_warnings(stderr: str) -> list[str]:
    """Non-empty stderr lines, less Python warnings (``file:line: SomeWarning: ...`` and the
    indented source line after it): Dagster's SupersessionWarning for `job execute`, printed
    before any of our code runs, and MLflow's about pyfunc type hints at import."""
    kept, in_warning = [], False
    for line in stderr.splitlines():
        if re.match(r"\S+:\d+: \w*Warning: ", line):
            in_warning = True
        elif not (in_warning and line.startswith(" ")):
            in_warning = False
            if line.strip():
                kept.append(line)
    return kept


def test_the_dagster_code_location_gives_the_clean_message_first_and_once(tmp_path: Path, files: dict) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / ".dagster_home" / "dagster.yaml", home)  # as the Makefile's: no telemetry banner
    env = {**os.environ, "BMLT_CONFIG": str(files["bad_date"]), "DAGSTER_HOME": str(home)}
    result = subprocess.run(
        [str(BIN / "dagster"), "job", "execute", "-m", "bmlt_assets.definitions", "-j", "full_pipeline"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = _without_library_warnings(result.stderr)
    assert lines[0].startswith(f"invalid config: {files['bad_date']}: data.start_date = '{BAD_DATE}'"), lines
    assert "YYYY-MM-DD" in lines[0]
    assert result.stderr.count("data.start_date") == 1


def test_the_code_location_error_is_still_a_config_error_for_python_callers(files: dict) -> None:
    from bmlt_assets.definitions import build_resources

    with pytest.raises(ConfigError) as error:
        build_resources(files["bad_date"])
    assert str(error.value).startswith(f"{files['bad_date']}: data.start_date = '{BAD_DATE}'")
