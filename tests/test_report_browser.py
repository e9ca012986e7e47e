"""The verify report's HTML renders in a real headless browser (Chromium), self-contained."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(
    BROWSER is None, reason="no Chromium on this machine (apt-get install chromium); the HTML is checked structurally in test_verify"
)
def test_verify_html_renders_in_headless_chromium(tmp_path: Path):
    import numpy as np
    from PIL import Image

    from edgederm.evaluate.verify.report import PLOTS, _html

    for file, _ in PLOTS.values():
        Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(tmp_path / file)
    html = _html("edgederm verify: test", ["- one line"], ["artifact", "status"], [["onnx int8", "pass"]], tmp_path, list(PLOTS.values()))
    page = tmp_path / "verify.html"
    page.write_text(html)
    for file, _ in PLOTS.values():
        (tmp_path / file).unlink()  # the page must not need the PNGs beside it
    dom = subprocess.run(
        [BROWSER, "--headless=new", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-500:]
    assert "onnx int8" in dom.stdout and dom.stdout.count("data:image/png;base64,") == len(PLOTS)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [BROWSER, "--headless=new", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 5000
