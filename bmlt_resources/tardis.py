"""tardis.dev's historical archive as a book source: download a day's files, rebuild its books.

Downloads go through the official ``tardis-dev`` client (``download_datasets``) into a cache
folder laid out like the archive. A file is used only once verified whole, by the pass that
parses it; a damaged or cut one is deleted and fetched again. The API key is read from
``$TARDIS_API_KEY`` at download time and handed to the client only: it is never a resource
field, so it never shows in the UI, the run's config or its logs.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import urllib.error
from pathlib import Path

import dagster as dg
import polars as pl
from tardis_dev import download_datasets

from bmlt_assets.core.book import snapshot_schema
from bmlt_assets.core.files import StoredPath, atomic_write, storage_root
from bmlt_assets.core.sources.book_engine import time_steps_warning
from bmlt_assets.core.sources.tardis import (
    API_KEY_VARIABLE,
    DEFAULT_ENDPOINT,
    DamagedFile,
    DownloadState,
    TardisError,
    client_file_name,
    dataset_path,
    dataset_url,
    discard_download,
    download_state,
    empty_day_gap,
    exchange_symbol,
    incremental_books,
    note_verified,
    remove_unfinished,
    require_access,
    snapshot25_books,
)

log = logging.getLogger(__name__)
DOWNLOAD_ROUNDS = 3  # a file that is still damaged after this many fetches fails the day


class TardisArchiveResource(dg.ConfigurableResource):
    """A :class:`~bmlt_assets.core.sources.BookSource` over tardis.dev's archive; no oracle."""

    exchange: str  # binance | binance-futures
    data_type: str  # incremental_book_L2 | book_snapshot_25
    market: str  # spot | usdm: the sync rules the rebuilt books follow
    depth: int
    download_dir: str
    # With storage.uri s3://: <storage.uri>/tardis, the archive's layout again. A verified download
    # is kept there too, and a file missing here is taken from there first, so that a pod
    # preempted mid-day resumes on another node without downloading again.
    mirror: str | None = None
    mirror_endpoint_url: str | None = None
    endpoint: str = DEFAULT_ENDPOINT
    keep_every_ms: int = 0  # the last book per interval (the cadence grid's rate); 0 keeps every update

    def snapshots(self, date: dt.date, symbols: list[str]) -> pl.DataFrame:
        frames = self.snapshot_parts(date, symbols)
        return pl.concat(frames) if frames else pl.DataFrame(schema=snapshot_schema(self.depth))

    def snapshot_parts(self, date: dt.date, symbols: list[str]) -> list[pl.DataFrame]:
        """Each symbol's books of the day (one per ``keep_every_ms`` interval: small, in memory)."""
        frames = []
        for symbol, (path, state) in self.download(date, symbols).items():
            if state.empty:
                continue  # gaps() reports the day as lost, which fails the day's check
            frames.append(self._books(date, symbol, path, state))
        return frames

    def _books(self, date: dt.date, symbol: str, path: Path, state: DownloadState) -> pl.DataFrame:
        """The books of one symbol's file. Parsing reads the gzip stream to its end, so it also
        verifies the file: books come back only from a file that was whole, and a file found
        damaged is deleted and fetched again (a fresh copy is parsed, up to DOWNLOAD_ROUNDS)."""
        copies = 1
        while True:
            try:
                books = self._parse(date, symbol, path)
            except DamagedFile as error:
                discard_download(path)
                if copies == DOWNLOAD_ROUNDS:
                    raise TardisError(
                        f"tardis.dev served damaged files {DOWNLOAD_ROUNDS} times ({self.url(date, symbol)}: "
                        f"{error.problem}); try again later"
                    ) from None
                log.warning("%s; fetching it again from the archive", error)
                copies += 1
                # Not from the mirror: the damaged copy may have come from there.
                path, state = self.download(date, [symbol], use_mirror=False)[symbol]
                continue
            if not state.verified:
                note_verified(path)
                self._to_mirror(date, symbol)
            return books

    def _parse(self, date: dt.date, symbol: str, path: Path) -> pl.DataFrame:
        if self.data_type == "book_snapshot_25":
            return snapshot25_books(path, symbol, self.depth, self.keep_every_ms)
        books, summary = incremental_books(path, symbol, self.market, self.depth, self.keep_every_ms)
        log.info("%s %s: %s books from %s updates", date, symbol, books.height, summary.updates_applied)
        for step in summary.time_steps_back:
            log.warning(time_steps_warning(step))
        return books

    def gaps(self, date: dt.date, symbols: list[str]) -> list[dict]:
        """A symbol whose day the archive served as an empty file is lost for the whole day."""
        return [
            empty_day_gap(date, symbol, self.url(date, symbol))
            for symbol, (_, state) in self.download(date, symbols).items()
            if state.empty
        ]

    def oracle(self) -> None:
        """Real markets hide their generating process: no oracle."""
        return None

    def url(self, date: dt.date, symbol: str) -> str:
        return dataset_url(self.endpoint, self.exchange, self.data_type, date, exchange_symbol(symbol))

    def cached(self, date: dt.date, symbol: str) -> Path:
        return Path(self.download_dir) / dataset_path(self.exchange, self.data_type, date, exchange_symbol(symbol))

    def download(
        self, date: dt.date, symbols: list[str], use_mirror: bool = True
    ) -> dict[str, tuple[Path, DownloadState]]:
        """The file of each symbol for ``date``, taking those not cached from the mirror (unless not
        ``use_mirror``) or the archive; each is inspected (``inspect_download``) and used only once
        verified whole (``_books``)."""
        api_key = os.environ.get(API_KEY_VARIABLE, "")  # read now, passed to the client only
        require_access([date], bool(api_key))
        states = {symbol: download_state(self.cached(date, symbol)) for symbol in symbols}
        fetched = {symbol for symbol, state in states.items() if state.problem}
        for symbol in fetched if use_mirror else ():
            states[symbol] = self._from_mirror(date, symbol)
        for _ in range(DOWNLOAD_ROUNDS):
            missing = [symbol for symbol, state in states.items() if state.problem]
            if not missing:
                break
            for symbol in missing:
                remove_unfinished(self.cached(date, symbol))
            log.info("downloading %s %s %s for %s", self.exchange, self.data_type, date, missing)
            self._fetch(date, missing, api_key)
            states |= {symbol: download_state(self.cached(date, symbol)) for symbol in missing}
        damaged = {symbol: state.problem for symbol, state in states.items() if state.problem}
        if damaged:
            where = "; ".join(f"{self.url(date, symbol)}: {problem}" for symbol, problem in damaged.items())
            raise TardisError(f"tardis.dev served damaged files {DOWNLOAD_ROUNDS} times ({where}); try again later")
        for symbol in fetched:
            if states[symbol].verified:  # a longer file is mirrored once parsing verified it
                self._to_mirror(date, symbol)
        return {symbol: (self.cached(date, symbol), state) for symbol, state in states.items()}

    def mirrored(self, date: dt.date, symbol: str) -> StoredPath | None:
        if self.mirror is None:
            return None
        return storage_root(self.mirror, self.mirror_endpoint_url) / dataset_path(
            self.exchange, self.data_type, date, exchange_symbol(symbol)
        )

    def _from_mirror(self, date: dt.date, symbol: str) -> DownloadState:
        """The file from the mirror when it is there (verified again here), else as it is locally."""
        remote, local = self.mirrored(date, symbol), self.cached(date, symbol)
        if remote is not None and remote.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(local, lambda temporary: _copy(remote, temporary))
            log.info("%s %s: taken from the mirror %s", date, symbol, remote)
        return download_state(local)

    def _to_mirror(self, date: dt.date, symbol: str) -> None:
        """Copy a file just verified to the mirror (replacing a damaged copy there, if any)."""
        remote = self.mirrored(date, symbol)
        if remote is not None:
            atomic_write(remote, lambda temporary: shutil.copyfile(self.cached(date, symbol), temporary))

    def _fetch(self, date: dt.date, symbols: list[str], api_key: str) -> None:
        try:
            download_datasets(
                exchange=self.exchange,
                data_types=[self.data_type],
                symbols=[exchange_symbol(symbol) for symbol in symbols],
                from_date=date.isoformat(),
                to_date=(date + dt.timedelta(days=1)).isoformat(),  # exclusive: this one day
                api_key=api_key,
                download_dir=self.download_dir,
                endpoint=self.endpoint,
                get_filename=client_file_name,
            )
        except urllib.error.HTTPError as error:
            # The client's HTTPError carries the URL and the archive's answer, never the request headers.
            advice = {
                401: f"check {API_KEY_VARIABLE}",
                403: f"check that the plan of {API_KEY_VARIABLE} covers {self.exchange} {self.data_type} on {date}",
                404: "check the symbols, the exchange and the data type",
            }.get(error.code, "try again later")
            raise TardisError(f"tardis.dev answered HTTP {error.code} for {error.url}: {advice}") from None


def _copy(source: StoredPath, target: Path) -> None:
    with source.open("rb") as reading, open(target, "wb") as writing:
        shutil.copyfileobj(reading, writing, 1 << 20)
