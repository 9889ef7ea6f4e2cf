"""The validated platform config as a Dagster resource.

The config is parsed and validated once, when the code location loads; the resource carries the
result (as JSON, so it shows in the Dagster UI and travels to step processes), never a path that
assets would read again.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr, ValidationError

from bmlt_assets.core.config import ConfigError, PlatformConfig, format_validation_error, load_config


class SettingsResource(dg.ConfigurableResource):
    """Hands the validated platform config to assets; its file and content are visible in the UI."""

    config_path: str
    config_json: str
    _config: PlatformConfig | None = PrivateAttr(default=None)

    @classmethod
    def from_file(cls, path: str | Path) -> SettingsResource:
        config = load_config(path)
        return cls(config_path=str(Path(path).resolve()), config_json=config.model_dump_json())

    def get(self) -> PlatformConfig:
        if self._config is None:
            try:
                self._config = PlatformConfig.model_validate_json(self.config_json)
            except ValidationError as error:  # edited in the launchpad: the same readable message
                raise ConfigError(format_validation_error(Path(self.config_path), error)) from None
        return self._config
