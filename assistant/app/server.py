"""Load the assistant, build the app, launch it and wait: what `inspection-assistant serve` and app.py run."""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from assistant.app.layout import build_demo, launch
from assistant.config import UsageError, resolve_model


def bind_address(host: str | None, port: int | None, default_host: str, default_port: int,
                 environ=os.environ) -> tuple[str, int]:
    """(host, port) to serve on: --host/--port first, then Gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (what
    Gradio deployments set), then the config's serve.host / serve.port."""
    env_port = environ.get("GRADIO_SERVER_PORT", "").strip()
    if port is None and env_port:
        if not env_port.isdigit() or not 0 < int(env_port) < 65536:
            raise UsageError(f"GRADIO_SERVER_PORT: expected a port number 1-65535, got {env_port!r}")
        port = int(env_port)
    host = host or environ.get("GRADIO_SERVER_NAME", "").strip() or default_host
    return host, port if port is not None else default_port


def serve(config: str | None = None, overrides: Sequence[str] = (), device: str | None = None,
          host: str | None = None, port: int | None = None, profile: str | None = None) -> int:
    """Load `config` (default: the profile's, else the shipped checkpoint), serve the app on (host, port) (see
    bind_address), print its URL and block until Ctrl+C. `profile`: the inspection profile every tab starts with."""
    from assistant.model import Assistant
    from assistant.profile_fit import activate, open_profile

    t0 = time.perf_counter()
    chosen = open_profile(profile)
    config = resolve_model(config or (chosen.config if chosen else None))
    assistant = Assistant.from_pretrained(config, overrides=list(overrides), device=device)
    active = activate(chosen, assistant.expert, assistant.tower) if chosen else None
    print(f"loaded {config} in {time.perf_counter() - t0:.1f} s"
          + (f"; profile {chosen.name!r}, threshold {active.threshold:.4g}" if active else ""), flush=True)
    cfg = assistant.cfg
    cfg.serve.host, cfg.serve.port = bind_address(host, port, cfg.serve.host, cfg.serve.port)
    example_dir = Path(tempfile.mkdtemp(prefix="inspection-examples-"))
    demo = build_demo(assistant, example_dir, profile=active)
    _, url, _ = launch(demo, cfg, example_dir, prevent_thread_lock=True, quiet=True)
    print(f"Inspection assistant running at {url}  (Ctrl+C to stop)", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0
