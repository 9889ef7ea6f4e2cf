"""`bmlt plan`'s warnings: a plan that cannot run on this machine, or cannot learn, is said before anything runs."""

from __future__ import annotations

from pathlib import Path

from bmlt_assets.core.config import load_config
from bmlt_assets.core.plan import class_shares, memory_plan, plan_warnings, volatile_per_s
from tests.helpers import write_config

PLENTY = 1 << 50


def test_a_day_larger_than_the_memory_is_warned_with_the_settings_to_change(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    raw = memory_plan(config)["raw_snapshot_bytes_per_day"]
    assert plan_warnings(config, memory_bytes=PLENTY, disk_free_bytes=PLENTY) == []
    (warning,) = plan_warnings(config, memory_bytes=raw - 1, disk_free_bytes=PLENTY)
    assert "in memory" in warning and "data.depth" in warning and "data.cadence_ms" in warning


def test_a_range_larger_than_the_free_disk_is_warned_and_remote_storage_is_not(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    (warning,) = plan_warnings(config, memory_bytes=PLENTY, disk_free_bytes=1)
    assert f"the {len(config.data.dates)} day(s)" in warning and "storage.uri" in warning
    assert plan_warnings(config, memory_bytes=PLENTY, disk_free_bytes=None) == []


def test_fixed_percent_classes_too_wide_for_the_horizon_are_warned_and_fitting_ones_are_not(tmp_path: Path) -> None:
    wide = [-10, -5, -2, 0, 2, 5, 10]  # percent: a 10 s move almost never leaves the middle two classes
    config = load_config(write_config(tmp_path, {"labels": {"edges": "fixed_pct", "fixed_pct_edges": wide}}))
    warnings = plan_warnings(config, memory_bytes=PLENTY, disk_free_bytes=PLENTY)
    assert len(warnings) == len(config.labels.horizons_s)
    assert all("labels.fixed_pct_edges" in w and "volatility_scaled" in w for w in warnings)

    # Edges of the size of the volatile regime's move over the shortest horizon fill every class.
    horizon = min(config.labels.horizons_s)
    move_pct = 100 * volatile_per_s(config) * horizon**0.5
    fitting = [round(k * move_pct, 6) for k in (-1.5, -0.75, -0.25, 0, 0.25, 0.75, 1.5)]
    config = load_config(
        write_config(tmp_path, {"labels": {"edges": "fixed_pct", "fixed_pct_edges": fitting}}, name="fitting.yaml")
    )
    assert min(class_shares(config, horizon, volatile_per_s(config))) > 0.01
    assert not any(f"at {horizon} s" in w for w in plan_warnings(config, memory_bytes=PLENTY, disk_free_bytes=PLENTY))
