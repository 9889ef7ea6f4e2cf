"""The `bmlt` console script: one subcommand per task, every one reading the same config.

Every subcommand takes ``--config``, defaulting to ``$BMLT_CONFIG`` and then
``configs/default.yaml``; ``bmlt COMMAND --help`` describes it with an example. The work itself
lives in ``bmlt_assets.core``; this module parses arguments and prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from bmlt_assets.boundary import refuse_unwritable, report_failure
from bmlt_assets.core.config import ConfigError, PlatformConfig, config_path_from_env, day_out_of_range, load_config
from bmlt_assets.core.logs import colour_enabled, setup_logging

if TYPE_CHECKING:
    from bmlt_assets.core.files import LandingDays, StoredPath
    from bmlt_assets.core.sources.importer import ImportSummary

log = logging.getLogger(__name__)


def validate(config: PlatformConfig, args: argparse.Namespace) -> int:
    """Check a config; exit 0 if valid, 2 with one readable message per problem if not."""
    problem = config.shared_state_problem()
    if problem:
        print(f"invalid config: {args.config}: {problem}", file=sys.stderr)
        return 2
    print(
        f"{args.config}: valid ({config.name}: {config.data.source}, {len(config.data.symbols)} symbols, "
        f"{config.data.start_date}..{config.data.end_date}, target {config.target}, "
        f"horizons {config.labels.horizons_s}s, {config.labels.n_classes} classes)"
    )
    return 0


def range_tags(config: PlatformConfig, args: argparse.Namespace) -> int:
    """Print the run tags that make `dagster job execute` cover the config's dates."""
    from bmlt_assets.partitions import range_tags as tags

    print(json.dumps(tags(config.data.start_date, config.data.end_date)))
    return 0


def backfill(config: PlatformConfig, args: argparse.Namespace) -> int:
    """Queue a backfill of the daily assets over the config's dates for the Dagster daemon.

    The daemon cuts it into runs by deployment.backfill and starts them within the instance's
    limits; it must serve the config's assets: `dagster dev -w workspace.yaml` (the UI) for a
    shipped config, or `-m bmlt_assets.definitions` with BMLT_CONFIG naming it. With --webserver
    URL (or $DAGSTER_WEBSERVER_URL) the backfill goes through the webserver's GraphQL API, from any
    machine, with no instance config here; else into the instance of $DAGSTER_HOME. `dagster job
    backfill` instead starts one run per day at once."""
    import datetime as dt

    start, end = args.start or config.data.start_date, args.end or config.data.end_date
    if end < start:
        print(f"--to {end} is before --from {start}; give the first day, then the last", file=sys.stderr)
        return 2
    for day, flag in ((start, "--from"), (end, "--to")):
        problem = day_out_of_range(day, flag)
        if problem:
            print(problem, file=sys.stderr)
            return 2

    import dagster as dg  # after the checks: importing Dagster takes seconds

    from bmlt_assets.backfill import WebserverError, submit_asset_backfill, submit_through_webserver
    from bmlt_assets.definitions import build_definitions, daily_asset_keys
    from bmlt_resources.dagster_private import DagsterHomeNotSetError

    dates = [start + dt.timedelta(days=offset) for offset in range((end - start).days + 1)]
    keys = daily_asset_keys(config)
    webserver = args.webserver or os.environ.get("DAGSTER_WEBSERVER_URL")
    try:
        if webserver:
            backfill_id = submit_through_webserver(webserver, keys, start, end, title=config.name)
        else:
            instance = dg.DagsterInstance.get()  # before loading the definitions: a bad DAGSTER_HOME fails fast
            backfill_id = submit_asset_backfill(
                instance, build_definitions(args.config), keys, dates, title=config.name
            )
    except DagsterHomeNotSetError:
        print(
            "DAGSTER_HOME is not set: point it at the folder of the instance's dagster.yaml, "
            "or give --webserver URL (e.g. http://dagster-dagster-webserver:80) to go through the webserver",
            file=sys.stderr,
        )
        return 2
    except WebserverError as error:
        print(error, file=sys.stderr)
        return 2
    per_run = config.deployment.partitions_per_run or len(dates)
    print(
        f"backfill {backfill_id}: {len(dates)} day(s) {start}..{end}, {per_run} day(s) per run; "
        "the daemon (`dagster-daemon run` or `dagster dev`) starts its runs"
    )
    return 0


