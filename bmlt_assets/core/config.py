"""The platform config: one pydantic model, loaded and validated from YAML.

Every design decision of docs/design.md §4 is a field here, so alternatives are compared
with the same pipeline. Unknown keys are errors (``extra="forbid"``): a misspelled key must
never be silently ignored. ``load_config`` turns every failure into a :class:`ConfigError`
whose message names the field path, the bad value and what was expected.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "configs" / "default.yaml"

SYMBOL_PATTERN = re.compile(r"^[A-Z0-9]{2,15}/[A-Z0-9]{2,10}(:[A-Z0-9]{2,10})?$")
# Symbols the embedded synthetic market knows how to simulate (see synthetic.SYMBOL_PROFILES).
SYNTHETIC_SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT")

DEEPLOB_MIN_WINDOW = 19
DEFAULT_FRESH_DAYS = 2  # evaluation.fresh_days on the synthetic market
# The daily partitions' first day: Binance spot opened on 2017-07-14, so no order-book day is older.
FIRST_DAY = dt.date(2017, 7, 14)
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


class ConfigError(ValueError):
    """A config that cannot be used; the message is meant for a human, not a traceback."""


def last_complete_day() -> dt.date:
    """The newest day with a partition: a day's partition exists once the day is over (UTC)."""
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)


def day_out_of_range(day: dt.date, name: str) -> str | None:
    """Why ``day`` (given as ``name``) has no daily partition, or None when it has one."""
    if day < FIRST_DAY:
        return (
            f"{name} {day} is before {FIRST_DAY}, the first day of the daily partitions (Binance spot's opening): "
            f"use {FIRST_DAY} or later"
        )
    last = last_complete_day()
    if day > last:
        return (
            f"{name} {day} is not over yet (UTC): a day's partition exists once the day is over; use {last} or earlier"
        )
    return None


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(Section):
    """Knobs of the embedded synthetic market (generative model in bmlt_assets/core/sources/synthetic.py)."""

    signal_strength: Annotated[float, Field(ge=0)] = 0.4
    signal_half_life_s: PositiveFloat = 30.0
    imbalance_noise: Annotated[float, Field(ge=0)] = 1.0
    leader_weight: Annotated[float, Field(ge=0, lt=1)] = 0.6
    correlation: Annotated[float, Field(ge=0, lt=1)] = 0.6
    regime_block_s: PositiveInt = 3600
    regime_stay_probability: Fraction = 0.7
    level_spacing_bps: PositiveFloat = 1.0
    dropout_rate: Annotated[float, Field(ge=0, lt=0.5)] = 0.002
    session_gap_s: Annotated[int, Field(ge=0)] = 60


class BinanceEndpoints(Section):
    """Where the Binance resource connects; the defaults are ccxt's production endpoints.

    Overrides serve relays, testnets or a local replay server. ccxt tells a spot WebSocket
    connection from a futures one by ``/stream`` in its URL, so a spot ``ws_url`` must contain it.
    """

    rest_url: str | None = None  # e.g. https://api.binance.com/api/v3 (spot), https://fapi.binance.com/fapi/v1 (usdm)
    ws_url: str | None = None  # e.g. wss://stream.binance.com:9443/ws (spot), wss://fstream.binance.com/ws (usdm)


class TardisConfig(Section):
    """tardis.dev's historical archive (``data.source: tardis``); the API key comes only from
    ``$TARDIS_API_KEY`` at download time (without it, only the first day of each month)."""

    exchange: Literal["binance", "binance-futures"] | None = None  # default: that of data.market
    data_type: Literal["incremental_book_L2", "book_snapshot_25"] = "incremental_book_L2"
    download_dir: str = "tardis"  # cache of downloaded files; relative to PlatformConfig.local_dir
    endpoint: str = "https://datasets.tardis.dev/v1"  # another one for a mirror or the tests' loopback server


class DataConfig(Section):
    source: Literal["synthetic", "binance", "tardis"] = "synthetic"
    market: Literal["spot", "usdm"] = "spot"
    symbols: Annotated[list[str], Field(min_length=1)]
    start_date: dt.date
    end_date: dt.date
    cadence_ms: PositiveInt = 1000
    depth: PositiveInt = 20
    max_staleness_ms: PositiveInt | None = None
    synthetic: SyntheticConfig = SyntheticConfig()
    binance: BinanceEndpoints = BinanceEndpoints()
    tardis: TardisConfig = TardisConfig()

    @model_validator(mode="after")
    def _tardis_matches_market(self) -> DataConfig:
        if self.source != "tardis":
            return self
        expected = {"spot": "binance", "usdm": "binance-futures"}[self.market]
        if self.tardis.exchange not in (None, expected):
            raise ValueError(
                f"tardis.exchange {self.tardis.exchange!r} does not serve data.market {self.market!r}: use {expected!r}"
            )
        if self.tardis.data_type == "book_snapshot_25" and self.depth > 25:
            raise ValueError(f"data.depth={self.depth}: tardis book_snapshot_25 holds 25 levels per side at most")
        return self

    @property
    def tardis_exchange(self) -> str:
        """The archive's exchange feed: tardis.exchange, else the one of data.market."""
        return self.tardis.exchange or {"spot": "binance", "usdm": "binance-futures"}[self.market]

    @field_validator("symbols")
    @classmethod
    def _symbols_well_formed(cls, symbols: list[str]) -> list[str]:
        for symbol in symbols:
            if not SYMBOL_PATTERN.match(symbol):
                raise ValueError(f"symbol {symbol!r} is not a ccxt unified symbol like 'BTC/USDT'")
        if len(set(symbols)) != len(symbols):
            raise ValueError("symbols must be distinct")
        return symbols

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.end_date < self.start_date:
            raise ValueError(f"end_date {self.end_date} is before start_date {self.start_date}")
        for day, name in ((self.start_date, "start_date"), (self.end_date, "end_date")):
            problem = day_out_of_range(day, name)
            if problem:
                raise ValueError(problem)
        if self.source == "synthetic":
            unknown = [s for s in self.symbols if s not in SYNTHETIC_SYMBOLS]
            if unknown:
                raise ValueError(
                    f"unknown symbol(s) {unknown} for the synthetic market; choose from {list(SYNTHETIC_SYMBOLS)}"
                )
        if 86_400_000 % self.cadence_ms:
            raise ValueError(f"cadence_ms={self.cadence_ms} must divide one day (86400000 ms)")
        ws_url = self.binance.ws_url
        if self.market == "spot" and ws_url and "/stream" not in ws_url:
            raise ValueError(
                f"binance.ws_url {ws_url!r} must contain '/stream': ccxt reads it as a futures connection otherwise"
            )
        return self

    @property
    def staleness_ms(self) -> int:
        """A step is valid only if its book is younger than this (default: one cadence)."""
        return self.max_staleness_ms or self.cadence_ms

    @property
    def steps_per_day(self) -> int:
        return 86_400_000 // self.cadence_ms

    @property
    def dates(self) -> list[dt.date]:
        days = (self.end_date - self.start_date).days + 1
        return [self.start_date + dt.timedelta(days=i) for i in range(days)]


