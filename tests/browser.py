"""A real headless Chromium for the HTML reports: the `chromium` fixture (skipped where none is
installed, unless EDGESHIP_REQUIRE_CHROMIUM=1, as .ci/run sets) and `open_page`, which loads a page
with a script that reports broken images in its title."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHECK_IMAGES = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const bad = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  document.title = "IMAGES " + images.length + " BAD " + JSON.stringify(bad);
});
</script>"""


@pytest.fixture
def chromium():
    if CHROMIUM is None:
        if os.environ.get("EDGESHIP_REQUIRE_CHROMIUM") == "1":
            pytest.fail("EDGESHIP_REQUIRE_CHROMIUM=1 but no chromium on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH (apt-get install chromium); EDGESHIP_REQUIRE_CHROMIUM=1 makes this fail")
    return CHROMIUM


def open_page(browser: str, page: str, folder: Path) -> tuple[str, list[str]]:
    """Load `page` with the image check added; its title after load and the console's lines."""
    relaxed = page.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';")
    assert relaxed != page or "Content-Security-Policy" not in page
    path = folder / "page.html"
    path.write_text(relaxed.replace("</body>", CHECK_IMAGES + "\n</body>"))
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={folder / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=10000", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    title = re.search(r"<title>(.*?)</title>", proc.stdout, re.S)
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    return (title.group(1) if title else ""), console
