"""Inspection profiles: one folder per part type with its reference images, labelled examples and calibration.

    <root>/<name>/profile.json          name, description, config preset, created/updated (ISO UTC), golden, schema v.
                  references/<sha>.png   reference normal images
                  labelled/good/<sha>.png, labelled/defective/<sha>.png   the user's labels
                  labelled/defective/<sha>.mask.png   optional defect mask of labelled/defective/<sha>.png
                  calibration.json       the threshold refined by the labels (expert/labels.py) and how it was fitted
                  profile.lock           exclusive flock around every write

The root is `profile_root()`: $INSPECTION_ASSISTANT_HOME/profiles, else $XDG_DATA_HOME/inspection-assistant/profiles
(~/.local/share/... by default). The folders are the source of truth: an image belongs to a profile when its file
is there. Each image is validated (imaging.load_image), re-encoded as RGB PNG and stored under the sha256 of the
*stored PNG bytes*, so the same picture added twice is one file and a stored file can always be checked against its
name. Every file is written atomically (a `.tmp-*` file in the same folder, fsync, os.replace); listings ignore
`.tmp-*` leftovers of a killed writer and the next locked write removes them. An image lives in one folder: adding
it under another label moves it (the newest label wins; a mask goes with its defective label); a labelled good
image that is already a reference is a duplicate. No torch here, so `profile list` stays fast (fitting: profile_fit.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from assistant.atomic import TMP_PREFIX, atomic_write, file_lock, json_bytes
from assistant.imaging import ImageError, ImageInput, load_image

SCHEMA_VERSION = 1  # profile.json layout this code reads and writes
DEFAULT_CONFIG = "offline-small"
DEFAULT_COST_RATIO = 1.0  # miss : false reject, when a profile has no calibration yet (expert/labels.py)
HOME_ENV = "INSPECTION_ASSISTANT_HOME"
KINDS = ("references", "good", "defective")
FOLDERS = {"references": "references", "good": "labelled/good", "defective": "labelled/defective"}
MASK_SUFFIX = ".mask.png"  # <sha>.mask.png beside labelled/defective/<sha>.png
PROFILE_FILE, CALIBRATION_FILE, LOCK_FILE = "profile.json", "calibration.json", "profile.lock"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]*")
MAX_NAME = 64
STORED_RE = re.compile(r"[0-9a-f]{64}\.png")  # a stored image's file name


class ProfileError(ValueError):
    """A profile is missing, misnamed, corrupt or too new; the message names the file and what was expected."""


def profile_root(root: str | os.PathLike | None = None) -> Path:
    """`root` if given, else $INSPECTION_ASSISTANT_HOME/profiles, else the user's data dir."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser() / "profiles"
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base).expanduser() / "inspection-assistant" / "profiles"


def valid_name(name: str) -> bool:
    return (isinstance(name, str) and len(name) <= MAX_NAME and NAME_RE.fullmatch(name) is not None
            and ".." not in name and name[-1] not in " .")


def check_name(name: str) -> str:
    """`name` when it can be a profile folder; ProfileError saying what is allowed otherwise."""
    if not valid_name(name):
        raise ProfileError(f"profile name: expected 1 to {MAX_NAME} letters, digits, spaces, '.', '-' or '_', starting "
                           f"with a letter or digit, not ending with a space or '.', no '..'; got {name!r}")
    return name


def list_profiles(root: str | os.PathLike | None = None) -> list[str]:
    """Sorted names of the profiles under the root (folders with a profile.json; hidden and invalid names skipped)."""
    base = profile_root(root)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir()
                  if p.is_dir() and (p / PROFILE_FILE).is_file() and valid_name(p.name))


def remove_profile(name: str, root: str | os.PathLike | None = None) -> None:
    """Delete a profile: renamed away under its lock (it vanishes at once), then the files removed."""
    folder = _existing_folder(name, root)
    gone = folder.parent / f"{TMP_PREFIX}removed-{folder.name}-{os.getpid()}"
    with file_lock(folder / LOCK_FILE):
        os.rename(folder, gone)
    shutil.rmtree(gone, ignore_errors=True)


