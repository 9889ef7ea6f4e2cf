"""The validated platform config as a Dagster resource.

The config is parsed and validated once, when the code location loads; the resource carries the
result (as JSON, so it shows in the Dagster UI and travels to step processes), never a path that
assets would read again.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any

import click
import dagster as dg
from pydantic import PrivateAttr, ValidationError

from bmlt_assets.core.config import ConfigError, PlatformConfig, format_validation_error, load_config


class CodeLocationError(click.ClickException):
    """A failure met while a code location loads that the user can fix: one clean line, exit 2.

    Measured with Dagster 1.13.27: a plain exception out of the loader makes `dagster job execute
    -m ...` print a ~50-line traceback ending in the message; a DagsterError raised ``from None``
    does the same. Dagster's CLI is click, and click shows a ClickException as its message alone
    and exits with its ``exit_code``, so this is the one line on stderr (after the warnings that
    libraries print before, such as Dagster's SupersessionWarning for `job execute`). Unlike
    printing and raising SystemExit, it still reaches the UI of `dagster dev`, whose code server
    catches it and shows the message as the location's load error (bmlt_assets.boundary makes them).
    """

    exit_code = 2

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(self.format_message(), file=file or sys.stderr)


class CodeLocationConfigError(ConfigError, CodeLocationError):
    """A bad config met while a code location loads; being a ConfigError, it is what programmatic
    callers catch."""

    def __init__(self, message: str) -> None:
        CodeLocationError.__init__(self, message)

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"invalid config: {self.format_message()}", file=file or sys.stderr)


class SettingsResource(dg.ConfigurableResource):
    """Hands the validated platform config to assets; its file and content are visible in the UI."""

    config_path: str
    config_json: str
    _config: PlatformConfig | None = PrivateAttr(default=None)

    @classmethod
    def from_file(cls, path: str | Path) -> SettingsResource:
        try:
            config = load_config(path)
        except ConfigError as error:
            raise CodeLocationConfigError(str(error)) from None
        return cls(config_path=str(Path(path).resolve()), config_json=config.model_dump_json())

    def get(self) -> PlatformConfig:
        if self._config is None:
            try:
                self._config = PlatformConfig.model_validate_json(self.config_json)
            except ValidationError as error:  # edited in the launchpad: the same readable message
                raise ConfigError(format_validation_error(Path(self.config_path), error)) from None
        return self._config
