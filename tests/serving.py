"""Helpers of the tests that start the app in a subprocess."""
from __future__ import annotations

import subprocess
import time


def wait_for_url(proc: subprocess.Popen, timeout_s: float) -> tuple[str | None, list[str]]:
    """(the URL the server prints, its output lines so far); None when it exits or timeout_s passes first."""
    url, lines, deadline = None, [], time.time() + timeout_s
    while time.time() < deadline and url is None:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if "running at http://127.0.0.1:" in line:
            url = line.split("running at ")[1].split()[0]
    return url, lines
