"""Helpers of the tests that start the app in a subprocess."""
from __future__ import annotations

import signal
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


def stop_server(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """Stop the app as Ctrl-C would; kill it when it does not exit within timeout_s."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
