"""Fit a profile's threshold: its references and labels through expert.labels.fit_labels, into calibration.json.

Apart from assistant/profile.py (storage) so that the storage never imports the expert and torch.
"""
from __future__ import annotations

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
        if save:
            profile.save_calibration({**cal.to_dict(), "n_references": len(paths["references"]), "seed": seed,
                                      "fitted_at": now_iso(), "images": profile.fingerprint()})
    return state


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
