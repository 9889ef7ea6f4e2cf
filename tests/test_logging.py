"""bmlt_assets.core.logs: colour on a terminal, plain text otherwise, one handler however often set up."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bmlt_assets.core.logs import LOGGER_NAMES, colour_enabled, setup_logging
from tests.helpers import write_config

ANSI = re.compile(r"\x1b\[[0-9;]*m")
log = logging.getLogger("bmlt_assets.core.example")


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def import_snapshots(symbol: str, count: int) -> None:
    log.info("imported %d snapshots of %s", count, symbol)


@pytest.fixture(autouse=True)
def _restore_loggers(monkeypatch: pytest.MonkeyPatch):
    """Leave the bmlt loggers, and the colour-related environment, as the test found them."""
    for name in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at the console width; keep each record on one line
    loggers = [logging.getLogger(name) for name in LOGGER_NAMES]
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    yield
    for lg, handlers, level, propagate in saved:
        lg.handlers = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def test_terminal_output_is_coloured_with_function_name_and_highlighted_values() -> None:
    stream = TtyStream()
    setup_logging(stream=stream)
    import_snapshots("BTCUSDT", 1234)
    out = stream.getvalue()

    assert "\x1b[" in out
    assert re.search(r"\x1b\[[0-9;]*mBTCUSDT", out), out  # the argument carries its own style...
    assert not re.search(r"\x1b\[[0-9;]*msnapshots", out), out  # ...the template's words do not
    text = ANSI.sub("", out)
    assert "bmlt_assets.core.example.import_snapshots: imported 1234 snapshots of BTCUSDT" in text
    assert "INFO" in text


def test_terminal_output_shows_markup_like_values_literally() -> None:
    stream = TtyStream()
    setup_logging(stream=stream)
    template, args = "file [red]%s[/red] at %.2f%% \\", ("[i]x\\", 12.345)
    log.warning(template, *args)
    log.warning("%(name)s has %(n)d rows", {"name": "[b]y", "n": 3})
    out = stream.getvalue()
    text = ANSI.sub("", out)

    assert template % args in text  # 'file [red][i]x\\[/red] at 12.35% \\'
    assert "[b]y has 3 rows" in text
    assert re.search(r"\x1b\[[0-9;]*my\x1b", out), out  # the mapping's value is styled too


def test_piped_output_is_plain_text() -> None:
    stream = io.StringIO()
    setup_logging(stream=stream)
    import_snapshots("BTCUSDT", 1234)
    out = stream.getvalue()

    assert "\x1b" not in out
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d INFO     bmlt_assets\.core\.example\.import_snapshots: imported 1234 snapshots of BTCUSDT\n",
        out,
    ), out


def test_no_color_turns_colour_off_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("FORCE_COLOR", "1")  # NO_COLOR wins
    stream = TtyStream()
    setup_logging(stream=stream)
    import_snapshots("BTCUSDT", 1234)
    out = stream.getvalue()

    assert "\x1b" not in out
    assert "import_snapshots" in out and "BTCUSDT" in out


def test_colour_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    assert colour_enabled(TtyStream())
    assert not colour_enabled(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "")  # an empty NO_COLOR does not count
    assert colour_enabled(TtyStream())
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert colour_enabled(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "yes")
    assert not colour_enabled(TtyStream())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.delenv("FORCE_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not colour_enabled(TtyStream())


@pytest.mark.parametrize("stream_type", [io.StringIO, TtyStream])
def test_setup_twice_gives_one_line_per_call(stream_type: type) -> None:
    first, second = stream_type(), stream_type()
    setup_logging(stream=first)
    setup_logging("DEBUG", stream=second)
    import_snapshots("BTCUSDT", 1)
    log.debug("and %s", "another")
    logging.getLogger("bmlt_resources.binance").info("from %s", "resources")

    assert first.getvalue() == ""
    lines = ANSI.sub("", second.getvalue()).splitlines()
    assert len(lines) == 3, lines
    assert "import_snapshots" in lines[0] and "BTCUSDT" in lines[0]
    assert "and another" in lines[1] and "from resources" in lines[2]


def test_level_filters_and_root_logger_is_left_alone() -> None:
    root_handlers = list(logging.getLogger().handlers)
    stream = io.StringIO()
    setup_logging("WARNING", stream=stream)
    import_snapshots("BTCUSDT", 1)
    logging.getLogger("dagster.builtin").warning("not ours")
    assert stream.getvalue() == ""
    assert logging.getLogger().handlers == root_handlers


def test_a_malformed_call_is_reported_not_raised(capsys: pytest.CaptureFixture[str]) -> None:
    stream = TtyStream()
    setup_logging(stream=stream)
    ours = next(h for h in logging.getLogger("bmlt_assets").handlers if getattr(h, "_bmlt_handler", False))
    malformed = logging.LogRecord(log.name, logging.INFO, __file__, 1, "%d rows", ("many",), None)
    ours.handle(malformed)  # as with logging's own handlers: "--- Logging error ---" on stderr, no exception
    assert "Logging error" in capsys.readouterr().err
    import_snapshots("BTCUSDT", 1)
    assert "BTCUSDT" in stream.getvalue()


def test_logs_module_imports_only_the_standard_library_and_rich() -> None:
    import ast
    import sys

    import bmlt_assets.core.logs as logs

    tree = ast.parse(Path(logs.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    tops = {name.split(".")[0] for name in imported}
    assert tops - set(sys.stdlib_module_names) - {"__future__"} == {"rich"}


def test_loading_the_code_location_prints_no_library_warning(tmp_path: Path) -> None:
    """Every Dagster command loads the definitions: MLflow's warning that the pyfunc's predict has no
    type hints (raw colour codes, even with NO_COLOR) or any other import-time warning would open each."""
    env = {**os.environ, "NO_COLOR": "1", "BMLT_CONFIG": str(write_config(tmp_path)), "PYTHONWARNINGS": "default"}
    result = subprocess.run(
        [sys.executable, "-c", "import bmlt_assets.definitions"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
