"""report.html in a real browser (headless Chromium): every image loads and the page is not blank.

Chromium is required, never skipped: `.ci/run` installs Debian's `chromium` package."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from bmlt_assets.core.report import write_report
from tests.test_report import FRONT, synthetic_report

# Once the page has loaded, the page itself writes what it saw onto <body> for --dump-dom to show.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.setAttribute("data-images", images.length);
  document.body.setAttribute("data-images-loaded", images.filter((i) => i.complete && i.naturalWidth > 0).length);
  document.body.setAttribute("data-text", document.body.innerText.trim().length);
});
</script>"""


def chromium() -> str:
    found = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
    if found is None:
        pytest.fail("headless Chromium is needed for this test: install it with `apt-get install -y chromium`")
    return found


def _browse(page: Path, profile: Path, *args: str) -> str:
    command = [
        chromium(),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        *args,
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


def rendered(html: str, folder: Path) -> tuple[dict[str, int], np.ndarray]:
    """What Chromium saw of ``html`` (image count, images loaded, visible text length) and a
    screenshot of its first screen as an (H, W, channels) array."""
    page = folder / "probed.html"
    page.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _browse(page, folder / "profile", "--dump-dom")
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None, dom[:500]
    seen = {k: int(v) for k, v in re.findall(r'data-(images|images-loaded|text)="(\d+)"', body.group(1))}
    assert set(seen) == {"images", "images-loaded", "text"}, f"the probe did not run: {body.group(0)}"
    _browse(page, folder / "profile", "--window-size=1280,900", f"--screenshot={folder / 'screen.png'}")
    return seen, matplotlib.image.imread(folder / "screen.png")


def test_report_html_loads_every_image_and_is_not_blank(tmp_path: Path) -> None:
    write_report(tmp_path, synthetic_report(), "Evaluation of a synthetic report", front_matter=FRONT)
    seen, screen = rendered((tmp_path / "report.html").read_text(encoding="utf-8"), tmp_path)
    assert seen["images"] == 4  # equity, reliability, confusion, classes
    assert seen["images-loaded"] == seen["images"], seen
    assert seen["text"] > 2000, seen
    ink = (screen[..., :3] < 0.5).mean()  # share of dark pixels on the first screen
    assert ink > 0.01, f"the first screen is blank ({ink:.4f} dark)"


def test_the_probe_sees_a_broken_image_and_a_blank_page(tmp_path: Path) -> None:
    """The checks above can fail: an image that is not embedded (a file name beside a copied
    page) or not a PNG does not load; an empty page has no text and no ink."""
    write_report(tmp_path, synthetic_report(), "t", front_matter=FRONT)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    broken = re.sub(r'src="data:image/png;base64,[^"]*"', 'src="equity_30s_elsewhere.png"', page, count=1)
    broken = re.sub(r'src="data:image/png;base64,[^"]*"', 'src="data:image/png;base64,bm90IGEgcG5n"', broken, count=1)
    seen, _ = rendered(broken, tmp_path)
    assert seen["images"] == 4 and seen["images-loaded"] == 2, seen
    seen, screen = rendered("<!DOCTYPE html><html><head></head><body></body></html>", tmp_path)
    assert seen == {"images": 0, "images-loaded": 0, "text": 0}
    assert (screen[..., :3] < 0.5).mean() == 0
