"""Presets and the shipped checkpoint are package data: found from any working directory, and a wheel
(non-editable install) carries them and serves the app."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from assistant.config import (
    CONFIG_DIR,
    DATA_ROOT,
    DEFAULT_CHECKPOINT,
    ConfigError,
    load_config,
    resolve_data_path,
    resolve_model,
)
from tests.serving import stop_server, wait_for_url

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "README.md", "assistant", "training", "data_synth"]  # what a wheel is built from


def test_package_data_paths_resolve_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert CONFIG_DIR == DATA_ROOT / "configs" and (CONFIG_DIR / "tiny.yaml").is_file()
    shipped = DATA_ROOT / DEFAULT_CHECKPOINT
    assert resolve_data_path(DEFAULT_CHECKPOINT) == shipped
    assert resolve_model(None) == str(shipped) == resolve_model("checkpoints/offline-small")
    assert load_config("configs/tiny.yaml") == load_config("tiny")
    assert load_config("checkpoints/offline-small").lm.name == "smollm2-135m-instruct"
    # names outside configs/ and checkpoints/, presets and missing files are left as given
    assert resolve_model("offline-small") == "offline-small" and resolve_model("expert") == "expert"
    assert resolve_data_path("checkpoints/missing") == Path("checkpoints/missing")
    with pytest.raises(ConfigError, match="config 'checkpoints/missing' not found"):
        load_config("checkpoints/missing")
    # a folder of the same name in the working directory wins (e.g. `--out checkpoints/mine` of training)
    (tmp_path / "checkpoints" / "offline-small").mkdir(parents=True)
    assert resolve_data_path(DEFAULT_CHECKPOINT) == Path(DEFAULT_CHECKPOINT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _install_wheel(tmp_path: Path, env: dict) -> Path:
    """Build a wheel from a copy of the sources (the build writes build/ and *.egg-info next to them) and
    install it with --target; returns the target folder."""
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        p = REPO_ROOT / name
        (shutil.copytree(p, src / name, ignore=ignore) if p.is_dir() else shutil.copy2(p, src / name))
    pip = [sys.executable, "-m", "pip", "-q", "--no-input", "--disable-pip-version-check", "--no-cache-dir"]
    subprocess.run([*pip[:4], "wheel", *pip[4:], str(src), "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp_path / "wheel")], check=True, env=env, cwd=tmp_path)
    wheel = next((tmp_path / "wheel").glob("inspection_assistant-*.whl"))
    target = tmp_path / "site"
    subprocess.run([*pip[:4], "install", *pip[4:], "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                   check=True, env=env, cwd=tmp_path)
    return target


@pytest.mark.real
@pytest.mark.slow
def test_wheel_install_serves_the_app_on_the_shipped_checkpoint(tmp_path):
    """pip wheel + pip install --target, then `inspection-assistant serve` from outside the checkout: the
    `assistant` imported is the installed one, the shipped checkpoint comes from its package data."""
    from gradio_client import Client, handle_file

    from assistant.app import make_examples

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GRADIO_SERVER_PORT", "GRADIO_SERVER_NAME")}
    env.update(PIP_NO_INDEX="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    target = _install_wheel(tmp_path, env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env["PYTHONPATH"] = str(target)  # dependencies still come from this interpreter's environment
    code = "import assistant, assistant.config as c; print(assistant.__file__); print(c.resolve_model(None))"
    probe = subprocess.run([sys.executable, "-c", code], env=env, cwd=elsewhere, capture_output=True, text=True,
                           check=True).stdout.split("\n")
    assert probe[0] == str(target / "assistant" / "__init__.py"), probe
    assert probe[1] == str(target / "assistant" / "checkpoints" / "offline-small"), probe
    port = _free_port()
    proc = subprocess.Popen([str(target / "bin" / "inspection-assistant"), "serve", "--port", str(port)], env=env,
                            cwd=elsewhere, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        url, lines = wait_for_url(proc, 120)
        assert url == f"http://127.0.0.1:{port}/", "".join(lines)
        assert f"loaded {target / 'assistant' / 'checkpoints' / 'offline-small'}" in "".join(lines)
        assert "Inspection assistant" in urllib.request.urlopen(url, timeout=30).read().decode()
        (scratched, refs, _), *_ = make_examples(tmp_path / "examples")
        answer, result = Client(url, verbose=False).predict(
            handle_file(scratched), [handle_file(r) for r in refs], "Is there any anomaly?", 0.0, api_name="/inspect")
        assert answer.strip() and result["references"] == 2 and result["pred_label"] is True, (answer, result)
    finally:
        stop_server(proc)
    assert proc.returncode == 0, proc.stdout.read()[-2000:]
