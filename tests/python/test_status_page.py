"""The status page at GET / in a real browser: Debian's headless Chromium loads it from a running
host, and the DOM shows the served model and updates itself while traffic flows. A screenshot is
saved as target/status-page.png (not committed) for a person to look at."""

import html
import json
import re
import shutil
import subprocess
import threading
import urllib.request

import pytest

from conftest import ROOT

SCREENSHOT = ROOT / "target" / "status-page.png"


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is missing: `make tools` installs it (apt-get install chromium)", pytrace=False)


def headless(url, tmp_path, *args, budget_ms=6000):
    """Chromium, headless, with virtual time: the page's timers run `budget_ms` of page time
    (while its fetches to the host take real time)."""
    out = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp_path / 'chromium'}",
         f"--virtual-time-budget={budget_ms}", *args, url],
        capture_output=True, text=True, timeout=90,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


class Traffic:
    """Steady inference requests to the host while the browser watches."""

    def __init__(self, addr):
        self.url = f"http://{addr}/v2/models/digits/infer"
        self.body = json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                            "data": [0.25] * 64}]}).encode()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            req = urllib.request.Request(self.url, self.body, {"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=10).read()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=10)


def test_the_status_page_loads_shows_the_model_and_updates_itself(server_addr, tmp_path):
    url = f"http://{server_addr}/"
    with Traffic(server_addr):
        dom = headless(url, tmp_path, "--dump-dom")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        headless(url, tmp_path, f"--screenshot={SCREENSHOT}", "--window-size=1280,720",
                 "--hide-scrollbars")

    row = re.search(r'<tr data-model="digits">(.*?)</tr>', dom)
    assert row, f"no row for the digits model in:\n{dom[:3000]}"
    cells = [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))]
    assert cells[:3] == ["digits", "1", "READY"], cells
    assert re.search(r"\d+ / 2$", cells[3]), f"busy / total instances: {cells}"
    assert cells[6] != "–", f"a request rate once two updates came: {cells}"
    assert "µs" in cells[7] or "ms" in cells[7], f"a p50: {cells}"

    polls = re.search(r'<span id="polls" data-polls="(\d+)" data-first-requests="(\d+)" '
                      r'data-requests="(\d+)"', dom)
    assert polls, dom[-1500:]
    updates, first, last = map(int, polls.groups())
    assert updates >= 3, f"the page polls by itself: {updates} updates"
    assert last > first, f"and shows what changed: {first} → {last} requests"
    assert "ready" in dom and "loaded with 2 instances" in dom

    assert SCREENSHOT.stat().st_size > 10_000, "a screenshot of the page"
    print(f"status page: {updates} updates, requests {first} → {last}; screenshot {SCREENSHOT}")