def summary(config: PlatformConfig, args: argparse.Namespace) -> int:
    """What the last pipeline run of a config produced: run, model, verdict, headline, paths."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from rich.console import Console
    from rich.markup import escape

    colour = colour_enabled(sys.stdout)  # soft_wrap: paths and links stay whole when piped
    console = Console(highlight=False, no_color=not colour, force_terminal=colour, soft_wrap=True)
    from bmlt_assets.core.checkpoint import ModelMeta
    from bmlt_assets.core.evaluation_report import EvaluationReport
    from bmlt_assets.core.readable import number
    from bmlt_assets.core.report import counts, headline, report_warnings
    from bmlt_resources.storage import StorageResource
    from bmlt_resources.tracking_probe import tracking_reachable

    storage = StorageResource.for_config(config)
    root = storage.store
    if not storage.committed(storage.model):
        console.print(f"no trained model yet for {config.name} under {root}: run `make demo` or the full_pipeline job")
        return 1
    meta = ModelMeta.load(storage.model)
    tracking_reachable(config.tracking_uri)  # seconds, not minutes of retries, when it is down
    client = MlflowClient(tracking_uri=config.tracking_uri)
    name, version = config.registered_model_name, meta.registered_version
    try:
        aliases = sorted(a for a, v in client.get_registered_model(name).aliases.items() if str(v) == version)
        tags = client.get_model_version(name, version).tags
        verdict = tags.get("bmlt.promotion", "not evaluated yet")
        # The verdict in one sentence, with what it rests on (versions evaluated before it have none).
        stated = tags.get("bmlt.verdict", verdict.partition(": ")[0])
        run = client.get_run(meta.mlflow_run_id)
        link = f"{config.mlflow.ui_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    except MlflowException as error:
        console.print(f"{config.tracking_uri}: cannot read the registry ({error.message})", style="red")
        return 2
    metrics = storage.report / "metrics.json"
    saved = EvaluationReport.from_json(json.loads(metrics.read_text())) if metrics.exists() else None
    # Green only for a model that is promoted and also earns at the stated costs: a statistical
    # verdict on a model that loses money is no good news.
    earns = saved is not None and all(entry.model.pnl.profitable for entry in saved.horizons)
    verdict_style = "bold green" if verdict == "promoted" and earns else "bold yellow"
    served = config.tracking_uri.startswith(("http://", "https://"))  # a tracking server serves its own UI
    ui = config.mlflow.ui_url if served else f"mlflow ui --backend-store-uri {config.tracking_uri}"
    rows = [
        ("run", f"{run.info.run_name}  {run.info.run_id}", ""),
        ("", link, "dim"),
        ("model", f"models:/{name}/{version}  " + " ".join(f"@{a}" for a in aliases), "bold"),
        ("verdict", verdict, verdict_style),
        ("report", str(storage.report / "report.html"), ""),
        ("data", str(root), ""),
        ("MLflow UI", ui, "dim"),
        ("Dagster UI", f"make ui CONFIG={args.config}", "dim"),
    ]
    for label, value, style in rows:
        if label == "verdict":  # the sentence, then one reason a line: "rejected: a; b" -> "  - a", "  - b"
            _, _, reasons = value.partition(": ")
            value = stated + "".join(f"\n           - {reason}" for reason in reasons.split("; ") if reason)
        console.print(f"{label:<10} " + (f"[{style}]{escape(value)}[/]" if style else escape(value)))
    if saved is not None:
        for i, entry in enumerate(saved.horizons):
            m = entry.model.metrics
            leak = "  [bold red]PROBABLE LEAK[/]" if entry.leak_suspected else ""
            console.print(
                f"{entry.horizon_s:>6} s    accuracy {number(m.accuracy)}, log loss {number(m.log_loss)} nats; "
                f"{escape(counts(entry.samples, entry.independent_outcomes))}{leak}"
            )
            for line in headline(entry, saved.fresh_at(i)):
                console.print(f"           {escape(line)}")
        for warning in report_warnings(saved):
            console.print(f"[bold yellow]warning[/]  {escape(warning.replace('**', ''))}")
    return 0


def _machine_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system that tells
        return None


def _free_disk(config: PlatformConfig) -> int | None:
    """Free bytes where the config's local storage goes (its nearest existing folder); None when remote."""
    if config.storage.is_remote:
        return None
    folder = config.local_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def plan(config: PlatformConfig, args: argparse.Namespace) -> int:
    """Bytes per day, per batch and per epoch of a config, and where it cannot run or learn, before running it."""
    from bmlt_assets.core.plan import DEFAULT_OUTCOMES, horizon_plan, human_bytes, memory_plan, plan_warnings
    from bmlt_assets.core.sources.tardis import API_KEY_VARIABLE, is_free_day

    d = config.data
    print(
        f"{args.config}: {len(d.symbols)} symbols x {d.steps_per_day} steps/day ({d.cadence_ms} ms), "
        f"depth {d.depth} -> {config.representation.kind} {config.representation.levels} levels, "
        f"window {config.dataset.window_steps} steps, {len(d.dates)} day(s)"
    )
    for name, value in memory_plan(config).items():
        shown = human_bytes(value) if "bytes" in name else f"{value:,}"
        print(f"  {name.replace('_', ' '):<32} {shown}")
    outcomes = getattr(args, "outcomes", DEFAULT_OUTCOMES)
    print(f"independent outcomes per horizon (non-overlapping), days needed for {outcomes:,}:")
    for row in horizon_plan(config, outcomes):
        print(
            f"  {row['horizon_s']:>6}s  {row['outcomes_per_day']:>6,}/day  {row['days_needed']:>5,} days needed  "
            f"{row['outcomes_in_range']:>9,} in the {row['days_in_range']} configured day(s)"
        )
        if row["days_in_range"] < row["days_needed"]:
            print(
                f"  warning: {row['days_in_range']} day(s) are too short for the {row['horizon_s']}s horizon: "
                f"{row['days_needed']} days give {outcomes:,} independent outcomes"
            )
    for warning in plan_warnings(config, _machine_memory(), _free_disk(config)):
        print(f"warning: {warning}")
    if d.source == "tardis" and not os.environ.get(API_KEY_VARIABLE):
        free = [day.isoformat() for day in d.dates if is_free_day(day)]
        print(
            f"note: {API_KEY_VARIABLE} is not set; tardis.dev then serves only the first day of each month: "
            f"{', '.join(free) or 'none in this range'}"
        )
    return 0


