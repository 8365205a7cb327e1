"""`python -m assistant profile create|add|show|list|remove`: inspection profiles (assistant/profile.py).

    profile create NAME --reference R [R ...] [--description TEXT] [--config PRESET] [--golden]
    profile add NAME [--good F ...] [--defective F ... [--mask M ...]] [--reference R ...] [--cost-ratio X]
    profile show NAME | profile list | profile remove NAME --yes

`create` and `add` refit the profile's threshold (expert/labels.py: the references and labelled good images form
the memory bank, the labels refine the calibrated threshold) and print it with its leave-one-out figures; `add`
with no image only refits. `--mask` gives the defective images' defect masks, paired in order (folders expand
sorted), each of its image's size. `create --golden`: the references are golden samples of the part's design shot in
the same fixture (profile.json `golden`; parts are compared with alignment "golden"). `detect --profile NAME` judges
parts with a profile.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path

from assistant.cli_args import add_golden_argument
from assistant.config import UsageError
from assistant.imaging import list_images
from assistant.profile import (
    DEFAULT_CONFIG,
    DEFAULT_COST_RATIO,
    KINDS,
    Profile,
    ProfileError,
    list_profiles,
    profile_root,
    remove_profile,
)
from assistant.profile_fit import fit_settings, refit
from assistant.wording import loo_words


def expand_images(items: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted)."""
    out: list[Path] = []
    for it in items:
        p = Path(it)
        out.extend(list_images(p) if p.is_dir() else [p])
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = sub.add_parser("create", help="a new profile from reference normal images (files or folders)")
    c.add_argument("name")
    c.add_argument("--reference", nargs="+", action="extend", required=True, metavar="R",
                   help="reference normal image(s) or folder(s)")
    c.add_argument("--description", default="", help="free text shown by `profile show`")
    add_golden_argument(c, "the references are golden samples (same design, same fixture): parts are compared "
                           "with them position by position whenever they register within a fixture's motion")
    c.add_argument("--config", default=DEFAULT_CONFIG,
                   help="YAML file, checkpoint dir or preset the profile is fitted with (offline-small, tiny, ...)")
    a = sub.add_parser("add", help="add labelled images (and references), then refit the threshold")
    a.add_argument("name")
    for flag, what in (("--good", "image(s) or folder(s) of parts labelled good"),
                       ("--defective", "image(s) or folder(s) of parts labelled defective"),
                       ("--reference", "more reference normal image(s) or folder(s)")):
        a.add_argument(flag, nargs="+", action="extend", default=[], metavar="F", help=what)
    a.add_argument("--mask", nargs="+", action="extend", default=[], metavar="M",
                   help="defect mask(s) of the --defective images, paired in order (one per image, the same size)")
    a.add_argument("--cost-ratio", type=float, default=None,
                   help=f"cost of a miss / of a false reject (default: the profile's, else {DEFAULT_COST_RATIO:g})")
    s = sub.add_parser("show", help="counts, threshold and leave-one-out figures of one profile")
    s.add_argument("name")
    sub.add_parser("list", help="the profiles and where they are stored")
    r = sub.add_parser("remove", help="delete a profile and its images")
    r.add_argument("name")
    r.add_argument("--yes", action="store_true", help="confirm the deletion (required)")


def run(args) -> int:
    return {"create": create, "add": add, "show": show, "list": list_command, "remove": remove}[args.action](args)


def create(args) -> int:
    from assistant.config import resolve_config_path

    resolve_config_path(args.config)  # a wrong --config fails before the profile is made
    profile = Profile.create(args.name, expand_images(args.reference), description=args.description,
                             config=args.config, golden=args.golden)
    print(f"created profile {profile.name!r} with {len(profile.references())} reference(s) in {profile.path}")
    fit_and_report(profile, DEFAULT_COST_RATIO)
    return 0


def add(args) -> int:
    if args.cost_ratio is not None and not args.cost_ratio > 0:  # checked before anything is stored
        raise UsageError(f"--cost-ratio: expected a positive miss:false-reject cost ratio, got {args.cost_ratio}")
    profile = Profile.load(args.name)
    report = profile.add(good=expand_images(args.good), defective=expand_images(args.defective),
                         references=expand_images(args.reference), masks=expand_images(args.mask))
    print(f"profile {profile.name!r}: {report.summary()}")
    seed, cost_ratio = fit_settings(profile)
    fit_and_report(profile, args.cost_ratio or cost_ratio, seed)
    return 0


def fit_and_report(profile: Profile, cost_ratio: float, seed: int = 0) -> None:
    """Load the profile's detector, refit, print the threshold and the leave-one-out figures."""
    from assistant.config import load_config
    from assistant.expert import load_expert

    tower, expert = load_expert(load_config(profile.config))
    refit(profile, expert, tower, seed=seed, cost_ratio=cost_ratio)
    cal = profile.calibration() or {}
    print(f"threshold: {cal['threshold']:.4f} (before labels {cal['prior_threshold']:.4f}; "
          f"{cal['n_references']} reference(s), {cal['n_good']} good, {cal['n_defective']} defective label(s))")
    print(f"leave-one-out on the labels: {loo_words(cal)}")


def show(args) -> int:
    profile = Profile.load(args.name)
    counts = profile.counts()
    try:
        cal, state = profile.calibration(), ""
    except ProfileError as e:
        cal, state = None, f"unreadable ({e})"
    if cal is not None:
        state = "current" if cal.get("images") == profile.fingerprint() else \
            f"stale: the images changed since; run `profile add {profile.name}` to refit"
    masks = sum(profile.mask(p) is not None for p in profile.defective())
    rows = [("profile", profile.name), ("description", profile.description or "-"), ("config", profile.config),
            ("golden samples", "yes" if profile.golden else "no"),
            *((k, str(counts[k])) for k in KINDS), ("defect masks", f"{masks} of {counts['defective']} defective")]
    if cal is not None:
        rows += [("threshold", f"{cal['threshold']:.4f}"), ("prior threshold", f"{cal['prior_threshold']:.4f}"),
                 ("leave-one-out", loo_words(cal)), ("cost ratio", f"{cal.get('cost_ratio', 0):g} (miss:false reject)"),
                 ("fitted", cal.get("fitted_at", "-"))]
    rows += [("calibration", state or "none yet (run `profile add NAME`)"), ("created", profile.created),
             ("updated", profile.updated), ("folder", str(profile.path))]
    print("| field | value |\n|---|---|")
    for key, value in rows:
        print(f"| {key} | {value} |")
    return 0


def list_command(args) -> int:
    names = list_profiles()
    print(f"{len(names)} profile(s) in {profile_root()}")
    for name in names:
        try:
            p = Profile.load(name)
            c = p.counts()
            print(f"- {name}: {c['references']} reference(s), {c['good']} good, {c['defective']} defective"
                  f"{' - ' + p.description if p.description else ''}")
        except ProfileError as e:
            print(f"- {name}: unusable ({e})")
    return 0


def remove(args) -> int:
    if not args.yes:
        raise UsageError(f"profile remove {args.name}: deletes the profile and its images; add --yes to confirm")
    remove_profile(args.name)
    print(f"removed profile {args.name!r}")
    return 0
