"""Config validation: every error names the field path, the bad value and what was expected."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
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


def _space(dimensions: dict) -> dict:
    return {"enabled": True, "search_space": dimensions}


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
        # Days without a daily partition: before Binance spot opened, or not over yet.
        (
            {"data": {"start_date": "2017-07-13"}},
            ["data", "start_date 2017-07-13 is before 2017-07-14", "use 2017-07-14 or later"],
        ),
        (
            {"data": {"end_date": (dt.datetime.now(dt.UTC).date()).isoformat()}},
            [
                "data",
                "is not over yet (UTC)",
                f"use {dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)} or earlier",
            ],
        ),
        # Every value a search dimension can take is checked against the field it tunes.
        (
            {"hpo": _space({"model.multi_asset": {"type": "categorical", "choices": ["stacked", "transformer"]}})},
            ["hpo.search_space", "choice 'transformer' is not a valid model.multi_asset", "'stacked', 'branches'"],
        ),
        (
            {"hpo": _space({"training.ema_decay": {"type": "float", "low": 0.9, "high": 1.5}})},
            ["float value 1.5 is not a valid training.ema_decay", "less than 1"],
        ),
        (
            {"hpo": _space({"model.lstm_hidden": {"type": "float", "low": 16, "high": 96}})},
            ["model.lstm_hidden", "fractional part", "tune it as type: int"],
        ),
        (
            {"hpo": _space({"model.temporal": {"type": "int", "low": 0, "high": 2}})},
            ["int value 0 is not a valid model.temporal", "tune it as type: categorical"],
        ),
        (
            {"hpo": _space({"training.learning_rate": {"type": "float", "low": 0, "high": 0.1, "log": True}})},
            ["a log-scale dimension needs low > 0"],
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


def test_a_storage_location_expands_home_and_variables_and_may_not_be_empty(tmp_path: Path, monkeypatch) -> None:
    path = write_config(tmp_path)
    raw = path.read_text()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BMLT_H25_DATA", str(tmp_path / "shared"))
    monkeypatch.delenv("BMLT_H25_UNSET", raising=False)
    where = str(tmp_path / "data")
    path.write_text(raw.replace(where, "~/bmlt-data"))
    assert load_config(path).local_dir == tmp_path / "home" / "bmlt-data"
    path.write_text(raw.replace(where, "$BMLT_H25_DATA/bmlt"))
    assert load_config(path).local_dir == tmp_path / "shared" / "bmlt"
    for written, message in (
        ("${BMLT_H25_UNSET}/x", "names $BMLT_H25_UNSET, which is not set"),
        ("", "storage.uri is empty"),
        ("''", "storage.uri is empty"),
    ):
        path.write_text(raw.replace(where, written))
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(path)
    assert not (tmp_path / "~").exists() and not (tmp_path / "None").exists()


def test_the_run_name_hash_depends_on_the_content_only(tmp_path: Path, monkeypatch) -> None:
    """The same config file in two checkouts (and so two absolute storage paths) names its runs alike."""
    names = set()
    for checkout in ("one", "two"):
        folder = tmp_path / checkout / "configs"
        folder.mkdir(parents=True)
        shutil.copy(PROJECT_ROOT / "configs" / "default.yaml", folder)
        monkeypatch.chdir(folder.parent)
        names.add(load_config(folder / "default.yaml").run_name)
    assert len(names) == 1
    changed = write_config(tmp_path, {"training": {"epochs": 3}})
    assert load_config(changed).content_hash != load_config(write_config(tmp_path, name="same.yaml")).content_hash


def test_a_missing_bmlt_config_file_names_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "BMLT_CONFIG": str(tmp_path / "gone.yaml")}
    result = subprocess.run(
        [sys.executable, "-m", "bmlt_assets.cli", "validate"], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"invalid config: BMLT_CONFIG={tmp_path / 'gone.yaml'}: no such file (relative to {Path.cwd()}): "
        "export BMLT_CONFIG=<a config file>, or unset it for configs/default.yaml"
    )


def test_a_tab_and_deep_nesting_get_what_they_are(tmp_path: Path) -> None:
    tab = tmp_path / "tab.yaml"
    tab.write_text("name: x\ndata:\n\tsymbols: [BTC/USDT]\n")
    with pytest.raises(ConfigError, match=r"a tab at line 3, column 1: YAML indents and separates with spaces only"):
        load_config(tab)
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply to read"):
        load_config(deep)


def test_the_promotion_rules_have_their_own_section_and_the_old_key_says_where_it_went(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path)).promotion.require_profit_at_fee is False  # opt-in
    rules = load_config(write_config(tmp_path, {"promotion": {"require_profit_at_fee": True, "max_ece": 0.1}}))
    assert rules.promotion.require_profit_at_fee is True and rules.promotion.max_ece == 0.1
    with pytest.raises(ConfigError, match="promotion.require_profit_at_fee"):
        load_config(write_config(tmp_path, {"promotion": {"require_profit_at_fee": "sometimes"}}))
    moved = _bmlt("validate", "--config", str(write_config(tmp_path, {"evaluation": {"promotion_max_ece": 0.08}})))
    assert moved.returncode == 2 and "Traceback" not in moved.stderr
    assert "evaluation.promotion_max_ece moved to the promotion section; write `promotion: {max_ece: 0.08}`" in (
        moved.stderr
    )
