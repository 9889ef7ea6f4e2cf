"""Where assets live on disk.

Layout under ``<base_dir>/<config name>/``:

    snapshots/date=YYYY-MM-DD.parquet        orderbook_snapshots (zstd Parquet)
    quarantine/date=YYYY-MM-DD.parquet       malformed snapshots with their reason
    snapshot_gaps/date=YYYY-MM-DD.json       the source's recorded gaps of that day (book_tensors masks them)
    snapshot_checks/date=YYYY-MM-DD.json     snapshots_are_sound's verdict (book_tensors refuses a failed day)
    tensors/date=YYYY-MM-DD/                 book_tensors (.npy, memory-mappable, + meta.json)
    returns/date=YYYY-MM-DD/                 forward_returns
    dataset/                                 training_dataset
    model/                                   trained_model checkpoint
    report/                                  evaluation_report

Real data arrives in ``<base_dir>/landing/<market>/date=YYYY-MM-DD/*.parquet`` (shared by all
configs), in the snapshot schema of ``bmlt_assets.core.book``.

Writes go through the atomic helpers of ``bmlt_assets.core.files``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import polars as pl

from bmlt_assets.core.book import trim_depth
from bmlt_assets.core.files import CorruptPartitionError, MissingPartitionError, integrity_problem, landing_root


class StorageResource(dg.ConfigurableResource):
    """Paths of every asset for one config; local folders (object stores via a later issue)."""

    base_dir: str
    config_name: str

    @property
    def root(self) -> Path:
        return Path(self.base_dir) / self.config_name

    def snapshots(self, date: dt.date) -> Path:
        return self.root / "snapshots" / f"date={date.isoformat()}.parquet"

    def quarantine(self, date: dt.date) -> Path:
        return self.root / "quarantine" / f"date={date.isoformat()}.parquet"

    def snapshot_gaps(self, date: dt.date) -> Path:
        return self.root / "snapshot_gaps" / f"date={date.isoformat()}.json"

    def snapshot_check(self, date: dt.date) -> Path:
        return self.root / "snapshot_checks" / f"date={date.isoformat()}.json"

    def tensors(self, date: dt.date) -> Path:
        return self.root / "tensors" / f"date={date.isoformat()}"

    def returns(self, date: dt.date) -> Path:
        return self.root / "returns" / f"date={date.isoformat()}"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def require(self, path: Path, asset: str, date: dt.date | None = None) -> Path:
        """``path`` if it was fully written and is readable, else an error naming what to materialize."""
        marker = path / "meta.json" if path.suffix == "" else path
        if marker.exists():
            problem = integrity_problem(path)
            if problem is None:
                return path
        if date is None:
            hint = f"dagster asset materialize -m bmlt_assets.definitions --select {asset}"
        else:
            hint = (
                f"dagster asset materialize -m bmlt_assets.definitions --select {asset} --partition {date.isoformat()}"
            )
        where = f" for {date.isoformat()}" if date else ""
        if marker.exists():
            raise CorruptPartitionError(f"{asset}{where} at {path} is corrupt ({problem}); re-materialize it: {hint}")
        raise MissingPartitionError(f"{asset}{where} is missing at {path}; materialize it first: {hint}")


class LandingZoneResource(dg.ConfigurableResource):
    """Real snapshots recorded or imported into the landing zone (see ``bmlt record``/``import``);
    a :class:`~bmlt_assets.core.sources.BookSource` without an oracle."""

    base_dir: str
    market: str
    depth: int

    def snapshots(self, date: dt.date, symbols: list[str]) -> pl.DataFrame:
        folder = landing_root(self.base_dir, self.market) / f"date={date.isoformat()}"
        files = sorted(folder.glob("*.parquet"))  # unfinished writes are '.<name>.tmp-*': never matched
        if not files:
            raise MissingPartitionError(
                f"no landing files for {date.isoformat()} in {folder}; record that day with "
                "`bmlt record --config configs/binance.yaml` or import a recording with `bmlt import`"
            )
        frame = pl.concat([pl.read_parquet(f) for f in files], how="vertical")
        return trim_depth(frame.filter(pl.col("symbol").is_in(symbols)), self.depth)

    def gaps(self, date: dt.date, symbols: list[str]) -> list[dict]:
        """Intervals the recorder lost (``*.gaps.json`` beside its files; see core/recorder.py)."""
        folder = landing_root(self.base_dir, self.market) / f"date={date.isoformat()}"
        found = [gap for path in sorted(folder.glob("*.gaps.json")) for gap in json.loads(path.read_text())]
        return [gap for gap in found if gap["symbol"] in symbols]

    def oracle(self) -> None:
        """Real markets hide their generating process: no oracle."""
        return None
