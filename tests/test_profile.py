"""Inspection profiles (assistant/profile.py, `profile` command, `detect --profile`): storage round trip, names,
corrupt and newer profiles refused untouched, two processes adding at once, kill -9 mid-add, and detect using
the profile's threshold. Tiny generated textures, the tiny config, CPU."""
import hashlib
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from assistant.cli import main
from assistant.imaging import load_image
from assistant.profile import (
    KINDS,
    SCHEMA_VERSION,
    STORED_RE,
    Profile,
    ProfileError,
    check_name,
    encode_png,
    list_profiles,
    load_stored,
    profile_root,
    stored_name,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """Profiles under tmp_path/home/profiles, for this process and its children."""
    monkeypatch.setenv("INSPECTION_ASSISTANT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def texture(seed: int, side: int = 48, defect: bool = False) -> Image.Image:
    """Blurred noise (a surface that does not register: the free path); `defect` paints a dark square."""
    g = cv2.GaussianBlur(np.random.default_rng(seed).random((side, side)).astype(np.float32), (0, 0), 1.5)
    g = (g - g.min()) / (g.max() - g.min())
    if defect:
        g[side // 3:side // 2, side // 3:side // 2] = 0.0
    return Image.fromarray((g * 255).astype(np.uint8))


def save(folder: Path, seeds, **kw) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in seeds:
        p = folder / f"{s}{'-bad' if kw.get('defect') else ''}.png"
        texture(s, **kw).save(p)
        paths.append(str(p))
    return paths


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(*argv: str) -> int:
    torch.manual_seed(0)  # the tiny tower's random weights: every command builds the same detector
    return main(list(argv))


def test_round_trip_create_add_show_list_remove(tmp_path, capsys):
    refs, good = save(tmp_path / "refs", [1, 2]), save(tmp_path / "good", [3, 4])
    bad = save(tmp_path / "bad", [5], defect=True)
    assert cli("profile", "create", "part A", "--reference", *refs, "--config", "tiny",
               "--description", "top side") == 0
    assert "threshold:" in capsys.readouterr().out
    assert cli("profile", "add", "part A", "--good", *good, good[0], "--defective", *bad) == 0
    out = capsys.readouterr().out
    assert "added 2 good, 1 defective; 1 duplicate(s) already in the profile, skipped (good)" in out
    assert "leave-one-out on the labels: overkill" in out
    profile = Profile.load("part A")
    assert [len(profile.images(k)) for k in KINDS] == [2, 2, 1]
    assert profile.config == "tiny" and profile.description == "top side" and profile.calibration_current()
    again = profile.add(good=[good[1]], references=[refs[0]], defective=bad)  # everything known already
    assert not again.changed and sum(len(v) for v in again.duplicates.values()) == 3
    mask = tmp_path / "mask.png"
    Image.fromarray((np.arange(48 * 48).reshape(48, 48) % 7 == 0).astype(np.uint8) * 255).save(mask)
    masked = profile.add(defective=[good[0]], masks=[mask])  # relabelled: the newest label wins, one copy stays
    assert profile.mask(masked.moved["defective"][0]) is not None and profile.mask(profile.references()[0]) is None
    assert len(profile.good()) == 1 and len(profile.defective()) == 2
    assert cli("profile", "add", "part A") == 0  # nothing to add: refit only
    cal = json.loads((profile.path / "calibration.json").read_text())
    assert (cal["n_references"], cal["n_good"], cal["n_defective"]) == (2, 1, 2) and cal["fitted_at"]
    capsys.readouterr()
    assert cli("profile", "show", "part A") == 0
    shown = capsys.readouterr().out
    assert f"| threshold | {cal['threshold']:.4f} |" in shown and "| defective | 2 |" in shown
    assert "| calibration | current |" in shown and "| prior threshold |" in shown and "| cost ratio | 1 " in shown
    assert cli("profile", "list") == 0 and "- part A: 2 reference(s), 1 good, 2 defective - top side" in \
        capsys.readouterr().out
    assert cli("profile", "remove", "part A") == 2 and "--yes" in capsys.readouterr().err
    assert cli("profile", "remove", "part A", "--yes") == 0
    assert list_profiles() == [] and not any(p.name == "part A" for p in profile_root().iterdir())
    assert cli("profile", "show", "part A") == 2 and "no profile named 'part A'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["", "a/b", "..", "a..b", ".hidden", "x" * 65, "back\\slash", "ends.", "é", "a\nb"])
def test_bad_names_are_refused(name, tmp_path, capsys):
    with pytest.raises(ProfileError, match="profile name: expected 1 to 64 letters"):
        check_name(name)
    if name:
        ref = save(tmp_path, [1])[0]
        assert main(["profile", "create", name, "--reference", ref]) == 2
        assert "profile name: expected" in capsys.readouterr().err
    assert check_name("Part-7 top_v2.1") == "Part-7 top_v2.1"


def square_mask(path: Path, side: int = 48) -> str:
    """A white square on black, saved at `path`."""
    m = np.zeros((side, side), np.uint8)
    m[side // 3:side // 2, side // 3:side // 2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m).save(path)
    return str(path)


def test_defective_masks_are_paired_in_order_and_checked_before_any_write(tmp_path, capsys):
    refs, good = save(tmp_path / "refs", [1, 2]), save(tmp_path / "good", [3])
    bad = save(tmp_path / "bad", [5, 6], defect=True)
    masks = [square_mask(tmp_path / "m" / f"{i}.png") for i in range(2)]
    small = square_mask(tmp_path / "m" / "small.png", side=32)
    Profile.create("m", refs, config="tiny")
    before = snapshot(Profile.load("m").path)
    refused = {("--defective", *bad, "--mask", masks[0]): "expected one mask per defective image, paired in order; "
                                                          "got 1 mask(s) for 2 defective image(s)",
               ("--good", *good, "--mask", masks[0]): "got 1 mask(s) for 0 defective image(s)",
               ("--defective", *bad, "--mask", masks[0], small): f"mask {small} is 32x32; expected the size of its "
                                                                  f"defective image {bad[1]}, 48x48",
               ("--good", *good, "--cost-ratio", "0"): "--cost-ratio: expected a positive"}
    for argv, words in refused.items():
        assert cli("profile", "add", "m", *argv) == 2
        assert words in capsys.readouterr().err and snapshot(Profile.load("m").path) == before
    with pytest.raises(ProfileError, match=r"mask #1 is 32x32; expected the size of its defective image #1, 48x48"):
        Profile.load("m").add(defective=[texture(7, defect=True)], masks=[Image.new("L", (32, 32))])
    assert cli("profile", "add", "m", "--defective", *bad, "--mask", *masks, "--good", *good) == 0
    profile = Profile.load("m")
    names = [stored_name(encode_png(load_image(b))) for b in bad]
    for name, mask in zip(names, masks):  # beside its image, as a grey PNG of the mask given with it
        stored = profile.folder("defective") / name.replace(".png", ".mask.png")
        assert profile.mask(profile.folder("defective") / name) == stored
        assert np.array_equal(np.asarray(Image.open(stored)), np.asarray(Image.open(mask)))
    capsys.readouterr()
    assert cli("profile", "show", "m") == 0 and "| defect masks | 2 of 2 defective |" in capsys.readouterr().out
    profile.add(good=bad[:1])  # relabelled good: its mask goes with the defective label
    assert profile.mask(profile.folder("defective") / names[0]) is None and len(profile.defective()) == 1
    assert cli("profile", "show", "m") == 0 and "| defect masks | 1 of 1 defective |" in capsys.readouterr().out


def test_existing_name_and_bad_images_are_refused(tmp_path, capsys):
    refs = save(tmp_path, [1, 2])
    Profile.create("p", refs[:1])
    with pytest.raises(ProfileError, match="already exists"):
        Profile.create("p", refs)
    with pytest.raises(ProfileError, match="would take away all 1 reference"):
        Profile.load("p").add(defective=refs[:1])
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    before = snapshot(Profile.load("p").path)
    assert main(["profile", "add", "p", "--good", refs[1], str(junk)]) == 2  # validated before anything is written
    assert str(junk) in capsys.readouterr().err and snapshot(Profile.load("p").path) == before
    assert main(["profile", "create", "q", "--reference", refs[0], "--config", "nope"]) == 2
    assert "config 'nope' not found" in capsys.readouterr().err and list_profiles() == ["p"]


@pytest.mark.parametrize("content, words", [
    ("{not json", "not valid JSON"),
    (json.dumps({"schema_version": SCHEMA_VERSION + 1, "name": "p"}), f"schema_version {SCHEMA_VERSION + 1} is newer"),
    (json.dumps({"name": "p"}), "expected an integer schema_version"),
    (None, "missing"),
])
def test_corrupt_or_newer_profile_json_is_refused_and_left_alone(content, words, tmp_path, capsys):
    refs = save(tmp_path / "refs", [1])
    extra = save(tmp_path / "more", [2])
    loaded = Profile.create("p", refs)
    meta = loaded.path / "profile.json"
    if content is None:
        meta.unlink()
    else:
        meta.write_text(content)
    before = snapshot(loaded.path)
    with pytest.raises(ProfileError, match=words) as err:
        Profile.load("p")
    assert str(meta) in str(err.value)
    with pytest.raises(ProfileError, match=words):  # loaded before the damage: refused before writing
        loaded.add(good=extra)
    assert main(["profile", "add", "p", "--good", *extra]) == 2
    assert str(meta) in capsys.readouterr().err and snapshot(loaded.path) == before


def test_damaged_stored_image_is_named(tmp_path):
    refs = save(tmp_path, [1, 2])
    profile = Profile.create("p", refs)
    first, second = profile.references()
    first.write_bytes(first.read_bytes()[:100])  # truncated
    with pytest.raises(ProfileError, match="damaged") as err:
        load_stored(first)
    assert str(first) in str(err.value)
    assert load_stored(second).size == (48, 48)
    report = profile.add(references=refs)  # adding the image again repairs the copy
    assert len(report.duplicates["references"]) == 2 and load_stored(first).size == (48, 48)


def _adder(root: str, paths: list[str], barrier, results) -> None:
    """One process of the concurrency test: one add per image, reporting (kind of outcome, file name)."""
    os.environ["INSPECTION_ASSISTANT_HOME"] = root
    profile = Profile.load("shared")
    barrier.wait()
    for p in paths:
        report = profile.add(good=[p])
        results.put([(status, q.name) for status in ("added", "duplicates") for q in getattr(report, status)["good"]])


def test_two_processes_adding_at_once_lose_nothing(tmp_path, home):
    Profile.create("shared", save(tmp_path / "refs", [0]))
    common = save(tmp_path / "common", range(100, 105))  # both processes add these
    mine = [save(tmp_path / f"p{i}", range(10 * i + 10, 10 * i + 20)) + common for i in range(2)]
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_adder, args=(str(home), paths, barrier, results)) for paths in mine]
    for p in procs:
        p.start()
    outcomes = [item for _ in range(30) for item in results.get(timeout=60)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    stored = Profile.load("shared").good()
    assert len(stored) == 25 and all(hashlib.sha256(p.read_bytes()).hexdigest() == p.stem for p in stored)
    added = [name for status, name in outcomes if status == "added"]
    assert sorted(added) == sorted(p.name for p in stored)  # each image added exactly once, the rest duplicates
    assert sum(status == "duplicates" for status, _ in outcomes) == 5
    json.loads((Profile.load("shared").path / "profile.json").read_text())


def check_intact(profile: Profile) -> int:
    """Every visible file whole: stored images match their names, JSON parses, the rest are .tmp-* leftovers."""
    for p in profile.path.rglob("*"):
        if p.is_file() and not p.name.startswith(".tmp-"):
            known = ("profile.json", "calibration.json", "profile.lock")
            assert STORED_RE.fullmatch(p.name.replace(".mask.png", ".png")) or p.name in known, p
    for kind in KINDS:
        for p in profile.images(kind):
            assert load_stored(p).size == ((160, 160) if kind == "good" else (48, 48))
    assert profile.calibration() is None or "threshold" in profile.calibration()
    return len(profile.good())


def test_kill_9_during_add_leaves_a_whole_profile(tmp_path):
    Profile.create("k", save(tmp_path / "refs", [0]), config="tiny")
    batch = save(tmp_path / "batch", range(1, 81), side=160)
    good = Profile.load("k").folder("good")
    counts = [0]
    for delay in (0.0, 0.02, 0.1):  # after this run's first new image
        proc = subprocess.Popen([sys.executable, "-m", "assistant", "profile", "add", "k", "--good", *batch],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while proc.poll() is None and len(list(good.glob("*.png"))) <= counts[-1] and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        counts.append(check_intact(Profile.load("k")))
    assert any(0 < n < len(batch) for n in counts), counts  # kills landed while images were being written
    profile = Profile.load("k")
    report = profile.add(good=batch)  # finishing the job: the survivors are duplicates, nothing is lost
    assert len(report.added["good"]) + len(report.duplicates["good"]) == len(batch)
    assert check_intact(profile) == len(batch) and not list(good.glob(".tmp-*"))


def test_detect_with_a_profile_uses_its_threshold(tmp_path, capsys):
    refs = save(tmp_path / "refs", [1, 2])
    Profile.create("d", refs, config="tiny").add(good=save(tmp_path / "good", [3, 4]),
                                                 defective=save(tmp_path / "bad", [5, 6], defect=True))
    assert cli("profile", "add", "d") == 0
    threshold = json.loads((Profile.load("d").path / "calibration.json").read_text())["threshold"]
    query = save(tmp_path / "q", [7], defect=True)[0]
    capsys.readouterr()
    assert cli("detect", "--profile", "d", "--image", query, "--out", str(tmp_path / "det")) == 0
    out = capsys.readouterr().out
    assert "profile: d (2 reference(s), 2 good and 2 defective label(s))" in out
    printed = re.search(r"threshold: ([0-9.]+) \(calibrated, 4 reference\(s\)\)", out)
    assert printed and abs(float(printed.group(1)) - threshold) < 2e-4  # calibration.json rounds to 5 decimals
    result = json.loads((tmp_path / "det/result.json").read_text())
    assert result["alignment"] == "free" and abs(result["threshold"] - threshold) < 1e-4
    assert result["references"] == [str(p) for p in Profile.load("d").references()]
    assert cli("detect", "--profile", "d", "--reference", refs[0], "--image", query, "--out", str(tmp_path)) == 2
    assert "expected no --reference with it" in capsys.readouterr().err


def test_evaluate_with_a_profile_judges_a_folder_with_its_threshold(tmp_path, capsys):
    """evaluate --profile: the profile's references and labels judge every test image of an MVTec-layout folder."""
    cat = tmp_path / "data" / "part"
    save(cat / "train" / "good", [20])
    save(cat / "test" / "good", [21, 22])
    save(cat / "test" / "scratch", [23, 24], defect=True)
    Profile.create("e", save(tmp_path / "refs", [1, 2]), config="tiny").add(
        good=save(tmp_path / "good", [3]), defective=save(tmp_path / "bad", [5], defect=True))
    assert cli("profile", "add", "e") == 0
    threshold = json.loads((Profile.load("e").path / "calibration.json").read_text())["threshold"]
    capsys.readouterr()
    assert cli("evaluate", "--data", str(cat), "--profile", "e", "--no-pixel", "--out", str(tmp_path / "ev")) == 0
    out = capsys.readouterr().out
    assert "profile: e (3 reference image(s)" in out and "| part |" in out
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert "part" in json.dumps(report["categories"])
    assert abs(float(re.search(r"threshold ([0-9.]+)\)", out).group(1)) - threshold) < 2e-4
    # a question file does not go with --profile
    assert main(["evaluate", "--jsonl", "q.jsonl", "--profile", "e", "--out", str(tmp_path / "q")]) == 2
    assert "--profile judges MVTec-layout folders" in capsys.readouterr().err
