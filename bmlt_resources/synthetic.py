"""The embedded synthetic market as a book source (the model itself: ``bmlt_assets.core.sources.synthetic``)."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import polars as pl

from bmlt_assets.core.config import PlatformConfig, SyntheticConfig
from bmlt_assets.core.sources.synthetic import SyntheticMarket


class SyntheticMarketResource(dg.ConfigurableResource):
    """The offline default book source (a :class:`~bmlt_assets.core.sources.BookSource`): deterministic
    books plus oracle probabilities."""

    seed: int
    cadence_ms: int
    depth: int
    params_json: str  # SyntheticConfig as JSON: resources take flat, typed config
    symbols: list[str] = []  # what the models see: the oracle filters every one of their books

    @classmethod
    def for_config(cls, config: PlatformConfig) -> SyntheticMarketResource:
        """The config's synthetic market, its oracle seeing every configured symbol."""
        data = config.data
        return cls(
            seed=config.seed,
            cadence_ms=data.cadence_ms,
            depth=data.depth,
            params_json=data.synthetic.model_dump_json(),
            symbols=data.symbols,
        )

    def market(self) -> SyntheticMarket:
        params = SyntheticConfig.model_validate_json(self.params_json)
        return SyntheticMarket(params, self.seed, self.cadence_ms, self.depth, tuple(self.symbols))

    def snapshots(self, date: dt.date, symbols: list[str]) -> pl.DataFrame:
        return pl.concat(self.snapshot_parts(date, symbols))

    def snapshot_parts(self, date: dt.date, symbols: list[str]) -> list[pl.DataFrame]:
        market = self.market()
        return [market.simulate(date, symbol) for symbol in symbols]

    def gaps(self, date: dt.date, symbols: list[str]) -> list[dict]:
        """Intervals a recorder lost: none in a simulation (its dropouts are missing rows)."""
        return []

    def oracle(self) -> SyntheticMarket:
        return self.market()