def report(config: PlatformConfig, args: argparse.Namespace) -> int:
    """Print an evaluation's headline table and write its HTML report."""
    import tempfile
    import webbrowser

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from bmlt_assets.core.evaluation_report import EvaluationReport
    from bmlt_assets.core.files import atomic_write
    from bmlt_assets.core.readable import number
    from bmlt_assets.core.report import counts, headline, report_warnings
    from bmlt_resources.tracking_probe import tracking_reachable

    tracking_reachable(config.tracking_uri)  # seconds, not minutes of retries, when it is down
    client = MlflowClient(tracking_uri=config.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="bmlt-report-") as download:
        try:
            folder = Path(client.download_artifacts(args.run_id, "report", download))
        except MlflowException as error:
            print(
                f"no evaluation report for run {args.run_id!r} in {config.tracking_uri}: {error.message}",
                file=sys.stderr,
            )
            return 2
        saved = EvaluationReport.from_json(json.loads((folder / "metrics.json").read_text()))
        html = (folder / "report.html").read_text()
        gated = folder / "promotion.json"  # the gate's verdict, once the evaluation has run it
        verdict = json.loads(gated.read_text()).get("sentence") if gated.exists() else None
    if verdict:
        print(f"Verdict: {verdict}")
    for i, entry in enumerate(saved.horizons):
        leak = "   ** PROBABLE LEAK **" if entry.leak_suspected else ""
        print(f"\nHorizon {entry.horizon_s}s, {counts(entry.samples, entry.independent_outcomes)}{leak}")
        for line in headline(entry, saved.fresh_at(i)):
            print(f"  {line}")
        columns = ("accuracy", "log loss", "ECE", "net bps/trade", "Sharpe")
        print(f"  {'predictor':<14}" + "".join(f"{c:>15}" for c in columns))
        for name, scores in entry.predictors.items():
            m, pnl = scores.metrics, scores.pnl
            values = (m.accuracy, m.log_loss, m.ece, pnl.mean_return_bps, pnl.sharpe_annualized)
            print(f"  {name:<14}" + "".join(f"{number(v):>15}" for v in values))
    warnings = report_warnings(saved)
    if warnings:
        print("\nWarnings, most material first:")
        for warning in warnings:
            print(f"  - {warning.replace('**', '')}")
    name = f"report-{args.run_id}.html"
    target = args.out or config.local_dir / config.name / "reports" / name
    if target.is_dir():  # -o a folder: the report goes in it, as cp would put it
        target = target / name
    atomic_write(target, lambda temporary: temporary.write_text(html))
    print(f"\nHTML report: {target.resolve()}")
    if args.open:
        webbrowser.open(target.resolve().as_uri())
    return 0