class RepresentationConfig(Section):
    """Decision 1: how a book becomes L levels of (bid px, bid qty, ask px, ask qty)."""

    kind: Literal["full", "aggregated", "hybrid"] = "hybrid"
    raw_levels: Annotated[int, Field(ge=0)] = 5
    bucket_count: Annotated[int, Field(ge=0)] = 5
    bucket_min_bps: PositiveFloat = 1.0
    bucket_max_bps: PositiveFloat = 25.0
    rolling_normalization_s: PositiveInt | None = None

    @model_validator(mode="after")
    def _levels(self) -> RepresentationConfig:
        if self.kind in ("full", "hybrid") and self.raw_levels == 0:
            raise ValueError(f"representation kind {self.kind!r} needs raw_levels >= 1")
        if self.kind in ("aggregated", "hybrid") and self.bucket_count == 0:
            raise ValueError(f"representation kind {self.kind!r} needs bucket_count >= 1")
        if self.bucket_max_bps <= self.bucket_min_bps:
            raise ValueError("bucket_max_bps must be greater than bucket_min_bps")
        return self

    @property
    def levels(self) -> int:
        return {
            "full": self.raw_levels,
            "aggregated": self.bucket_count,
            "hybrid": self.raw_levels + self.bucket_count,
        }[self.kind]


class LabelsConfig(Section):
    """Decisions 3 and 4: horizons (one head each) and class edges."""

    target_symbol: str | None = None
    horizons_s: Annotated[list[PositiveInt], Field(min_length=1)] = [60, 300]
    edges: Literal["fixed_pct", "volatility_scaled", "quantile"] = "volatility_scaled"
    fixed_pct_edges: list[float] = [-10, -5, -2, 0, 2, 5, 10]
    volatility_edges: list[float] = [-2.0, -1.1, -0.45, 0, 0.45, 1.1, 2.0]
    quantile_classes: Annotated[int, Field(ge=2)] = 8
    vol_lookback_s: PositiveInt = 300

    @field_validator("fixed_pct_edges", "volatility_edges")
    @classmethod
    def _increasing(cls, edges: list[float]) -> list[float]:
        if not edges:
            raise ValueError("needs at least one edge")
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"edges must be strictly increasing, got {edges}")
        return edges

    @field_validator("horizons_s")
    @classmethod
    def _distinct(cls, horizons: list[int]) -> list[int]:
        if len(set(horizons)) != len(horizons):
            raise ValueError(f"horizons must be distinct, got {horizons}")
        return sorted(horizons)

    @property
    def n_classes(self) -> int:
        return {
            "fixed_pct": len(self.fixed_pct_edges) + 1,
            "volatility_scaled": len(self.volatility_edges) + 1,
            "quantile": self.quantile_classes,
        }[self.edges]


class DatasetConfig(Section):
    """Decision 5: purged chronological split, or walk-forward folds with the same purge.

    With ``walk_forward``, the fractions size each fold's parts: ``test_fraction`` per test
    block, ``val_fraction`` per validation block, and ``train_fraction`` the rolling window."""

    split: Literal["chronological", "walk_forward"] = "chronological"
    folds: Annotated[int, Field(ge=2)] = 3  # walk_forward only
    walk_forward_window: Literal["expanding", "rolling"] = "expanding"
    train_fraction: Fraction = 0.70
    val_fraction: Fraction = 0.15
    test_fraction: Fraction = 0.15
    embargo_s: Annotated[int, Field(ge=0)] = 0
    window_steps: PositiveInt = 40
    sample_stride: PositiveInt = 1  # training and validation samples every N steps; test keeps every step
    norm_fit_samples: PositiveInt = 4096

    @model_validator(mode="after")
    def _fractions(self) -> DatasetConfig:
        total = self.train_fraction + self.val_fraction + self.test_fraction
        if self.split == "walk_forward":
            if self.folds * self.test_fraction + self.val_fraction >= 1:
                raise ValueError(
                    f"{self.folds} folds x test_fraction {self.test_fraction} + val_fraction {self.val_fraction} "
                    "leave no training data for the first fold; use fewer folds or smaller fractions"
                )
        elif abs(total - 1.0) > 1e-9:
            raise ValueError(f"train_fraction + val_fraction + test_fraction = {total:g}; they must sum to 1")
        return self


class ModelConfig(Section):
    """Decisions 2 and 7: DeepLOB-family CNN+LSTM, multi-asset strategy, temporal features."""

    architecture: Literal["deeplob"] = "deeplob"
    multi_asset: Literal["stacked", "branches", "attention"] = "branches"
    temporal: Literal["cyclical", "embedding", "none"] = "cyclical"
    conv_channels: PositiveInt = 32
    inception_channels: PositiveInt = 64
    lstm_hidden: PositiveInt = 64
    asset_embedding_dim: PositiveInt = 4
    attention_heads: PositiveInt = 2
    temporal_embedding_dim: PositiveInt = 4

    @model_validator(mode="after")
    def _heads_divide_tokens(self) -> ModelConfig:
        token = 3 * self.inception_channels // 2
        if self.multi_asset == "attention" and token % self.attention_heads:
            raise ValueError(
                f"attention_heads={self.attention_heads} must divide the asset token width "
                f"3 * inception_channels / 2 = {token}"
            )
        return self


