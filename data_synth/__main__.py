"""python -m data_synth build | preview | check

  build   --normal DIR [DIR ...] | --source procedural,textiles,skimage,gimp,aligned  --out OUT --n N --seed S
          [--methods nsa,cutpaste,...] [--size 256] [--anomaly-ratio 0.5] [--multi-ratio 0] [--refs 4] [--workers 2]
          [--opener-ratio 0] [--compare-last-ratio 0] [--descriptor-answers]
          [--synth max_area=0.2 min_contrast=20 ...]   (SynthConfig fields)
  preview OUT [--grid 6x6] [-o preview.png]
  check   OUT      (independent re-computation of positions/areas from the masks vs. the texts)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from assistant.imaging import ImageError
from data_synth.synth import METHODS, SynthConfig, SynthError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_synth", description="Synthetic anomaly data for the assistant.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write images, masks, manifest.jsonl and conversations.json")
    b.add_argument(
        "--normal", nargs="+", default=None, metavar="DIR", help="folders of normal images (one category each)"
    )
    b.add_argument("--source", default=None,
                   help="comma list of built-in sources: procedural,textiles,skimage,gimp,aligned (golden/query pairs: "
                        "each sample's golden is its one reference)")
    b.add_argument("--out", required=True, help="output folder (an interrupted build resumes here)")
    b.add_argument("--n", type=int, required=True, help="number of samples")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {','.join(METHODS)}")
    b.add_argument("--size", type=int, default=256, help="square image side in pixels")
    b.add_argument("--anomaly-ratio", type=float, default=0.5, help="fraction of anomalous samples")
    b.add_argument("--multi-ratio", type=float, default=0.0,
                   help="fraction of anomalous samples with 2-3 separate defects (default 0: one defect each)")
    b.add_argument("--opener-ratio", type=float, default=0.0,
                   help="fraction of conversations that open with a follow-up question (how many, where, ship?) "
                        "instead of the detection question; changes only conversations.json, so a finished build "
                        "can be re-run with another value")
    b.add_argument("--compare-last-ratio", type=float, default=0.0,
                   help="fraction of conversations whose comparison is asked last, after the follow-ups (a deeper "
                        "turn; raise train.max_len so it is not cut); changes only conversations.json")
    b.add_argument("--descriptor-answers", action="store_true",
                   help="measure every defect as the expert measures its regions (looks in the manifest) and answer "
                        "what kind / describe / colour / either-or questions by it; conversation-only, like the "
                        "ratios (lvlm.evidence_looks trains on it)")
    b.add_argument("--refs", type=int, default=4, help="reference normals written per category")
    b.add_argument("--workers", type=int, default=1, help="processes (output is identical for any number)")
    b.add_argument("--synth", nargs="*", default=[], metavar="KEY=VALUE",
                   help="SynthConfig overrides, e.g. max_area=0.2 min_contrast=20")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    v = sub.add_parser("preview", help="mosaic of samples with mask outlines")
    v.add_argument("out")
    v.add_argument("--grid", default="6x6", help="COLSxROWS")
    v.add_argument("--tile", type=int, default=192)
    v.add_argument("-o", "--output", default="preview.png")
    c = sub.add_parser("check", help="independent check of positions / areas / counts in the texts")
    c.add_argument("out")
    return p


def synth_config(overrides: list[str]) -> SynthConfig:
    """SynthConfig with KEY=VALUE overrides (numbers only); unknown keys are an error naming the valid ones."""
    cfg = SynthConfig()
    valid = [f.name for f in dataclasses.fields(SynthConfig)]
    for ov in overrides:
        key, sep, val = ov.partition("=")
        if not sep or key not in valid:
            raise SynthError(f"--synth: expected KEY=VALUE with KEY one of {', '.join(valid)}, got {ov!r}")
        cur = getattr(cfg, key)
        try:
            setattr(cfg, key, type(cur)(val))
        except ValueError:
            raise SynthError(f"--synth {key}: expected a {type(cur).__name__}, got {val!r}") from None
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "build":
            from data_synth.build import BuildSettings, build
            from data_synth.sources import make_sources
            names = [s.strip() for s in args.source.split(",") if s.strip()] if args.source else []
            sources = make_sources(names, args.normal)
            methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
            settings = BuildSettings(seed=args.seed, size=args.size, methods=methods,
                                     anomaly_ratio=args.anomaly_ratio, n_refs=args.refs, multi_ratio=args.multi_ratio,
                                     opener_ratio=args.opener_ratio, compare_last_ratio=args.compare_last_ratio,
                                     descriptor_answers=args.descriptor_answers)
            cfg = synth_config(args.synth)
            t = time.time()
            summary = build(sources, args.out, args.n, settings, cfg=cfg, workers=args.workers,
                            progress=not args.quiet)
            summary["seconds"] = round(time.time() - t, 2)
            print(json.dumps(summary))
        elif args.cmd == "preview":
            from data_synth.preview import save_preview
            print(save_preview(args.out, args.output, args.grid, args.tile))
        else:
            from data_synth.check import check
            print(json.dumps(check(args.out), indent=1))
    except (SynthError, ImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
