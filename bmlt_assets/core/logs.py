"""One logging setup for the `bmlt` commands.

Modules log through the standard library, ``log = logging.getLogger(__name__)``, passing values
as %-style arguments: ``log.info("imported %s snapshots from %s", n, path)``.
``setup_logging()`` attaches one handler to the ``bmlt_assets`` and ``bmlt_resources`` loggers
(never the root logger, so Dagster's and MLflow's loggers are left alone):

* on a terminal: rich's ``RichHandler`` - coloured levels, ``logger.function`` on every line,
  and every argument value in bold cyan;
* otherwise, or when ``NO_COLOR`` is set to a non-empty value: plain text without any escape code,
  ``HH:MM:SS LEVEL    bmlt_assets.core.dataset.build: message``.

``FORCE_COLOR`` (non-empty) asks for colour even when the stream is not a terminal; ``NO_COLOR``
wins over it. ``TERM=dumb`` gets plain text, as rich would print no colour there.

Inside a Dagster run, these loggers reach the run's event log when the instance's dagster.yaml
names them (``LOGGER_NAMES``)::

    python_logs:
      managed_python_loggers: [bmlt_assets, bmlt_resources]
      python_log_level: INFO

Standard library and rich only: this module belongs to the framework-free core.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import TextIO

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

LOGGER_NAMES = ("bmlt_assets", "bmlt_resources")
PLAIN_FORMAT = "%(asctime)s %(levelname)-8s %(name)s.%(funcName)s: %(message)s"
TIME_FORMAT = "%H:%M:%S"
ARG_STYLE = "bold cyan"
WHERE_STYLE = "magenta"

# One %-conversion: "%s", "%5.2f", "%(name)r", "%%". A "*" width is not matched, so a message
# using one falls back to unhighlighted text.
_CONVERSION = re.compile(r"%(?:\([^)]*\))?[#0 +-]*\d*(?:\.\d+)?[hlL]?[diouxXeEfFgGcrsa%]")


def colour_enabled(stream: TextIO) -> bool:
    """Whether log lines written to `stream` get colour: a terminal, unless NO_COLOR is set."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    if os.environ.get("TERM", "").lower() in ("dumb", "unknown"):
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def setup_logging(level: int | str = "INFO", stream: TextIO | None = None) -> None:
    """Send the bmlt loggers' records at `level` and above to `stream` (default: sys.stderr).

    Calling it again replaces the handler it added before, so lines are never duplicated."""
    stream = sys.stderr if stream is None else stream
    if isinstance(level, str):
        level = level.upper()
    if colour_enabled(stream):
        console = Console(file=stream, force_terminal=True, no_color=False, highlight=False)
        handler: logging.Handler = _RichHandler(
            console=console,
            show_path=False,  # the formatter puts logger.function in front of the message instead
            markup=True,  # only _RichArgsFormatter's markup: everything else in a message is escaped
            rich_tracebacks=True,
            omit_repeated_times=False,
            log_time_format=TIME_FORMAT,
        )
        handler.setFormatter(_RichArgsFormatter())
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT, datefmt=TIME_FORMAT))
    handler._bmlt_handler = True  # type: ignore[attr-defined]  # marks the handler for the next call

    for name in LOGGER_NAMES:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_bmlt_handler", False)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False  # a handler on the root logger would print every line twice


class _RichHandler(RichHandler):
    """RichHandler whose formatting errors (a bad %-call) go to handleError, as in StreamHandler,
    instead of raising out of the logging call."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            super().emit(record)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


class _RichArgsFormatter(logging.Formatter):
    """Rich markup for RichHandler: ``logger.function: message`` with each argument in ARG_STYLE.

    It never changes the record, so other handlers (Dagster's, pytest's) see it as logged."""

    def format(self, record: logging.LogRecord) -> str:
        text = self.formatMessage(record)
        if record.stack_info:
            text += "\n" + escape(self.formatStack(record.stack_info))
        return text  # exceptions: RichHandler renders record.exc_info itself (rich_tracebacks)

    def formatMessage(self, record: logging.LogRecord) -> str:
        where = escape(f"{record.name}.{record.funcName}")
        return f"[{WHERE_STYLE}]{where}[/]: {_highlighted_message(record)}"


def _highlighted_message(record: logging.LogRecord) -> str:
    """record.getMessage() as rich markup: the template escaped, each argument wrapped in ARG_STYLE."""
    template, args = str(record.msg), record.args
    if not args:
        return escape(template)
    try:
        return _highlight(template, args)
    except (TypeError, ValueError, KeyError, IndexError):
        return escape(record.getMessage())  # a malformed call then fails the usual way


def _highlight(template: str, args: tuple | Mapping) -> str:
    parts: list[str] = []
    position = 0
    used = 0
    for match in _CONVERSION.finditer(template):
        parts.append(escape(template[position : match.start()]))
        position = match.end()
        conversion = match.group()
        if conversion == "%%":
            parts.append("%")
            continue
        if isinstance(args, Mapping):
            value = conversion % args
        else:
            value = conversion % (args[used],)
            used += 1
        parts.append(f"[{ARG_STYLE}]{escape(value)}[/]")
    if not isinstance(args, Mapping) and used != len(args):
        raise TypeError("not all arguments converted during string formatting")
    parts.append(escape(template[position:]))
    return "".join(parts)