class TrainingConfig(Section):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    learning_rate: PositiveFloat = 1e-3
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    early_stopping_patience: PositiveInt = 2
    # An exponential moving average of the weights (decay per optimizer step; 0 = off) is what is
    # validated, early-stopped and kept: it smooths the last steps' noise out of the model.
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.0
    class_weights: Literal["balanced", "sqrt_inverse", "none"] = "sqrt_inverse"
    max_train_samples: PositiveInt | None = None
    threads: PositiveInt | None = None
    loader_workers: Annotated[int, Field(ge=0)] = 0
    # Where in-process training, tuning trials, evaluation and walk-forward run: auto picks the first
    # CUDA GPU when torch sees one, else the CPU; cuda:N names one. torchrun ranks use their own GPU
    # (backend nccl) or the CPU (gloo).
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"
    # auto: fp32 and channels-last on CPUs (docs/benchmarks.md); on a GPU each candidate is timed on
    # real batches before training and the fastest is kept (logged, and in the run's metadata).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    seed: int = 0
    progress_bar: bool = True
    # inprocess: the trained_model step trains itself. torchrun: it launches `torchrun --standalone
    # --nproc_per_node N` through Dagster Pipes, and the ranks train with DistributedDataParallel
    # (batch_size stays the global batch; threads, when set, is per rank). gloo runs on CPUs,
    # nccl on GPUs (one per rank).
    launcher: Literal["inprocess", "torchrun"] = "inprocess"
    nproc_per_node: PositiveInt = 1
    backend: Literal["gloo", "nccl"] = "gloo"
    # More than one node: torchrun's c10d rendezvous on node 0 (port rdzv_port) instead of
    # --standalone; the nodes are pods of the kubernetes torchrun launcher (deployment.torchrun).
    nnodes: PositiveInt = 1
    rdzv_port: Annotated[int, Field(ge=1024, le=65535)] = 29400

    @model_validator(mode="after")
    def _launcher_fits(self) -> TrainingConfig:
        if self.launcher == "inprocess" and (self.nproc_per_node != 1 or self.backend != "gloo" or self.nnodes != 1):
            raise ValueError(
                "nproc_per_node, nnodes and backend apply to launcher 'torchrun' only; "
                "set launcher: torchrun to train with several processes"
            )
        if self.launcher == "torchrun" and self.device.startswith("cuda:"):
            raise ValueError(
                f"device {self.device!r}: torchrun ranks each take the GPU of their local rank; "
                "write device: cuda (with backend nccl) or auto"
            )
        if self.launcher == "torchrun" and self.backend == "gloo" and self.device == "cuda":
            raise ValueError("device 'cuda' under torchrun needs backend nccl (gloo ranks train on CPUs)")
        if self.launcher == "torchrun" and self.backend == "nccl" and self.device == "cpu":
            raise ValueError("backend nccl trains on GPUs: write device auto or cuda, or use backend gloo on CPUs")
        if self.batch_size % self.nproc_per_node:
            raise ValueError(
                f"batch_size={self.batch_size} is the global batch and must divide evenly among "
                f"nproc_per_node={self.nproc_per_node} ranks; use a multiple of {self.nproc_per_node}"
            )
        return self


class SearchDimension(Section):
    """One tuned parameter: ``int``/``float`` between ``low`` and ``high`` (``log`` scale, ``step``),
    or ``categorical`` over ``choices``."""

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[str | int | float | bool] | None = None

    @model_validator(mode="after")
    def _complete(self) -> SearchDimension:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical dimension needs choices")
        elif self.low is None or self.high is None or self.high <= self.low:
            raise ValueError(f"an {self.type} dimension needs low < high")
        elif self.log and self.low <= 0:
            raise ValueError(f"a log-scale dimension needs low > 0 (low is {self.low:g})")
        elif self.log and self.step is not None:
            raise ValueError("a log-scale dimension takes no step (Optuna samples it continuously)")
        return self

    def values_to_check(self) -> list[Any]:
        """Values the dimension can take that show whether a field accepts them: every choice, or
        the bounds (and for a float a value between them, which an integer field refuses)."""
        if self.type == "categorical":
            return list(self.choices or [])
        assert self.low is not None and self.high is not None  # _complete
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high, self.low + (self.high - self.low) / 3]


TUNABLE_SECTIONS = ("model", "training")


def _check_dimension(path: str, dimension: SearchDimension, field: FieldInfo) -> None:
    """Every value a search dimension can take must be valid for its field (type, choices, range),
    so that a bad choice fails here, not in a trial after the data was ingested."""
    annotation: Any = field.annotation
    adapter: TypeAdapter[Any] = TypeAdapter(Annotated[(annotation, *field.metadata)] if field.metadata else annotation)
    for value in dimension.values_to_check():
        try:
            adapter.validate_python(value)
        except ValidationError as error:
            why = "; ".join(item["msg"] for item in error.errors())
            kind = "choice" if dimension.type == "categorical" else f"{dimension.type} value"
            hint = ""
            if dimension.type != "categorical" and (get_origin(annotation) is Literal or annotation is bool):
                hint = ": tune it as type: categorical"
            elif dimension.type == "float" and annotation is int:
                hint = ": it takes whole numbers, tune it as type: int"
            raise ValueError(f"{path!r}: {kind} {value!r} is not a valid {path} ({why}){hint}") from None


