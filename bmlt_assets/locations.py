"""One code location per shipped config, for workspace.yaml: several configs side by side in one
Dagster UI and instance. Each is ``build_definitions`` of its config, exactly what
``-m bmlt_assets.definitions`` serves with ``BMLT_CONFIG`` naming it: the same asset keys (under
the config's name, ``synthetic-default/...``), so what the scripts materialize shows in the UI.

To add one: a function like those below, and an entry in workspace.yaml naming it as
``attribute``, with the config's name as ``location_name``. A config of your own joins them with
``make ui CONFIG=my.yaml`` (``config_from_env``, through deploy/workspace-config.yaml).
"""

from pathlib import Path

import dagster as dg

from bmlt_assets.boundary import code_location_errors
from bmlt_assets.core.config import PROJECT_ROOT, config_path_from_env, load_config
from bmlt_assets.definitions import build_definitions
from bmlt_resources.settings import CodeLocationConfigError

CONFIGS = PROJECT_ROOT / "configs"
SHIPPED = ("default.yaml", "synthetic-hpo.yaml", "binance.yaml", "binance-history.yaml")


def _location(path: Path) -> dg.Definitions:
    with code_location_errors(path):
        return build_definitions(path)


@dg.definitions
def synthetic_default() -> dg.Definitions:
    return _location(CONFIGS / "default.yaml")


@dg.definitions
def synthetic_hpo() -> dg.Definitions:
    return _location(CONFIGS / "synthetic-hpo.yaml")


@dg.definitions
def binance() -> dg.Definitions:
    return _location(CONFIGS / "binance.yaml")


@dg.definitions
def binance_history() -> dg.Definitions:
    return _location(CONFIGS / "binance-history.yaml")


@dg.definitions
def config_from_env() -> dg.Definitions:
    """$BMLT_CONFIG beside the shipped configs. Two locations may not define the same asset keys,
    so it must be another file, with a name of its own."""
    with code_location_errors():
        path = config_path_from_env()
    with code_location_errors(path):
        if path.resolve() in {(CONFIGS / file).resolve() for file in SHIPPED}:
            raise CodeLocationConfigError(
                f"BMLT_CONFIG={path} is a shipped config, which workspace.yaml serves already: "
                "load deploy/workspace-config.yaml for a config of your own only"
            )
        name = load_config(path).name
        shipped = {load_config(CONFIGS / file).name: file for file in SHIPPED}
        if name in shipped:
            raise CodeLocationConfigError(
                f"{path}: name {name!r} is that of configs/{shipped[name]}, which the UI serves beside it: "
                "give your config a name of its own (its assets and data live under it)"
            )
        return build_definitions(path)
