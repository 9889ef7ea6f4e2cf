"""``bmlt import``: recordings in either accepted format rebuilt into landing-schema books.

``binance-ws`` files (raw WebSocket depth streams and REST snapshots) go through Binance's sync
rules (``binance.sync``), tardis.dev ``incremental_book_L2`` CSVs through their row groups, both
into the one book engine (``book_engine``); tardis.dev ``book_snapshot_25`` CSVs already hold books.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import polars as pl

from bmlt_assets.core.book import snapshot_schema
from bmlt_assets.core.sources.binance.sync import (
    AmbiguousSnapshot,
    BookBuilder,
    ImportSummary,
    LevelError,
    MarketMismatch,
    Progress,
    RecordingError,
    TruncatedRecording,
    read_recording,
)
from bmlt_assets.core.sources.book_engine import BookSink, TimeSteps
from bmlt_assets.core.sources.tardis import incremental_books, tardis_book_snapshots

log = logging.getLogger(__name__)

IMPORT_FORMATS = ("binance-ws", "tardis-incremental", "tardis-book-snapshot")


def _replay(builder: BookBuilder, path: Path, progress: Progress | None) -> None:
    """Feed one recording; what it holds that the builder cannot use becomes a RecordingError
    naming the file (and the line)."""
    books_before, fed_before, line = builder.summary.snapshots, builder.fed, 0
    steps = TimeSteps(path)

    def counted() -> Iterator[tuple[int, dict[str, Any]]]:
        nonlocal line
        for message in read_recording(path, progress):
            line += 1
            steps.see(message[0], line)
            yield message

    try:
        builder.feed(counted())
    except TruncatedRecording as error:
        books = builder.summary.snapshots - books_before
        damage = {"file": str(path), "lines": error.lines, "books": books, "reason": error.reason}
        builder.summary.damaged.append(damage)
        log.debug("%s; keeping the %s books rebuilt before the damage", error, books)
    except MarketMismatch as error:
        raise RecordingError(f"{path} {error}") from None
    except AmbiguousSnapshot as error:
        raise RecordingError(f"{path}:{line}: {error}") from None
    except LevelError as error:
        raise RecordingError(
            f"{path}:{error.message - fed_before}: {error}: pass a recording of Binance depth messages, whose "
            'levels are ["price", "quantity"] pairs'
        ) from None
    except RecordingError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        detail = f"no {error}" if isinstance(error, KeyError) else str(error)
        raise RecordingError(
            f"{path}:{line}: not a Binance depth update or REST depth snapshot ({detail}): pass a recording of "
            "combined depth streams (<symbol>@depth) and REST snapshots"
        ) from None
    finally:
        if steps.steps:
            builder.summary.time_steps_back.append(steps.as_dict())


def import_recordings(
    files: list[Path],
    fmt: str,
    market: str,
    levels: int,
    progress: Progress | None = None,
    sink: BookSink | None = None,
) -> tuple[pl.DataFrame, ImportSummary]:
    """Snapshots of ``levels`` levels from recordings in ``fmt``, and what the import saw. With a
    ``sink``, the books go to it a batch at a time as the engine emits them (``bmlt import`` writes
    them so, holding none) and the frame returned is empty.

    Raises RecordingError for a file that cannot be imported as asked, or for recordings that give
    no book at all; a damaged end is listed in the summary's ``damaged`` instead."""
    if fmt not in IMPORT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(IMPORT_FORMATS)}")
    if fmt == "binance-ws":
        builder = BookBuilder(market, levels, sink=sink)
        for path in files:
            log.info("replaying %s", path)
            _replay(builder, path, progress)
        if not builder.summary.snapshots and not builder.summary.damaged:
            names = ", ".join(str(path) for path in files)
            if not builder.rest_snapshots:
                raise RecordingError(
                    f"{names}: no REST depth snapshot ('lastUpdateId' line), so no book can be rebuilt from the "
                    "depth updates: pass a recording that holds one (bmlt record writes them)"
                )
            raise RecordingError(
                f"{names}: no book reached {levels} levels per side (the deepest had {builder.deepest}): "
                f"lower --levels to {builder.deepest} or less"
            )
        log.info(
            "rebuilt %s books from %s depth updates, %s gap(s)",
            builder.summary.snapshots,
            builder.summary.updates_applied,
            len(builder.summary.gaps),
        )
        return builder.frame(), builder.summary
    summary = ImportSummary()
    frames = []
    if fmt == "tardis-incremental":
        for path in files:
            log.info("replaying %s", path)
            books, read_summary = incremental_books(path, None, market, levels, sink=sink)
            frames.append(books)
            for name in ("snapshots", "updates_applied", "crossed"):
                setattr(summary, name, getattr(summary, name) + getattr(read_summary, name))
            _widen(summary, read_summary.first_receive_ns, read_summary.last_receive_ns)
            summary.time_steps_back += read_summary.time_steps_back
        if not summary.snapshots:
            raise RecordingError(
                f"{', '.join(str(path) for path in files)}: no book of {levels} levels per side (no row, no snapshot "
                "row, or books too shallow): pass a day's incremental_book_L2 file, or lower --levels"
            )
        return pl.concat(frames), summary

    def counted(books: pl.DataFrame) -> None:
        summary.snapshots += books.height
        summary.crossed += int((books["bid_px"].arr.first() >= books["ask_px"].arr.first()).sum())
        # receive_ts is Int64 (snapshot schema): its min/max are ints.
        _widen(summary, cast(int, books["receive_ts"].min()), cast(int, books["receive_ts"].max()))
        (sink or frames.append)(books)

    for path in files:
        books, steps = tardis_book_snapshots(path, levels, sink=counted)
        summary.time_steps_back += steps
    if not summary.snapshots:
        names = ", ".join(str(path) for path in files)
        raise RecordingError(
            f"{names}: no rows below the header: nothing to import; pass a day's book_snapshot_25 file"
        )
    return (pl.concat(frames) if frames else pl.DataFrame(schema=snapshot_schema(levels))), summary


def _widen(summary: ImportSummary, first_ns: int | None, last_ns: int | None) -> None:
    """Stretch the summary's first and last receive times to cover ``first_ns`` .. ``last_ns``."""
    for ns in (first_ns, last_ns):
        if ns is not None:
            summary.first_receive_ns = min(summary.first_receive_ns or ns, ns)
            summary.last_receive_ns = max(summary.last_receive_ns or ns, ns)