class HpoConfig(Section):
    """Decision 6: Optuna tuning on the purged validation part; off by default."""

    enabled: bool = False
    n_trials: PositiveInt = 20
    timeout_s: PositiveInt | None = None
    sampler_seed: int = 0
    pruner: Literal["median", "hyperband", "threshold", "none"] = "median"
    prune_above: float = 2.5  # threshold pruner: stop a trial whose validation log loss exceeds this
    trial_epochs: PositiveInt | None = None  # default: training.epochs
    trial_max_train_samples: PositiveInt | None = None  # a subset per trial makes tuning cheaper
    search_space: dict[str, SearchDimension] = {}
    # Where the study lives (core/tuning.py): sqlite, a file under <data>/<config>/hpo/ (one
    # worker); journal, an Optuna journal file there (workers on one machine or a shared file
    # system); database, a SQLAlchemy URL read from $<storage_url_env> (workers anywhere), e.g.
    # postgresql+psycopg2://user:password@host:5432/optuna. The URL may hold a password, so it
    # never goes in the config.
    storage: Literal["sqlite", "journal", "database"] = "sqlite"
    storage_url_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "OPTUNA_STORAGE_URL"
    # Trial worker processes on one study (`bmlt tune-worker`); 1: the trials run in the step's process.
    workers: PositiveInt = 1
    # local: hpo.workers processes beside the step; kubernetes: a Job of hpo.workers pods
    # (deployment.tune_worker_pods) that the step launches with the study's name and waits for.
    launcher: Literal["local", "kubernetes"] = "local"

    @model_validator(mode="before")
    @classmethod
    def _no_url_in_the_file(cls, raw: Any) -> Any:
        # Checked on the whole section, so that the error does not repeat the URL (shown for a field).
        storage = raw.get("storage") if isinstance(raw, dict) else None
        if isinstance(storage, str) and "://" in storage:
            raise ValueError(
                "storage: a database URL does not go in the config (it may hold a password): set storage: "
                "database and export the URL in the variable named by hpo.storage_url_env (default OPTUNA_STORAGE_URL)"
            )
        return raw

    @field_validator("search_space")
    @classmethod
    def _tunable_paths(cls, space: dict[str, SearchDimension]) -> dict[str, SearchDimension]:
        for path in space:
            section, _, name = path.partition(".")
            if section not in TUNABLE_SECTIONS or not name:
                raise ValueError(f"{path!r}: tune fields of {list(TUNABLE_SECTIONS)} as 'section.field'")
            models: dict[str, type[Section]] = {"model": ModelConfig, "training": TrainingConfig}
            model = models[section]
            if name not in model.model_fields:
                raise ValueError(f"{path!r}: {section} has no field {name!r}")
            _check_dimension(path, space[path], model.model_fields[name])
        return space

    @model_validator(mode="after")
    def _space_when_enabled(self) -> HpoConfig:
        if self.enabled and not self.search_space:
            raise ValueError("hpo.enabled needs a search_space")
        if self.workers > 1 and self.storage == "sqlite":
            raise ValueError(
                f"hpo.workers {self.workers} needs storage journal (one machine or a shared file system) or "
                "database: parallel writers to one sqlite file fail with 'database is locked'"
            )
        return self


class MlflowConfig(Section):
    # default: sqlite under PlatformConfig.local_dir; or a tracking server (http://host:5000). The server's
    # credentials come only from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or _TOKEN).
    tracking_uri: str | None = None
    experiment: str = "bmlt"
    registered_model: str | None = None  # default: "bmlt-<config name>"
    ui_url: str = "http://127.0.0.1:5000"  # where `mlflow ui` serves, for links in Dagster metadata

    @model_validator(mode="before")
    @classmethod
    def _no_password_in_the_file(cls, raw: Any) -> Any:
        # Checked on the whole section, so that the error does not repeat the URI (shown for a field).
        uri = raw.get("tracking_uri") if isinstance(raw, dict) else None
        if isinstance(uri, str) and urlsplit(uri).password:
            raise ValueError(
                "tracking_uri: credentials do not go in the config: remove them from the URI and export "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (a server), or use a database URI without one"
            )
        return raw


class EvaluationConfig(Section):
    logistic_max_iter: PositiveInt = 300
    ece_bins: Annotated[int, Field(ge=2)] = 15
    pnl_threshold: Annotated[float, Field(gt=0, lt=1)] = 0.6  # direction mass needed to trade
    # Per side, on top of half the spread per side. None: the configured market's taker fee as ccxt
    # publishes it for Binance (spot 10 bps, USD-M 5 bps); the synthetic market uses spot's.
    fee_bps: Annotated[float, Field(ge=0)] | None = None
    # Whole days after the configured range, scored beside the test part (a simulated market
    # generates them). None: 2 on the synthetic market, 0 elsewhere (a recorded source has no
    # days beyond its range that the range's later runs would not train on).
    fresh_days: Annotated[int, Field(ge=0)] | None = None


class PromotionConfig(Section):
    """The promotion gate's rules (core/promotion.py, docs/design.md §4.9)."""

    max_ece: Annotated[float, Field(gt=0, le=1)] = 0.05  # the champion must be this calibrated
    # Opt-in: the gate otherwise judges forecasts, not trading. When true, every horizon's model
    # must also make money at evaluation.fee_bps: its net mean return per trade's 95% interval
    # lies above zero.
    require_profit_at_fee: bool = False


class QualityConfig(Section):
    """Thresholds of the blocking data-quality checks (a partition beyond them stops downstream)."""

    max_quarantined_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05
    max_stale_s: PositiveFloat = 60.0  # a book unchanged for longer counts as stale
    max_stale_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05
    min_coverage: Annotated[float, Field(ge=0, le=1)] = 0.5  # fraction of the day's steps with a fresh book, per symbol
    min_valid_fraction: Annotated[float, Field(ge=0, le=1)] = 0.5  # book_tensors steps valid for all symbols
    max_abs_distance_bps: PositiveFloat = 1000.0  # price channels beyond this mean a broken book
    min_class_share: Annotated[float, Field(ge=0, le=1)] = 0.005  # every class on the training part


