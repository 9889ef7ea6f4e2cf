"""The layering the README promises: ``bmlt_assets.core`` is framework-free, and every command
explains itself."""

from __future__ import annotations

import json
import pickle
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


def test_models_registered_under_the_old_pyfunc_path_still_load() -> None:
    """MLflow pickles the logged python_model by reference to its class: a model registered
    before the pyfunc moved to bmlt_resources names bmlt_assets.scoring.OrderBookPyfunc."""
    from bmlt_resources.pyfunc import OrderBookPyfunc

    old_reference = b"cbmlt_assets.scoring\nOrderBookPyfunc\n)\x81."  # GLOBAL, empty args, NEWOBJ, STOP
    assert type(pickle.loads(old_reference)) is OrderBookPyfunc


def test_the_old_torchrun_worker_path_still_runs_the_worker() -> None:
    """A training pod whose command an earlier version built (-m bmlt_assets.training_worker)."""
    done = subprocess.run([sys.executable, "-m", "bmlt_assets.training_worker"], capture_output=True, text=True)
    assert done.returncode != 0 and "usage: python -m torch.distributed.run" in done.stderr
    assert "-m bmlt_assets.training.training_worker JOB_JSON" in done.stderr
