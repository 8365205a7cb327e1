"""In a real browser: `serve --profile NAME` in a subprocess, a part uploaded and asked about, "Mark as good" clicked;
the profile folder then holds the part under labelled/good and a refitted calibration.json. Debian's Chromium driven
by Playwright (tests/test_browser.py); skipped when either is missing."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from assistant.imaging import load_image
from assistant.profile import Profile, encode_png, stored_name
from tests.serving import stop_server, wait_for_url
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, ask, ensure_chromium
from tests.test_profile import texture

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def served_profile(tiny_tokenizer_dir, tmp_path, monkeypatch):
    """(url, profile folder) of `serve --profile washer` (a tiny-config profile) on a free port."""
    pytest.importorskip("playwright")
    ensure_chromium()
    home = tmp_path / "home"
    monkeypatch.setenv("INSPECTION_ASSISTANT_HOME", str(home))
    Profile.create("washer", [texture(1), texture(2)], config="tiny")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", INSPECTION_ASSISTANT_TINY_TOKENIZER=str(tiny_tokenizer_dir))
    cmd = [sys.executable, "-m", "assistant", "serve", "--profile", "washer", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        url, lines = wait_for_url(proc, 180)
        assert url, "".join(lines)
        assert "profile 'washer', threshold" in "".join(lines)
        yield url, home / "profiles" / "washer"
    finally:
        stop_server(proc)


def test_mark_as_good_stores_the_part_in_the_profile(served_profile, tmp_path):
    from playwright.sync_api import sync_playwright

    url, folder = served_profile
    query = tmp_path / "part.png"
    texture(5).save(query)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url)
            page.wait_for_selector("#ask-box textarea", timeout=60_000)
            page.wait_for_function("() => document.querySelector('#profile-status')?.innerText.includes('washer')",
                                   timeout=30_000)
            page.locator("#ask-box input[type=file]").set_input_files(str(query))
            page.wait_for_selector("#ask-box img, #ask-box .thumbnail-item", timeout=30_000)
            ask(page, "Is there any anomaly?", 0)
            page.locator("#mark-good").click()
            page.wait_for_function("() => [...document.querySelectorAll('#chatbot .bot')].some("
                                   "b => b.innerText.includes('Noted: this part is marked good'))", timeout=120_000)
            status = page.locator("#profile-status").inner_text()
        finally:
            browser.close()
    stored = folder / "labelled" / "good" / stored_name(encode_png(load_image(str(query))))
    cal = json.loads((folder / "calibration.json").read_text())
    assert stored.is_file() and cal["n_good"] == 1
    assert f"{cal['threshold']:.4g}" in status and "1 good" in status
