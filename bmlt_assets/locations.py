"""One code location per shipped config, for workspace.yaml: several configs side by side in one
Dagster UI. Each location's assets live under its config's name (``synthetic-default/...``), as
Dagster allows one materializable definition per asset key in an instance.

To add one: a function like those below, and an entry in workspace.yaml naming it as
``attribute``.
"""

import dagster as dg

from bmlt_assets.core.config import PROJECT_ROOT, load_config
from bmlt_assets.definitions import build_definitions

CONFIGS = PROJECT_ROOT / "configs"


def _location(config_file: str) -> dg.Definitions:
    path = CONFIGS / config_file
    return build_definitions(path, key_prefix=load_config(path).name)


@dg.definitions
def synthetic_default() -> dg.Definitions:
    return _location("default.yaml")


@dg.definitions
def synthetic_hpo() -> dg.Definitions:
    return _location("synthetic-hpo.yaml")


@dg.definitions
def binance() -> dg.Definitions:
    return _location("binance.yaml")
