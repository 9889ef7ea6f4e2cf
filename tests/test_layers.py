"""The layering docs/design.md §2 promises, executable: imports only point down (the import-linter
contracts in pyproject.toml), only the entry points import the definitions, no module imports
another in a circle, ``bmlt_assets.core`` is framework-free, asset bodies stay short, Dagster's
private names come through one module, and every command explains itself."""

from __future__ import annotations

import ast
import json
import pickle
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import bmlt_assets.core
from bmlt_assets.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
CORE_MODULES = sorted(m.name for m in pkgutil.walk_packages(bmlt_assets.core.__path__, "bmlt_assets.core."))
FRAMEWORKS = ("dagster", "mlflow", "dagster_mlflow", "bmlt_resources")
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
# An asset's (or check's, or op's) function, from its def line to its end: read inputs, call the
# core or a workflow, write, report. Longer means computation that belongs below it.
MAX_ASSET_LINES = 45
DAGSTER_BODIES = {"asset", "asset_check", "multi_asset", "op", "graph_asset"}
PRIVATE_DAGSTER_HOME = ROOT / "bmlt_resources" / "dagster_private.py"


def _modules(package: str) -> list[str]:
    """Every module of a top-level package, by its dotted name."""
    folder = ROOT / package
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in folder.rglob("*.py")
    )


@pytest.mark.parametrize("contract", [c["id"] for c in CONTRACTS])
def test_the_import_contracts_hold(contract: str) -> None:
    """Each import-linter contract of pyproject.toml, on the code as it stands (its report on failure)."""
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint), "--no-cache", "--no-logo", "--contract", contract], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_module_stands_on_a_layer() -> None:
    """A new module outside the core must be placed in the layers contract, or its imports go unchecked."""
    layers = next(c for c in CONTRACTS if c["id"] == "layers")["layers"]
    named = {name.strip() for layer in layers for name in layer.replace("|", ":").split(":")}
    modules = [m for m in _modules("bmlt_assets") + _modules("bmlt_resources") if m not in ("bmlt_assets",)]
    unplaced = [m for m in modules if not any(m == n or m.startswith(f"{n}.") for n in named)]
    assert unplaced == []


def _dagster_bodies(path: Path) -> list[tuple[str, int]]:
    """(name, lines) of every function in ``path`` that Dagster runs as an asset, check or op."""

    def decorator_name(node: ast.expr) -> str:
        node = node.func if isinstance(node, ast.Call) else node
        return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")

    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and any(decorator_name(d) in DAGSTER_BODIES for d in node.decorator_list)
    ]


def test_asset_bodies_stay_thin() -> None:
    bodies = [
        (f"{p.relative_to(ROOT)}:{name}", n)
        for p in (ROOT / "bmlt_assets").rglob("*.py")
        for name, n in _dagster_bodies(p)
    ]
    assert len(bodies) >= 10  # every asset and check was found
    assert [(name, lines) for name, lines in bodies if lines > MAX_ASSET_LINES] == []


def test_dagster_private_names_come_through_one_module() -> None:
    """``dagster._*`` is imported by bmlt_resources/dagster_private.py alone (tests may reach in)."""
    importers = []
    for path in [*ROOT.glob("bmlt_*/**/*.py"), *ROOT.glob("benchmarks/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if any(name.startswith("dagster._") for name in names) and path != PRIVATE_DAGSTER_HOME:
                importers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert importers == []


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
