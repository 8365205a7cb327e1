"""`python -m assistant detect --image Q [Q ...] [--reference R ... | --profile NAME] [--config C] --out DIR`.

One image: writes DIR/overlay.png (heat-map over the image with boxes), DIR/mask.png and DIR/result.json; prints
the verdict, score, calibrated threshold, how the references were compared (position by position with a
registered golden sample and the registration figures, or as a bag of patches), each region with its change
(missing/extra/altered material, aligned path) and the time. Several images (files or folders): the same three
files in DIR/<image stem>/ for each, plus DIR/summary.csv (with the alignment and the regions' changes) and a
printed table. Without references, several images are scored against each other (the expert's mutual scoring,
zero-shot over the batch); one image alone is judged by the expert's single-image zero-shot path (in-image rarity,
threshold from anomalies synthesized on the image). `--profile NAME` takes the references and labels of an
inspection profile (assistant/profile.py) and its config unless --config is given. `--golden`: the references are
golden samples of the part's design shot in the same fixture (expert.alignment "golden" for this run): compared
position by position whenever the registration lies within a fixture's motion; the printed alignment line and
result.json/summary.csv (`alignment_reason`) say which path was taken and why.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import cv2
import numpy as np

from assistant.cli_args import add_golden_argument
from assistant.config import UsageError, add_config_arguments
from assistant.wording import alignment_sentence, change_phrase, profile_words, registration_figures, verdict_words
from assistant.wording.defects import descriptor_words


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, nargs="+", metavar="Q",
                   help="query image(s) or folder(s) of images; several without --reference are scored against "
                        "each other (zero-shot over the batch)")
    p.add_argument("--reference", action="append", default=[], metavar="R", help="reference normal image (repeatable)")
    p.add_argument("--profile", metavar="NAME",
                   help="judge with an inspection profile's references and labels instead of --reference (its "
                        "threshold refitted from the stored images; `profile --help`)")
    add_golden_argument(p)
    add_config_arguments(p, default=None)  # None: the profile's config, else offline-small
    p.add_argument("--out", required=True, help="output folder")


def query_paths(items: list[str]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted); clear error when nothing is found."""
    from assistant.imaging import list_images

    paths: list[Path] = []
    for it in items:
        p = Path(it)
        paths.extend(list_images(p) if p.is_dir() else [p])
    if not paths:
        raise UsageError(f"--image: expected image files or folders holding images, found none in {items}")
    return paths


def write_outputs(out: Path, img: np.ndarray, result, info: dict) -> None:
    from assistant.overlay import render_mask, render_overlay

    out.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out / "overlay.png"), cv2.cvtColor(render_overlay(img, result, caption=True), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(out / "mask.png"), render_mask(result))
    (out / "result.json").write_text(json.dumps({**result.to_dict(), **info}, indent=2))


def load_queries(paths: list[Path], max_pixels: int) -> tuple[list[Path], list]:
    """(paths, images): one image must load; in a batch an unreadable file is reported and skipped."""
    from assistant.imaging import ImageError, load_image

    if len(paths) == 1:
        return paths, [load_image(paths[0], max_pixels)]
    kept, queries = [], []
    for p in paths:
        try:
            queries.append(load_image(p, max_pixels))
            kept.append(p)
        except ImageError as e:
            print(f"skipped {p}: {e}")
    if not queries:
        raise ImageError(f"--image: none of the {len(paths)} files could be read as an image")
    return kept, queries


def judge_queries(tower, expert, queries: list, refs: list, fit=None) -> tuple[list, object, dict]:
    """(results, reference state or None for mutual scoring, seconds): references fitted (by `fit()` when given: a
    profile), then every query judged; several queries without references are scored against each other, with
    references a lot of LOT_MIN or more joins the references' threshold."""
    from assistant.expert import LOT_MIN

    t0 = time.perf_counter()
    mutual = len(queries) >= 2 and not refs and fit is None
    state = None if mutual else fit() if fit is not None else expert.fit_references(tower, refs)
    t1 = time.perf_counter()
    sizes = [(q.height, q.width) for q in queries]
    if mutual:
        from assistant.vision.base import cat_outputs

        feats = cat_outputs([tower.encode(queries[i:i + 16]) for i in range(0, len(queries), 16)])
        results = expert.mutual_predict(feats, sizes)
    else:
        results = [expert.predict(tower.encode([q]), state, sz, images=[q], tower=tower)[0]
                   for q, sz in zip(queries, sizes)]
        if state.few_shot and len(results) >= LOT_MIN:  # several parts of one kind: the lot joins the references
            results = expert.lot_decide(results)
    t2 = time.perf_counter()
    return results, state, {"references": t1 - t0, "queries": t2 - t1}


def method_words(expert, state, results: list, n_queries: int) -> str:
    if state is None:
        return f"mutual scoring over {n_queries} images, no references"
    if results[0].lot_size is not None:
        return f"calibrated, {state.n_shots} reference(s) and the lot of {n_queries}"
    if state.n_shots:
        return f"calibrated, {state.n_shots} reference(s)"
    if expert.self_calibrated():
        return "zero-shot, calibrated on anomalies synthesized on the image"
    return "zero-shot threshold from training"


