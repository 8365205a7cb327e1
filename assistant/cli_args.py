"""Argument helpers shared by the command modules (assistant/cli.py and its commands, training): no command here.

`UsageError` (options that do not go together), the shared `--config` / `--set` flags, and the one parser of
comma-separated integer lists (`--seeds 0,1,2`, `--margin-shots 1,2,4`).
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence


class UsageError(ValueError):
    """Options that do not go together or are out of range: `main` prints the message, no traceback."""


def add_config_arguments(p: argparse.ArgumentParser, default: str = "offline-small") -> None:
    """Shared --config / --set flags."""
    p.add_argument("--config", default=default,
                   help="YAML file, checkpoint dir or preset name (offline-small, tiny, clip-llava)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=VALUE",
                   help="override any config field, e.g. --set expert.knn_k=3 (repeatable)")


def parse_int_list(text: str | Sequence[int], flag: str, what: str = "integers", example: str = "0,1,2",
                   minimum: int | None = None, unique: bool = False) -> list[int]:
    """"0,1,2" -> [0, 1, 2] (a list or tuple passes through as ints); `unique` sorts and drops repeats.
    ValueError naming the flag, what was expected and what came when nothing is left or a value is below `minimum`."""
    try:
        parts = text if isinstance(text, (list, tuple)) else str(text).split(",")
        values = [int(s) for s in parts if str(s).strip()]
    except ValueError:
        values = []
    if unique:
        values = sorted(set(values))
    if not values or (minimum is not None and min(values) < minimum):
        raise ValueError(f"{flag}: expected {what} separated by commas (e.g. {example}), got {text!r}")
    return values


def seeds_arg(text: str) -> list[int]:
    """argparse type of --seeds: comma-separated integers, at least one."""
    try:
        return parse_int_list(text, "--seeds")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_shots(text: str, flag: str = "--margin-shots") -> tuple[int, ...]:
    """Reference counts >= 1, sorted, without repeats: "4,1,2" -> (1, 2, 4)."""
    return tuple(parse_int_list(text, flag, "reference counts >= 1", "1,2,4,8,16", minimum=1, unique=True))
