"""The embedded synthetic market: multi-asset L2 books with a planted signal and its oracle.

Generative model (one UTC day, grid of ``n`` steps of ``dt`` seconds, per symbol ``k``):

* **Volatility regime** ``g(j)`` in {low, mid, high}, shared by all symbols, constant within
  blocks of ``regime_block_s``; block to block it follows a Markov chain that stays with
  probability ``p`` and otherwise moves to one of the two other regimes with equal odds.
* **Order-flow imbalance** ``z_k(j)``: a stationary Gaussian AR(1), unit variance,
  ``phi = 0.5 ** (dt / half_life)``. The *signal* of the leader (BTC/USDT) is its own
  imbalance, ``s_0 = z_0``; every other symbol follows its own flow and the leader's:
  ``s_k = sqrt(1 - b^2) z_k + b z_0`` (``b = leader_weight``), again unit-variance AR(1).
* **Log mid price** ``x_k(j+1) = x_k(j) + kappa sigma_k s_k(j) + sigma_k m_g(j) eps_k(j+1)``
  with ``kappa = signal_strength``, ``sigma_k`` the symbol's per-step volatility, ``m_g`` the
  regime's volatility multiplier, and ``eps_k = sqrt(rho) f + sqrt(1 - rho) u_k`` correlated
  across symbols through a common market factor ``f``.
* **The published book** shows the flow through a noisy lens: the best-level queues are
  ``D (1 +/- tanh(y_k / 2)) / 2`` with ``y_k = z_k + imbalance_noise * nu_k`` (``nu`` iid
  standard normal) and total depth ``D = depth_k q_g`` (thinner in volatile regimes). The regime
  can be read off the depth exactly; the flow only by averaging queue imbalance over time, which a
  window model can do and a single snapshot cannot. The spread in
  ticks widens with the regime plus random excursions; deeper levels sit at random gaps of
  about ``level_spacing_bps`` with log-normal quantities that decay with distance.
* **Publication**: one snapshot per step, sent 100 ms (at most a quarter cadence) before the
  grid point and received a few ms later; a random ``dropout_rate`` of snapshots is lost, and
  nothing is published during the first ``session_gap_s`` of each day (a maintenance gap, so
  each day is an independent session and no label may straddle midnight).

Everything is deterministic per (seed, date, symbol): a symbol's stream depends only on its own
random stream, the market factor's and the leader's, never on which other symbols are configured.

**Oracle.** Everything a model of the configured (observed) symbols can see up to step ``t``:
every published book of each of them since the session opened, the regime and the clock. The
hidden state is the vector of flows ``z`` of the observed symbols and the leader (a linear
Gaussian AR(1), ``z(j+1) = phi z(j) + sqrt(1-phi^2) w``) and the true log mids ``x`` of the
observed symbols (``x_k(j+1) = x_k(j) + kappa sigma_k s_k(j) + sigma_k m_g(j) eps_k``, with noise
correlated across symbols through the market factor). Two kinds of readings inform it:

* each published book's best-level queues give ``y_k(j) = z_k(j) + imbalance_noise * nu_k(j)``;
* each published book's mid is the true mid rounded to the tick grid: with best bid
  ``floor(P - spread / 2)`` and the spread an integer number of ticks, the shown mid ``M`` (in
  ticks) is ``floor(P)`` for an even spread and ``floor(P - 1/2) + 1/2`` for an odd one, so
  either way it says ``P`` lies in ``[M, M + 1)`` ticks: an interval reading of ``x_k``.

The filter is a Kalman filter for the queue readings and an assumed-density filter for the
interval readings (each conditions the Gaussian state on ``x_k`` in its interval and keeps the
exact first two moments of the truncated result). For fine ticks the interval is a tiny fraction
of a step's move and the filter is the exact Kalman filter of the mid returns; for the coarsest
(XRP/USDT at 1 s: a tick is about 1.1 of a step's standard deviation) the Gaussian projection is
the one approximation, and ``benchmarks/oracle_edge.py`` measures what it leaves.

The ``h``-step log mid is then a mixture over the regime of the next block (at most one block
boundary inside a horizon, enforced by config) of Gaussians with, writing
``G = (1 - phi^h) / (1 - phi)`` and ``c = x_k + kappa sigma G s_k``,

    mean = E[c]
    var  = Var[c]
           + kappa^2 sigma^2 (1 - phi^2) / (1 - phi)^2 sum_{m=1}^{h-1} (1 - phi^(h-m))^2
           + sigma^2 (m_g^2 n_before + m_g'^2 n_after)

and a label is the return of the *shown* mids: the mid at ``t + h`` is below ``M_t e^e`` exactly
when the true price is below the next grid point at or above ``M_t e^e``, on the integer grid or
the half-integer one by the parity of the spread at ``t + h``, whose law the regime fixes (a
regime's base spread plus a geometric excursion). :func:`oracle_probabilities` sums these
Gaussian probabilities over both grids and the regimes: Bayes-optimal for any class edges, up to
the interval filter's Gaussian projection and the snapshots lost to ``dropout_rate`` (a label
across one is dropped by the pipeline, which the oracle does not condition on).
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.signal import lfilter
from scipy.special import ndtr

from bmlt_assets.core.book import snapshot_frame
from bmlt_assets.core.config import SyntheticConfig

LEADER = "BTC/USDT"
VOL_MULTIPLIER = np.array([0.6, 1.0, 1.8])
DEPTH_MULTIPLIER = np.array([1.4, 1.0, 0.55])
SPREAD_TICKS = np.array([1, 2, 3])  # a regime's base spread; each book adds a random excursion
SPREAD_EXCURSION = 0.75  # the excursion is geometric(this) - 1 ticks, drawn afresh for every book
# The excursion is even with probability p / (1 - (1 - p)^2): the share of odd spreads by regime.
_EVEN_EXCURSION = SPREAD_EXCURSION / (1 - (1 - SPREAD_EXCURSION) ** 2)
ODD_SPREAD = np.where(SPREAD_TICKS % 2 == 1, _EVEN_EXCURSION, 1 - _EVEN_EXCURSION)


@dataclass(frozen=True)
class SymbolProfile:
    price: float
    tick: float
    vol_per_s: float  # std of the 1-second log return in the mid regime
    depth: float  # best-level depth (both sides) in the mid regime, base units


SYMBOL_PROFILES = {
    "BTC/USDT": SymbolProfile(60_000.0, 0.01, 0.9e-4, 4.0),
    "ETH/USDT": SymbolProfile(3_000.0, 0.01, 1.2e-4, 60.0),
    "SOL/USDT": SymbolProfile(150.0, 0.01, 1.6e-4, 900.0),
    "BNB/USDT": SymbolProfile(550.0, 0.01, 1.1e-4, 120.0),
    "XRP/USDT": SymbolProfile(0.6, 0.0001, 1.5e-4, 150_000.0),
}


@dataclass(frozen=True)
class Posterior:
    """The filter's Gaussian posterior at every step of a day, after that step's books: the
    signal ``s`` of one symbol, and for an observed symbol its true log mid ``x`` too."""

    signal_mean: np.ndarray
    signal_var: np.ndarray
    mid_mean: np.ndarray | None  # None for the leader when it is not observed
    mid_var: np.ndarray | None
    cross: np.ndarray | None  # Cov(x, s)


@dataclass(frozen=True)
class LatentDay:
    """The hidden state of one symbol over one day, on the step grid."""

    imbalance: np.ndarray  # z_k(j), the symbol's own order-flow imbalance, (n,)
    reading: np.ndarray  # y_k(j) = z_k(j) + noise: what the best-level queues show, (n,)
    published: np.ndarray  # (n,) bool: a snapshot exists for the step
    signal: np.ndarray  # s_k(j), (n,)
    regime: np.ndarray  # g(j), (n,) int
    sigma: float  # per-step volatility sigma_k


class SyntheticMarket:
    """Pure generator: no Dagster, no I/O."""

    def __init__(self, params: SyntheticConfig, seed: int, cadence_ms: int, depth: int, observed: tuple[str, ...] = ()):
        self.params = params
        self.observed = observed  # the symbols whose books a model sees (the oracle's information)
        self._filtered: dict[tuple[dt.date, tuple[str, ...]], dict[str, Posterior]] = {}
        self.seed = seed
        self.cadence_ms = cadence_ms
        self.depth = depth
        self.dt_s = cadence_ms / 1000.0
        self.n = 86_400_000 // cadence_ms
        self.phi = 0.5 ** (self.dt_s / params.signal_half_life_s)
        self.block_steps = max(1, int(params.regime_block_s / self.dt_s))

    # -- random streams ---------------------------------------------------------------------
    def _rng(self, date: dt.date, stream: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, date.toordinal(), zlib.crc32(stream.encode())])

    def _ar1(self, rng: np.random.Generator) -> np.ndarray:
        shocks = rng.standard_normal(self.n) * np.sqrt(1 - self.phi**2)
        shocks[0] = rng.standard_normal()  # start in the stationary distribution
        return lfilter([1.0], [1.0, -self.phi], shocks)

    def regimes(self, date: dt.date) -> np.ndarray:
        rng = self._rng(date, "regime")
        n_blocks = -(-self.n // self.block_steps)
        blocks = np.empty(n_blocks, dtype=np.int64)
        blocks[0] = rng.integers(3)
        moves = rng.random(n_blocks)
        jumps = rng.integers(1, 3, n_blocks)
        for i in range(1, n_blocks):
            stay = moves[i] < self.params.regime_stay_probability
            blocks[i] = blocks[i - 1] if stay else (blocks[i - 1] + jumps[i]) % 3
        return np.repeat(blocks, self.block_steps)[: self.n]

    def _imbalance(self, date: dt.date, symbol: str) -> tuple[np.ndarray, np.ndarray]:
        """The flow z and its noisy reading y."""
        rng = self._rng(date, f"imbalance:{symbol}")
        flow = self._ar1(rng)
        return flow, flow + self.params.imbalance_noise * rng.standard_normal(self.n)

    def _published(self, date: dt.date, symbol: str) -> np.ndarray:
        rng = self._rng(date, f"publish:{symbol}")
        gap_steps = int(np.ceil(self.params.session_gap_s / self.dt_s))
        return (np.arange(self.n) >= gap_steps) & (rng.random(self.n) >= self.params.dropout_rate)

    def latent(self, date: dt.date, symbol: str) -> LatentDay:
        own, reading = self._imbalance(date, symbol)
        if symbol == LEADER:
            signal = own
        else:
            b = self.params.leader_weight
            signal = np.sqrt(1 - b**2) * own + b * self._imbalance(date, LEADER)[0]
        sigma = SYMBOL_PROFILES[symbol].vol_per_s * np.sqrt(self.dt_s)
        return LatentDay(own, reading, self._published(date, symbol), signal, self.regimes(date), sigma)

    def filtered(self, date: dt.date, observed: tuple[str, ...]) -> dict[str, Posterior]:
        """The posterior of every state symbol's signal (and each observed symbol's true log mid)
        at every step, from the queues and mids of the ``observed`` symbols' books up to that step.

        Hand-written: a Kalman filter with a handful of states, missing readings, a
        regime-dependent noise and interval readings is a few lines; a state-space library would
        add a heavy dependency and takes neither the time-varying observation set nor intervals.
        """
        key = (date, observed)
        if key not in self._filtered:
            self._filtered[key] = self._filter(date, observed)
        return self._filtered[key]

    def _filter(self, date: dt.date, observed: tuple[str, ...]) -> dict[str, Posterior]:
        p, phi = self.params, self.phi
        states = sorted(set(observed) | {LEADER})
        k, leader, n_mids = len(states), states.index(LEADER), len(observed)
        mixing = np.zeros((k, k))  # s = mixing @ z
        for i, symbol in enumerate(states):
            b = 0.0 if symbol == LEADER else p.leader_weight
            mixing[i, i] += np.sqrt(1 - b**2)
            mixing[i, leader] += b
        rows = [states.index(symbol) for symbol in observed]
        latents = [self.latent(date, symbol) for symbol in observed]
        readings = np.stack([latent.reading for latent in latents], axis=1)
        published = np.stack([latent.published for latent in latents], axis=1)
        ticks = np.array([SYMBOL_PROFILES[symbol].tick for symbol in observed])
        # Each shown mid M (ticks) says the true log mid lies in [log(M tick), log((M + 1) tick)).
        shown = np.stack([self.filter_mid_ticks(date, symbol) for symbol in observed], axis=1)
        low, high = np.log(shown * ticks), np.log((shown + 1) * ticks)
        sigma = np.array([latent.sigma for latent in latents])
        regime = self.regimes(date)

        # The state: the flows z (k), then the observed symbols' true log mids x.
        size = k + n_mids
        transition = np.zeros((size, size))
        transition[:k, :k] = phi * np.eye(k)
        transition[k:, :k] = p.signal_strength * sigma[:, None] * mixing[rows]  # x(j+1) - x(j) drifts by this @ z(j)
        transition[k:, k:] = np.eye(n_mids)
        correlation = p.correlation + (1 - p.correlation) * np.eye(n_mids)
        process = np.zeros((3, size, size))
        for g in range(3):
            process[g, :k, :k] = (1 - phi**2) * np.eye(k)
            scale = sigma * VOL_MULTIPLIER[g]
            process[g, k:, k:] = scale[:, None] * correlation * scale[None, :]

        # Imported here, not with this module: numba's import is not paid by every load of the code
        # location, only by the first filter (as the book engine's kernels, docs/design.md).
        from bmlt_assets.core.sources.synthetic_filter import filter_steps

        noise_var = p.imbalance_noise**2
        signal_mean, signal_var, mid_mean, mid_var, cross = filter_steps(
            transition, process, regime, published, readings, np.array(rows), noise_var, low, high, mixing
        )
        posteriors = {
            symbol: Posterior(signal_mean[:, i], signal_var[:, i], None, None, None) for i, symbol in enumerate(states)
        }
        for i, symbol in enumerate(observed):
            posteriors[symbol] = Posterior(
                signal_mean[:, rows[i]], signal_var[:, rows[i]], mid_mean[:, i], mid_var[:, i], cross[:, i]
            )
        return posteriors

    def _price_path(
        self, date: dt.date, symbol: str, latent: LatentDay
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.random.Generator]:
        """The true log mid, the best bid (ticks) and the spread (ticks) at every step, and the
        book's random stream, which :meth:`simulate` goes on drawing from (the order of draws
        fixes the books)."""
        profile, p, n = SYMBOL_PROFILES[symbol], self.params, self.n
        factor = self._rng(date, "market-factor").standard_normal(n)
        rng = self._rng(date, f"book:{symbol}")
        eps = np.sqrt(p.correlation) * factor + np.sqrt(1 - p.correlation) * rng.standard_normal(n)
        steps = p.signal_strength * latent.sigma * latent.signal + latent.sigma * VOL_MULTIPLIER[latent.regime] * eps
        start = np.log(profile.price) + 0.05 * rng.standard_normal()
        log_mid = start + np.concatenate([[0.0], np.cumsum(steps[:-1])])
        spread = SPREAD_TICKS[latent.regime] + rng.geometric(SPREAD_EXCURSION, n) - 1
        best_bid = np.floor(np.exp(log_mid) / profile.tick - spread / 2).astype(np.int64)
        return log_mid, best_bid, spread, rng

    def true_log_mids(self, date: dt.date, symbol: str) -> np.ndarray:
        """The hidden log mid ``x`` at every step, before rounding to the tick grid."""
        return self._price_path(date, symbol, self.latent(date, symbol))[0]

    def observed_mid_ticks(self, date: dt.date, symbol: str) -> np.ndarray:
        """The mid a published book shows at every step, in ticks (an integer or a half-integer,
        exact in float64); NaN where no book was published."""
        latent = self.latent(date, symbol)
        _, best_bid, spread, _ = self._price_path(date, symbol, latent)
        return np.where(latent.published, best_bid + spread / 2, np.nan)

    def filter_mid_ticks(self, date: dt.date, symbol: str) -> np.ndarray:
        """The shown mids the filter reads: all of them (a control that hides them overrides this)."""
        return self.observed_mid_ticks(date, symbol)

    def observed_log_mids(self, date: dt.date, symbol: str) -> np.ndarray:
        """The log mid a published book shows at every step (NaN where no book was published)."""
        return np.log(self.observed_mid_ticks(date, symbol) * SYMBOL_PROFILES[symbol].tick)

    # -- books ------------------------------------------------------------------------------
    def simulate(self, date: dt.date, symbol: str) -> pl.DataFrame:
        """One day of published L2 snapshots of ``symbol`` in the landing schema."""
        profile = SYMBOL_PROFILES[symbol]
        p = self.params
        latent = self.latent(date, symbol)
        regime = latent.regime
        n, depth = self.n, self.depth
        _, best_bid, spread, rng = self._price_path(date, symbol, latent)
        spacing = max(1.0, p.level_spacing_bps * 1e-4 * profile.price / profile.tick)
        gaps = np.maximum(1, np.rint(rng.exponential(spacing, (n, 2, depth - 1)))).astype(np.int64)
        bid_ticks = best_bid[:, None] - np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(gaps[:, 0], 1)], 1)
        ask_ticks = (best_bid + spread)[:, None] + np.concatenate(
            [np.zeros((n, 1), np.int64), np.cumsum(gaps[:, 1], 1)], 1
        )

        top_depth = profile.depth * DEPTH_MULTIPLIER[regime]
        tilt = np.tanh(latent.reading / 2)
        decay = np.exp(-np.arange(1, depth) / 8.0)
        deep = top_depth[:, None, None] * decay * rng.lognormal(0.0, 0.4, (n, 2, depth - 1))
        bid_qty = np.concatenate([(top_depth * (1 + tilt) / 2)[:, None], deep[:, 0]], 1)
        ask_qty = np.concatenate([(top_depth * (1 - tilt) / 2)[:, None], deep[:, 1]], 1)

        day_start_ns = int(dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC).timestamp()) * 10**9
        lead_ns = min(100, self.cadence_ms // 4) * 1_000_000
        grid_ns = day_start_ns + np.arange(n, dtype=np.int64) * self.cadence_ms * 1_000_000
        exchange_ns = grid_ns - lead_ns
        receive_ns = exchange_ns + rng.integers(1_000_000, lead_ns // 2 + 1_000_001, n)
        update_id = (date.toordinal() * 10**9) + np.cumsum(rng.integers(1, 40, n))

        keep = latent.published
        return snapshot_frame(
            exchange_ns=exchange_ns[keep],
            receive_ns=receive_ns[keep],
            symbol=symbol,
            update_id=update_id[keep],
            bid_px=(bid_ticks[keep] * profile.tick),
            bid_qty=bid_qty[keep],
            ask_px=(ask_ticks[keep] * profile.tick),
            ask_qty=ask_qty[keep],
        )

    # -- oracle -----------------------------------------------------------------------------
    def oracle_probabilities(
        self, date: dt.date, symbol: str, steps: np.ndarray, horizon: int, edges: np.ndarray
    ) -> np.ndarray:
        """Bayes-optimal class probabilities for samples at ``steps`` of ``date``, for a model that
        sees the books of ``self.observed`` (``symbol`` alone when empty).

        ``edges`` is (N, C-1): the class edges of each sample in log-return units, for the return
        between the mids the books show (the last one shown at or before each step, and the one
        shown ``horizon`` steps later).
        """
        if horizon > self.block_steps:
            raise ValueError("the oracle assumes at most one regime switch inside a horizon")
        latent = self.latent(date, symbol)
        kappa, phi, sigma = self.params.signal_strength, self.phi, latent.sigma
        observed = self.observed or (symbol,)
        if symbol not in observed:
            raise ValueError(f"{symbol} is not among the observed symbols {list(observed)}")
        posterior = self.filtered(date, observed)[symbol]
        assert posterior.mid_mean is not None and posterior.mid_var is not None and posterior.cross is not None
        # The edges as shown mids in ticks, from the last mid shown at or before each step.
        shown = _forward_filled(self.observed_mid_ticks(date, symbol))[steps]
        thresholds = shown[:, None] * np.exp(edges)
        tick = SYMBOL_PROFILES[symbol].tick
        # Where the filter has read no mid, the true one is uniform on the shown mid's interval.
        filtered = np.isfinite(posterior.mid_var[steps])
        low, high = np.log(shown * tick), np.log((shown + 1) * tick)
        mid_mean = np.where(filtered, posterior.mid_mean[steps], (low + high) / 2)
        mid_var = np.where(filtered, posterior.mid_var[steps], (high - low) ** 2 / 12)
        cross = np.where(filtered, posterior.cross[steps], 0.0)
        drift = kappa * sigma * (1 - phi**horizon) / (1 - phi)  # the horizon's drift per unit of signal now
        mean = mid_mean + drift * posterior.signal_mean[steps]
        m = np.arange(1, horizon)
        future_var = kappa**2 * sigma**2 * (1 - phi**2) / (1 - phi) ** 2 * np.sum((1 - phi ** (horizon - m)) ** 2)
        known_var = mid_var + drift**2 * posterior.signal_var[steps] + 2 * drift * cross

        regime = latent.regime[steps]
        before = np.minimum(horizon, self.block_steps - steps % self.block_steps)
        after = horizon - before
        stay = self.params.regime_stay_probability
        cdf = np.zeros(edges.shape)
        for shift, weight in ((0, stay), (1, (1 - stay) / 2), (2, (1 - stay) / 2)):
            nxt = (regime + shift) % 3
            var = (
                known_var
                + future_var
                + sigma**2 * (VOL_MULTIPLIER[regime] ** 2 * before + VOL_MULTIPLIER[nxt] ** 2 * after)
            )
            # With no boundary inside the horizon the next regime is irrelevant: weights sum to 1. The
            # book at t + h draws its spread in its own block, the next one already when t + h starts it.
            odd = ODD_SPREAD[np.where(steps % self.block_steps + horizon >= self.block_steps, nxt, regime)][:, None]
            cdf += weight * self.shown_below(thresholds, tick, mean[:, None], np.sqrt(var)[:, None], odd)
        bounds = np.concatenate([np.zeros((len(steps), 1)), cdf, np.ones((len(steps), 1))], 1)
        return np.diff(bounds, axis=1)

    @staticmethod
    def shown_below(
        thresholds: np.ndarray, tick: float, mean: np.ndarray, sd: np.ndarray, odd: np.ndarray
    ) -> np.ndarray:
        """P(the mid shown at t + h < each threshold, in ticks) when the true log mid then is
        N(mean, sd^2) and its book's spread is odd with probability ``odd``: the shown mid is below
        a threshold iff the true one is below the grid point at or above it, on the half-integers
        for an odd spread and on the integers for an even one."""
        below = np.zeros(np.broadcast_shapes(thresholds.shape, mean.shape))
        for offset, share in ((0.5, odd), (0.0, 1 - odd)):
            grid = np.ceil(thresholds - offset) + offset
            below += share * ndtr((np.log(grid * tick) - mean) / sd)
        return below

    def oracle_at(self, symbol: str, timestamps_ns: np.ndarray, horizon: int, edges: np.ndarray) -> np.ndarray:
        """Oracle probabilities for samples anywhere in time (grid timestamps, any days)."""
        day = timestamps_ns // (86_400 * 10**9)
        step = (timestamps_ns - day * 86_400 * 10**9) // (self.cadence_ms * 1_000_000)
        probs = np.empty((len(timestamps_ns), edges.shape[1] + 1))
        for value in np.unique(day):
            rows = day == value
            date = dt.date(1970, 1, 1) + dt.timedelta(days=int(value))
            probs[rows] = self.oracle_probabilities(date, symbol, step[rows], horizon, edges[rows])
        return probs


def _forward_filled(values: np.ndarray) -> np.ndarray:
    """Each NaN replaced by the last finite value before it (NaN before the first)."""
    last = np.maximum.accumulate(np.where(np.isfinite(values), np.arange(len(values)), 0))
    return np.where(np.isfinite(values[last]), values[last], np.nan)
