"""The layering the README promises: ``bmlt_assets.core`` is framework-free, and every command
explains itself."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import bmlt_assets.core
from bmlt_assets.cli import build_parser

CORE_MODULES = sorted(f"bmlt_assets.core.{m.name}" for m in pkgutil.iter_modules(bmlt_assets.core.__path__))
FRAMEWORKS = ("dagster", "mlflow", "dagster_mlflow", "bmlt_resources")


def test_every_core_module_imports_without_a_framework() -> None:
    probe = (
        "import importlib, json, sys\n"
        f"for name in {CORE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert len(CORE_MODULES) > 20  # the probe really imported the core package
    assert json.loads(done.stdout) == []


@pytest.mark.parametrize("command", [None, *sorted(build_parser()._subparsers._group_actions[0].choices)])
def test_every_command_has_help_with_an_example(command: str | None) -> None:
    argv = [sys.executable, "-m", "bmlt_assets.cli", *([command] if command else []), "--help"]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "example" in done.stdout.lower(), done.stdout
