"""Config validation: every error names the field path, the bad value and what was expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bmlt_assets.core.config import PROJECT_ROOT, ConfigError, load_config
from tests.helpers import write_config


@pytest.mark.parametrize("name", ["default.yaml", "binance.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    config = load_config(PROJECT_ROOT / "configs" / name)
    assert config.data.symbols


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"representation": {"kind": "fancy"}}, ["representation.kind", "'fancy'", "'full', 'aggregated' or 'hybrid'"]),
        ({"labels": {"horizons_s": [-60, 300]}}, ["labels.horizons_s.0", "-60", "greater than 0"]),
        ({"dataset": {"train_fraction": 0.8}}, ["dataset", "must sum to 1"]),
        ({"data": {"symbols": ["BTC/USDT", "DOGE/USDT"]}}, ["data", "DOGE/USDT", "synthetic"]),
        ({"data": {"symbols": ["btcusdt"]}}, ["data.symbols", "btcusdt", "ccxt unified symbol"]),
        ({"model": {"multi_assets": "stacked"}}, ["model.multi_assets", "unknown key"]),
        ({"labels": {"target_symbol": "SOL/USDT"}}, ["labels.target_symbol", "SOL/USDT", "not one of data.symbols"]),
        ({"representation": {"kind": "full", "raw_levels": 0}}, ["representation", "raw_levels >= 1"]),
        ({"dataset": {"window_steps": 10}}, ["dataset.window_steps=10", ">= 19"]),
        ({"labels": {"horizons_s": [25]}}, ["labels.horizons_s", "25s", "multiple of data.cadence_ms"]),
        (
            {"dataset": {"embargo_s": 40000}},
            ["dataset.embargo_s (40000s)", "more than a whole validation or test part"],
        ),
    ],
)
def test_invalid_values_name_field_value_and_expectation(tmp_path: Path, overrides: dict, expected: list[str]) -> None:
    path = write_config(tmp_path, overrides)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    for fragment in expected:
        assert fragment in str(error.value), str(error.value)


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ndata:\n  symbols: [BTC/USDT\n  start_date: 2025-01-01\nlabels: {\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error at line \d+, column \d+"):
        load_config(path)


def test_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def _bmlt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bmlt_assets.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    ok = _bmlt("validate", "--config", str(PROJECT_ROOT / "configs" / "default.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout

    bad = _bmlt("validate", "--config", str(write_config(tmp_path, {"representation": {"kind": "fancy"}})))
    assert bad.returncode == 2
    assert "representation.kind" in bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout


def test_a_relative_storage_path_is_relative_to_the_config_file(tmp_path: Path, monkeypatch) -> None:
    elsewhere = tmp_path / "configs"
    elsewhere.mkdir()
    path = write_config(elsewhere)
    raw = path.read_text().replace(str(elsewhere / "data"), "data")
    path.write_text(raw)
    monkeypatch.chdir(tmp_path)  # neither the working directory nor the checkout
    assert load_config(path).local_dir == elsewhere / "data"
    path.write_text(raw.replace("uri: data", "uri: ../common-data"))
    assert load_config(path).local_dir == tmp_path / "common-data"
