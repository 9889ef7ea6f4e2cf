"""The `bmlt` console script.

    bmlt validate CONFIG       check a config; exit 0 if valid, 2 with a readable message if not
    bmlt range-tags CONFIG     the run tags that make `dagster job execute` cover the config's dates
    bmlt summary CONFIG        where the outputs of a pipeline run are, and its headline results
    bmlt plan CONFIG           bytes per day, per batch and per epoch of a config, before running it
    bmlt report RUN_ID         an evaluation's headline table; writes (or --open's) its HTML report
    bmlt import FILE...        raw Binance recordings -> N-level snapshots in the landing zone
    bmlt record --config C     record live Binance books into the landing zone until stopped
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from bmlt_assets.core.config import ConfigError, PlatformConfig, config_path_from_env, load_config


def _validate(config: PlatformConfig, path: str) -> int:
    print(
        f"{path}: valid ({config.name}: {config.data.source}, {len(config.data.symbols)} symbols, "
        f"{config.data.start_date}..{config.data.end_date}, target {config.target}, "
        f"horizons {config.labels.horizons_s}s, {config.labels.n_classes} classes)"
    )
    return 0


def _range_tags(config: PlatformConfig, path: str) -> int:
    from bmlt_assets.partitions import range_tags

    print(json.dumps(range_tags(config.data.start_date, config.data.end_date)))
    return 0


def _summary(config: PlatformConfig, path: str) -> int:
    root = config.base_dir / config.name
    report = root / "report" / "report.md"
    print(f"data directory : {root}")
    print(f"MLflow         : {config.tracking_uri}  (browse: mlflow ui --backend-store-uri {config.tracking_uri})")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        aliases = sorted(MlflowClient(tracking_uri=config.tracking_uri).get_registered_model(config.registered_model_name).aliases)
    except MlflowException:
        aliases = []
    shown = ", ".join(f"models:/{config.registered_model_name}@{alias}" for alias in aliases) or "(no model registered yet)"
    print(f"registered     : {shown}")
    print(f"Dagster UI     : make ui CONFIG={path}   (= BMLT_CONFIG={path} DAGSTER_HOME=$PWD/.dagster_home dagster dev -w workspace.yaml)")
    if report.exists():
        print(f"\n{report.read_text()}")
    else:
        print(f"\n(no evaluation report yet at {report})")
    return 0


def _plan(config: PlatformConfig, path: str) -> int:
    from bmlt_assets.core.plan import human_bytes, memory_plan

    d = config.data
    print(
        f"{path}: {len(d.symbols)} symbols x {d.steps_per_day} steps/day ({d.cadence_ms} ms), "
        f"depth {d.depth} -> {config.representation.kind} {config.representation.levels} levels, "
        f"window {config.dataset.window_steps} steps, {len(d.dates)} day(s)"
    )
    for name, value in memory_plan(config).items():
        shown = human_bytes(value) if "bytes" in name else f"{value:,}"
        print(f"  {name.replace('_', ' '):<32} {shown}")
    return 0


COMMANDS = {"validate": _validate, "range-tags": _range_tags, "summary": _summary, "plan": _plan}


def _report(config: PlatformConfig, run_id: str, out: Path | None, open_browser: bool) -> int:
    import tempfile
    import webbrowser

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=config.tracking_uri)
    try:
        folder = Path(client.download_artifacts(run_id, "report", tempfile.mkdtemp(prefix="bmlt-report-")))
    except MlflowException as error:
        print(f"no evaluation report for run {run_id!r} in {config.tracking_uri}: {error.message}", file=sys.stderr)
        return 2
    saved = json.loads((folder / "metrics.json").read_text())
    for entry, horizon in zip(saved["report"], saved["horizons_s"]):
        print(f"\nHorizon {horizon}s, {entry['samples']} test samples" + ("   ** PROBABLE LEAK **" if entry.get("leak_suspected") else ""))
        print(f"  {'predictor':<14}{'accuracy':>10}{'log loss':>10}{'ECE':>8}{'Sharpe':>9}")
        for name, m in entry["metrics"].items():
            print(f"  {name:<14}{m['accuracy']:>10.4f}{m['log_loss']:>10.4f}{m['ece']:>8.4f}{entry['pnl'][name]['sharpe_annualized']:>9.2f}")
        if "capture" in entry:
            print(f"  signal capture: accuracy {entry['capture']['accuracy_capture']:.3f}, log loss {entry['capture']['logloss_capture']:.3f}")
    target = out or Path(f"report-{run_id}.html")
    target.write_text((folder / "report.html").read_text())
    print(f"\nHTML report: {target.resolve()}")
    if open_browser:
        webbrowser.open(target.resolve().as_uri())
    return 0


def _import(config: PlatformConfig, files: list[Path], fmt: str, market: str, levels: int, as_json: bool) -> int:
    from bmlt_assets.core.binance_sync import BookBuilder, ImportSummary, read_recording, tardis_book_snapshots
    from bmlt_assets.core.files import landing_root, write_parquet

    import polars as pl

    if fmt not in ("binance-ws", "tardis-book-snapshot"):
        print(f"unknown --format {fmt!r}: choose binance-ws or tardis-book-snapshot", file=sys.stderr)
        return 2
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        print(f"no such recording: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        if fmt == "binance-ws":
            builder = BookBuilder(market, levels)
            for path in files:
                builder.feed(read_recording(path))
            frame, imported = builder.frame(), builder.summary
        else:
            frame = pl.concat([tardis_book_snapshots(path, levels) for path in files])
            crossed = int((frame["bid_px"].arr.first() >= frame["ask_px"].arr.first()).sum())
            imported = ImportSummary(snapshots=frame.height, crossed=crossed, first_receive_ns=frame["receive_ts"].min(), last_receive_ns=frame["receive_ts"].max())
    except ValueError as error:
        print(f"cannot import: {error}", file=sys.stderr)
        return 2
    written = []
    if frame.height:
        day = pl.from_epoch(pl.col("receive_ts"), time_unit="ns").dt.date()
        for (date,), rows in frame.with_columns(day.alias("date")).partition_by("date", as_dict=True).items():
            target = landing_root(config.base_dir, market) / f"date={date}" / f"import-{files[0].name.split('.')[0]}.parquet"
            write_parquet(rows.drop("date"), target)
            written.append(str(target))
    summary = imported.as_dict() | {"files": [str(f) for f in files], "written": written, "levels": levels, "market": market}
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        source = f" from {summary['updates_applied']} applied depth updates ({summary['updates_dropped']} dropped as older than the snapshot)"
        print(f"{summary['snapshots']} snapshots of {levels} levels" + (source if fmt == "binance-ws" else ""))
        print(f"gaps: {len(summary['gaps'])}" + "".join(f"\n  {g['symbol']}: {g['from_ns']} .. {g['to_ns']}" for g in summary["gaps"]))
        print(f"crossed books: {summary['crossed_books']}; first {summary['first']}, last {summary['last']}")
        print("written:" + "".join(f"\n  {w}" for w in written))
    return 0


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


def _record(config: PlatformConfig, duration_s: float | None, as_json: bool) -> int:
    import asyncio
    import signal

    from bmlt_assets.core.recorder import RecorderError
    from bmlt_assets.recording import build_recorder
    from bmlt_assets.core.errors import BinanceBanned
    from bmlt_resources.binance import BinanceResource

    if config.data.source != "binance":
        print(f"{config.name}: data.source is {config.data.source!r}; recording needs a Binance config such as configs/binance.yaml", file=sys.stderr)
        return 2
    interactive = sys.stderr.isatty()

    def show(line: str) -> None:  # one self-overwriting line on a terminal, plain lines in a log
        print(("\r\x1b[2K" if interactive else "") + line, end="" if interactive else "\n", file=sys.stderr, flush=True)

    async def record() -> dict:
        recorder = build_recorder(config, BinanceResource.for_config(config.data), show)
        stop = asyncio.Event()
        for number in (signal.SIGINT, signal.SIGTERM):  # flush, close and exit 0
            asyncio.get_running_loop().add_signal_handler(number, stop.set)
        return (await recorder.run(stop, duration_s)).as_dict()

    try:
        summary = asyncio.run(record())
    except (RecorderError, BinanceBanned) as error:
        print(f"\ncannot record: {error}", file=sys.stderr)
        return 2
    if interactive:
        print(file=sys.stderr)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        books = ", ".join(f"{symbol} {count}" for symbol, count in sorted(summary["books"].items())) or "none"
        print(f"recorded {summary['seconds']:.0f} s: books {books}; {summary['files']} file(s), {summary['bytes']:,} bytes")
        print(f"reconnects: {summary['reconnects']}; gaps: {len(summary['gaps'])}"
              + "".join(f"\n  {g['symbol']}: {g['from_ns']} .. {g['to_ns']} after update {g['after_update_id']} ({g['reason']})" for g in summary["gaps"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bmlt", description="Binance ML Training platform")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler in COMMANDS.items():
        sub = commands.add_parser(name, help=handler.__doc__ or name)
        sub.add_argument("config", type=Path, nargs="?", help="a YAML config, e.g. configs/default.yaml")
        sub.add_argument("--config", dest="config_option", metavar="CONFIG", type=Path, help="the same, as an option")
    report = commands.add_parser("report", help="print an evaluation report and write its HTML")
    report.add_argument("run_id", help="the MLflow run id of an evaluation")
    report.add_argument("--config", dest="config_option", metavar="CONFIG", type=Path, default=None, help="config whose MLflow store to read (default: $BMLT_CONFIG or configs/default.yaml)")
    report.add_argument("--out", type=Path, help="where to write the HTML (default: report-RUN_ID.html)")
    report.add_argument("--open", action="store_true", help="open the HTML in a browser")
    imports = commands.add_parser("import", help="import raw recordings into the landing zone")
    imports.add_argument("files", type=Path, nargs="+", help="'<receive ns> <raw JSON>' recordings, gzip or plain")
    imports.add_argument("--format", default="binance-ws", choices=["binance-ws", "tardis-book-snapshot"],
                         help="binance-ws: '<receive ns> <json>' combined streams + REST snapshots; tardis-book-snapshot: book_snapshot_25 CSV")
    imports.add_argument("--market", choices=["spot", "usdm"], default="spot")
    imports.add_argument("--levels", type=int, default=20, help="levels per side to keep")
    imports.add_argument("--config", dest="config_option", metavar="CONFIG", type=Path, default=None, help="config whose data directory receives the files")
    imports.add_argument("--json", action="store_true", help="print the summary as JSON")
    records = commands.add_parser("record", help="record live Binance books into the landing zone")
    records.add_argument("--config", dest="config_option", metavar="CONFIG", type=Path, default=None, help="a Binance config, e.g. configs/binance.yaml (default: $BMLT_CONFIG)")
    records.add_argument("--duration", type=parse_duration, default=None, help="stop after this long (90, 15m, 2h, 1d); default: until SIGINT/SIGTERM")
    records.add_argument("--json", action="store_true", help="print the final summary as JSON")
    args = parser.parse_args(argv)
    if args.command in ("report", "import", "record"):
        args.config = args.config_option or config_path_from_env()
    else:
        args.config = args.config or args.config_option
    if args.config is None:
        parser.error(f"{args.command}: give a config file, e.g. configs/default.yaml")
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"invalid config: {error}", file=sys.stderr)
        return 2
    if args.command == "report":
        return _report(config, args.run_id, args.out, args.open)
    if args.command == "import":
        return _import(config, args.files, args.format, args.market, args.levels, args.json)
    if args.command == "record":
        return _record(config, args.duration, args.json)
    return COMMANDS[args.command](config, str(args.config))


if __name__ == "__main__":
    sys.exit(main())