class RecordingConfig(Section):
    """The live recorder (``bmlt record`` and ``record_job``)."""

    # One book per symbol and interval: the last one before the interval ends, which is what the
    # cadence grid samples. None: data.cadence_ms; 0: every book the recorder sees (each update
    # at live rates; ccxt coalesces updates that arrive while the recorder is busy).
    cadence_ms: Annotated[int, Field(ge=0)] | None = None
    flush_s: PositiveFloat = 2.0  # a crash loses at most this much
    rotate_s: PositiveInt = 300  # a new landing file per interval; must divide a day
    backoff_s: PositiveFloat = 0.5  # first reconnect delay, doubled per failure (with jitter)
    max_backoff_s: PositiveFloat = 30.0
    status_every_s: PositiveFloat = 1.0

    @model_validator(mode="after")
    def _divides(self) -> RecordingConfig:
        if 86_400 % self.rotate_s:
            raise ValueError(f"rotate_s={self.rotate_s} must divide one day (86400 s) so no file straddles midnight")
        if self.cadence_ms and (self.rotate_s * 1000) % self.cadence_ms:
            raise ValueError(f"rotate_s ({self.rotate_s} s) must be a multiple of cadence_ms ({self.cadence_ms} ms)")
        return self


class VersionsConfig(Section):
    """When the partition versions a commit supersedes are deleted (docs/design.md §9.5)."""

    # A superseded version stays readable this long. On a shared volume (NFS) it must exceed the
    # clients' attribute caching (acregmax, 60 s by default) with room to spare: readers resolve
    # the pointer once and must still find the version they resolved.
    grace_s: Annotated[float, Field(ge=120)] = 900.0
    orphan_age_s: Annotated[float, Field(ge=3600)] = 86_400.0  # a killed writer's version, never pointed to
    # Local/NFS readers lease the version they map, refreshed every lease_ttl_s / 4; a version is
    # never deleted under a live lease (a deleted, mapped file faults with ESTALE or SIGBUS on NFS).
    lease_ttl_s: Annotated[float, Field(ge=60)] = 300.0


class StorageConfig(Section):
    """Where assets live. Relative local paths are relative to the config file's folder (load_config
    makes them absolute). Object-store credentials come only from the environment (AWS_* variables,
    read by botocore), never from here."""

    uri: str = "data"  # a local folder, or s3://bucket/prefix
    endpoint_url: str | None = None  # an S3-compatible server's URL (MinIO, moto, ...); None: AWS
    # Local disk for a remote uri: staged copies of memory-mapped partitions (staged/<content hash>/),
    # and what must stay local (see PlatformConfig.local_dir).
    cache_dir: str = "cache"
    # Bound of the staged copies (least recently used evicted first); below the pod's ephemeral-storage.
    cache_max_gb: PositiveFloat = 50.0
    # meta.json is written with If-Match / If-None-Match (AWS S3, MinIO); false only for a server that rejects them.
    conditional_writes: bool = True
    versions: VersionsConfig = VersionsConfig()

    @field_validator("uri")
    @classmethod
    def _supported_uri(cls, value: str) -> str:
        if "://" in value and not value.startswith("s3://"):
            raise ValueError("must be a local folder or s3://bucket/prefix (no other object store is supported)")
        if value.startswith("s3://") and not value.removeprefix("s3://").strip("/"):
            raise ValueError("names no bucket: write s3://bucket/prefix")
        return value.rstrip("/") if value.startswith("s3://") else value

    @model_validator(mode="after")
    def _endpoint_for_s3(self) -> StorageConfig:
        if self.endpoint_url is not None and not self.is_remote:
            raise ValueError(f"endpoint_url is for an s3:// uri, and uri is the local folder {self.uri}")
        return self

    @property
    def is_remote(self) -> bool:
        return self.uri.startswith("s3://")


# The assets a step resource request may name (one Dagster step each; tests pin them to definitions.py).
StepName = Literal[
    "orderbook_snapshots", "book_tensors", "forward_returns", "training_dataset", "trained_model", "evaluation_report"
]


