"""The outputs the docs show are the outputs the commands give: every `bmlt` command in README.md
followed by `# ` output lines is run as shown (in a scratch copy of the checkout's layout, so that
nothing lands in the checkout), and each shown line must appear, in order, in what it prints (a
`#   ...` line stands for lines left out). tests/data/README.md's counts are checked against the
recording they describe."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from bmlt_assets.core.config import PROJECT_ROOT
from bmlt_assets.core.sources.importer import import_recordings
from tests.helpers import real_recording

BIN = Path(sys.executable).parent
# Shown, but not runnable here: a live recording needs Binance.
NOT_RUN = ("bmlt record",)


@dataclass(frozen=True)
class Example:
    command: str
    shown: list[str]  # the output lines as the README shows them; "..." leaves lines out


def shown_examples(text: str) -> list[Example]:
    examples = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines = block.splitlines()
        for index, line in enumerate(lines):
            if not line.startswith("bmlt "):
                continue
            shown = []
            for following in lines[index + 1 :]:
                if not following.startswith("# "):
                    break
                shown.append(following[2:])
            if shown:
                examples.append(Example(line.split("  #")[0].strip(), shown))
    return examples


def _scratch_checkout(folder: Path) -> None:
    """configs/ copied (their relative storage then lands in the scratch folder), tests/ linked,
    and the my.yaml the validate example shows: default.yaml with the two mistakes it names."""
    shutil.copytree(PROJECT_ROOT / "configs", folder / "configs")
    (folder / "tests").symlink_to(PROJECT_ROOT / "tests")
    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "default.yaml").read_text())
    raw["representation"] |= {"kind": "fancy", "rawlevels": 3}
    (folder / "my.yaml").write_text(yaml.safe_dump(raw))


EXAMPLES = shown_examples((PROJECT_ROOT / "README.md").read_text())


def test_the_readme_shows_outputs_of_several_commands() -> None:
    commands = {example.command.split()[1] for example in EXAMPLES}
    assert {"validate", "import", "plan", "record"} <= commands, commands


@pytest.mark.parametrize("example", [e for e in EXAMPLES if not e.command.startswith(NOT_RUN)], ids=str)
def test_a_shown_output_is_what_the_command_prints(example: Example, tmp_path: Path) -> None:
    _scratch_checkout(tmp_path)
    result = subprocess.run(
        [str(BIN / "bmlt"), *shlex.split(example.command)[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1"},
    )
    printed = [line.rstrip() for line in (result.stdout + result.stderr).splitlines()]
    position = 0
    for shown in example.shown:
        if shown.strip() == "...":
            continue
        assert shown.rstrip() in printed[position:], f"{example.command}: {shown!r} not in\n" + "\n".join(printed)
        position = printed.index(shown.rstrip(), position) + 1


def test_the_test_data_readme_counts_what_the_recording_holds() -> None:
    text = (PROJECT_ROOT / "tests" / "data" / "README.md").read_text()
    kinds: dict[str, int] = {}
    with gzip.open(real_recording(), "rt") as recording:
        receive = [int(line.split(" ", 1)[0]) for line in recording]
    with gzip.open(real_recording(), "rt") as recording:
        for line in recording:
            message = json.loads(line.split(" ", 1)[1])
            data = message.get("data", message)
            kind = "REST snapshot" if "lastUpdateId" in data else data.get("e") or "bookTicker"
            kinds[kind] = kinds.get(kind, 0) + 1
    _, summary = import_recordings([real_recording()], "binance-ws", "spot", 20)
    stated = (
        f"Counts: {len(receive):,} lines: {kinds['depthUpdate']:,} depthUpdate, {kinds['bookTicker']:,} bookTicker, "
        f"{kinds['trade']:,} trade, {kinds['REST snapshot']} REST snapshot"
    )
    assert stated in " ".join(text.split()), stated
    assert f"{len(summary.gaps)} sequence gaps, {summary.snapshots:,} 20-level books" in " ".join(text.split())
    minutes = (receive[-1] - receive[0]) / 60e9
    assert f"about {minutes:.1f} minutes" in text
    first, last = (dt.datetime.fromtimestamp(ns / 1e9, dt.UTC) for ns in (receive[0], receive[-1]))
    assert f"on {first:%Y-%m-%d} ({first:%H:%M:%S}-{last:%H:%M:%S} UTC" in text
