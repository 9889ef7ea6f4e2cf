"""The UI and the scripts see the same assets: what the README's scripts materialize shows in the
UI that `make ui` serves (several configs side by side in one instance), with its metadata and
lineage, and a backfill launched there, or queued by `bmlt backfill`, succeeds. Through the
webserver's GraphQL, as the UI reads it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bmlt_assets.core.config import PROJECT_ROOT, load_config
from bmlt_resources.storage import StorageResource
from tests.helpers import write_config
from tests.services import free_port

BIN = Path(sys.executable).parent
DAYS = ("2025-01-06", "2025-01-07")

ASSET = """
query Asset($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode {
      repository { location { name } }
      dependencyKeys { path }
      assetMaterializations(limit: 10) { partition runId metadataEntries { label } }
    }
  }
}"""
LOCATIONS = """
{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""
BACKFILL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status error { message } } }
}"""


class Webserver:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/graphql"

    def query(self, text: str, **variables: object) -> dict:
        body = json.dumps({"query": text, "variables": variables}).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        assert "errors" not in answer, answer
        return answer["data"]

    def wait_for_backfill(self, backfill_id: str, log: Path) -> str:
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            state = self.query(BACKFILL, id=backfill_id)["partitionBackfillOrError"]
            if state["status"] not in ("REQUESTED", "CANCELING", "FAILING"):
                return state["status"]
            time.sleep(3)
        pytest.fail(f"backfill {backfill_id} did not finish: {log.read_text()[-4000:]}")


def _key(config_name: str, asset: str) -> dict:
    return {"path": [config_name, asset]}


@pytest.mark.slow  # about 4 minutes: `dagster dev` with two code locations, two backfills through its daemon
def test_the_ui_shows_what_the_scripts_made_and_backfills_there_succeed(tmp_path: Path) -> None:
    config_path = write_config(tmp_path)
    config = load_config(config_path)
    storage = StorageResource.for_config(config)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / ".dagster_home" / "dagster.yaml", home)
    env = {**os.environ, "BMLT_CONFIG": str(config_path), "DAGSTER_HOME": str(home)}

    # The README's script: one day of two daily assets, through `-m bmlt_assets.definitions`.
    script = subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "bmlt_assets.definitions"]
        + ["--select", "tiny/orderbook_snapshots,tiny/book_tensors", "--partition", DAYS[0]],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert script.returncode == 0, script.stderr[-4000:]

    # The UI as `make ui CONFIG=<it>` serves it: a shipped config's location beside this one's,
    # from workspace.yaml's and deploy/workspace-config.yaml's entries, in the same instance.
    workspace = tmp_path / "workspace.yaml"
    entries = [_workspace_entry("synthetic_default"), _workspace_entry("config_from_env")]
    workspace.write_text(json.dumps({"load_from": entries}))
    port = free_port()
    log = tmp_path / "dagster-dev.log"
    with log.open("w") as output:
        ui = subprocess.Popen(
            [str(BIN / "dagster"), "dev", "-w", str(workspace), "-p", str(port), "-h", "127.0.0.1"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        server = Webserver(port)
        _wait_for_locations(server, ui, log, {"synthetic-default", "BMLT_CONFIG"})

        # The script's materialization, its metadata and its lineage, in the location of its config.
        node = server.query(ASSET, key=_key("tiny", "book_tensors"))["assetNodeOrError"]
        assert node["__typename"] == "AssetNode", node
        assert node["repository"]["location"]["name"] == "BMLT_CONFIG"
        assert node["dependencyKeys"] == [{"path": ["tiny", "orderbook_snapshots"]}]
        (made,) = node["assetMaterializations"]
        assert made["partition"] == DAYS[0] and made["metadataEntries"], made
        beside = server.query(ASSET, key=_key("synthetic-default", "book_tensors"))["assetNodeOrError"]
        assert beside["repository"]["location"]["name"] == "synthetic-default"

        # A backfill launched in the UI, of the next day, runs in that location and succeeds.
        launched = server.query(
            LAUNCH,
            params={
                "assetSelection": [_key("tiny", "orderbook_snapshots"), _key("tiny", "book_tensors")],
                "partitionNames": [DAYS[1]],
            },
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        assert server.wait_for_backfill(launched["backfillId"], log) == "COMPLETED_SUCCESS"
        assert (storage.tensors(config.data.end_date) / "meta.json").exists()

        # `bmlt backfill` queues the same keys: this UI's daemon runs it, and it succeeds.
        queued = subprocess.run(
            [str(BIN / "bmlt"), "backfill", "--config", str(config_path), "--from", DAYS[0], "--to", DAYS[1]],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert queued.returncode == 0, queued.stderr
        backfill_id = queued.stdout.split()[1].rstrip(":")
        assert server.wait_for_backfill(backfill_id, log) == "COMPLETED_SUCCESS", log.read_text()[-4000:]
        returns = server.query(ASSET, key=_key("tiny", "forward_returns"))["assetNodeOrError"]
        assert sorted(m["partition"] for m in returns["assetMaterializations"]) == list(DAYS)
    finally:
        os.killpg(ui.pid, 15)
        ui.wait(timeout=120)


def _workspace_entry(attribute: str) -> dict:
    """workspace.yaml's (or deploy/workspace-config.yaml's) entry for ``attribute``."""
    import yaml

    for file in (PROJECT_ROOT / "workspace.yaml", PROJECT_ROOT / "deploy" / "workspace-config.yaml"):
        for entry in yaml.safe_load(file.read_text())["load_from"]:
            if entry["python_module"]["attribute"] == attribute:
                return entry
    raise AssertionError(f"no workspace entry for {attribute}")


def _wait_for_locations(server: Webserver, ui: subprocess.Popen, log: Path, names: set[str]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert ui.poll() is None, log.read_text()[-4000:]
        try:
            entries = server.query(LOCATIONS)["workspaceOrError"]["locationEntries"]
        except (urllib.error.URLError, ConnectionError):
            time.sleep(2)
            continue
        loaded = {entry["name"]: entry for entry in entries if entry["loadStatus"] == "LOADED"}
        if names <= set(loaded):
            failed = [e for e in loaded.values() if e["locationOrLoadError"]["__typename"] == "PythonError"]
            assert not failed, failed
            return
        time.sleep(2)
    pytest.fail(f"the workspace did not load: {log.read_text()[-4000:]}")
