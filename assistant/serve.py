"""`python -m assistant serve`: launch the Gradio app (app.py) on 127.0.0.1 and print its URL."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from assistant.config import REPO_ROOT


def add_arguments(p: argparse.ArgumentParser) -> None:
    from assistant.cli import add_config_arguments

    add_config_arguments(p, default=None)
    p.add_argument("--host", default=None, help="bind address (default: $GRADIO_SERVER_NAME, else serve.host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None,
                   help="port (default: $GRADIO_SERVER_PORT, else serve.port, 7860; next free one if taken)")
    p.add_argument("--device", default=None, help="cpu|cuda|... (default: from the config)")


DEFAULT_CHECKPOINT = "checkpoints/offline-small"  # the embedded default


def resolve_model(config: str | None) -> str:
    """--config value -> what Assistant.from_pretrained gets: a path relative to the repo when it exists there;
    by default the shipped checkpoint dir, or the offline-small preset while that dir has no config.json."""
    if config is None:
        ckpt = REPO_ROOT / DEFAULT_CHECKPOINT
        return str(ckpt) if (ckpt / "config.json").is_file() else "offline-small"
    if not Path(config).exists() and (REPO_ROOT / config).exists():
        return str(REPO_ROOT / config)
    return config


def bind_address(host: str | None, port: int | None, default_host: str, default_port: int,
                 environ=os.environ) -> tuple[str, int]:
    """(host, port) to serve on: --host/--port first, then Gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (what
    Gradio deployments set), then the config's serve.host / serve.port."""
    from assistant.cli import UsageError

    env_port = environ.get("GRADIO_SERVER_PORT", "").strip()
    if port is None and env_port:
        if not env_port.isdigit() or not 0 < int(env_port) < 65536:
            raise UsageError(f"GRADIO_SERVER_PORT: expected a port number 1-65535, got {env_port!r}")
        port = int(env_port)
    host = host or environ.get("GRADIO_SERVER_NAME", "").strip() or default_host
    return host, port if port is not None else default_port


def _import_app():
    """app.py lives at the repository root (next to the package)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import app

    return app


def run(args: argparse.Namespace) -> int:
    from assistant.model import Assistant

    app = _import_app()
    t0 = time.perf_counter()
    config = resolve_model(args.config)
    assistant = Assistant.from_pretrained(config, overrides=args.overrides, device=args.device)
    print(f"loaded {config} in {time.perf_counter() - t0:.1f} s", flush=True)
    cfg = assistant.cfg
    cfg.serve.host, cfg.serve.port = bind_address(args.host, args.port, cfg.serve.host, cfg.serve.port)
    example_dir = Path(tempfile.mkdtemp(prefix="inspection-examples-"))
    demo = app.build_demo(assistant, example_dir)
    _, url, _ = app.launch(demo, cfg, example_dir, prevent_thread_lock=True, quiet=True)
    print(f"Inspection assistant running at {url}  (Ctrl+C to stop)", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    from assistant.cli import main as cli_main

    return cli_main(["serve", *(argv or sys.argv[1:])])
