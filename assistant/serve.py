"""`python -m assistant serve`: launch the Gradio app (assistant.app) on 127.0.0.1 and print its URL."""
from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    from assistant.config import add_config_arguments

    add_config_arguments(p, default=None)
    p.add_argument("--host", default=None,
                   help="bind address (default: $GRADIO_SERVER_NAME, else serve.host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None,
                   help="port (default: $GRADIO_SERVER_PORT, else serve.port, 7860; next free one if taken)")
    p.add_argument("--device", default=None, help="cpu|cuda|... (default: from the config)")
    p.add_argument("--profile", metavar="NAME", default=None,
                   help="start every tab with this inspection profile active (its references, labels and threshold; "
                        "its config unless --config is given; `profile --help`)")


def run(args: argparse.Namespace) -> int:
    from assistant.app import serve

    return serve(args.config, overrides=args.overrides, device=args.device, host=args.host, port=args.port,
                 profile=args.profile)


def main(argv: list[str] | None = None) -> int:
    from assistant.cli import main as cli_main

    return cli_main(["serve", *(argv or sys.argv[1:])])
