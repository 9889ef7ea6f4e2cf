"""The daily partitions as typed data, each owning its format on disk.

- :class:`DaySnapshots` (``orderbook_snapshots``): one UTC day's validated snapshots, the rows
  quarantined with their reason and the intervals the source lost: files, not a folder
  (:class:`SnapshotFiles`), with :class:`SnapshotVerdict`, the stored verdict of its check. A day
  of every update's books is about a gigabyte, so it is written (``DaySnapshots.write``) and read
  (``SnapshotFiles.clean_batches``) a row group at a time, never held whole.
- :class:`DayTensors` (``book_tensors``): the day on the cadence grid: the base array, mids, raw
  best quotes, validity and timestamps as memory-mappable ``.npy`` files, and a ``meta.json``
  that says what the axes, channels and levels are.
- :class:`DayReturns` (``forward_returns``): forward log returns of every horizon and symbol and
  the trailing volatility. :meth:`DayReturns.of` is the next-day join: a horizon that runs past
  midnight reads the next day's first steps when that day exists, and is NaN until it does.

A writer fills a commit folder with ``save`` (``core.files.atomic_directory`` adds the file
hashes to its meta.json); a reader opens one with ``load`` (memory-mapped). :func:`label_days`
gives consecutive days with their labels, as the three assets in a row would.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl

from bmlt_assets.core.book import snapshot_schema, validate_parts
from bmlt_assets.core.config import PlatformConfig, RepresentationConfig
from bmlt_assets.core.files import (
    META,
    CorruptPartitionError,
    ParquetStream,
    StoredPath,
    load_arrays,
    local_files,
    parquet_batches,
    read_meta,
    read_parquet,
    readable,
    save_arrays,
    write_json,
)
from bmlt_assets.core.labels import forward_log_returns, trailing_volatility
from bmlt_assets.core.representation import (
    CHANNELS,
    QUOTE_FIELDS,
    QUOTE_LEVELS,
    day_tensors_from_frame,
    day_tensors_from_parquet,
    has_current_quotes,
    level_names,
)


@dataclass(frozen=True)
class SnapshotFiles:
    """Where one day of ``orderbook_snapshots`` lives (``StorageResource.snapshot_files``)."""

    clean: StoredPath  # the validated snapshots, zstd Parquet
    quarantine: StoredPath  # the malformed rows with their reason (absent when there are none)
    gaps: StoredPath  # the source's recorded gaps of the day, JSON (book_tensors masks them)
    verdict: StoredPath  # the stored verdict of snapshots_are_sound (absent until checked)

    def recorded_gaps(self) -> list[dict[str, Any]]:
        """The gaps stored with the partition (none for partitions older than the gap files)."""
        return read_json(self.gaps) if self.gaps.exists() else []

    @contextmanager
    def clean_batches(self) -> Iterator[Iterator[pl.DataFrame]]:
        """The clean rows in their stored order, a batch of a few MB at a time (a day of every
        update's books is about a gigabyte: it is never read whole)."""
        with readable(self.clean) as local:
            yield parquet_batches(local)

    def quarantine_reasons(self) -> pl.Series:
        """The ``reason`` of each quarantined row (its column alone is read)."""
        if not self.quarantine.exists():
            return pl.Series("reason", [], dtype=pl.String)
        return read_parquet(self.quarantine, ["reason"])["reason"]


@dataclass(frozen=True)
class DaySnapshots:
    """One UTC day of snapshots of every configured symbol, validated (``core.book``) and written to
    its :class:`SnapshotFiles` as they are validated: what was kept, per symbol, and quarantined."""

    date: dt.date
    rows_per_symbol: dict[str, int]
    quarantined: int  # rows, each stored with its ``reason``
    gaps: list[dict[str, Any]]  # intervals the source lost (recorder reconnects, an archive's empty day)

    @classmethod
    def write(
        cls,
        date: dt.date,
        parts: Sequence[StoredPath | pl.DataFrame],
        gaps: list[dict[str, Any]],
        files: SnapshotFiles,
        symbols: list[str],
        depth: int,
    ) -> DaySnapshots:
        """Validate a source's parts of the day (``BookSource.snapshot_parts``: those of ``symbols``,
        at ``depth`` levels) into ``files``, streamed: the parts are read a row group at a time
        and each file is written a row group at a time and published whole (``validate_parts``)."""
        schema = snapshot_schema(depth)
        with (
            local_files(parts) as local,
            ParquetStream(files.clean, schema) as clean,
            ParquetStream(files.quarantine, schema | {"reason": pl.String()}) as quarantine,
        ):
            validated = validate_parts(local, clean.write, quarantine.write, symbols, depth)
            clean.publish()
            if validated.quarantined:
                quarantine.publish()
            else:  # a clean re-run must not inherit an earlier run's quarantine
                quarantine.discard()
                files.quarantine.unlink(missing_ok=True)
        # Stored beside the partition so that book_tensors (even in a later run) masks the lost intervals.
        write_json(gaps, files.gaps)
        # New content is unchecked: an earlier verdict must neither block nor vouch for it.
        files.verdict.unlink(missing_ok=True)
        return cls(date, validated.rows_per_symbol, validated.quarantined, gaps)

    def summary(self) -> dict[str, Any]:
        """The day's numbers: rows kept and quarantined, recorded gaps and their length."""
        return {
            "date": self.date.isoformat(),
            "rows": sum(self.rows_per_symbol.values()),
            "quarantined": self.quarantined,
            "recorded_gaps": len(self.gaps),
            "gap_seconds": round(sum(gap["to_ns"] - gap["from_ns"] for gap in self.gaps) / 1e9, 3),
        }


@dataclass(frozen=True)
class SnapshotVerdict:
    """What ``snapshots_are_sound`` said of a day, stored: its blocking stops ``book_tensors`` in
    the same run only, the stored verdict in later runs too."""

    check: str
    passed: bool
    failures: list[str]

    def save(self, files: SnapshotFiles) -> None:
        write_json({"check": self.check, "passed": self.passed, "failures": self.failures}, files.verdict)

    @classmethod
    def load(cls, files: SnapshotFiles) -> SnapshotVerdict | None:
        """The stored verdict, or None when the day was not checked (yet)."""
        if not files.verdict.exists():
            return None
        return cls(**read_json(files.verdict))


class OutdatedPartitionError(CorruptPartitionError):
    """A partition written by an earlier version lacks what this one reads: re-materialize it."""


@dataclass(frozen=True)
class DayTensors:
    """One UTC day on the cadence grid (``book_tensors``)."""

    date: dt.date
    base: np.ndarray  # (S, L, 4, K) float32: the representation's levels, 4 channels, K symbols
    mids: np.ndarray  # (S, K) float64, NaN where not valid
    quotes: np.ndarray  # (S, len(QUOTE_FIELDS), K) float32: the raw top quotes (costs, the order-book baselines)
    valid: np.ndarray  # (S, K) bool: a fresh book, outside recorded gaps
    timestamps: np.ndarray  # (S,) int64 ns of the grid
    symbols: list[str]
    cadence_ms: int
    representation: RepresentationConfig

    ARRAYS: ClassVar[tuple[str, ...]] = ("base", "mids", "quotes", "valid", "timestamps")

    @classmethod
    def from_snapshots(
        cls, path: Path, date: dt.date, config: PlatformConfig, gaps: list[dict[str, Any]] | None = None
    ) -> DayTensors:
        """From a stored ``orderbook_snapshots`` partition, streamed row group by row group."""
        d = config.data
        arrays = day_tensors_from_parquet(
            path, date, d.symbols, d.cadence_ms, d.staleness_ms, config.representation, gaps
        )
        return cls(date, **arrays, symbols=d.symbols, cadence_ms=d.cadence_ms, representation=config.representation)

    @classmethod
    def from_frame(
        cls, snapshots: pl.DataFrame, date: dt.date, config: PlatformConfig, gaps: list[dict[str, Any]] | None = None
    ) -> DayTensors:
        """From snapshots in memory."""
        d = config.data
        arrays = day_tensors_from_frame(
            snapshots, date, d.symbols, d.cadence_ms, d.staleness_ms, config.representation, gaps
        )
        return cls(date, **arrays, symbols=d.symbols, cadence_ms=d.cadence_ms, representation=config.representation)

    def meta(self) -> dict[str, Any]:
        return {
            "date": self.date.isoformat(),
            "shape": list(self.base.shape),
            "axes": ["step", "level", "channel", "symbol"],
            "symbols": self.symbols,
            "channels": list(CHANNELS),
            "quote_fields": list(QUOTE_FIELDS),  # quotes.npy (step, field, symbol): the raw top levels
            "levels": level_names(self.representation),
            "cadence_ms": self.cadence_ms,
            "representation": self.representation.model_dump(),
        }

    def save(self, folder: Path) -> None:
        save_arrays(folder, {name: getattr(self, name) for name in self.ARRAYS})
        write_json(self.meta(), folder / META)

    @classmethod
    def load(cls, folder: Path) -> DayTensors:
        """A committed partition, its arrays memory-mapped."""
        meta = read_meta(folder)
        if not has_current_quotes(folder):
            raise OutdatedPartitionError(
                f"book_tensors for {meta['date']} predates the stored quotes of the top {QUOTE_LEVELS} levels "
                "(quotes.npy) that costs and the order-book baselines read; re-materialize it"
            )
        arrays = load_arrays(folder, list(cls.ARRAYS), mmap=True)
        representation = RepresentationConfig.model_validate(meta["representation"])
        return cls(
            dt.date.fromisoformat(meta["date"]),
            **arrays,
            symbols=meta["symbols"],
            cadence_ms=meta["cadence_ms"],
            representation=representation,
        )

    def summary(self) -> dict[str, Any]:
        """The day's numbers: grid steps and the share of them valid, for all symbols and each."""
        return {
            "date": self.date.isoformat(),
            "steps": int(self.valid.shape[0]),
            "valid_fraction": float(self.valid.all(axis=1).mean()),
            **{f"valid[{s}]": float(self.valid[:, k].mean()) for k, s in enumerate(self.symbols)},
        }


@dataclass(frozen=True)
class DayReturns:
    """One UTC day's labels (``forward_returns``)."""

    date: dt.date
    returns: np.ndarray  # (S, H, K) forward log return per horizon and symbol, NaN across gaps or missing data
    volatility: np.ndarray  # (S, K) trailing per-step volatility, known at t
    horizons_s: list[int]
    symbols: list[str]
    next_day_used: bool  # False: the horizons that cross midnight are NaN until the next day exists

    ARRAYS: ClassVar[tuple[str, ...]] = ("returns", "volatility")

    @classmethod
    def of(cls, today: DayTensors, tomorrow: DayTensors | None, config: PlatformConfig) -> DayReturns:
        """The labels of ``today``: its steps joined with the first steps of ``tomorrow`` (the next
        day, when it exists), so that horizons running past midnight see where they end."""
        horizons, mids, valid = config.horizon_steps, today.mids, today.valid
        if tomorrow is not None:
            mids = np.concatenate([mids, tomorrow.mids[: max(horizons)]])
            valid = np.concatenate([valid, tomorrow.valid[: max(horizons)]])
        returns = forward_log_returns(mids, valid, horizons, len(today.mids))
        volatility = trailing_volatility(today.mids, today.valid, config.vol_lookback_steps)
        return cls(today.date, returns, volatility, config.labels.horizons_s, config.data.symbols, tomorrow is not None)

    def save(self, folder: Path) -> None:
        save_arrays(folder, {"returns": self.returns, "volatility": self.volatility})
        meta = {
            "date": self.date.isoformat(),
            "horizons_s": self.horizons_s,
            "symbols": self.symbols,
            "next_day_used": self.next_day_used,
        }
        write_json(meta, folder / META)

    @classmethod
    def load(cls, folder: Path) -> DayReturns:
        meta = read_meta(folder)
        arrays = load_arrays(folder, list(cls.ARRAYS), mmap=True)
        date = dt.date.fromisoformat(meta["date"])
        return cls(
            date, **arrays, horizons_s=meta["horizons_s"], symbols=meta["symbols"], next_day_used=meta["next_day_used"]
        )

    def summary(self, target: str) -> dict[str, Any]:
        """The day's numbers for the target symbol: the labelled share and the spread of returns per horizon."""
        k = self.symbols.index(target)
        row: dict[str, Any] = {"date": self.date.isoformat()}
        for i, horizon in enumerate(self.horizons_s):
            r = self.returns[:, i, k]
            row[f"labelled[{horizon}s]"] = float(np.isfinite(r).mean())
            row[f"std_bps[{horizon}s]"] = float(np.nanstd(r) * 1e4)
        return row


@dataclass(frozen=True)
class LabelledDay:
    """A day's tensors with its labels: what ``training_dataset`` joins, day after day."""

    tensors: DayTensors
    returns: DayReturns


def label_days(days: list[DayTensors], config: PlatformConfig) -> list[LabelledDay]:
    """Each day labelled with the next (when it is the next calendar day), as ``forward_returns``
    labels each partition once both are materialized."""
    following = {day.date - dt.timedelta(days=1): day for day in days}
    return [LabelledDay(day, DayReturns.of(day, following.get(day.date), config)) for day in days]


def read_json(path: StoredPath) -> Any:
    return json.loads(path.read_text())
