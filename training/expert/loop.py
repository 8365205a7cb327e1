"""`python -m training expert --config C --data SYNTH_DIR [--out DIR]`: train the expert's zero-shot head.

The vision tower stays frozen; its features for every training image are computed once and cached
(--cache, keyed by the manifest and the tower). The head (learned normal/abnormal prototypes
for towers without text, per-level text adapters for CLIP towers) is trained with focal + dice loss on the
synthesized masks at patch-grid resolution. A held-out tenth of the data sets the zero-shot image
threshold (best balanced accuracy), stored with the weights. Runs on CPU and under `accelerate launch`.

SYNTH_DIR is a `python -m data_synth build` output: manifest.jsonl lines with image, mask, label.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from assistant.cli_args import parse_shots
from assistant.config import add_config_arguments
from assistant.evaluation.expert.metrics import best_balanced_threshold
from training.checkpoint import data_info
from training.expert.calibration import (
    MARGIN_SHOTS,
    NULL_SHOTS,
    fit_margins,
    fit_null,
    fit_reference_mismatch,
    self_scales,
)
from training.expert.data import encode_cached, grid_masks, read_manifest
from training.expert.head import heldout_scores, train_head


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--data", required=True, nargs="+", metavar="SYNTH_DIR",
                   help="data_synth build folder(s) with manifest.jsonl")
    p.add_argument("--out", default=None, help="output checkpoint folder (default: train.out_dir)")
    p.add_argument("--max-samples", type=int, default=None, help="use at most this many samples per folder")
    p.add_argument("--cache", default=None,
                   help="frozen-feature cache file (default: train.out_dir/expert_feature_cache.safetensors)")
    p.add_argument("--calibrate-only", default=None, metavar="CKPT",
                   help="load the trained expert from CKPT and only fit calibration margins on --data (no head "
                        "training); the margins fitted replace those of the same reference count, the others stay")
    p.add_argument("--margin-shots", default=None,
                   help="reference counts to fit the margins of the earlier rule (expert.calibration: margin) for "
                        f"(default: {','.join(map(str, MARGIN_SHOTS))} when training, none with --calibrate-only)")
    p.add_argument("--null-shots", default=",".join(map(str, NULL_SHOTS)),
                   help="reference counts to fit the null model (new-part offsets of the default threshold) for "
                        "(default %(default)s)")


def run(args) -> int:
    from assistant.config import load_config
    from assistant.expert import AnomalyExpert
    from assistant.vision import build_vision_tower
    from training import make_accelerator

    cfg = load_config(args.config, args.overrides)
    tc = cfg.train
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    out_dir = Path(args.out or tc.out_dir)  # also with --calibrate-only: CKPT is the input, not overwritten unasked
    shots = parse_shots(args.margin_shots, "--margin-shots") if args.margin_shots else (
        () if args.calibrate_only else MARGIN_SHOTS)
    null_shots = parse_shots(args.null_shots, "--null-shots")
    recs = [r for d in args.data for r in read_manifest(d, limit=args.max_samples)]
    accelerator = make_accelerator(cfg.vision.device)
    tower = build_vision_tower(cfg.vision)
    refit = None
    if args.calibrate_only:
        refit = AnomalyExpert.from_pretrained(args.calibrate_only, cfg.expert, tower).eval()
    t0 = time.time()
    cache = Path(args.cache) if args.cache else Path(tc.out_dir) / "expert_feature_cache.safetensors"
    feats = encode_cached(tower, recs, cache)
    if refit is not None:  # bad inputs (shots, data, checkpoint) fail above, before minutes of encoding
        return calibrate_only(args, refit, tower, recs, feats, shots, null_shots, out_dir, t0)
    expert, record = train_expert(cfg, accelerator, tower, recs, feats)
    record["reference_mismatch_fit"] = fit_calibration(expert, tower, recs, feats, shots, null_shots,
                                                       log=accelerator.print)
    meta = training_meta(args, cfg, recs, expert, record, round(time.time() - t0, 1))
    if accelerator.is_main_process:
        expert.save_pretrained(out_dir, meta=meta)
        print(json.dumps({k: v for k, v in meta.items() if k != "loss_log"}))
        print(f"saved {out_dir}/expert.safetensors and expert_config.json")
    return 0


def train_expert(cfg, accelerator, tower, recs: list[dict], feats):
    """A new expert with its head trained on a random nine tenths of `recs`, the self scales and the zero-shot
    threshold (best balanced accuracy on the held-out tenth); and its training record."""
    from assistant.expert import AnomalyExpert, level_scale

    tc = cfg.train
    tokens, glob, grid = feats
    targets = grid_masks(recs, grid, tower.image_size)
    labels = np.array([int(r.get("label", 1 if r.get("mask") else 0)) for r in recs])
    idx = list(range(len(recs)))
    random.Random(tc.seed).shuffle(idx)
    n_val = max(2, len(idx) // 10)
    val, train = idx[:n_val], idx[n_val:] or idx
    expert = AnomalyExpert(cfg.expert, tower.level_dims, tower.global_dim,
                           text_encoder=getattr(tower, "encode_text", None))
    expert.level_scale = level_scale(tower)
    if expert.head is None:
        raise ValueError("expert.zero_shot is false: there is no head to train")
    log = train_head(expert, accelerator, tc, train, tokens, glob, grid, targets)
    scores, vlab = heldout_scores(expert, tower, val, tokens, glob, grid), labels[val]
    expert.self_scales = self_scales(expert, [i for i in train if labels[i] == 0][:512], tokens, glob, grid)
    expert.zero_shot_threshold = best_balanced_threshold(vlab, scores)[0]
    val_auroc = None
    if len(set(vlab.tolist())) == 2:
        from sklearn.metrics import roc_auc_score

        val_auroc = float(roc_auc_score(vlab, scores))
    return expert, {"n_val": len(val), "val_image_auroc": val_auroc, "loss_log": log}


def fit_calibration(expert, tower, recs: list[dict], feats, shots, null_shots, log=print) -> dict:
    """The trained expert's calibration margins, null model and reference-mismatch cut; returns the cut's fit."""
    expert.calibration_margin = fit_margins(expert, tower, recs, *feats, log=log, shots=shots)
    expert.null_model = fit_null(expert, tower, recs, *feats, shots=null_shots, log=log)
    expert.reference_mismatch, mismatch_stats = fit_reference_mismatch(expert, tower, recs, *feats, log=log)
    return mismatch_stats


def training_meta(args, cfg, recs: list[dict], expert, record: dict, seconds: float) -> dict:
    """The training record saved with the expert (expert_config.json "meta"): data, settings, fitted values."""
    tc = cfg.train
    return {"data": data_info(args.data), "max_samples": args.max_samples, "n_samples": len(recs),
            "n_val": record["n_val"], "seed": tc.seed, "steps": tc.steps, "batch_size": tc.batch_size, "lr": tc.lr,
            "seconds": seconds, "tower": cfg.vision.name, "image_size": cfg.vision.image_size,
            "levels": list(cfg.vision.levels), "val_image_auroc": record["val_image_auroc"],
            "zero_shot_threshold": expert.zero_shot_threshold, "calibration_margin": expert.calibration_margin,
            "null_model_spread": expert.null_model.spread, "self_scales": expert.self_scales,
            "reference_mismatch": expert.reference_mismatch,
            "reference_mismatch_fit": record["reference_mismatch_fit"], "loss_log": record["loss_log"]}


def calibrate_only(args, expert, tower, recs, feats, shots, null_shots, out_dir: Path, t0: float) -> int:
    """--calibrate-only CKPT: the trained expert's weights and its other margins as they are, plus margins fitted
    for `shots` on --data; the refit is recorded in the checkpoint's meta (`calibration_refits`)."""
    fitted = fit_margins(expert, tower, recs, *feats, shots=shots) if shots else {}
    expert.calibration_margin = {**expert.calibration_margin, **fitted}
    expert.null_model = fit_null(expert, tower, recs, *feats, shots=null_shots)
    meta = dict(expert.meta)
    meta["calibration_refits"] = [*meta.get("calibration_refits", []), {
        "data": data_info(args.data), "max_samples": args.max_samples, "n_samples": len(recs), "shots": list(shots),
        "calibration_margin": fitted, "null_shots": list(null_shots), "null_model_spread": expert.null_model.spread,
        "seconds": round(time.time() - t0, 1)}]
    expert.save_pretrained(out_dir, meta=meta)
    print(json.dumps({"calibration_margin": expert.calibration_margin, "fitted": fitted,
                      "null_model_spread": expert.null_model.spread}))
    print(f"saved {out_dir}/expert.safetensors and expert_config.json")
    return 0