QUANTITY = r"\d+(\.\d+)?(m|[KMGTPE]i?)?"
QUANTITY_FACTORS = {"": 1, "m": 1e-3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
QUANTITY_FACTORS |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity_value(quantity: str) -> float:
    """A Kubernetes quantity ("16Gi", "500m") as a number (bytes, or cores)."""
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", quantity).groups()  # type: ignore[union-attr]
    return float(number) * QUANTITY_FACTORS[unit]


class Toleration(Section):
    """A Kubernetes toleration (camelCase as in a pod spec), e.g. of a GPU node pool's taint."""

    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: Annotated[int, Field(ge=0)] | None = None  # the Kubernetes field name


class StepResources(Section):
    """One step's pod (``k8s`` executor only): requests and limits, where it may be scheduled, and
    its image. Only the steps named get any of it: the GPU step alone goes to GPU nodes."""

    cpu: str | None = None  # a Kubernetes quantity: "4", "500m"
    memory: str | None = None  # "16Gi"
    gpus: Annotated[int, Field(ge=0)] = 0  # nvidia.com/gpu, requested as a limit
    # Local disk of the pod (staged copies, temporary files), requested and capped; an S3 store's
    # staged copies (storage.cache_max_gb) must fit in it.
    ephemeral_storage: str | None = None  # "40Gi"
    image: str | None = None  # this step's image (e.g. the CUDA build for trained_model); default the location's
    node_selector: dict[str, str] = {}  # e.g. {nvidia.com/gpu.present: "true"}
    tolerations: list[Toleration] = []
    affinity: dict[str, Any] = {}  # a Kubernetes Affinity (nodeAffinity, podAntiAffinity, ...), camelCase

    @field_validator("cpu", "memory", "ephemeral_storage")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(QUANTITY, value):
            raise ValueError(f"{value!r} is not a Kubernetes quantity such as '4', '500m' or '16Gi'")
        return value

    @field_validator("affinity")
    @classmethod
    def _affinity_kinds(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = set(value) - {"nodeAffinity", "podAffinity", "podAntiAffinity"}
        if unknown:
            raise ValueError(
                f"unknown affinity kind(s) {sorted(unknown)}: use nodeAffinity, podAffinity, podAntiAffinity"
            )
        return value


class LaunchedPods(Section):
    """Pods a step launches itself through the Kubernetes API (torchrun nodes, tuning workers).
    They get the step's environment from the secrets named here, never from the config."""

    image: str | None = None  # default: $BMLT_IMAGE, the step pod's own image (set by the Helm values)
    namespace: str | None = None  # default: the step pod's namespace
    cpu: str = "4"
    memory: str = "16Gi"
    gpus: Annotated[int, Field(ge=0)] = 0  # per pod; torchrun nodes need one per rank with backend nccl
    env_from_secrets: list[str] = []  # e.g. bmlt-s3, bmlt-optuna, bmlt-mlflow
    data_volume_claim: str | None = None  # a ReadWriteMany claim holding local storage; none for s3:// storage
    data_mount_path: str = "/data"
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    service_account: str | None = None  # one allowed to create pods, jobs and services (the chart's)

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not re.fullmatch(QUANTITY, value):
            raise ValueError(f"{value!r} is not a Kubernetes quantity such as '4', '500m' or '16Gi'")
        return value


class DeploymentConfig(Section):
    """How Dagster runs the assets; the same assets and results whatever is chosen. The defaults
    are the local ones: in-process steps, a date range in one run."""

    # single_run: a backfill is one run per asset over the whole range. multi_run: runs of at most
    # partitions_per_run days each, which the run coordinator starts side by side.
    backfill: Literal["single_run", "multi_run"] = "single_run"
    partitions_per_run: PositiveInt | None = None
    # in_process: every step of a run in the run's process. multiprocess: a process per step.
    # k8s: a Kubernetes Job per step (dagster_k8s.k8s_job_executor).
    executor: Literal["in_process", "multiprocess", "k8s"] = "in_process"
    max_concurrent: PositiveInt | None = None  # steps at once within one run (multiprocess, k8s)
    # Further k8s_job_executor config (job_namespace, env_secrets, step_k8s_config, ...), checked
    # against dagster-k8s's own schema when the code location loads.
    k8s: dict[str, Any] = {}
    step_resources: dict[StepName, StepResources] = {}  # per asset's step pod (k8s)
    # Where training.launcher torchrun runs its ranks: local (child processes of the step) or
    # kubernetes (pods of their own, one per training.nnodes, launched by the step).
    torchrun: Literal["local", "kubernetes"] = "local"
    torchrun_pods: LaunchedPods = LaunchedPods(gpus=1, cpu="8", memory="32Gi")
    tune_worker_pods: LaunchedPods = LaunchedPods()  # hpo.launcher kubernetes

    @model_validator(mode="after")
    def _consistent(self) -> DeploymentConfig:
        if self.backfill == "multi_run" and self.partitions_per_run is None:
            raise ValueError("backfill multi_run needs partitions_per_run (the days one run materializes)")
        if self.backfill == "single_run" and self.partitions_per_run is not None:
            raise ValueError("partitions_per_run applies to backfill multi_run only; remove it or set multi_run")
        if self.executor == "in_process" and self.max_concurrent is not None:
            raise ValueError(
                "max_concurrent applies to executor multiprocess or k8s; in_process runs one step at a time"
            )
        if self.executor != "k8s" and (self.k8s or self.step_resources):
            raise ValueError(f"k8s and step_resources apply to executor k8s only (executor is {self.executor!r})")
        owned = {"max_concurrent", "per_step_k8s_config"} & set(self.k8s)
        if owned:
            raise ValueError(
                f"deployment.k8s may not set {sorted(owned)}: "
                "use deployment.max_concurrent and deployment.step_resources"
            )
        return self


class PlatformConfig(Section):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    seed: int = 7
    data: DataConfig
    representation: RepresentationConfig = RepresentationConfig()
    labels: LabelsConfig = LabelsConfig()
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    hpo: HpoConfig = HpoConfig()
    mlflow: MlflowConfig = MlflowConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    promotion: PromotionConfig = PromotionConfig()
    quality: QualityConfig = QualityConfig()
    recording: RecordingConfig = RecordingConfig()
    storage: StorageConfig = StorageConfig()
    deployment: DeploymentConfig = DeploymentConfig()

    @model_validator(mode="after")
    def _cross_section(self) -> PlatformConfig:
        target = self.labels.target_symbol
        if target is not None and target not in self.data.symbols:
            raise ValueError(f"labels.target_symbol {target!r} is not one of data.symbols {self.data.symbols}")
        cadence_s = self.data.cadence_ms / 1000
        if self.recording.cadence_ms is None and (self.recording.rotate_s * 1000) % self.data.cadence_ms:
            raise ValueError(
                f"recording.rotate_s ({self.recording.rotate_s} s) must be a multiple of data.cadence_ms "
                f"({self.data.cadence_ms} ms), which the recorder samples at"
            )
        for horizon in self.labels.horizons_s:
            if (horizon * 1000) % self.data.cadence_ms:
                raise ValueError(
                    f"labels.horizons_s: {horizon}s is not a multiple of data.cadence_ms ({self.data.cadence_ms} ms)"
                )
        if self.representation.kind in ("full", "hybrid") and self.representation.raw_levels > self.data.depth:
            raise ValueError(
                f"representation.raw_levels={self.representation.raw_levels} exceeds "
                f"data.depth={self.data.depth}; lower it or record a deeper book"
            )
        if self.evaluation.fresh_days and self.data.source != "synthetic":
            raise ValueError(
                f"evaluation.fresh_days={self.evaluation.fresh_days}: only the synthetic market generates days after "
                f"the range; data.source {self.data.source!r} has none, so set it to 0 (or leave it out)"
            )
        if self.dataset.window_steps < DEEPLOB_MIN_WINDOW:
            raise ValueError(
                f"dataset.window_steps={self.dataset.window_steps} is too short for the DeepLOB trunk, "
                f"whose unpadded (4,1) convolutions consume {DEEPLOB_MIN_WINDOW - 1} steps; use >= {DEEPLOB_MIN_WINDOW}"
            )
        purge_steps = self.dataset.window_steps + max(self.horizon_steps) + self.embargo_steps
        total_steps = len(self.data.dates) * self.data.steps_per_day
        smallest_part = min(self.dataset.val_fraction, self.dataset.test_fraction) * total_steps
        if purge_steps >= smallest_part:
            raise ValueError(
                f"dataset.embargo_s ({self.dataset.embargo_s}s) + the longest horizon + the window purge "
                f"{purge_steps} steps at each boundary, more than a whole validation or test part "
                f"(about {int(smallest_part)} steps): shorten them or add days"
            )
        if self.training.nnodes > 1 and self.deployment.torchrun != "kubernetes":
            raise ValueError(
                f"training.nnodes={self.training.nnodes} needs deployment.torchrun: kubernetes (a pod per node); "
                "local torchrun runs on the step's machine only"
            )
        if self.hpo.launcher == "kubernetes" and self.hpo.storage != "database":
            raise ValueError("hpo.launcher kubernetes runs trials in other pods: they need hpo.storage database")
        if self.storage.is_remote:
            for step, wanted in self.deployment.step_resources.items():
                room = quantity_value(wanted.ephemeral_storage) if wanted.ephemeral_storage else None
                if room is not None and self.storage.cache_max_gb * 1e9 > room:
                    raise ValueError(
                        f"storage.cache_max_gb ({self.storage.cache_max_gb:g} GB of staged copies) does not fit in "
                        f"deployment.step_resources.{step}.ephemeral_storage ({wanted.ephemeral_storage}): "
                        "lower the cache or raise the request"
                    )
        window_s = self.dataset.window_steps * cadence_s
        if window_s + max(self.labels.horizons_s) >= 86_400 * len(self.data.dates):
            raise ValueError(
                f"dataset.window_steps ({window_s:g}s) plus the longest horizon do not fit "
                f"in the {len(self.data.dates)} day(s) of data"
            )
        return self

    # Derived quantities, in steps of the tensor cadence.
    @property
    def target(self) -> str:
        return self.labels.target_symbol or self.data.symbols[0]

    @property
    def horizon_steps(self) -> list[int]:
        return [h * 1000 // self.data.cadence_ms for h in self.labels.horizons_s]

    @property
    def fresh_day_count(self) -> int:
        if self.evaluation.fresh_days is None:
            return DEFAULT_FRESH_DAYS if self.data.source == "synthetic" else 0
        return self.evaluation.fresh_days

    @property
    def embargo_steps(self) -> int:
        return -(-self.dataset.embargo_s * 1000 // self.data.cadence_ms)

    @property
    def vol_lookback_steps(self) -> int:
        return max(2, self.labels.vol_lookback_s * 1000 // self.data.cadence_ms)

    @property
    def recording_cadence_ms(self) -> int:
        return self.data.cadence_ms if self.recording.cadence_ms is None else self.recording.cadence_ms

    @property
    def local_dir(self) -> Path:
        """Where what must stay on a local disk lives: the default MLflow and Optuna sqlite files,
        the training resume checkpoint, the tardis download cache and the landing zone of
        ``bmlt record``/``import``. That is storage.uri itself when it is local, else storage.cache_dir
        (so with a remote uri, point the MLflow and Optuna stores at servers to share them)."""
        return Path(self.storage.cache_dir if self.storage.is_remote else self.storage.uri)

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.local_dir / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str:
        """Where a new experiment keeps its artifacts: beside a local store, else "" (a tracking
        server decides: with ``--artifacts-destination`` it proxies them, and clients need no keys)."""
        local = self.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in self.tracking_uri
        return (self.local_dir / "mlartifacts").as_uri() if local else ""

    @property
    def content_hash(self) -> str:
        """A short hash of what the config asks for, whatever the checkout: the storage section is
        left out, as it only says where things live (its paths are made absolute when loading)."""
        content = self.model_dump_json(exclude={"storage"})
        return hashlib.sha256(content.encode()).hexdigest()[:8]

    @property
    def run_name(self) -> str:
        """What a tracking run of this config is called: name, date range, short config hash."""
        return f"{self.name} {self.data.start_date}..{self.data.end_date} {self.content_hash}"

    @property
    def registered_model_name(self) -> str:
        return self.mlflow.registered_model or f"bmlt-{self.name}"

    def shared_state_problem(self) -> str | None:
        """Why this config would split its ML state between machines, or None: with a k8s executor
        or an s3:// store, steps run on several machines (each with its own local_dir), so MLflow
        and Optuna must be servers every step reaches, not SQLite files on one machine's disk."""
        spread = [f"deployment.executor {self.deployment.executor}"] if self.deployment.executor == "k8s" else []
        spread += [f"storage.uri {self.storage.uri}"] if self.storage.is_remote else []
        if not spread:
            return None
        local = []
        if self.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in self.tracking_uri:
            shown = self.mlflow.tracking_uri or f"unset, so {self.tracking_uri}"
            local.append(f"mlflow.tracking_uri ({shown})")
        if self.hpo.enabled and self.hpo.storage != "database":
            local.append(f"hpo.storage ({self.hpo.storage})")
        if not local:
            return None
        return (
            f"steps run on several machines ({', '.join(spread)}), but {' and '.join(local)} would keep state on "
            "one machine's disk, so runs, models and trials split per pod: set mlflow.tracking_uri to a tracking "
            "server (http://mlflow:5000, deploy/k8s/mlflow.yaml) and hpo.storage: database ($OPTUNA_STORAGE_URL)"
        )


def format_validation_error(path: Path, error: ValidationError) -> str:
    """One line for one problem (``<file>: <field> = <value>: <what is wrong>``), else a header
    and a line per problem."""
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "<root>"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (misspelled? unknown keys are errors, not ignored)"
        elif item["type"] == "missing":
            message = "required key is missing"
        elif item["type"].startswith(("date_", "datetime_")):
            message += "; write a date as YYYY-MM-DD, e.g. 2025-01-06"
        value = item.get("input")
        shown = "" if item["type"] == "missing" or isinstance(value, dict) else f" = {value!r}"
        problems.append(f"{field}{shown}: {message}")
    if len(problems) == 1:
        return f"{path}: {problems[0]}"
    return "\n".join([f"{path}: {len(problems)} invalid value(s)", *(f"  - {problem}" for problem in problems)])


def expanded_location(source: str, key: str, value: Any) -> str:
    """A storage location as written, with ``~`` and ``$VARIABLES`` expanded; an empty one, or one
    naming a variable that is not set, is an error (it would become a folder named ``None`` or ``$X``)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigError(
            f"{source}: {key} is empty: write a folder (e.g. data) or s3://bucket/prefix, or delete the key "
            "for the default"
        )
    if not isinstance(value, str):
        return str(value)  # not a location: validation names the field and the type it wants
    where = os.path.expandvars(value)
    unset = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", where)
    if unset:
        raise ConfigError(
            f"{source}: {key} = {value!r} names ${unset[0]}, which is not set: export it, or write the location"
        )
    return os.path.expanduser(where)


def parse_config(raw: Any, source: str = "<config>", folder: Path | None = None) -> PlatformConfig:
    """Validate a parsed config; a relative local ``storage.uri`` or ``cache_dir`` is taken relative to ``folder``
    (the config file's), else to the working directory."""
    if raw is None:
        raise ConfigError(f"{source}: the config is empty; start from a shipped one such as configs/default.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of sections (name:, data:, ...), got {type(raw).__name__}; "
            "see configs/default.yaml"
        )
    evaluation = raw.get("evaluation")
    if isinstance(evaluation, dict) and "promotion_max_ece" in evaluation:
        raise ConfigError(
            f"{source}: evaluation.promotion_max_ece moved to the promotion section; write "
            f"`promotion: {{max_ece: {evaluation['promotion_max_ece']}}}`"
        )
    storage = raw.get("storage") or {}
    if isinstance(storage, dict):  # anything else fails validation below, with its field path
        if "base_dir" in storage:
            raise ConfigError(
                f"{source}: storage.base_dir was renamed storage.uri (a local folder or s3://bucket/prefix); "
                f"write `uri: {storage['base_dir']}`"
            )
        resolved = {}
        for key in ("uri", "cache_dir"):
            written = storage.get(key, StorageConfig.model_fields[key].default)
            where = expanded_location(source, f"storage.{key}", written)
            if "://" not in where and not Path(where).is_absolute():
                where = os.path.normpath((folder or Path.cwd()) / where)
            resolved[key] = where
        raw = {**raw, "storage": {**storage, **resolved}}
    try:
        return PlatformConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(Path(source), error)) from None


class _ConfigLoader(yaml.SafeLoader):
    """safe_load, except that a scalar YAML reads as a timestamp but Python cannot build (say
    ``2025-13-06``) stays a string, so pydantic reports it with its field path."""

    def construct_yaml_timestamp(self, node: Any) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError:
            return self.construct_scalar(node)


_ConfigLoader.add_constructor("tag:yaml.org,2002:timestamp", _ConfigLoader.construct_yaml_timestamp)


def _duplicate_key(node: Any, where: tuple[str, ...] = (), seen: set[int] | None = None) -> str | None:
    """The first key given twice in one mapping of a composed YAML tree, as a readable message.

    yaml keeps the last of two equal keys without a word; here a repeated key is an error.
    ``<<`` merge keys are skipped: overriding merged keys is what they are for."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias: checked where its anchor was defined
        return None
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":
                continue
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else f"<{key.id} key>"
            line = key.start_mark.line + 1
            if name in first_line:
                return (
                    f"line {line}: duplicate key {'.'.join((*where, name))!r} (first given at line "
                    f"{first_line[name]}); a key may appear once per section: delete one of them"
                )
            first_line[name] = line
            problem = _duplicate_key(value, (*where, name), seen)
            if problem:
                return problem
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problem = _duplicate_key(item, (*where, str(index)), seen)
            if problem:
                return problem
    return None


def read_yaml(path: Path) -> Any:
    """The parsed YAML document of ``path``; every failure is a ConfigError naming the file, the
    line when there is one, and what to fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); "
            "a config is a YAML text file such as configs/default.yaml"
        ) from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config ({error.strerror})") from None
    loader = None
    try:
        loader = _ConfigLoader(text)
        node = loader.get_single_node()
        problem = _duplicate_key(node) if node is not None else None
        if problem:
            raise ConfigError(f"{path}: {problem}")
        return loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        if "'\\t'" in str(error.problem):
            raise ConfigError(
                f"{path}: a tab at {where}: YAML indents and separates with spaces only; replace it with spaces"
            ) from None
        raise ConfigError(f"{path}: YAML syntax error at {where}: {error.problem}") from None
    except RecursionError:
        raise ConfigError(
            f"{path}: nested too deeply to read (hundreds of levels); a config has a few levels of "
            "sections, as in configs/default.yaml"
        ) from None
    except (yaml.YAMLError, ValueError) as error:  # e.g. a control character; ConfigError passes through
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{path}: not a readable YAML config ({' '.join(str(error).split())})") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_config(path: str | Path) -> PlatformConfig:
    """Read, parse and validate a YAML config; every failure is a readable ConfigError."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; pass a config file such as {path / 'default.yaml'}")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (pass a path such as configs/default.yaml)")
    raw = read_yaml(path)
    return parse_config(raw, str(path), folder=path.resolve().parent)


def config_path_from_env() -> Path:
    """The config a Dagster code location uses: $BMLT_CONFIG, else configs/default.yaml. A
    $BMLT_CONFIG naming no file is an error naming the variable: the user may not know it is set."""
    chosen = os.environ.get("BMLT_CONFIG")
    if not chosen:
        return DEFAULT_CONFIG_PATH
    path = Path(chosen)
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "no such file"
        raise ConfigError(
            f"BMLT_CONFIG={chosen}: {problem} (relative to {Path.cwd()}): export BMLT_CONFIG=<a config file>, "
            "or unset it for configs/default.yaml"
        )
    return path
