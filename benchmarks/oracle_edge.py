"""The oracle's log-loss edge over the class prior, and against the readings-only filter it replaced.

    python -m benchmarks.oracle_edge [--config configs/default.yaml] [--date 2025-01-07]

The readings-only filter is the same market with every mid return hidden from the filter. Also:
how much of the edge hangs on knowing the class edges' trailing volatility exactly, which a model
with a shorter window cannot see: the same oracle scoring the edges it would draw from the
regime's nominal volatility (scaled to the trailing one's median), a bound on what a model that
reads the regime but not the trailing volatility loses.
"""

import argparse
import datetime as dt
import time

import numpy as np

from bmlt_assets.core.config import load_config
from bmlt_assets.core.labels import class_edges, classify, forward_log_returns, trailing_volatility
from bmlt_assets.core.sources.synthetic import LEADER, VOL_MULTIPLIER, SyntheticMarket
from bmlt_assets.core.uncertainty import mean_interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--date", type=dt.date.fromisoformat, default=dt.date(2025, 1, 7))
    args = parser.parse_args()
    config = load_config(args.config)
    d, day, target = config.data, args.date, config.target
    symbols = tuple(d.symbols)
    full = SyntheticMarket(d.synthetic, config.seed, d.cadence_ms, d.depth, symbols)
    readings_only = SyntheticMarket(d.synthetic, config.seed, d.cadence_ms, d.depth, symbols)
    readings_only.observed_log_mids = lambda date, symbol: np.full(readings_only.n, np.nan)  # type: ignore[method-assign]
    started = time.perf_counter()
    full.filtered_signals(day, symbols)
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
        new = -np.log(full.oracle_probabilities(day, target, steps, h, edges)[rows, classes])
        old = -np.log(readings_only.oracle_probabilities(day, target, steps, h, edges)[rows, classes])
        prior = np.bincount(classes, minlength=edges.shape[1] + 1) / len(classes)
        prior_loss = -np.log(prior[classes]).mean()
        latent = full.latent(day, target)
        kappa = d.synthetic.signal_strength
        nominal = latent.sigma * np.sqrt(VOL_MULTIPLIER[latent.regime[steps]] ** 2 + kappa**2)
        nominal *= np.median(volatility[steps] / nominal)
        nominal_edges = np.asarray(config.labels.volatility_edges)[None, :] * (nominal * np.sqrt(h))[:, None]
        guessed = -np.log(full.oracle_probabilities(day, target, steps, h, nominal_edges)[rows, classes])
        gain = mean_interval(new - old, h)
        edge_new, edge_old = prior_loss - new.mean(), prior_loss - old.mean()
        print(
            f"{horizon_s:>5} s {target}: edge over the prior {edge_new:.4f} nats "
            f"(readings only {edge_old:.4f}, ratio {edge_new / edge_old:.3f}); "
            f"per sample new - old {gain.mean:.4f} (95% CI {gain.low:.4f} .. {gain.high:.4f}); "
            f"with edges from the regime's nominal volatility {prior_loss - guessed.mean():.4f} "
            f"({(prior_loss - guessed.mean()) / edge_new:.3f} of the edge)"
        )


if __name__ == "__main__":
    main()
