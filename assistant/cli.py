"""`python -m assistant <command>` / `inspection-assistant <command>`.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`; modules
are imported lazily so `--help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from assistant.config import UsageError, add_config_arguments

__all__ = ["COMMANDS", "UsageError", "add_config_arguments", "build_parser", "main"]

COMMANDS = {
    "doctor": ("assistant.doctor", "load the embedded default models, run one forward each, print a table"),
    "detect": ("assistant.detect", "anomaly map, mask, boxes and verdict for one image (+ references)"),
    "chat": ("assistant.chat_cli", "multi-turn chat about an image in the terminal"),
    "evaluate": ("assistant.evaluation.cli", "evaluate on MVTec/VisA folders, JSONL or MMAD questions"),
    "serve": ("assistant.serve", "launch the Gradio app"),
    "profile": ("assistant.profile_cli", "inspection profiles: a part's references, labelled examples, calibration"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inspection-assistant",
        description="Conversational visual-inspection assistant: anomaly maps, masks, verdicts and answers.",
        epilog="Run `inspection-assistant COMMAND --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and (e.name == module or module.startswith(e.name + ".")):
                p.set_defaults(_missing=module)
                continue
            raise
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    if getattr(args, "_missing", None):
        print(f"command '{args.command}' is not available in this build ({args._missing} missing)", file=sys.stderr)
        return 2
    from assistant.config import ConfigError
    from assistant.imaging import ImageError
    from assistant.profile import ProfileError

    try:
        return int(args._run(args) or 0)
    except (ConfigError, ImageError, FileNotFoundError, UsageError, ProfileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