def run(args) -> int:
    from assistant.config import load_config
    from assistant.expert import load_expert
    from assistant.imaging import load_image
    from assistant.profile_fit import fit_profile, open_profile

    profile = open_profile(getattr(args, "profile", None), args.reference)
    overrides = [*args.overrides, *(["expert.alignment=golden"] if getattr(args, "golden", False) else [])]
    cfg = load_config(args.config or (profile.config if profile else "offline-small"), overrides)
    paths, queries = load_queries(query_paths(args.image), cfg.serve.max_pixels)
    refs = [load_image(r, cfg.serve.max_pixels) for r in args.reference]
    tower, expert = load_expert(cfg)
    # detect reads the profile and never writes it
    fit = (lambda: fit_profile(profile, expert, tower, save=False)) if profile else None
    results, state, seconds = judge_queries(tower, expert, queries, refs, fit)
    how = method_words(expert, state, results, len(queries))
    references = [str(p) for p in profile.references()] if profile else args.reference
    if profile:
        print(f"profile: {profile.name} ({profile_words(profile.counts())})")
    if len(queries) == 1:
        report_one(Path(args.out), paths[0], queries[0], results[0], references, how, seconds)
    else:
        report_batch(Path(args.out), paths, queries, results, references, how, sum(seconds.values()))
    return 0


def report_one(out: Path, path: Path, query, result, references: list[str], how: str, seconds: dict) -> None:
    """overlay.png, mask.png, result.json of one image, and the verdict in words."""
    rounded = {k: round(v, 3) for k, v in seconds.items()}
    write_outputs(out, np.asarray(query), result, {"image": str(path), "references": list(references),
                                                   "seconds": rounded})
    print(f"verdict: {verdict_words(result)}")
    print(f"score: {result.pred_score:.4f}  threshold: {result.threshold:.4f} ({how}); borderline between "
          f"{result.threshold_low:.4f} and {result.threshold_high:.4f}")
    print_alignment(result)
    if result.pred_label and result.boxes:
        print(f"where: {result.position}, size: {result.size} ({100 * result.area_fraction:.1f}% of the image), "
              f"{len(result.boxes)} region(s)")
        print_regions(result)
    if result.reference_mismatch:
        print(f"warning: most of the image differs from the reference (median map {result.reference_median:.2f}"
              f" > {result.reference_mismatch_cut:.2f}); check that the reference shows the same part, "
              "view and lighting: the verdict is less reliable")
    print(f"time: references {seconds['references']:.2f} s, query {seconds['queries']:.3f} s -> {out}/overlay.png, "
          "mask.png, result.json")


def print_alignment(result) -> None:
    """`alignment: aligned|free` with the sentence of wording.alignment_sentence, `why:` the path was taken
    (result.alignment_reason) and, when a reference was registered, every registration figure; nothing without a
    reference."""
    sentence = alignment_sentence(result)
    if sentence is None:
        return
    print(f"alignment: {result.alignment}. {sentence}")
    if result.alignment_reason:  # why this path: the registration's verdict, the mode asked for
        print(f"why: {result.alignment_reason}")
    if result.registration is not None:  # figures in pixels of the images as compared (resized to the tower side)
        reg, (h, w) = result.registration, result.registration.size
        # aligned although auto would not have: asked for (alignment aligned, or golden from the user)
        poor = f" (compared position by position as asked; not good by itself: {reg.reason})" if not reg.good and \
            result.alignment == "aligned" else ""
        print(f"registration at {w}x{h} px: {registration_figures(reg.to_dict(), full=True)}{poor}")


def print_regions(result) -> None:
    """One line per region (map pixels): its box, score and, on the aligned path, its change and shape in words;
    then what it looks like (expert/describe.py) and its type, or "type not named" when the classifier abstained."""
    for i, b in enumerate(result.boxes):
        change = f" {change_phrase(b.change, b.shape)};" if b.change else ""
        print(f"region #{i + 1}:{change} box x {b.x0}-{b.x1}, y {b.y0}-{b.y1}, score {b.score:.3f}")
        if b.descriptor is not None:
            print(f"  looks: {descriptor_words(b.descriptor)}")


def summary_row(path: Path, stem: str, r) -> dict:
    return {"image": str(path), "folder": stem, "verdict": r.verdict, "pred_label": int(r.pred_label),
            "confidence": round(r.confidence, 3), "score": round(r.pred_score, 4), "threshold": round(r.threshold, 4),
            "position": r.position or "", "size": r.size or "", "area_percent": round(100 * r.area_fraction, 2),
            "regions": len(r.boxes), "reference_mismatch": r.reference_mismatch, "alignment": r.alignment,
            "alignment_reason": r.alignment_reason,
            "changes": " ".join(b.change for b in r.boxes if b.change),
            "shapes": " ".join(b.shape or "-" for b in r.boxes if b.change)}


def report_batch(out: Path, paths: list[Path], queries: list, results: list, references: list[str], how: str,
                 seconds: float) -> None:
    """One folder per image, summary.csv, and a table sorted by score."""
    rows = []
    names: dict[str, int] = {}
    for p, q, r in zip(paths, queries, results):
        stem = p.stem if p.stem not in names else f"{p.stem}-{names[p.stem]}"  # same stem in two folders
        names[p.stem] = names.get(p.stem, 0) + 1
        write_outputs(out / stem, np.asarray(q), r, {"image": str(p), "references": list(references), "method": how})
        rows.append(summary_row(p, stem, r))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} images ({how}); threshold {results[0].threshold:.4f}")
    print("| image | verdict | score | where | size | regions |\n|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["score"]):
        print(f"| {r['image']} | {r['verdict']} | {r['score']:.3f} | {r['position']} | {r['size']} | {r['regions']} |")
    n_bad = sum(r["verdict"] == "anomalous" for r in rows)
    n_review = sum(r["verdict"] == "borderline" for r in rows)
    print(f"{n_bad} of {len(rows)} flagged, {n_review} borderline (have a person check them); time {seconds:.2f} s -> "
          f"{out}/summary.csv and one folder per image")
    n_mis = sum(r["reference_mismatch"] for r in rows)
    if n_mis:
        print(f"warning: {n_mis} of {len(rows)} images differ from the reference over most of their surface "
              "(summary.csv column reference_mismatch): check that the reference shows the same part, view and "
              "lighting")
