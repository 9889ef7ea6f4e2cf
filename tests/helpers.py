"""Helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path

import yaml

TESTS = Path(__file__).parent
TINY = TESTS / "configs" / "tiny.yaml"


def write_config(folder: Path, overrides: dict | None = None, name: str = "config.yaml") -> Path:
    """The tiny config with storage under ``folder`` and optional section overrides."""
    raw = yaml.safe_load(TINY.read_text())
    raw["storage"] = {"base_dir": str(folder / "data")}
    for section, values in (overrides or {}).items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    path = folder / name
    path.write_text(yaml.safe_dump(raw))
    return path
