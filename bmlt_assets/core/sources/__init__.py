"""Where order books come from: the one interface every book source implements.

The embedded synthetic market, the landing zone of recorded or imported books, and archives all
give a day's snapshots (schema of ``bmlt_assets.core.book``) and the intervals their recorder
lost. Only a simulation knows the truth, so only it offers an :class:`Oracle`.

A day's snapshots come in parts: frames in memory, or Parquet files that ``orderbook_snapshots``
reads a row group at a time (``core.book.validate_parts``), so that a day of every update's books
in the landing zone is never read whole.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Protocol

import numpy as np
import polars as pl

from bmlt_assets.core.files import StoredPath

# (horizon index, sample steps, their edges (N, C-1)) -> (N, C): an oracle at a dataset's samples
OracleProbabilities = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


class Oracle(Protocol):
    def oracle_at(self, symbol: str, timestamps_ns: np.ndarray, horizon: int, edges: np.ndarray) -> np.ndarray:
        """Bayes-optimal class probabilities (N, C) for ``symbol`` at ``timestamps_ns``, ``horizon`` steps
        ahead, for class edges (N, C-1) in log-return units."""
        ...


class BookSource(Protocol):
    def snapshots(self, date: dt.date, symbols: list[str]) -> pl.DataFrame:
        """Every snapshot of ``symbols`` received on ``date`` (UTC), in memory."""
        ...

    def snapshot_parts(self, date: dt.date, symbols: list[str]) -> list[StoredPath | pl.DataFrame]:
        """The same snapshots in parts, not yet sorted or validated: frames, or Parquet files in the
        snapshot schema that may also hold other symbols and more levels."""
        ...

    def gaps(self, date: dt.date, symbols: list[str]) -> list[dict]:
        """Intervals the recorder lost: ``symbol``, ``from_ns``, ``to_ns`` and a ``reason``."""
        ...

    def oracle(self) -> Oracle | None:
        """The Bayes-optimal predictor, where the source knows the generating process."""
        ...
