"""What a run was made from: flattened config, content hashes of inputs, the git commit."""

from __future__ import annotations

import hashlib
import os
import subprocess
from typing import Any

from bmlt_assets.core.config import PROJECT_ROOT
from bmlt_assets.core.files import StoredPath, read_meta, readable


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}, for MLflow params."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = str(value)
    return flat


def content_hash(path: StoredPath) -> str:
    """The content hash a folder partition's meta.json recorded at its commit (nothing else is
    read), or the sha256 of a file's bytes."""
    if path.suffix == "":
        recorded = read_meta(path).get("content_hash")
        if recorded is not None:
            return recorded
        files = sorted(p for p in path.rglob("*") if p.is_file())  # written before commits recorded it
    else:
        files = [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with readable(file) as local, open(local, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def combined_hash(fingerprints: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{k}={v};" for k, v in sorted(fingerprints.items())).encode()).hexdigest()


def git_commit() -> str:
    """The checkout's commit; in an image (no .git) the one deploy/Dockerfile recorded at build time."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except OSError:
        out = None
    if out is not None and out.returncode == 0:
        return out.stdout.strip()
    return os.environ.get("BMLT_GIT_COMMIT") or "unknown"


def image() -> str:
    """The container image this code runs from ($BMLT_IMAGE, set by the Helm values), or "" outside one."""
    return os.environ.get("BMLT_IMAGE", "")


PACKAGES = (
    "dagster",
    "dagster-mlflow",
    "mlflow",
    "torch",
    "numpy",
    "polars",
    "pyarrow",
    "pydantic",
    "scikit-learn",
    "optuna",
    "ccxt",
    "arch",
)


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
