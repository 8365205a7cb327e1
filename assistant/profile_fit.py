"""Fit a profile's threshold: its references and labels through expert.labels.fit_labels, into calibration.json;
and a profile in use by a chat (ActiveProfile: `activate`, `reactivate` unless unchanged, `mark` a part good or
defective, refitted).

Apart from assistant/profile.py (storage) so that the storage never imports the expert and torch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from assistant.config import UsageError
from assistant.imaging import ImageInput
from assistant.profile import DEFAULT_COST_RATIO, KINDS, Profile, ProfileError, load_stored, now_iso


def refit(profile: Profile, expert, tower, seed: int = 0, cost_ratio: float = DEFAULT_COST_RATIO, save: bool = True):
    """ReferenceState of the profile's references + labels (expert.labels.fit_labels); with `save`, calibration.json
    written. Holds the profile's lock (shared without `save`) while it reads the images and writes, so the
    calibration matches the stored set."""
    from assistant.expert.labels import fit_labels

    with profile.lock(shared=not save):
        paths = {k: profile.images(k) for k in KINDS}
        if not paths["references"]:
            raise ProfileError(f"profile {profile.name!r}: expected at least one reference image in "
                               f"{profile.folder('references')}, found none; add one with --reference")
        images = {k: [load_stored(p) for p in paths[k]] for k in KINDS}
        try:
            state, cal = fit_labels(expert, tower, images["references"], images["good"], images["defective"],
                                    seed=seed, cost_ratio=cost_ratio)
        except ValueError as e:
            raise ProfileError(f"profile {profile.name!r}: {e}") from None
        if profile.golden and state.golden is not None:  # golden samples: compared with alignment "golden"
            state.alignment = "golden"  # (no templates when the profile's config says alignment free)
        if save:
            save_fit(profile, cal, len(paths["references"]), seed)
    return state


def save_fit(profile: Profile, cal, n_references: int, seed: int) -> None:
    """calibration.json of a labelled fit (LabelledCalibration), stamped with the stored images it matches."""
    profile.save_calibration({**cal.to_dict(), "n_references": n_references, "seed": seed, "fitted_at": now_iso(),
                              "images": profile.fingerprint()})


def fit_settings(profile: Profile) -> tuple[int, float]:
    """(seed, cost ratio) of the profile's last fit; the defaults before one (or when calibration.json is bad)."""
    try:
        cal = profile.calibration() or {}
    except ProfileError:
        cal = {}
    seed, ratio = cal.get("seed"), cal.get("cost_ratio")
    ok_seed = isinstance(seed, int) and not isinstance(seed, bool)
    ok_ratio = isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and ratio > 0
    return (seed if ok_seed else 0), (float(ratio) if ok_ratio else DEFAULT_COST_RATIO)


def fit_profile(profile: Profile, expert, tower, save: bool = False):
    """refit with the seed and cost ratio of the profile's last fit (fit_settings)."""
    seed, cost_ratio = fit_settings(profile)
    return refit(profile, expert, tower, seed=seed, cost_ratio=cost_ratio, save=save)


def stored_version(profile: Profile) -> tuple[str, int, float]:
    """What fitting the profile depends on: its stored images (fingerprint) and its last fit's seed and cost ratio."""
    return (profile.fingerprint(), *fit_settings(profile))


def open_profile(name: str | None, references: Sequence = ()) -> Profile | None:
    """The Profile of a --profile flag (None without one); it brings its own references, so none may come with it."""
    if not name:
        return None
    if references:
        raise UsageError(f"--profile {name} brings its own references: expected no --reference with it, got "
                         f"{len(references)}")
    return Profile.load(name)


@dataclass
class ActiveProfile:
    """A profile in use by a chat: its reference images as the expert saw them and the state fitted on them."""

    profile: Profile
    images: list[Image.Image]  # references, then the labelled good images (fit_labels joins them in that order)
    state: object  # the expert's ReferenceState of those images, threshold refined by the labels
    calibration: dict  # LabelledCalibration.to_dict() of that fit (equal to calibration.json after a saved fit)
    version: tuple = ()  # stored_version of the profile this state matches

    @property
    def threshold(self) -> float:
        return float(self.calibration["threshold"])


def activate(profile: Profile, expert, tower, save: bool = False) -> ActiveProfile:
    """The profile fitted (fit_profile) with its images loaded, ready for ChatSession.set_references(images, state)."""
    with profile.lock(shared=not save):
        state = fit_profile(profile, expert, tower, save=save)
        images = [load_stored(p) for p in profile.references() + profile.good()]
        version = stored_version(profile)
    return ActiveProfile(profile, images, state, dict(state.calibration["labels"]), version)


def reactivate(name: str, expert, tower, cached: ActiveProfile | None = None) -> ActiveProfile:
    """The named profile activated, or `cached` itself (no refit) when it is that profile and its stored images and
    fit settings have not changed since (another session's label or `profile add` makes it refit)."""
    if cached is not None and cached.profile.name == name and cached.version == stored_version(cached.profile):
        return cached
    return activate(Profile.load(name), expert, tower)


def mark(active: ActiveProfile, image: ImageInput, label: str, expert, tower) -> ActiveProfile:
    """Store `image` as a labelled `label` ('good' | 'defective') example of the profile, fit the new label on top
    of the active state (expert.labels.add_label; a relabel or a duplicate refits in full) and save
    calibration.json; the profile's images and state after the change."""
    from assistant.expert.labels import add_label
    from assistant.imaging import load_image

    if label not in ("good", "defective"):
        raise ValueError(f"label: expected 'good' or 'defective', got {label!r}")
    profile = active.profile
    with profile.lock():
        report = profile.add(**{label: [image]})
        if len(report.added[label]) != 1 or any(report.moved.values()) or "labels_prior" not in getattr(
                active.state, "calibration", {}):
            return activate(profile, expert, tower, save=True)  # a relabel or a duplicate: the full refit
        img = load_image(image)
        state, cal = add_label(expert, tower, active.state, img, label)  # one more label, no refit
        save_fit(profile, cal, len(profile.references()), fit_settings(profile)[0])
        version = stored_version(profile)
    images = active.images + ([img] if label == "good" else [])
    return ActiveProfile(profile, images, state, dict(state.calibration["labels"]), version)
