"""The `bmlt` console script.

    bmlt validate CONFIG       check a config; exit 0 if valid, 2 with a readable message if not
    bmlt range-tags CONFIG     the run tags that make `dagster job execute` cover the config's dates
    bmlt summary CONFIG        where the outputs of a pipeline run are, and its headline results
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bmlt_resources.settings import ConfigError, PlatformConfig, load_config


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
    print(f"registered     : models:/{config.registered_model_name}@challenger")
    print(f"Dagster UI     : BMLT_CONFIG={path} dagster dev -w workspace.yaml")
    if report.exists():
        print(f"\n{report.read_text()}")
    else:
        print(f"\n(no evaluation report yet at {report})")
    return 0


COMMANDS = {"validate": _validate, "range-tags": _range_tags, "summary": _summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bmlt", description="Binance ML Training platform")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler in COMMANDS.items():
        sub = commands.add_parser(name, help=handler.__doc__ or name)
        sub.add_argument("config", type=Path, help="a YAML config, e.g. configs/default.yaml")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"invalid config: {error}", file=sys.stderr)
        return 2
    return COMMANDS[args.command](config, str(args.config))


if __name__ == "__main__":
    sys.exit(main())
