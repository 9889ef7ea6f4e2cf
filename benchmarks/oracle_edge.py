"""The oracle's log-loss edge over the class prior, against the filters it replaced.

    python -m benchmarks.oracle_edge [--config configs/default.yaml] [--date 2025-01-07]
                                     [--target XRP/USDT --symbols BTC/USDT ETH/USDT XRP/USDT]

Two controls, the same market with part of the oracle taken away:

* readings only: the filter reads the books' queues but not their mids (the oracle before the
  mids joined the filter);
* rounding blind: the class probabilities take the shown mids for exact prices, as if the next mid
  could land anywhere, not only on the tick grid (the oracle before it was tick-exact). On a fine
  tick (ETH/USDT at 1 s) that is worth almost nothing; on XRP/USDT's, a tick is about one 1 s
  move's standard deviation and many labels are a move of 0 or 1 tick.

Also: how much of the edge hangs on knowing the class edges' trailing volatility exactly, which a
model with a shorter window cannot see: the same oracle scoring the edges it would draw from the
regime's nominal volatility (scaled to the trailing one's median), a bound on what a model that
reads the regime but not the trailing volatility loses.
"""

import argparse
import datetime as dt
import time

import numpy as np
from scipy.special import ndtr

from bmlt_assets.core.config import load_config
from bmlt_assets.core.labels import class_edges, classify, forward_log_returns, trailing_volatility
from bmlt_assets.core.sources.synthetic import LEADER, VOL_MULTIPLIER, SyntheticMarket
from bmlt_assets.core.uncertainty import mean_interval


class ReadingsOnly(SyntheticMarket):
    def filter_mid_ticks(self, date: dt.date, symbol: str) -> np.ndarray:
        return np.full(self.n, np.nan)


class RoundingBlind(SyntheticMarket):
    @staticmethod
    def shown_below(
        thresholds: np.ndarray, tick: float, mean: np.ndarray, sd: np.ndarray, odd: np.ndarray
    ) -> np.ndarray:
        return ndtr((np.log(thresholds * tick) - mean) / sd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--date", type=dt.date.fromisoformat, default=dt.date(2025, 1, 7))
    parser.add_argument("--target", default=None, help="default: the config's")
    parser.add_argument("--symbols", nargs="+", default=None, help="the observed symbols (default: the config's)")
    args = parser.parse_args()
    config = load_config(args.config)
    d, day = config.data, args.date
    target = args.target or config.target
    symbols = tuple(args.symbols or d.symbols)
    markets = {
        name: kind(d.synthetic, config.seed, d.cadence_ms, d.depth, symbols)
        for name, kind in (
            ("oracle", SyntheticMarket),
            ("readings only", ReadingsOnly),
            ("rounding blind", RoundingBlind),
        )
    }
    full = markets["oracle"]
    started = time.perf_counter()
    full.filtered(day, symbols)
    print(f"filter: {time.perf_counter() - started:.1f} s for one day of {len(symbols)} symbols + {LEADER}")
    mids = np.exp(full.observed_log_mids(day, target))[:, None]
    fresh = np.isfinite(mids)
    for horizon_s in config.labels.horizons_s:
        h = horizon_s * 1000 // d.cadence_ms
        returns = forward_log_returns(mids, fresh, [h], len(mids))[:, 0, 0]
        volatility = trailing_volatility(mids, fresh, config.vol_lookback_steps)[:, 0]
        steps = np.flatnonzero(np.isfinite(returns) & np.isfinite(volatility))
        edges = class_edges(config.labels, returns[steps], volatility[steps], h, np.ones(len(steps), bool))
        classes = classify(returns[steps], edges)
        rows = np.arange(len(classes))
        prior = np.bincount(classes, minlength=edges.shape[1] + 1) / len(classes)
        prior_loss = -np.log(prior[classes]).mean()
        losses = {
            name: -np.log(market.oracle_probabilities(day, target, steps, h, edges)[rows, classes])
            for name, market in markets.items()
        }
        line = [f"{horizon_s:>5} s {target}: edge over the prior {prior_loss - losses['oracle'].mean():.4f} nats"]
        for name in ("readings only", "rounding blind"):
            gain = mean_interval(losses["oracle"] - losses[name], h)
            line.append(
                f"{name} {prior_loss - losses[name].mean():.4f} (oracle - it {gain.mean:+.4f}, 95% CI "
                f"{gain.low:+.4f} .. {gain.high:+.4f})"
            )
        latent = full.latent(day, target)
        kappa = d.synthetic.signal_strength
        nominal = latent.sigma * np.sqrt(VOL_MULTIPLIER[latent.regime[steps]] ** 2 + kappa**2)
        nominal *= np.median(volatility[steps] / nominal)
        nominal_edges = np.asarray(config.labels.volatility_edges)[None, :] * (nominal * np.sqrt(h))[:, None]
        guessed = -np.log(full.oracle_probabilities(day, target, steps, h, nominal_edges)[rows, classes])
        edge = prior_loss - losses["oracle"].mean()
        line.append(
            f"with edges from the regime's nominal volatility {prior_loss - guessed.mean():.4f} "
            f"({(prior_loss - guessed.mean()) / edge:.3f} of the edge)"
        )
        print("; ".join(line))


if __name__ == "__main__":
    main()