class _ImportProgress:
    """Progress of `bmlt import` on stderr: a bar per file on a terminal; otherwise a log line at
    every tenth of a file of LOG_FROM_BYTES or more (smaller ones take a second or two)."""

    LOG_FROM_BYTES = 64 * 2**20

    def __init__(self) -> None:
        self.interactive = sys.stderr.isatty()
        self.bar: object = None
        self.path: Path | None = None
        self.logged = 0

    def __call__(self, path: Path, done: int, total: int) -> None:
        if self.interactive:
            from tqdm import tqdm

            if path != self.path:
                self.close()
                self.bar = tqdm(total=total, desc=path.name, unit="B", unit_scale=True, leave=False, file=sys.stderr)
            bar = self.bar
            assert isinstance(bar, tqdm)
            bar.update(done - bar.n)
        elif total >= self.LOG_FROM_BYTES:
            if path != self.path:
                self.logged = 0
            tenth = 10 * done // max(total, 1)
            if tenth > self.logged:
                self.logged = tenth
                log.info("%s: %s%% read", path.name, 10 * tenth)
        self.path = path

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()  # type: ignore[attr-defined]
            self.bar = None


def _landing_stem(files: list[Path]) -> str:
    """The landing file name of an import: the first file's name before its first dot, then a hash
    of the inputs' bytes. Two recordings never share one (two hosts' ``depth.gz``, or ``depth.1.gz``
    and ``depth.2.gz``: the one imported last would replace the other's books), and importing the
    same recording again rewrites its own file."""
    import hashlib

    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return f"import-{files[0].name.split('.')[0]}-{digest.hexdigest()[:12]}"