@dataclass
class AddReport:
    """What `Profile.add` did, per kind (references, good, defective): stored paths."""

    added: dict[str, list[Path]] = field(default_factory=lambda: {k: [] for k in KINDS})  # new in the profile
    duplicates: dict[str, list[Path]] = field(default_factory=lambda: {k: [] for k in KINDS})  # already there
    moved: dict[str, list[Path]] = field(default_factory=lambda: {k: [] for k in KINDS})  # relabelled into kind

    @property
    def changed(self) -> bool:
        return any(self.added[k] or self.moved[k] for k in KINDS)

    def summary(self) -> str:
        """'added 2 good, 1 defective; 1 duplicate (already in the profile): good' in words."""
        parts = [f"{len(self.added[k])} {k}" for k in KINDS if self.added[k]]
        text = f"added {', '.join(parts)}" if parts else "added nothing"
        moved = [f"{len(self.moved[k])} to {k}" for k in KINDS if self.moved[k]]
        text += f"; relabelled {', '.join(moved)}" if moved else ""
        dups = [k for k in KINDS if self.duplicates[k]]
        n = sum(len(self.duplicates[k]) for k in dups)
        return text + (f"; {n} duplicate(s) already in the profile, skipped ({', '.join(dups)})" if dups else "")


@dataclass
class Profile:
    """One part type's profile folder and its profile.json fields."""

    path: Path  # the profile folder
    name: str
    description: str = ""
    config: str = DEFAULT_CONFIG  # config preset, file or checkpoint dir the profile is fitted with
    created: str = ""  # ISO 8601 UTC
    updated: str = ""  # ISO 8601 UTC: the last change of images or calibration
    golden: bool = False  # the references are golden samples (same design, same fixture): alignment "golden"
    schema_version: int = SCHEMA_VERSION
    _lock_depth: int = field(default=0, init=False, repr=False, compare=False)

    @classmethod
    def create(cls, name: str, references: Iterable[ImageInput], description: str = "", config: str = DEFAULT_CONFIG,
               root: str | os.PathLike | None = None, golden: bool = False) -> Profile:
        """A new profile with at least one reference (`golden`: they are golden samples); built in a hidden folder
        and renamed into place, so a profile is either complete or absent. ProfileError when one of that name exists."""
        base = profile_root(root)
        folder = base / check_name(name)
        references = list(references)
        if not references:
            raise ProfileError(f"profile {name!r}: expected at least one reference image, got none")
        if folder.exists():
            raise ProfileError(f"profile {name!r} already exists in {base}; add images with `profile add` or remove "
                               "it first")
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}create-", dir=base))
        try:
            now = now_iso()
            draft = cls(tmp, name, description, config, created=now, updated=now, golden=bool(golden))
            with draft.lock():
                draft._touch()
                draft.add(references=references)
            try:
                os.rename(tmp, folder)
            except OSError:
                raise ProfileError(f"profile {name!r} already exists in {base} (created meanwhile)") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls.load(name, base)

    @classmethod
    def load(cls, name: str, root: str | os.PathLike | None = None) -> Profile:
        """The profile of that name; ProfileError naming profile.json when it is missing, corrupt or too new."""
        folder = _existing_folder(name, root)
        return cls(folder, **read_meta(folder / PROFILE_FILE))

    def folder(self, kind: str) -> Path:
        if kind not in FOLDERS:
            raise ValueError(f"image kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        return self.path / FOLDERS[kind]

    def images(self, kind: str) -> list[Path]:
        """Stored images of one kind, sorted by name (temp files and anything else ignored)."""
        d = self.folder(kind)
        return sorted(p for p in d.iterdir() if STORED_RE.fullmatch(p.name)) if d.is_dir() else []

    def references(self) -> list[Path]:
        return self.images("references")

    def good(self) -> list[Path]:
        return self.images("good")

    def defective(self) -> list[Path]:
        return self.images("defective")

    def mask(self, image: Path) -> Path | None:
        """The defect mask stored for a labelled defective image, if any."""
        p = mask_path(self.folder("defective") / Path(image).name)
        return p if p.is_file() else None

    def counts(self) -> dict[str, int]:
        return {k: len(self.images(k)) for k in KINDS}

    def fingerprint(self) -> str:
        """sha256 of the sorted stored image names per kind: equal fingerprints, equal image sets."""
        names = sorted(f"{k}/{p.name}" for k in KINDS for p in self.images(k))
        return hashlib.sha256("\n".join(names).encode()).hexdigest()

    @contextlib.contextmanager
    def lock(self, shared: bool = False) -> Iterator[None]:
        """flock on profile.lock, exclusive for writers (shared for readers); re-entrant within this object."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        with file_lock(self.path / LOCK_FILE, shared):
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0

    def add(self, good: Iterable[ImageInput] = (), defective: Iterable[ImageInput] = (),
            references: Iterable[ImageInput] = (), masks: Sequence[ImageInput] = ()) -> AddReport:
        """Store images under the lock. Every source is validated before anything is written (ImageError names the
        bad one). `masks`: defect masks paired in order with `defective`, none or one per image and each of its
        image's size (ProfileError otherwise); stored as grey PNGs beside their images, replacing older ones."""
        batches = {"references": list(references), "good": list(good), "defective": list(defective)}
        mask_pngs = self._mask_pngs(batches["defective"], list(masks))
        for src in (s for k in KINDS for s in batches[k]):
            load_image(src)  # all validated first: a bad file in the batch adds nothing
        report = AddReport()
        with self.lock():
            self._refresh()  # refuses a profile.json made corrupt or newer since this object was loaded
            self._check_keeps_a_reference(batches)
            self._sweep_temp()
            for kind in KINDS:
                for i, src in enumerate(batches[kind]):
                    dest, status = self._store(kind, encode_png(load_image(src)))
                    getattr(report, status)[kind].append(dest)
                    if kind == "defective" and mask_pngs:
                        atomic_write(mask_path(dest), mask_pngs[i])
            if report.changed:
                self._touch()
        return report

    def calibration(self) -> dict | None:
        """calibration.json as written by `refit`, None before the first fit."""
        p = self.path / CALIBRATION_FILE
        if not p.is_file():
            return None
        return _read_json(p, "the profile's calibration (written by `profile add`; remove it to refit)")

    def calibration_current(self) -> bool:
        """True when calibration.json was fitted on exactly the images stored now."""
        cal = self.calibration()
        return cal is not None and cal.get("images") == self.fingerprint()

    def save_calibration(self, data: dict) -> None:
        """Write calibration.json (non-finite numbers as null) and bump `updated`, under the lock."""
        with self.lock():
            self._refresh()
            atomic_write(self.path / CALIBRATION_FILE, json_bytes(data))
            self._touch()

    def _store(self, kind: str, data: bytes) -> tuple[Path, str]:
        """(stored path, 'added' | 'duplicates' | 'moved'): one image into `kind`, out of any other folder."""
        name = stored_name(data)
        held = [k for k in KINDS if (self.folder(k) / name).is_file()]
        if kind in held or (kind == "good" and "references" in held):
            dest = self.folder(kind if kind in held else "references") / name
            if dest.read_bytes() != data:  # a damaged copy: adding the image again repairs it
                atomic_write(dest, data)
            return dest, "duplicates"
        dest = self.folder(kind) / name
        atomic_write(dest, data)  # written before the old copy goes: a crash in between loses nothing
        for k in held:
            (self.folder(k) / name).unlink(missing_ok=True)
        if "defective" in held:
            mask_path(self.folder("defective") / name).unlink(missing_ok=True)  # a mask belongs to a defective label
        return dest, ("moved" if held else "added")

    def _mask_pngs(self, defective: list[ImageInput], masks: list[ImageInput]) -> list[bytes]:
        """Grey PNG bytes of each mask, checked against its defective image: the same count (or no masks) and, pair by
        pair, the same size; ProfileError naming the pair otherwise (nothing is written)."""
        if masks and len(masks) != len(defective):
            raise ProfileError(f"profile {self.name!r}: expected one mask per defective image, paired in order; got "
                               f"{len(masks)} mask(s) for {len(defective)} defective image(s)")
        pngs = []
        for i, (image, mask) in enumerate(zip(defective, masks), 1):
            (w, h), grey = load_image(image).size, load_image(mask).convert("L")
            if grey.size != (w, h):
                raise ProfileError(f"profile {self.name!r}: mask {source_name(mask, i)} is {grey.width}x{grey.height}; "
                                   f"expected the size of its defective image {source_name(image, i)}, {w}x{h}")
            pngs.append(encode_png(grey))
        return pngs

    def _check_keeps_a_reference(self, batches: dict[str, list]) -> None:
        """ProfileError when labelling defective would move every reference out (the threshold needs one)."""
        refs = {p.name for p in self.references()}
        if not refs or batches["references"] or not batches["defective"]:
            return
        if refs <= {stored_name(encode_png(load_image(src))) for src in batches["defective"]}:
            raise ProfileError(f"profile {self.name!r}: these defective labels would take away all {len(refs)} "
                               "reference(s); expected at least one reference to stay (add another with --reference)")

    def _sweep_temp(self) -> None:
        """Remove `.tmp-*` files of killed writers (every writer holds the lock, so none is in progress)."""
        for d in [self.path, *(self.folder(k) for k in KINDS)]:
            for p in d.glob(f"{TMP_PREFIX}*") if d.is_dir() else []:
                p.unlink(missing_ok=True)

    def _refresh(self) -> None:
        """Re-read profile.json (under the lock) so a write changes only `updated`."""
        for key, value in read_meta(self.path / PROFILE_FILE).items():
            setattr(self, key, value)

    def _touch(self) -> None:
        """profile.json with `updated` set to now (under the lock, after _refresh)."""
        self.updated = now_iso()
        meta = {"schema_version": SCHEMA_VERSION, "name": self.name, "description": self.description,
                "config": self.config, "created": self.created, "updated": self.updated}
        meta.update({"golden": True} if self.golden else {})  # only when set: other profiles' files stay as they were
        atomic_write(self.path / PROFILE_FILE, json_bytes(meta))


def read_meta(path: Path) -> dict:
    """profile.json -> Profile keyword arguments; ProfileError naming the file for anything missing or too new."""
    data = _read_json(path, f"the profile's metadata with schema_version {SCHEMA_VERSION}")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ProfileError(f"{path}: expected an integer schema_version >= 1, got {version!r}; the file is corrupt")
    if version > SCHEMA_VERSION:
        raise ProfileError(f"{path}: schema_version {version} is newer than this version of inspection-assistant "
                           f"reads (up to {SCHEMA_VERSION}); upgrade it to use this profile (nothing was changed)")
    fields = {"name": path.parent.name}
    for key, default in (("description", ""), ("config", DEFAULT_CONFIG), ("created", ""), ("updated", ""),
                         ("golden", False)):
        value = data.get(key, default)
        if type(value) is not type(default):
            kind = "true or false" if isinstance(default, bool) else "a string"
            raise ProfileError(f"{path}: expected '{key}' to be {kind}, got {type(value).__name__} {value!r}")
        fields[key] = value
    return {**fields, "schema_version": version}


def load_stored(path: Path) -> Image.Image:
    """A stored image, checked against its name; ProfileError naming the file when it is damaged."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ProfileError(f"{path}: stored image unreadable ({e})") from None
    if hashlib.sha256(data).hexdigest() != path.stem:
        raise ProfileError(f"{path}: stored image is damaged (its content no longer matches its name, the sha256 of "
                           "the PNG); delete the file or add the original image again")
    try:
        return load_image(data)
    except ImageError as e:
        raise ProfileError(f"{path}: stored image unreadable ({e})") from None


def mask_path(image: Path) -> Path:
    """Where the mask of a stored defective image lives: <sha>.mask.png beside <sha>.png."""
    return image.with_name(image.stem + MASK_SUFFIX)


def source_name(src: ImageInput, number: int) -> str:
    """A source in an error message: its path, else its place in the batch (from 1)."""
    return str(src) if isinstance(src, (str, os.PathLike)) else f"#{number}"


def stored_name(png: bytes) -> str:
    """File name of a stored image: the sha256 of its PNG bytes."""
    return hashlib.sha256(png).hexdigest() + ".png"


def encode_png(img: Image.Image) -> bytes:
    img.save(buf := io.BytesIO(), format="PNG")
    return buf.getvalue()


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ProfileError(f"{path}: missing; expected {what}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProfileError(f"{path}: not valid JSON ({e}); expected {what}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a JSON object ({what}), got {type(data).__name__}")
    return data


def _existing_folder(name: str, root: str | os.PathLike | None) -> Path:
    base = profile_root(root)
    folder = base / check_name(name)
    if not folder.is_dir():
        known = list_profiles(base)
        raise ProfileError(f"no profile named {name!r} in {base}; existing: {', '.join(known) or 'none'} "
                           "(create one with `profile create NAME --reference IMAGE`)")
    return folder


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
