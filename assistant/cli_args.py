"""Argument helpers shared by the command modules (assistant/cli.py and its commands, training): no command here.

The one parser of comma-separated integer lists (`--seeds 0,1,2`, `--margin-shots 1,2,4`) and the `--golden` flag
(the references are golden samples). `UsageError` and the shared `--config` / `--set` flags live in
assistant/config.py with the config they feed.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence


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


GOLDEN_HELP = ("the references are golden samples (same design, same fixture): compare position by position whenever "
               "the part registers within a fixture's motion (expert.alignment golden)")


def add_golden_argument(p: argparse.ArgumentParser, help: str = GOLDEN_HELP) -> None:
    """`--golden` (detect, chat, profile create): the user vouches that the references are golden samples."""
    p.add_argument("--golden", action="store_true", help=help)
