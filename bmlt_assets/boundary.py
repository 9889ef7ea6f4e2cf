"""One line for every failure that reaches the edge: the `bmlt` command and the code locations.

Errors are explained by class, wherever they were raised: a config error, an OS error on a file
(permission denied, a folder where a file belongs, a full disk, ...), a DAGSTER_HOME that is not
set or not a folder, object storage without credentials or with an endpoint nobody listens on
(botocore), a damaged sqlite store (SQLAlchemy), an unreachable MLflow, memory, ... Each becomes
one line that names the file or setting and the fix; ``--log-level debug`` adds the traceback.

Classes are recognised by the names of their modules and classes, so that explaining an error
imports none of the libraries that may have raised it.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from bmlt_assets.core.config import ConfigError, PlatformConfig, load_config

BAD_INPUT = 2  # the exit status of an input or environment the user can fix
UNEXPECTED = 1  # a bug: the line says how to see the traceback


@dataclass(frozen=True)
class Setting:
    """A path or URI the user chose, and where it was chosen, to name in a message."""

    name: str  # "storage.uri", "DAGSTER_HOME", ...
    value: str


def settings_of(config: PlatformConfig | None) -> list[Setting]:
    """The settings a failure may come from: the config's storage and stores, and DAGSTER_HOME."""
    found = [Setting("DAGSTER_HOME", os.environ["DAGSTER_HOME"])] if os.environ.get("DAGSTER_HOME") else []
    if config is not None:
        storage = config.storage
        found += [Setting("storage.uri", storage.uri)]
        if storage.is_remote:
            found += [Setting("storage.cache_dir", str(config.local_dir))]
        if storage.endpoint_url:
            found += [Setting("storage.endpoint_url", storage.endpoint_url)]
        found += [Setting("mlflow.tracking_uri", config.tracking_uri)]
    return found


def _classes(error: BaseException) -> set[str]:
    """'module.Class' of the error's class and its bases."""
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in type(error).__mro__}


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and those it was raised from or while handling (libraries wrap each other's)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _frames_modules(error: BaseException) -> list[str]:
    return [frame.f_globals.get("__name__", "") for frame, _ in traceback.walk_tb(error.__traceback__)]


def _setting_for_path(path: str, settings: list[Setting]) -> Setting | None:
    """The setting whose folder holds ``path`` (the deepest one)."""
    try:
        target = Path(path).resolve()
    except (OSError, RuntimeError):
        return None
    best = None
    for setting in settings:
        if "://" in setting.value and not setting.value.startswith("sqlite:"):
            continue
        folder = Path(setting.value.removeprefix("sqlite:///")).resolve()
        if setting.value.startswith("sqlite:"):
            folder = folder.parent
        inside = target == folder or folder in target.parents
        if inside and (best is None or len(str(folder)) > len(best[1])):
            best = (setting, str(folder))
    return best[0] if best else None


def _os_error(error: OSError, settings: list[Setting]) -> str:
    name = error.filename or ""
    setting = _setting_for_path(name, settings) if name else None
    chosen = f" ({setting.name} is {setting.value})" if setting else ""
    other = f"point {setting.name} at another folder" if setting else "choose another path"
    if error.errno in (errno.EACCES, errno.EPERM):
        held = Path(name)
        while not held.exists() and held != held.parent:  # what could not be created: its folder decides
            held = held.parent
        access = "it" if str(held) == name.rstrip("/") else str(held)
        return (
            f"{name}: permission denied{chosen}: give this user access to {access} "
            f"(ls -ld {held}; chown or chmod), or {other}"
        )
    if error.errno == errno.EROFS:
        return f"{name}: the file system is read-only{chosen}: {other}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"{name}: no space left on the device{chosen}: free some space, or {other} "
            "(bmlt plan shows what a config needs)"
        )
    if isinstance(error, IsADirectoryError):
        return f"{name}: is a folder, where a file belongs: name a file (e.g. {Path(name) / 'file'})"
    if isinstance(error, NotADirectoryError):
        return f"{name}: a part of this path is a file, where a folder belongs{chosen}: {other}"
    if isinstance(error, FileNotFoundError):
        return f"{name}: no such file or folder{chosen}: create it, or {other}"
    what = error.strerror or str(error)
    return f"{name}: {what}{chosen}" if name else what


