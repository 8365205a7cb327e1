"""`python -m assistant chat --image Q [--reference R ... | --profile NAME] [--question TEXT ...] [--overlay PATH]`

Interactive multi-turn chat about one image in the terminal, answers streamed token by token. With
`--question` (repeatable) it answers those questions in order and exits (non-interactive). Commands at the
prompt: `:ref PATH` adds a reference, `:unref N` removes reference N (1-based), `:sens S` sets the
sensitivity, `:result` prints the result JSON, `:quit` (or Ctrl+D) ends. `--profile NAME` judges with an inspection
profile's references, labels and refitted threshold (and its config unless --config is given); then `:good` and
`:defective` add the image to the profile as a label and refit it, as the app's Mark buttons do. `--golden`: the
references are golden samples of the part's design shot in the same fixture (the session's alignment "golden").
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from assistant.imaging import ImageError

if TYPE_CHECKING:
    from assistant.chat import ChatSession
    from assistant.model import Assistant
    from assistant.profile_fit import ActiveProfile

COMMANDS = "commands: :ref PATH, :unref N, :sens S, :result, :good, :defective, :quit"


@dataclass
class Prompt:
    """What the prompt's commands act on."""

    session: ChatSession
    assistant: Assistant  # its expert and tower refit the profile after a label
    active: ActiveProfile | None = None  # the --profile in use (None without one)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from assistant.cli_args import add_golden_argument
    from assistant.config import add_config_arguments

    add_config_arguments(p, default=None)
    p.add_argument("--image", required=True, help="query image (photo of the part)")
    p.add_argument("--reference", action="append", default=[], metavar="R", help="reference normal image (repeatable)")
    add_golden_argument(p)
    p.add_argument("--profile", metavar="NAME", default=None,
                   help="chat with an inspection profile active instead of --reference (`profile --help`)")
    p.add_argument("--question", action="append", default=[], metavar="TEXT",
                   help="ask this and exit (repeatable: follow-ups in order); omit for an interactive prompt")
    p.add_argument("--overlay", default=None, metavar="PATH", help="write the heat-map overlay (PNG) here")
    p.add_argument("--mask", default=None, metavar="PATH", help="write the predicted mask (PNG) here")
    p.add_argument("--sensitivity", type=float, default=0.0, help="threshold shift in [-1, 1] (0 = calibrated)")
    p.add_argument("--device", default=None, help="cpu|cuda|... (default: from the config)")


def _verdict_line(session) -> str:
    r = session.result
    where = f", {r.size} at the {r.position}" if r.pred_label and r.position else ""
    word = "ANOMALOUS" if r.pred_label else "NORMAL"
    if r.borderline:
        word = f"BORDERLINE, {word.lower()} at the threshold, confidence {r.confidence:.0%}: have a person check it"
    return (f"[{word}{where}] score {r.pred_score:.4g}, "
            f"threshold {r.threshold:.4g}, {len(session.references)} reference(s)"
            + (" (most of the image differs from the reference: same part, view and lighting?)"
               if r.reference_mismatch else ""))


def _write_pictures(session, args) -> None:
    from assistant.overlay import render_mask, render_overlay

    if args.overlay:
        Path(args.overlay).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render_overlay(session.query, session.result)).save(args.overlay)
        print(f"overlay written to {args.overlay}", file=sys.stderr)
    if args.mask:
        Path(args.mask).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render_mask(session.result)).save(args.mask)
        print(f"mask written to {args.mask}", file=sys.stderr)


def _turn(session, question: str, out=None) -> float:
    """Stream one answer to `out` (default: the current stdout); returns seconds to the first chunk."""
    out = out or sys.stdout
    t0 = time.perf_counter()
    first = None
    for chunk in session.ask(question):
        if first is None:
            first = time.perf_counter() - t0
        out.write(chunk)
        out.flush()
    out.write("\n")
    return first if first is not None else time.perf_counter() - t0


def _mark(prompt: Prompt, label: str) -> bool:
    """`:good` / `:defective`: the image joins the active profile as `label`, the profile is refitted (profile_fit.mark,
    as the app's Mark buttons) and the image judged again; one sentence with the new threshold and rates. False
    (and a message saying how to get a profile) when none is active."""
    from assistant.profile_fit import mark
    from assistant.wording import NO_PROFILE_TERMINAL, label_ack

    if prompt.active is None:
        print(NO_PROFILE_TERMINAL)
        return False
    a = prompt.assistant
    active = prompt.active = mark(prompt.active, prompt.session.query, label, a.expert, a.tower)
    prompt.session.set_references(active.images, state=active.state)
    print(label_ack(label, active.profile.counts(), active.threshold, active.calibration))
    return True


def _command(prompt: Prompt, line: str) -> bool:
    """Handle a `:command`; returns False to quit."""
    from assistant.chat import ChatError

    session = prompt.session
    cmd, _, arg = line[1:].partition(" ")
    try:
        if cmd in ("quit", "q", "exit"):
            return False
        if cmd in ("good", "defective"):
            if not _mark(prompt, cmd):
                return True
        elif cmd == "ref":
            session.add_reference(arg.strip())
        elif cmd == "unref":
            session.remove_reference(int(arg) - 1)
        elif cmd == "sens":
            session.set_sensitivity(float(arg))
        elif cmd == "result":
            print(json.dumps(session.summary(), indent=1))
            return True
        else:
            print(COMMANDS)
            return True
        print(_verdict_line(session))
    except (ChatError, ImageError, ValueError, OSError) as e:  # ProfileError is a ValueError
        print(f"error: {e}")
    return True


def run(args: argparse.Namespace) -> int:
    from assistant.chat import ChatSession
    from assistant.config import resolve_model
    from assistant.model import Assistant
    from assistant.profile_fit import activate, open_profile

    profile = open_profile(args.profile, args.reference)
    config = resolve_model(args.config or (profile.config if profile else None))
    t0 = time.perf_counter()
    assistant = Assistant.from_pretrained(config, overrides=args.overrides, device=args.device)
    session = ChatSession(assistant, references=args.reference, sensitivity=args.sensitivity,
                          max_pixels=assistant.cfg.serve.max_pixels, golden=getattr(args, "golden", False))
    prompt = Prompt(session, assistant)
    if profile:
        prompt.active = active = activate(profile, assistant.expert, assistant.tower)
        session.set_references(active.images, state=active.state)
        print(f"profile: {profile.name} (threshold {active.threshold:.4g})", file=sys.stderr)
    session.set_query(args.image)
    print(f"loaded in {time.perf_counter() - t0:.1f} s. {_verdict_line(session)}", file=sys.stderr)
    _write_pictures(session, args)
    if args.question:
        for q in args.question:
            print(f"> {q}")
            _turn(session, q)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        marks = ", :good / :defective label it in the profile" if prompt.active else ""
        print(f"Ask about the image (:ref PATH adds a reference{marks}, :quit ends).", file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if not line:
            continue
        if line.startswith(":"):
            if not _command(prompt, line):
                break
            _write_pictures(session, args)
            continue
        try:
            _turn(session, line)
        except KeyboardInterrupt:
            print("\n(interrupted)")
    return 0
