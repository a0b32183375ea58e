"""`dvc plots show` pages render in a real browser with no network (.dvc/plots/offline.html).

Headless Chromium (Debian's `chromium`, which .ci/run installs) opens the page from disk
with every request sent to a dead proxy, and the test counts the charts vega drew.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from project import BIN


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run does): "
                    "cannot check that the plots render offline")
    return found


def rendered_dom(page: Path, tmp_path: Path) -> str:
    """The page's DOM after its scripts ran, as headless Chromium sees it without a network."""
    out = subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'chromium-profile'}",
                          "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # offline
                          "--virtual-time-budget=15000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
def reports_repo(tmp_path_factory) -> Path:
    """The committed reports, dvc.yaml and DVC config in a scratch git + DVC repository."""
    repo = tmp_path_factory.mktemp("plots")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "reports", repo / "reports")
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    return repo


def plots_show(repo: Path, out: Path, *args: str) -> Path:
    subprocess.run([str(BIN / "dvc"), "plots", "show", "-o", str(out), *args], cwd=repo, check=True,
                   capture_output=True, text=True, env={"PATH": f"{BIN}:/usr/bin:/bin", "DVC_NO_ANALYTICS": "1"})
    return out / "index.html"


def vega_plots(repo: Path) -> int:
    """How many vega charts dvc.yaml declares: the top-level plots and the CSV/TSV stage plots."""
    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())
    stage_plots = [next(iter(p)) if isinstance(p, dict) else p
                   for stage in dvc["stages"].values() for p in stage.get("plots", [])]
    return len(dvc["plots"]) + sum(not name.endswith(".png") for name in stage_plots)


def test_the_template_is_set_and_carries_the_pinned_libraries_and_their_licences():
    config = (ROOT / ".dvc" / "config").read_text()
    assert re.search(r"^\[plots\]\n\s+html_template = plots/offline\.html$", config, re.M)
    page = (ROOT / ".dvc" / "plots" / "offline.html").read_text()
    pins = re.search(r"^VEGA=(\S+) VEGA_LITE=(\S+) VEGA_EMBED=(\S+)", (ROOT / "scripts" / "vendor-vega.sh").read_text(),
                     re.M).groups()
    for name, version in zip(("vega", "vega-lite", "vega-embed"), pins):
        assert f"<script>/* {name} {version}, BSD-3-Clause" in page
        assert "Redistribution and use in source and binary forms" in \
            (ROOT / ".dvc" / "plots" / "LICENSES" / f"{name}.txt").read_text()
    assert "{plot_divs}" in page and "<script src=" not in page


def test_dvc_plots_show_renders_every_chart_offline(reports_repo, tmp_path):
    page = plots_show(reports_repo, tmp_path / "out")
    html = page.read_text()
    assert "cdn.jsdelivr.net" not in html
    dom = rendered_dom(page, tmp_path)
    charts = dom.count('class="marks"')  # the canvas (or svg) vega-embed draws each chart into
    assert charts == vega_plots(reports_repo) >= 5, dom[-3000:]
    assert dom.count("<img") >= 5  # the PNG figures


def test_dvc_s_own_page_stays_blank_offline(reports_repo, tmp_path):
    """The control: DVC's default page loads vega from a CDN, so without a network nothing is drawn."""
    local = reports_repo / ".dvc" / "config.local"
    local.write_text("[plots]\n    html_template =\n")  # this checkout only: DVC's own page
    try:
        page = plots_show(reports_repo, tmp_path / "out")
    finally:
        local.unlink()
    assert "cdn.jsdelivr.net" in page.read_text()
    assert rendered_dom(page, tmp_path).count('class="marks"') == 0