def import_(config: PlatformConfig, args: argparse.Namespace) -> int:
    """Rebuild books from raw recordings and write them, a file per day, into the landing zone.

    --market and --levels default to the config's data.market and data.depth. A landing file of
    another depth is not overwritten without --force. A recording whose gzip stream is damaged
    keeps the books rebuilt before the damage (they are written) and exits 2 with what happened."""
    import tempfile

    from bmlt_assets.core.files import LandingDays, landing_base
    from bmlt_assets.core.sources.binance.sync import RecordingError
    from bmlt_assets.core.sources.importer import import_recordings

    refuse_unwritable(config)  # before reading what may be gigabytes
    args.market = args.market or config.data.market
    args.levels = config.data.depth if args.levels is None else args.levels
    problem = _import_arguments_problem(config, args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    progress = _ImportProgress()
    config.local_dir.mkdir(parents=True, exist_ok=True)
    # The books stream into hidden files in local_dir (the landing zone's own file system when it
    # is local) as the engine emits them; they become landing files only once all checks passed.
    with (
        tempfile.TemporaryDirectory(dir=config.local_dir, prefix=".bmlt-import-") as scratch,
        LandingDays(landing_base(config), args.market, _landing_stem(args.files), Path(scratch)) as landing,
    ):
        try:
            _, imported = import_recordings(args.files, args.format, args.market, args.levels, progress, landing.add)
        except (RecordingError, ValueError) as error:
            print(f"cannot import: {error}", file=sys.stderr)
            return 2
        except OSError as error:
            print(
                f"cannot import: {error.filename or args.files[0]}: cannot read it ({error.strerror})", file=sys.stderr
            )
            return 2
        finally:
            progress.close()
        unlisted = [symbol for symbol in sorted(landing.symbols) if symbol not in config.data.symbols]
        problem = _landing_problem(config, args, landing, unlisted)
        if problem:
            print(problem, file=sys.stderr)
            return 2
        written = landing.publish()
    return _report_import(config, args, imported, written, unlisted)


def _import_arguments_problem(config: PlatformConfig, args: argparse.Namespace) -> str | None:
    """What makes `bmlt import`'s arguments unusable, as the line to print, before anything is read."""
    if args.levels < 1:
        return f"--levels {args.levels}: keep at least 1 level per side (data.depth is {config.data.depth})"
    for path in args.files:
        if path.is_dir():
            return (
                f"cannot import: {path}: is a directory: pass the recordings in it (e.g. {path}/*.gz), not the folder"
            )
        if not path.exists():
            return f"cannot import: {path}: no such file"
    return None


def _landing_problem(
    config: PlatformConfig, args: argparse.Namespace, landing: LandingDays, unlisted: list[str]
) -> str | None:
    """Why the imported books must not land, as the line to print: none of their symbols is the
    config's, or they would overwrite a landing file of another depth without --force."""
    from bmlt_assets.core.files import landing_depth

    if unlisted and len(unlisted) == len(landing.symbols):
        return (
            f"cannot import: {', '.join(map(str, args.files))} holds books of {', '.join(unlisted)}, which "
            f"{args.config} does not list in data.symbols {config.data.symbols}: add them there, or pass the "
            "--config that lists them"
        )
    for target in landing.targets:
        held = landing_depth(target) if target.exists() else None
        if held is not None and held != args.levels and not args.force:
            return (
                f"cannot import: {target} holds books of {held} levels per side and this import has "
                f"{args.levels}: pass --force to overwrite it, or --levels {held} to match it"
            )
    return None


def _report_import(
    config: PlatformConfig,
    args: argparse.Namespace,
    imported: ImportSummary,
    written: list[StoredPath],
    unlisted: list[str],
) -> int:
    """Print what an import wrote and what it could not keep; exit 2 where a recording was damaged."""
    from bmlt_assets.core.files import landing_base, landing_root
    from bmlt_assets.core.sources.book_engine import time_steps_warning

    result = imported.as_dict() | {
        "files": [str(f) for f in args.files],
        "written": [str(w) for w in written],
        "levels": args.levels,
        "market": args.market,
    }
    status = 0
    if unlisted:
        print(
            f"note: the books of {', '.join(unlisted)} were written too, but {args.config} does not list them in "
            f"data.symbols {config.data.symbols}, so its assets will not read them",
            file=sys.stderr,
        )
    for damage in imported.damaged:  # after the write: the books before the damage are kept
        kept = (
            f"the {damage['books']} books rebuilt before the damage were written to "
            f"{landing_root(landing_base(config), args.market)}"
            if damage["books"]
            else "no book was rebuilt before the damage, so nothing was written from it"
        )
        print(
            f"{damage['file']} is truncated after {damage['lines']} lines ({damage['reason']}); {kept}: "
            "re-download or re-record it for the rest",
            file=sys.stderr,
        )
        status = 2
    for step in imported.time_steps_back:  # imported in the file's order, and said so
        print(f"warning: {time_steps_warning(step)}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
        return status
    source = (
        f" from {result['updates_applied']} applied depth updates "
        f"({result['updates_dropped']} dropped as older than the snapshot)"
    )
    print(
        f"{result['snapshots']} snapshots of {args.levels} levels"
        + (source if args.format != "tardis-book-snapshot" else "")
    )
    print(
        f"gaps: {len(result['gaps'])}"
        + "".join(f"\n  {g['symbol']}: {g['from_ns']} .. {g['to_ns']}" for g in result["gaps"])
    )
    print(f"crossed books: {result['crossed_books']}; first {result['first']}, last {result['last']}")
    print("written:" + "".join(f"\n  {w}" for w in result["written"]))
    return status


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '2h' or '1d' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration such as 90, 90s, 15m, 2h or 1d")
    return seconds


def record(config: PlatformConfig, args: argparse.Namespace) -> int:
    """Record live Binance books into the landing zone until stopped (or for --duration)."""
    import asyncio
    import signal

    from bmlt_assets.core.sources.binance.errors import BinanceBanned
    from bmlt_assets.core.sources.binance.recorder import RecorderError
    from bmlt_assets.recording import build_recorder
    from bmlt_resources.binance import BinanceResource

    if config.data.source != "binance":
        print(
            f"{config.name}: data.source is {config.data.source!r}; recording needs a Binance config "
            "such as configs/binance.yaml",
            file=sys.stderr,
        )
        return 2
    refuse_unwritable(config)
    interactive = sys.stderr.isatty()

    def show(line: str) -> None:  # one self-overwriting line on a terminal, plain lines in a log
        print(("\r\x1b[2K" if interactive else "") + line, end="" if interactive else "\n", file=sys.stderr, flush=True)

    async def run() -> dict:
        recorder = build_recorder(config, BinanceResource.for_config(config.data), show)
        stop = asyncio.Event()
        for number in (signal.SIGINT, signal.SIGTERM):  # flush, close and exit 0
            asyncio.get_running_loop().add_signal_handler(number, stop.set)
        return (await recorder.run(stop, args.duration)).as_dict()

    try:
        recorded = asyncio.run(run())
    except (RecorderError, BinanceBanned) as error:
        print(f"\ncannot record: {error}", file=sys.stderr)
        return 2
    if interactive:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(recorded, indent=2))
        return 0
    books = ", ".join(f"{symbol} {count}" for symbol, count in sorted(recorded["books"].items())) or "none"
    print(
        f"recorded {recorded['seconds']:.0f} s: books {books}; {recorded['files']} file(s), {recorded['bytes']:,} bytes"
    )
    print(
        f"reconnects: {recorded['reconnects']}; gaps: {len(recorded['gaps'])}"
        + "".join(
            f"\n  {g['symbol']}: {g['from_ns']} .. {g['to_ns']} after update {g['after_update_id']} ({g['reason']})"
            for g in recorded["gaps"]
        )
    )
    return 0


def tune_worker(config: PlatformConfig, args: argparse.Namespace) -> int:
    """Run queued trials of a tuning study until none is left (hpo.workers; any machine may join).

    trained_model creates the study, queues its trials and logs this command with the study's
    name; it also starts hpo.workers of these itself. Started elsewhere against the same
    database (hpo.storage database, the URL in the variable named by hpo.storage_url_env), a
    worker shares the queue. It loads the training dataset from storage, needs the config the
    step ran, and logs each trial as a nested MLflow run of the step's run."""
    from bmlt_assets.core.files import CorruptPartitionError, MissingPartitionError
    from bmlt_assets.training.tuning_worker import run_worker

    try:
        ran = run_worker(config, args.study)
    except (ConfigError, MissingPartitionError, CorruptPartitionError) as error:
        print(f"cannot tune: {error}", file=sys.stderr)
        return 2
    log.info("study %s: this worker ran %s trial(s); none is left in the queue", args.study, ran)
    return 0


# name -> (handler, example lines for --help)
COMMANDS = {
    "validate": (validate, "bmlt validate --config configs/default.yaml"),
    "plan": (plan, "bmlt plan --config configs/binance.yaml"),
    "range-tags": (
        range_tags,
        'dagster job execute -m bmlt_assets.definitions -j full_pipeline --tags "$(bmlt range-tags)"',
    ),
    "summary": (summary, "bmlt summary --config configs/default.yaml"),
    "backfill": (backfill, "DAGSTER_HOME=~/dagster bmlt backfill --config configs/binance.yaml --from 2025-01-01"),
    "report": (report, "bmlt report 3f2a9c... --config configs/default.yaml --open"),
    "import": (import_, "bmlt import recording.gz --market spot --levels 20 --config configs/binance.yaml"),
    "record": (record, "bmlt record --config configs/binance.yaml --duration 2h"),
    "tune-worker": (tune_worker, "bmlt tune-worker --config configs/synthetic-hpo.yaml --study NAME_FROM_THE_LOG"),
}


def _date(text: str):  # -> dt.date; argparse turns the ValueError into a usage error
    import datetime as dt

    return dt.date.fromisoformat(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bmlt",
        description="Binance ML Training platform: configs, plans, imports, recordings and reports.",
        epilog="example:\n  bmlt validate --config configs/default.yaml\n\n"
        "Every command reads --config, default $BMLT_CONFIG, then configs/default.yaml.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bmlt {version('bmlt')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subs = {}
    for name, (handler, example) in COMMANDS.items():
        described = handler.__doc__ or ""  # every command has one: tests/test_layers.py
        sub = commands.add_parser(
            name,
            help=described.splitlines()[0],
            description=described,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument(
            "--config", type=Path, default=None, help="a YAML config (default: $BMLT_CONFIG, then configs/default.yaml)"
        )
        sub.add_argument(
            "--log-level",
            default="INFO",
            type=str.upper,
            choices=["DEBUG", "INFO", "WARNING", "ERROR"],
            help="default INFO; debug also prints the traceback of a failure",
        )
        sub.set_defaults(handler=handler)
        subs[name] = sub
    subs["backfill"].add_argument(
        "--webserver",
        default=None,
        help="the Dagster webserver's URL: submit through its GraphQL API (default: $DAGSTER_WEBSERVER_URL)",
    )
    for flag, field in (("--from", "start"), ("--to", "end")):
        subs["backfill"].add_argument(
            flag, dest=field, type=_date, default=None, help=f"YYYY-MM-DD (default: the config's {field}_date)"
        )
    subs["report"].add_argument("run_id", help="the MLflow run id of an evaluation")
    subs["report"].add_argument(
        "-o", "--out", type=Path, help="where to write the HTML (default: <data>/<config>/reports/report-RUN_ID.html)"
    )
    subs["report"].add_argument("--open", action="store_true", help="open the HTML in a browser")
    subs["import"].add_argument(
        "files",
        type=Path,
        nargs="+",
        help="recordings: '<receive ns> <raw JSON>' lines (gzip or plain), or tardis.dev book_snapshot_25 CSVs",
    )
    subs["import"].add_argument(
        "--format",
        default="binance-ws",
        choices=["binance-ws", "tardis-incremental", "tardis-book-snapshot"],
        help="binance-ws: combined depth streams + REST snapshots; tardis-incremental: incremental_book_L2 CSV; "
        "tardis-book-snapshot: book_snapshot_25 CSV",
    )
    subs["import"].add_argument(
        "--market", choices=["spot", "usdm"], default=None, help="default: the config's data.market"
    )
    subs["import"].add_argument(
        "--levels", type=int, default=None, help="levels per side to keep (default: the config's data.depth)"
    )
    subs["import"].add_argument(
        "--force", action="store_true", help="overwrite a landing file that holds books of another depth"
    )
    subs["record"].add_argument(
        "--duration",
        type=parse_duration,
        default=None,
        help="stop after this long (90, 15m, 2h, 1d); default: until SIGINT/SIGTERM",
    )
    subs["tune-worker"].add_argument(
        "--study", required=True, help="the study's name, as the trained_model step logs it ('HPO study NAME in ...')"
    )
    for name in ("import", "record"):
        subs[name].add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; whatever fails is one line on stderr (bmlt_assets.boundary), exit 2 when
    the input or the environment is at fault, the traceback only with --log-level debug."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    config = None
    try:
        args.config = args.config or config_path_from_env()
        config = load_config(args.config)
        return args.handler(config, args)
    except (Exception, KeyboardInterrupt) as error:
        return report_failure(error, config, debug=args.log_level == "DEBUG")


if __name__ == "__main__":
    sys.exit(main())
