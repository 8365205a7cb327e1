"""Build a synthetic anomaly dataset: OUT/images, OUT/masks, OUT/references, OUT/manifest.jsonl,
OUT/conversations.json, OUT/build.json.

Sample i depends only on (seed, i), so builds are deterministic (same seed -> same bytes, any number of
workers) and resumable: finished samples are appended to manifest.jsonl one line at a time (after their
image files are written); a restarted build skips the ids already there and never duplicates one.

Manifest line (paths relative to OUT):
  id, image, mask (null for normal), label 0/1, source, category, noun, is_object, method, defect_type,
  bbox [x0, y0, x1, y1] (exclusive ends), area_fraction, n_components, position (3x3 grid word of the
  mask centroid), size (tiny/small/medium/large), severity (minor/moderate/severe), contrast, params,
  description, references (the normal reference pool of the same category); with --descriptor-answers also
  looks (data_synth/looks.py: the mask's measured Descriptor and the type the evidence names; null when normal).
Aligned samples (--source aligned) add `aligned: true` and `change` (missing | extra | "" when normal); their
references are their own golden (OUT/goldens/ID.png), the method is "aligned", params hold the kind and the warp.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from data_synth.aligned import lay
from data_synth.conversations import make_conversation
from data_synth.masks import contrast_in, mask_stats, severity_word
from data_synth.sources import Category, NormalSource
from data_synth.synth import METHODS, SynthConfig, SynthError, synthesize, synthesize_multi
from data_synth.text import describe

cv2.setNumThreads(1)
SHOTS = (0, 1, 1, 2, 4)  # k drawn for each conversation (capped by the reference pool)
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]  # fast, lossless


@dataclass
class BuildSettings:
    seed: int = 0  # base seed; sample i uses default_rng([seed, i])
    size: int = 256  # square side of every written image
    methods: tuple = tuple(METHODS)  # synthesis methods drawn uniformly for anomalous samples
    anomaly_ratio: float = 0.5  # fraction of anomalous samples (0.5 = normal:anomalous 1:1)
    n_refs: int = 4  # reference normals written per category (pool for k-shot and the expert)
    sources: tuple = ()  # source names (recorded so a resume with other sources is refused)
    multi_ratio: float = 0.0  # fraction of anomalous samples with 2-3 separate defects (synthesize_multi)
    opener_ratio: float = 0.0  # fraction of conversations opened by a follow-up question (count, where, ship, ...)
    compare_last_ratio: float = 0.0  # fraction of conversations whose comparison turn is asked last (a deeper turn)
    descriptor_answers: bool = False  # measure each defect (data_synth/looks.py) and answer type/look questions by it


# settings that shape only conversations.json (and the manifest's measured `looks`, added to finished samples)
CONVERSATION_ONLY = ("opener_ratio", "compare_last_ratio", "descriptor_answers")


def _images_only(settings: dict) -> dict:
    """Build settings that shape the images and the manifest (all but the conversation-only ratios)."""
    return {k: v for k, v in settings.items() if k not in CONVERSATION_ONLY}


def check_settings(n: int, s: BuildSettings) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
        raise SynthError(f"--n: expected a positive number of samples, got {n!r}")
    bad = [m for m in s.methods if m not in METHODS]
    if bad or not s.methods:
        raise SynthError(f"--methods: unknown method(s) {bad or '(none given)'}; expected some of {', '.join(METHODS)}")
    if s.size < 32:
        raise SynthError(f"--size: expected at least 32 pixels, got {s.size}")
    if not 0.0 <= s.opener_ratio <= 1.0:
        raise SynthError(f"--opener-ratio: expected a fraction in [0, 1], got {s.opener_ratio}")
    if not 0.0 <= s.compare_last_ratio <= 1.0:
        raise SynthError(f"--compare-last-ratio: expected a fraction in [0, 1], got {s.compare_last_ratio}")
    if not 0.0 <= s.multi_ratio <= 1.0:
        raise SynthError(f"--multi-ratio: expected a fraction in [0, 1], got {s.multi_ratio}")
    if not 0.0 <= s.anomaly_ratio <= 1.0:
        raise SynthError(f"--anomaly-ratio: expected a fraction in [0, 1], got {s.anomaly_ratio}")
    if s.n_refs < 0:
        raise SynthError(f"--refs: expected >= 0 references per category, got {s.n_refs}")


def _safe(key: str) -> str:
    return key.replace("/", "__").replace(" ", "_")


def _write_png(path: Path, arr: np.ndarray) -> None:
    img = arr[..., ::-1] if arr.ndim == 3 else arr
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img), PNG_PARAMS)
    if not ok:
        raise SynthError(f"{path}: PNG encoding failed")
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)


_STATE: dict = {}


def _init(sources, cats, settings, cfg, out, pools):
    cv2.setNumThreads(1)
    by_source = [[c for si, c in cats if si == i] for i in range(len(sources))]
    _STATE.update(sources=sources, cats=cats, by_source=by_source, settings=settings, cfg=cfg, out=Path(out),
                  pools=pools)


def make_sample(i: int) -> dict:
    """Render, corrupt (or not), write and describe sample i; returns its manifest record."""
    st = _STATE
    s: BuildSettings = st["settings"]
    rng = np.random.default_rng([s.seed, i])
    label = int(rng.random() < s.anomaly_ratio)
    si = int(rng.integers(len(st["sources"])))  # source first, then one of its categories (balanced sources)
    cat = st["by_source"][si][int(rng.integers(len(st["by_source"][si])))]
    src: NormalSource = st["sources"][si]
    if getattr(src, "aligned", False):
        return aligned_sample(i, rng, label, src, cat)
    img = src.sample(cat, rng, s.size)
    sid = f"{i:07d}"
    rec = {"id": sid, "image": f"images/{sid}.png", "mask": None, "label": label, "source": src.name,
           "category": cat.key, "noun": cat.noun, "is_object": cat.is_object, "method": None, "defect_type": None,
           "bbox": None, "area_fraction": 0.0, "n_components": 0, "position": None, "size": None,
           "severity": None, "contrast": 0.0, "params": None}
    if label:
        method = s.methods[int(rng.integers(len(s.methods)))]
        other = src.sample(cat, rng, s.size) if method == "nsa" else None
        if s.multi_ratio > 0 and rng.random() < s.multi_ratio:  # (no extra draw otherwise: same seed, same bytes)
            res = synthesize_multi(img, list(s.methods), int(rng.integers(2, 4)), rng, other=other,
                                   is_object=cat.is_object, cfg=st["cfg"])
        else:
            res = synthesize(img, method, rng, other=other, is_object=cat.is_object, cfg=st["cfg"])
        m = res.meta
        rec.update(mask=f"masks/{sid}.png", method=m["method"], defect_type=m["defect_type"], bbox=m["bbox"],
                   area_fraction=m["area_fraction"], n_components=m["n_components"], position=m["position"],
                   size=m["size"], severity=m["severity"], contrast=m["contrast"], is_object=m["is_object"],
                   params=m["params"])
        _write_png(st["out"] / rec["mask"], res.mask.astype(np.uint8) * 255)
        img = res.image
    _write_png(st["out"] / rec["image"], img)
    rec["description"] = describe(rec, cat.noun, np.random.default_rng([s.seed, i, 1]))
    rec["references"] = st["pools"][cat.key]
    return rec


def aligned_sample(i: int, rng: np.random.Generator, label: int, src, cat: Category) -> dict:
    """Sample i of an aligned source: the query in images/, its golden in goldens/ as the one reference, the mask,
    and the record of every sample plus `aligned`, `change` (missing | extra | "" when normal) and the warp in
    params (golden pixel -> query pixel)."""
    st, s, sid = _STATE, _STATE["settings"], f"{i:07d}"
    kind, pair = src.pair(cat, rng, s.size, bool(label))
    query, golden = np.asarray(pair.query), np.asarray(pair.golden)
    (st["out"] / "goldens").mkdir(exist_ok=True)
    rec = {"id": sid, "image": f"images/{sid}.png", "mask": None, "label": label, "source": src.name,
           "category": cat.key, "noun": cat.noun, "is_object": cat.is_object, "method": "aligned",
           "defect_type": pair.defect_type or None, "bbox": None, "area_fraction": 0.0, "n_components": 0,
           "position": None, "size": None, "severity": None, "contrast": 0.0, "aligned": True, "change": pair.change,
           "params": {"kind": kind, "shift": [round(v, 3) for v in pair.shift], "rotation": round(pair.rotation, 3),
                      "warp": np.round(pair.warp.astype(np.float64), 5).tolist()}}
    if label:
        mask = pair.mask > 0
        h, w = mask.shape  # contrast against the golden laid over the query (the warp the query was made with)
        laid = lay(golden, pair.warp, (w, h))
        con = contrast_in(laid, query, mask)
        stats = mask_stats(mask)
        rec.update(mask=f"masks/{sid}.png", **stats, severity=severity_word(stats["area_fraction"], con),
                   contrast=round(con, 2))
        _write_png(st["out"] / rec["mask"], pair.mask)
    _write_png(st["out"] / rec["image"], query)
    _write_png(st["out"] / f"goldens/{sid}.png", golden)
    rec["description"] = describe(rec, cat.noun, np.random.default_rng([s.seed, i, 1]))
    rec["references"] = [f"goldens/{sid}.png"]
    return rec


def conversation_for(rec: dict, seed: int, opener_ratio: float = 0.0, compare_last_ratio: float = 0.0) -> dict:
    """The LLaVA conversation of a manifest record (deterministic in (seed, id) and the two ratios)."""
    rng = np.random.default_rng([seed, int(rec["id"]), 2])
    pool = rec["references"]
    k = min(int(SHOTS[int(rng.integers(len(SHOTS)))]), len(pool))
    if rec.get("aligned"):  # (after the draw: other records keep their bytes) the golden is always shown
        k = len(pool)
    refs = [pool[j] for j in sorted(rng.choice(len(pool), k, replace=False))] if k else []
    return make_conversation(rec, rec["noun"], refs, rng, opener_ratio, compare_last_ratio)


def read_manifest(out: str | Path, absolute: bool = True, limit: int | None = None) -> list[dict]:
    """Records of OUT/manifest.jsonl (the first `limit` if given); with absolute=True the image, mask and reference
    paths are made absolute (they are stored relative to OUT). The one reader of a build folder: training and the
    benches use it. FileNotFoundError (naming the command that makes one) when OUT has no manifest or no record."""
    out = Path(out)
    path = out / "manifest.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{out}: expected a data_synth build folder with manifest.jsonl, found none (make one "
                                f"with `python -m data_synth build --source procedural --out {out} --n 2000`)")
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not recs:
        raise FileNotFoundError(f"{path}: no samples")
    recs = recs[:limit] if limit else recs
    for r in recs:
        r["mask"] = r.get("mask") or None
        r["references"] = list(r.get("references") or [])
        if absolute:
            r["image"] = str(out / r["image"])
            r["mask"] = str(out / r["mask"]) if r["mask"] else None
            r["references"] = [str(out / p) for p in r["references"]]
    return recs


def _read_manifest(path: Path) -> dict[int, str]:
    """id -> line of every complete record; a torn last line (killed build) is dropped."""
    done: dict[int, str] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            done[int(rec["id"])] = line
        except (ValueError, KeyError, TypeError):
            continue
    return done


def build(sources: list[NormalSource], out: str | Path, n: int, settings: BuildSettings | None = None,
          cfg: SynthConfig | None = None, workers: int = 1, progress: bool = True) -> dict:
    """Write (or complete) the dataset in `out`; returns a summary dict."""
    s = settings or BuildSettings()
    s.methods = tuple(s.methods)
    s.sources = tuple(sorted(src.name for src in sources)) if not s.sources else tuple(s.sources)
    check_settings(n, s)
    cfg = cfg or SynthConfig()
    out = Path(out)
    for d in ("images", "masks", "references"):
        (out / d).mkdir(parents=True, exist_ok=True)
    cats: list[tuple[int, Category]] = [(si, c) for si, src in enumerate(sources) for c in src.categories()]
    write_build_info(out, s, cfg, cats)
    t0 = time.perf_counter()
    pools = write_references(out, sources, cats, s)
    t_refs = time.perf_counter() - t0
    man = out / "manifest.jsonl"
    done = _read_manifest(man)
    man.write_text("".join(done[i] + "\n" for i in sorted(done)))  # drop a torn tail before appending
    todo = [i for i in range(n) if i not in done]
    bar = tqdm(total=n, initial=n - len(todo), desc="synth", unit="img", disable=not progress)
    with open(man, "a") as fh:
        for rec in _samples(todo, (sources, cats, s, cfg, out, pools), workers):
            line = json.dumps(rec)
            fh.write(line + "\n")
            fh.flush()
            done[int(rec["id"])] = line
            bar.update(1)
    bar.close()
    recs = write_final(out, done, n, s)
    n_anom = sum(r["label"] for r in recs)
    return {"out": str(out), "samples": len(recs), "anomalous": n_anom, "normal": len(recs) - n_anom,
            "new": len(todo), "categories": len(cats), "references": sum(len(v) for v in pools.values()),
            "seconds_references": round(t_refs, 2), "seconds_samples": round(time.perf_counter() - t0 - t_refs, 2)}


def write_build_info(out: Path, s: BuildSettings, cfg: SynthConfig, cats: list[tuple[int, Category]]) -> None:
    """OUT/build.json: the settings, the synthesis config and the categories. A folder that holds a build with
    other image settings is refused (the conversation-only ratios may change)."""
    info = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(s).items()
                         # builds without them keep their build.json
                         if not (k in ("multi_ratio", *CONVERSATION_ONLY) and v == 0)},
            "synth": asdict(cfg), "categories": [c.key for _, c in cats]}
    info_path = out / "build.json"
    if info_path.exists():
        old = json.loads(info_path.read_text())
        # the conversation ratios shape only conversations.json, rewritten at the end of every build: a finished
        # build can be given other conversations without re-synthesizing its images
        if {**old, "settings": _images_only(old["settings"])} != {**info, "settings": _images_only(info["settings"])}:
            raise SynthError(f"{out}: already holds a build with other settings ({old['settings']}); "
                             "use a new --out folder to build with different settings")
    info_path.write_text(json.dumps(info, indent=1) + "\n")


def write_references(out: Path, sources: list[NormalSource], cats: list[tuple[int, Category]],
                     s: BuildSettings) -> dict[str, list[str]]:
    """Reference pools: n_refs normals per category, deterministic in (seed, category index, j); existing files
    are kept. Returns {category key: paths relative to OUT}."""
    pools: dict[str, list[str]] = {}
    for ci, (si, cat) in enumerate(cats):
        pools[cat.key] = []
        for j in range(0 if getattr(sources[si], "aligned", False) else s.n_refs):  # aligned: a golden per sample
            rel = f"references/{_safe(cat.key)}/{j:02d}.png"
            pools[cat.key].append(rel)
            p = out / rel
            if not p.exists():
                p.parent.mkdir(parents=True, exist_ok=True)
                _write_png(p, sources[si].sample(cat, np.random.default_rng([s.seed, 1_000_003, ci, j]), s.size))
    return pools


def _samples(todo: list[int], state: tuple, workers: int):
    """The manifest records of samples `todo`, in order, made by `workers` processes (or this one)."""
    if workers > 1 and len(todo) > 1:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers, initializer=_init, initargs=state) as pool:
            yield from pool.imap(make_sample, todo, chunksize=4)
    else:
        _init(*state)
        for i in todo:
            yield make_sample(i)


def add_looks(out: Path, recs: list[dict], seed: int) -> list[dict]:
    """The records with `looks` measured where it is missing (data_synth/looks.py; about 20 ms a defect)."""
    from data_synth.looks import record_looks

    return [r if "looks" in r else {**r, "looks": record_looks(out, r, seed)}
            for r in tqdm(recs, desc="measuring defects", disable=len(recs) < 100)]


def write_final(out: Path, done: dict[int, str], n: int, s: BuildSettings) -> list[dict]:
    """The final files: the manifest in id order (only ids < n), then the conversations; returns the records."""
    man = out / "manifest.jsonl"
    keep = [done[i] for i in sorted(done) if i < n]
    tmp = man.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, man)
    recs = [json.loads(line) for line in keep]
    if s.descriptor_answers and any("looks" not in r for r in recs):
        recs = add_looks(out, recs, s.seed)
        tmp.write_text("".join(json.dumps(r) + "\n" for r in recs))
        os.replace(tmp, man)
    said = recs if s.descriptor_answers else [{k: v for k, v in r.items() if k != "looks"} for r in recs]
    convs = [conversation_for(r, s.seed, s.opener_ratio, s.compare_last_ratio) for r in said]
    tmp = out / "conversations.tmp"
    tmp.write_text(json.dumps(convs, indent=1) + "\n")
    os.replace(tmp, out / "conversations.json")
    return recs