def _storage_error(error: BaseException, settings: list[Setting]) -> str:
    uri = next((s.value for s in settings if s.name == "storage.uri"), "the object store")
    classes = _classes(error)
    if classes & {"botocore.exceptions.NoCredentialsError", "botocore.exceptions.PartialCredentialsError"}:
        return (
            f"storage.uri {uri}: no object-store credentials: export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE); they never go in the config"
        )
    if "botocore.exceptions.EndpointConnectionError" in classes or "botocore.exceptions.ConnectTimeoutError" in classes:
        endpoint = next((s.value for s in settings if s.name == "storage.endpoint_url"), "the endpoint")
        return (
            f"storage.uri {uri}: nothing answers at {endpoint}: start the object store, or fix "
            "storage.endpoint_url in the config"
        )
    code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken"):
        return f"storage.uri {uri}: the object store refused these credentials ({code}): check the AWS_* variables"
    if code in ("NoSuchBucket", "404"):
        return f"storage.uri {uri}: no such bucket ({code}): create it, or fix storage.uri"
    return f"storage.uri {uri}: the object store failed ({' '.join(str(error).split())})"


def _database_error(error: BaseException, settings: list[Setting]) -> str:
    modules = _frames_modules(error)
    detail = " ".join(str(getattr(error, "orig", None) or error).split()).split(" [SQL:")[0]
    if any(module.startswith("mlflow") for module in modules):
        uri = next((s.value for s in settings if s.name == "mlflow.tracking_uri"), "mlflow.tracking_uri")
        return (
            f"{uri}: the MLflow store cannot be read ({detail}): move the file aside (MLflow starts a new one) "
            "or restore it from a backup, or point mlflow.tracking_uri elsewhere"
        )
    if any(module.startswith("dagster") for module in modules):
        home = os.environ.get("DAGSTER_HOME", "DAGSTER_HOME")
        return (
            f"DAGSTER_HOME {home}: the Dagster instance's database cannot be read ({detail}): move {home}/storage "
            "aside (Dagster starts new ones) or restore it"
        )
    if any(module.startswith("optuna") for module in modules):
        return (
            f"the tuning study's database cannot be read ({detail}): move it aside (the study restarts) or restore it"
        )
    return f"a database cannot be read ({detail})"


def explain(error: BaseException, config: PlatformConfig | None = None) -> tuple[str, int]:
    """One line for ``error`` and the exit status: BAD_INPUT when the user can fix it."""
    settings = settings_of(config)
    for link in _chain(error):
        classes = _classes(link)
        if isinstance(link, ConfigError):
            return f"invalid config: {link}", BAD_INPUT
        if "dagster._core.errors.DagsterHomeNotSetError" in classes:
            return "DAGSTER_HOME is not set: point it at the folder of the instance's dagster.yaml", BAD_INPUT
        if "dagster._core.errors.DagsterInvariantViolationError" in classes and "$DAGSTER_HOME" in str(link):
            home = os.environ.get("DAGSTER_HOME", "")
            return (
                f"DAGSTER_HOME {home} is not a folder: create it (mkdir -p {home}), or point DAGSTER_HOME at the "
                "folder of the instance's dagster.yaml",
                BAD_INPUT,
            )
        if any(name.startswith("botocore.exceptions.") for name in classes):
            return _storage_error(link, settings), BAD_INPUT
        if "sqlalchemy.exc.DatabaseError" in classes or "sqlite3.DatabaseError" in classes:
            return _database_error(link, settings), BAD_INPUT
    # No known cause in the chain: the outermost error's own class.
    if isinstance(error, OSError):
        return _os_error(error, settings), BAD_INPUT
    if isinstance(error, MemoryError):
        return "out of memory: `bmlt plan` shows what the config needs; lower data or batch sizes", BAD_INPUT
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", 130
    message = " ".join(str(error).split()) or "no message"
    return (
        f"unexpected {type(error).__name__}: {message} (rerun with --log-level debug for the traceback)",
        UNEXPECTED,
    )


def report_failure(error: BaseException, config: PlatformConfig | None, debug: bool) -> int:
    """Print ``error`` as one line on stderr (after its traceback when ``debug``); the exit status."""
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    line, status = explain(error, config)
    print(line, file=sys.stderr)
    return status


@contextmanager
def code_location_errors(config_path: Path | None = None) -> Iterator[None]:
    """Loading a code location (of ``config_path``): what :func:`explain` knows becomes one line
    from Dagster's CLI (exit 2) and the location's load error in the UI; anything else keeps its
    traceback."""
    from bmlt_resources.settings import CodeLocationConfigError, CodeLocationError

    try:
        yield
    except CodeLocationError:
        raise
    except ConfigError as error:
        raise CodeLocationConfigError(str(error)) from None
    except Exception as error:
        config = None
        if config_path is not None:
            with suppress(ConfigError):
                config = load_config(config_path)  # to name the settings in the message
        line, status = explain(error, config)
        if status != BAD_INPUT:
            raise
        raise CodeLocationError(line) from None


def refuse_unwritable(config: PlatformConfig) -> None:
    """A PermissionError before any run starts when the config's local folder cannot be written
    (the folder, or the nearest one that exists to create it in), instead of a failed step later."""
    folder = config.local_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))
