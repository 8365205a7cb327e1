"""Anomaly expert: multi-level patch tokens -> anomaly map, score, verdict, mask, boxes.

Paths, fused into one map:
- few-shot: per-level memory bank of reference-normal patch features (neighbourhood-averaged, references
  augmented with the 8 rotations/flips, greedy coreset when large); nearest-neighbour distance per query
  patch, divided by the level's normal distance scale so levels are comparable;
- zero-shot, CLIP towers: prompt ensemble of normal/abnormal state phrases x templates, per-level linear
  adapters mapping patch tokens into the text space (AnomalyGPT style);
- zero-shot, towers without text (EfficientNet): learned normal/abnormal prototypes shifted by the image's
  own global feature (Anomaly-OV's look-back idea), trained on synthesized anomalies (training/expert.py);
- zero-shot, one image, towers without text (`zero_shot_source: auto` or `self`): in-image rarity. Each patch's distance to its
  nearest patch of the same image outside its 3x3 neighbourhood, per level divided by the typical distance on
  normal training images. The verdict threshold is found on the image itself: the lowest score of anomalies
  synthesized on it (a query scores above it only where it holds something rarer than a light defect);
- zero-shot over a batch of unlabeled images of one kind (`mutual_predict`, MuSc's mutual scoring): every
  image is scored against the others; a defect is rare across parts, a normal patch has look-alikes in most.
The verdict threshold is never set by hand: `fit_references` calibrates it from the references' own
scores (leave-one-out, or leave-view-out over the rotations/flips when k = 1) and from anomalies it synthesizes on
the references; with k = 0 it uses the threshold stored with the trained heads.

The module holds only weights; everything per session lives in `ReferenceState`.
"""
from __future__ import annotations

import json
import math
import random
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

from assistant.anomaly.calibration import (UNFITTED_CATEGORY_SIGMA, NullModel, ThresholdEstimate, camera_view,
                                          estimate_threshold, judge, masked_map, review_band)
from assistant.anomaly.result import AnomalyResult, Box, mask_boxes, relabel, verdict_mask
from assistant.config import ExpertConfig
from assistant.vision.base import VisionOutput

WEIGHTS_NAME = "expert.safetensors"
SMOOTH_SIDE = 1024  # maps for larger images are smoothed at this side, then resized (AnomalyExpert.upsample)
CALIBRATION_BETA = 0.7  # threshold position between held-out normals (0) and synthesized anomalies (1), log scale
CONFIG_NAME = "expert_config.json"
LOT_MIN = 6  # parts inspected together from which the lot's own score distribution joins the verdict

# Prompt ensemble for CLIP towers (WinCLIP/AnomalyGPT style state phrases x templates).
NORMAL_STATES = ["{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                 "{} without damage"]
ABNORMAL_STATES = ["damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage",
                   "{} with a scratch", "{} with a crack", "{} with a hole"]
TEMPLATES = ["a photo of a {}.", "a cropped photo of the {}.", "a close-up photo of a {}.", "a bright photo of a {}.",
             "a dark photo of the {}.", "a photo of the {} for visual inspection.",
             "a photo of a {} for anomaly detection.", "a blurry photo of the {}."]


class ExpertCheckpointError(ValueError):
    """A trained-expert checkpoint is missing or does not match the tower; the message says why."""


@dataclass
class ReferenceState:
    """Per-session data from the reference normals (never stored in the module)."""

    banks: list[torch.Tensor]  # per level (M_l, C_l) reference-normal patch features; (0, C_l) when k = 0
    scales: list[float]  # per-level normal nearest-neighbour distance used to normalise level maps
    threshold: float  # calibrated image-score threshold (pred_score > threshold -> anomalous)
    pixel_threshold: float  # calibrated map threshold for pred_mask
    n_shots: int  # number of reference images used
    calibration: dict = field(default_factory=dict)  # how the thresholds were found (scores, method)
    estimate: ThresholdEstimate | None = None  # null-distribution threshold with its uncertainty (calibration: null)

    @property
    def sigma(self) -> float:
        """Log-scale uncertainty of the threshold (a default where the path has no estimate of its own)."""
        return self.estimate.sigma if self.estimate is not None else UNFITTED_CATEGORY_SIGMA

    @property
    def few_shot(self) -> bool:
        return self.n_shots > 0 and all(b.shape[0] > 0 for b in self.banks)


# ----------------------------------------------------------------------------------------------- heads
def self_distances(tokens: torch.Tensor, grid: tuple[int, int], fracs=(0.0, 0.03, 0.1), exclude: int = 1) -> torch.Tensor:
    """In-image outlier statistics: (B, N, C) -> (B, N, len(fracs)) log distance of each patch to its k-th
    nearest patch of the same image (k = 1 + frac * N), patches within `exclude` grid steps left out, each
    divided by the image median. High where a patch has few look-alikes elsewhere in the image."""
    h, w = grid
    t = F.normalize(tokens, dim=-1)
    d2 = (2.0 - 2.0 * t @ t.transpose(1, 2)).clamp_min(0)  # (B, N, N) squared cosine distance
    yy, xx = torch.meshgrid(torch.arange(h, device=t.device), torch.arange(w, device=t.device), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1)
    near = (pos[:, None, :] - pos[None, :, :]).abs().amax(-1) <= exclude  # (N, N)
    d2 = d2.masked_fill(near, float("inf"))
    n_other = int((~near).sum(1).min())
    ks = sorted({min(n_other, 1 + int(f * h * w)) for f in fracs})
    vals = d2.topk(max(ks), dim=-1, largest=False).values  # (B, N, kmax) ascending
    feats = torch.stack([vals[..., k - 1] for k in ks], -1).sqrt()  # (B, N, F)
    feats = feats / feats.median(dim=1, keepdim=True).values.clamp_min(1e-6)
    if len(ks) < len(fracs):  # tiny grids: repeat the last statistic
        feats = torch.cat([feats, feats[..., -1:].expand(*feats.shape[:2], len(fracs) - len(ks))], -1)
    return torch.log(feats.clamp_min(1e-3))


def self_nn_distance(feats: torch.Tensor, grid: tuple[int, int], exclude: float) -> torch.Tensor:
    """(B, N, C) -> (B, N) L2 distance of each patch to its nearest patch of the same image that lies more
    than `exclude` x grid side away (Chebyshev, in grid steps). Normal patches of textures and of repeated
    structure find a look-alike elsewhere in the image, under the query's own lighting; a small defect does not."""
    h, w = grid
    r = max(1, int(round(exclude * max(h, w))))
    yy, xx = torch.meshgrid(torch.arange(h, device=feats.device), torch.arange(w, device=feats.device), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1)
    near = (pos[:, None, :] - pos[None, :, :]).abs().amax(-1) <= r  # (N, N)
    d = torch.cdist(feats, feats)  # (B, N, N)
    return d.masked_fill(near, float("inf")).amin(-1)


class PrototypeHead(nn.Module):
    """Zero-shot head for towers without text: normal/abnormal prototypes conditioned on the global feature.

    Each patch is described by its projected features (layer-normed, plus the deviation from the image
    mean) and by in-image outlier statistics (`self_distances`: how far its nearest look-alikes in the
    same image are); the description is compared (cosine) with two prototypes = learned base + an offset
    from the image's global feature (Anomaly-OV's look-back idea); logit = (cos_abn - cos_norm) / T.
    Runs on the patch grid average-pooled by `pool` (speed).
    """

    n_stats = 3  # self-distance statistics per level

    def __init__(self, level_dims: list[int], global_dim: int, dim: int = 64, pool: int = 2):
        super().__init__()
        self.pool = pool
        self.proj = nn.ModuleList(nn.Linear(2 * c, dim) for c in level_dims)  # [token, token - image mean]
        self.stats = nn.Sequential(nn.Linear(self.n_stats * len(level_dims), dim), nn.GELU(), nn.Linear(dim, dim))
        self.mix = nn.Sequential(nn.GELU(), nn.Linear(dim, dim))
        self.base = nn.Parameter(torch.randn(2, dim) * 0.1)  # (normal, abnormal) prototypes
        self.cond = nn.Sequential(nn.Linear(global_dim, dim), nn.GELU(), nn.Linear(dim, 2 * dim))
        nn.init.zeros_(self.cond[-1].weight)
        nn.init.zeros_(self.cond[-1].bias)
        self.log_temp = nn.Parameter(torch.tensor(math.log(0.07)))
        self.bias = nn.Parameter(torch.zeros(()))

    def pooled(self, tokens: list[torch.Tensor], grid: tuple[int, int]) -> tuple[list[torch.Tensor], tuple[int, int]]:
        if self.pool <= 1 or min(grid) < 2 * self.pool:
            return tokens, grid
        b = tokens[0].shape[0]
        maps = [F.avg_pool2d(t.transpose(1, 2).reshape(b, -1, *grid), self.pool, ceil_mode=True) for t in tokens]
        return [m.flatten(2).transpose(1, 2) for m in maps], tuple(maps[0].shape[-2:])

    def forward(self, tokens: list[torch.Tensor], global_token: torch.Tensor, grid: tuple[int, int]):
        """tokens: L x (B, N, C_l) on `grid` -> (anomaly logits (B, N'), grid') on the pooled grid."""
        tokens, grid = self.pooled(tokens, grid)
        z = 0
        stats = []
        for proj, t in zip(self.proj, tokens):
            t = F.layer_norm(t, t.shape[-1:])
            z = z + proj(torch.cat([t, t - t.mean(dim=1, keepdim=True)], dim=-1))  # (B, N, D)
            stats.append(self_distances(t, grid))
        z = z + self.stats(torch.cat(stats, -1))
        z = F.normalize(z + self.mix(z), dim=-1)
        protos = self.base.unsqueeze(0) + self.cond(global_token).view(-1, 2, self.base.shape[-1])  # (B, 2, D)
        cos = torch.einsum("bnd,bkd->bnk", z, F.normalize(protos, dim=-1))  # (B, N, 2)
        return (cos[..., 1] - cos[..., 0]) / self.log_temp.exp() + self.bias, grid


class TextHead(nn.Module):
    """Zero-shot head for CLIP towers: per-level linear adapters into the text space + prompt ensemble."""

    def __init__(self, level_dims: list[int], text_features: torch.Tensor):
        super().__init__()
        dim = text_features.shape[-1]
        self.adapters = nn.ModuleList(nn.Linear(c, dim, bias=False) for c in level_dims)
        self.register_buffer("text_features", F.normalize(text_features, dim=-1), persistent=False)  # (2, D)
        self.logit_scale = 100.0

    def forward(self, tokens: list[torch.Tensor], global_token: torch.Tensor | None, grid: tuple[int, int]):
        """tokens: L x (B, N, C_l) -> (anomaly logits (B, N) = abnormal minus normal similarity, grid)."""
        logits = []
        for adapter, t in zip(self.adapters, tokens):
            z = F.normalize(adapter(t), dim=-1)  # (B, N, D)
            sim = self.logit_scale * z @ self.text_features.t()  # (B, N, 2)
            logits.append(sim[..., 1] - sim[..., 0])
        return torch.stack(logits).mean(0), grid


def prompt_text_features(text_encoder, object_name: str) -> torch.Tensor:
    """(2, D) mean normalised text embedding of the normal and the abnormal prompt ensembles."""
    feats = []
    for states in (NORMAL_STATES, ABNORMAL_STATES):
        prompts = [tpl.format(s.format(object_name)) for s in states for tpl in TEMPLATES]
        with torch.no_grad():
            e = F.normalize(torch.as_tensor(text_encoder(prompts)).float(), dim=-1)  # (T, D)
        feats.append(F.normalize(e.mean(0), dim=-1))
    return torch.stack(feats)


# ------------------------------------------------------------------------------------------ utilities
def aggregate(tokens: torch.Tensor, grid: tuple[int, int], window: int) -> torch.Tensor:
    """Neighbourhood-average patch features: (B, N, C) -> (B, N, C) (PatchCore's local aggregation)."""
    if window <= 1:
        return tokens
    b, n, c = tokens.shape
    x = tokens.transpose(1, 2).reshape(b, c, *grid)
    x = F.avg_pool2d(x, window, stride=1, padding=window // 2, count_include_pad=False)
    return x.flatten(2).transpose(1, 2)


def nn_distance(query: torch.Tensor, bank: torch.Tensor, k: int = 1, budget: int = 1 << 22) -> torch.Tensor:
    """Euclidean distance of each query row to its k nearest bank rows (mean of k): (Q, C), (M, C) -> (Q,).

    Query rows go in chunks of at most `budget` distance entries (16 MB in float32), so a large bank (many
    references during calibration) never needs a Q x M matrix at once."""
    out = []
    b2 = (bank * bank).sum(1)  # (M,)
    chunk = max(1, budget // max(1, bank.shape[0]))
    for i in range(0, query.shape[0], chunk):
        q = query[i:i + chunk]
        d2 = torch.addmm(b2.unsqueeze(0), q, bank.t(), alpha=-2.0)  # (q, M): |b|^2 - 2 q.b, one temporary
        d2 = d2.topk(k, dim=1, largest=False).values if k > 1 else d2.min(dim=1, keepdim=True).values
        out.append((d2 + (q * q).sum(1, keepdim=True)).clamp_min(0).sqrt().mean(1))
    return torch.cat(out)


def greedy_coreset(x: torch.Tensor, n: int, seed: int = 0, proj_dim: int = 128) -> torch.Tensor:
    """Indices of n rows chosen by greedy k-center on a random projection (PatchCore's coreset)."""
    if n >= x.shape[0]:
        return torch.arange(x.shape[0])
    g = torch.Generator().manual_seed(seed)
    z = x
    if x.shape[1] > proj_dim:
        z = x @ (torch.randn(x.shape[1], proj_dim, generator=g) / math.sqrt(proj_dim)).to(x)
    idx = [int(torch.randint(x.shape[0], (1,), generator=g))]
    dmin = ((z - z[idx[0]]) ** 2).sum(1)
    for _ in range(n - 1):
        i = int(dmin.argmax())
        idx.append(i)
        dmin = torch.minimum(dmin, ((z - z[i]) ** 2).sum(1))
    return torch.tensor(idx)


def dihedral_views(img: Image.Image) -> list[Image.Image]:
    """The 8 rotations/flips of an image (identity first)."""
    views = []
    for flip in (False, True):
        base = ImageOps.mirror(img) if flip else img
        for rot in (0, 90, 180, 270):
            views.append(base.rotate(rot, expand=True) if rot else base)
    return views


def mild_jitter(img: Image.Image, rng: random.Random) -> Image.Image:
    """A lightly different shot of the same part: rotation within 8 degrees, 3% shift, 4% scale, brightness, noise."""
    w, h = img.size
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-8, 8), rng.uniform(0.96, 1.04))
    m[:, 2] += (rng.uniform(-0.03, 0.03) * w, rng.uniform(-0.03, 0.03) * h)
    out = cv2.warpAffine(np.asarray(img), m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 2.0, out.shape)
    return Image.fromarray(np.clip(out.astype(np.float32) * rng.uniform(0.95, 1.05) + noise, 0, 255).astype(np.uint8))


def synthesize_anomaly(img: Image.Image, rng: random.Random) -> tuple[Image.Image, np.ndarray]:
    """A simple defect on a normal image for calibration: cut-paste patch, scratch or stain. -> (image, mask)."""
    w, h = img.size
    arr = np.asarray(img).copy()
    mask = np.zeros((h, w), np.uint8)
    kind = rng.choice(["cutpaste", "scratch", "stain"])
    # place defects where the image has structure (the part, not a flat background) when possible
    gray = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY).astype(np.float32)
    fg = np.abs(gray - np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]]))) > 20
    ys, xs = np.nonzero(fg) if fg.mean() > 0.05 else np.nonzero(np.ones_like(fg))
    j = rng.randrange(len(ys))
    cy, cx = int(ys[j]), int(xs[j])
    side = int(min(w, h) * rng.uniform(0.06, 0.16))
    if kind == "cutpaste":
        sy, sx = rng.randrange(0, h - side), rng.randrange(0, w - side)
        patch = arr[sy:sy + side, sx:sx + side].copy()
        patch = np.rot90(patch, rng.randrange(4)).copy()
        patch = np.clip(patch.astype(np.float32) * rng.uniform(0.6, 1.4) + rng.uniform(-30, 30), 0, 255).astype(np.uint8)
        y0, x0 = max(0, min(h - side, cy - side // 2)), max(0, min(w - side, cx - side // 2))
        m = np.zeros((side, side), np.uint8)
        cv2.ellipse(m, (side // 2, side // 2), (side // 2 - 1, max(2, int(side / 2 * rng.uniform(0.5, 1)) - 1)),
                    rng.uniform(0, 180), 0, 360, 1, -1)
        region = arr[y0:y0 + side, x0:x0 + side]
        region[m > 0] = patch[m > 0]
        mask[y0:y0 + side, x0:x0 + side] = m
    elif kind == "scratch":
        pts = [(cx, cy)]
        for _ in range(rng.randint(2, 4)):
            px, py = pts[-1]
            a = rng.uniform(0, 2 * math.pi)
            pts.append((int(px + math.cos(a) * side), int(py + math.sin(a) * side)))
        thick = max(2, int(min(w, h) * rng.uniform(0.008, 0.02)))
        color = tuple(int(c) for c in (rng.choice([rng.uniform(0, 60), rng.uniform(190, 255)]),) * 3)
        cv2.polylines(arr, [np.array(pts, np.int32)], False, color, thick)
        cv2.polylines(mask, [np.array(pts, np.int32)], False, 1, thick)
    else:
        axes = (max(2, side // 2), max(2, int(side / 2 * rng.uniform(0.4, 1))))
        cv2.ellipse(mask, (cx, cy), axes, rng.uniform(0, 180), 0, 360, 1, -1)
        shift = np.array([rng.uniform(-70, 70) for _ in range(3)], np.float32)
        soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(1.0, side / 10))[..., None]
        arr = np.clip(arr.astype(np.float32) * (1 - 0.4 * soft) + soft * (shift + 40 * (rng.random() < 0.5)), 0,
                      255).astype(np.uint8)
    return Image.fromarray(arr), mask > 0


# ------------------------------------------------------------------------------------------ the expert
class AnomalyExpert(nn.Module):
    def __init__(self, cfg: ExpertConfig, level_dims: list[int], global_dim: int, text_encoder=None):
        super().__init__()
        self.cfg = cfg
        self.level_dims = list(level_dims)
        self.global_dim = int(global_dim)
        self.head: nn.Module | None = None
        if cfg.zero_shot:
            if text_encoder is not None:
                self.head = TextHead(self.level_dims, prompt_text_features(text_encoder, cfg.object_name))
            else:
                self.head = PrototypeHead(self.level_dims, self.global_dim)
        self.trained = False  # True once heads were loaded/trained; untrained heads are not used for maps
        self.zero_shot_threshold = 0.5  # image-score threshold of the zero-shot path (set by training)
        self.meta: dict = {}  # training manifest loaded with the checkpoint
        self.calibration_margin: dict[str, float] = {}  # fitted on synthetic categories by training (k1 ... k16)
        self.null_model = NullModel()  # new-part offsets above the references' null scores (fitted by training)
        self.self_scales: list[float] = []  # per level: median in-image nearest distance on normal training images
        # with references: median of the normalised kNN map above which the references do not show this part
        # (fitted on synthetic categories by training: 1% of same-kind parts lie above it); None = no check
        self.reference_mismatch: float | None = None
        # per level: native stride / finest stride (a stride-32 level on a stride-8 grid is 4x upsampled);
        # the kNN of a coarse level runs on its native grid, not on interpolated copies (set from the tower)
        self.level_scale: list[int] = [1] * len(self.level_dims)

    # -------------------------------------------------------------- checkpoint
    def save_pretrained(self, out_dir: str | Path, meta: dict | None = None) -> Path:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(out / WEIGHTS_NAME))
        cfg = {"expert": asdict(self.cfg), "level_dims": self.level_dims, "global_dim": self.global_dim,
               "head": type(self.head).__name__ if self.head is not None else None,
               "zero_shot_threshold": self.zero_shot_threshold, "calibration_margin": self.calibration_margin,
               "null_model": self.null_model.to_dict() if self.null_model.fitted else None,
               "self_scales": self.self_scales, "reference_mismatch": self.reference_mismatch, "meta": meta or self.meta}
        (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=1))
        return out

    @classmethod
    def from_pretrained(cls, ckpt_dir: str | Path | None, cfg: ExpertConfig, tower) -> "AnomalyExpert":
        """Build for `tower` and load trained heads from ckpt_dir (when it holds expert weights)."""
        text_encoder = getattr(tower, "encode_text", None)
        expert = cls(cfg, tower.level_dims, tower.global_dim, text_encoder=text_encoder)
        expert.level_scale = level_scale(tower)
        if ckpt_dir is None:
            return expert
        path = Path(ckpt_dir)
        if not (path / WEIGHTS_NAME).is_file():
            raise ExpertCheckpointError(f"expert checkpoint {path}: expected {WEIGHTS_NAME} and {CONFIG_NAME} there")
        meta = json.loads((path / CONFIG_NAME).read_text()) if (path / CONFIG_NAME).is_file() else {}
        if meta.get("level_dims") and meta["level_dims"] != expert.level_dims:
            raise ExpertCheckpointError(
                f"expert checkpoint {path} was trained for level dims {meta['level_dims']}, but the tower "
                f"gives {expert.level_dims} (check vision.name / vision.levels)")
        if meta.get("head") and expert.head is not None and meta["head"] != type(expert.head).__name__:
            raise ExpertCheckpointError(f"expert checkpoint {path} holds a {meta['head']}, the tower needs a "
                                        f"{type(expert.head).__name__}")
        from safetensors.torch import load_file

        state = load_file(str(path / WEIGHTS_NAME))
        missing, unexpected = expert.load_state_dict(state, strict=False)
        if unexpected or (expert.head is not None and missing):
            raise ExpertCheckpointError(f"expert checkpoint {path} does not match: missing {missing[:4]}, "
                                        f"unexpected {unexpected[:4]}")
        expert.trained = expert.head is not None
        expert.zero_shot_threshold = float(meta.get("zero_shot_threshold", 0.5))
        expert.calibration_margin = {k: float(v) for k, v in (meta.get("calibration_margin") or {}).items()}
        fitted = (meta.get("expert") or {}).get("level_fusion", "mean")  # checkpoints before the option: mean
        if expert.calibration_margin and fitted != cfg.level_fusion:
            warnings.warn(f"expert checkpoint {path}: its calibration margins and reference-mismatch cut were fitted "
                          f"with expert.level_fusion={fitted}, but this config uses {cfg.level_fusion}; verdicts will be "
                          f"miscalibrated. Set expert.level_fusion={fitted} or retrain with `python -m training expert`",
                          stacklevel=2)
        expert.null_model = NullModel.from_dict(meta.get("null_model"))
        expert.self_scales = [float(v) for v in meta.get("self_scales") or []]
        cut = meta.get("reference_mismatch")
        expert.reference_mismatch = float(cut) if cut is not None else None
        expert.meta = meta.get("meta", {})
        return expert.to(tower.device)

    # -------------------------------------------------------------- maps
    def patch_features(self, out: VisionOutput) -> tuple[list[torch.Tensor], list[tuple[int, int]], tuple[int, int]]:
        """kNN features: (L x (B, N_l, C_l), L x grid_l, common grid). Every level is average-pooled by
        `patch_pool`, a coarse level further down to its native resolution (level_scale), then
        neighbourhood-averaged; maps are fused on the common grid (the grid pooled by `patch_pool`)."""
        grid = out.grid
        b = out.patch_tokens[0].shape[0]
        p = self.cfg.patch_pool if self.cfg.patch_pool > 1 and min(grid) >= 2 * self.cfg.patch_pool else 1
        common = (math.ceil(grid[0] / p), math.ceil(grid[1] / p))
        feats, grids = [], []
        for t, scale in zip(out.patch_tokens, self.level_scale):
            pool = max(p, scale) if min(grid) >= 2 * max(p, scale) else p
            t = t.float()
            if pool > 1:
                t = F.avg_pool2d(t.transpose(1, 2).reshape(b, -1, *grid), pool, ceil_mode=True)
                g = tuple(t.shape[-2:])
                t = t.flatten(2).transpose(1, 2)
            else:
                g = tuple(grid)
            feats.append(aggregate(t, g, self.cfg.neighbourhood))
            grids.append(g)
        return feats, grids, common

    @staticmethod
    def _to_grid(d: torch.Tensor, grid_l: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
        """(B, N_l) per-patch values on grid_l -> (B, h, w) on the common grid (bilinear when coarser)."""
        m = d.reshape(-1, 1, *grid_l)
        if tuple(grid_l) != tuple(grid):
            m = F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
        return m[:, 0]

    def few_shot_maps(self, out: VisionOutput, state: ReferenceState) -> torch.Tensor:
        """(B, L, h', w') per-level nearest-neighbour distance divided by the level's normal scale."""
        feats, grids, grid = self.patch_features(out)
        maps = []
        for f, g, bank, s in zip(feats, grids, state.banks, state.scales):
            maps.append(self._to_grid(self._distances(f, bank.to(f.device), g), g, grid) / s)
        return torch.stack(maps, 1)

    @staticmethod
    def fuse_levels(maps: torch.Tensor, how: str) -> torch.Tensor:
        """(B, L, h', w') per-level maps, each ~1 on ordinary patches -> (B, h', w'). "geo": the geometric mean, so
        a patch must stand out at every stride and one level's stray response (the stride-32 level reacting to a
        neighbouring object, the stride-8 level to texture noise) counts less; "mean": the arithmetic mean."""
        if how == "geo":
            return maps.clamp_min(1e-3).log().mean(1).exp()
        return maps.mean(1)

    def zero_shot_map(self, out: VisionOutput) -> torch.Tensor | None:
        """(B, h, w) anomaly probability from the trained zero-shot head, or None."""
        if self.head is None or not self.trained:
            return None
        tokens = [t.float() for t in out.patch_tokens]
        logits, grid = self.head(tokens, out.global_token.float(), out.grid)
        return torch.sigmoid(logits).view(-1, *grid)

    def self_level_distances(self, out: VisionOutput) -> tuple[list[torch.Tensor], list[tuple[int, int]], tuple[int, int]]:
        """Per level (B, N_l) distance of each kNN feature to its nearest patch of the same image outside its
        neighbourhood (`zero_shot_exclude`); inf where a grid is too small to leave anything out."""
        feats, grids, grid = self.patch_features(out)
        return [self_nn_distance(f, g, self.cfg.zero_shot_exclude) for f, g in zip(feats, grids)], grids, grid

    def _require_self_scales(self) -> None:
        if len(self.self_scales) != len(self.level_dims):
            raise RuntimeError("zero-shot (zero_shot_source: self) needs the per-level scales stored by "
                               "`python -m training expert`; this expert has none. Retrain it, give a reference "
                               "normal image, or set expert.zero_shot_source=head")

    def self_map(self, out: VisionOutput) -> torch.Tensor:
        """(B, h', w') single-image zero-shot map: in-image rarity, each level divided by its typical value on
        normal training images (self_scales), so ~1 on ordinary patches. The scales are constants, not this
        image's own median: a part with many defects, or a busy one, must not rescale itself.

        Levels are fused by their geometric mean (`self_fusion: geo`): a patch must be rare at every stride, so
        one level's stray response counts less. On the 28 synthetic categories image AUROC 0.865 -> 0.867; on the
        real dev folders 0.792 -> 0.802 (where the choice was first seen; README)."""
        self._require_self_scales()
        dists, grids, grid = self.self_level_distances(out)
        maps = torch.stack([self._to_grid(torch.nan_to_num(d / s, posinf=1.0), g, grid)
                            for d, g, s in zip(dists, grids, self.self_scales)], 1)  # (B, L, h', w')
        return self.fuse_levels(maps, self.cfg.self_fusion)

    def raw_maps(self, out: VisionOutput, state: ReferenceState) -> torch.Tensor:
        """(B, h, w) fused map on the patch grid: normalised kNN distance, weighted with the zero-shot map."""
        if not (state.few_shot and self.cfg.few_shot) and self.self_calibrated():
            return self.self_map(out)
        zs = self.zero_shot_map(out) if self.cfg.zero_shot else None
        if state.few_shot and self.cfg.few_shot:
            fs = self.fuse_levels(self.few_shot_maps(out, state), self.cfg.level_fusion)  # (B, h', w'), ~1 normal
            if zs is not None and self.cfg.zero_shot_weight > 0:
                if zs.shape[-2:] != fs.shape[-2:]:
                    zs = F.interpolate(zs.unsqueeze(1), size=fs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
                fs = fs * (1.0 + self.cfg.zero_shot_weight * (zs - 0.5))
            return fs
        if zs is None:
            raise RuntimeError("no reference images and no trained zero-shot head: give at least one reference "
                               "normal image or set expert.checkpoint to a trained expert")
        return zs

    def upsample(self, maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """(B, h, w) -> (B, H, W) float32, bilinear + Gaussian smoothing (sigma scales with the longer side).

        Above SMOOTH_SIDE pixels the map is smoothed at SMOOTH_SIDE (same aspect ratio) and then resized
        bilinearly: a camera frame of 12 MP took 2.1 s in the blur alone, and the smoothed map has no detail
        finer than the patch grid, so the result differs only by interpolation."""
        h, w = int(size[0]), int(size[1])
        f = min(1.0, SMOOTH_SIDE / max(h, w))
        work = (max(1, round(h * f)), max(1, round(w * f)))
        up = F.interpolate(maps.unsqueeze(1).float(), size=work, mode="bilinear", align_corners=False)[:, 0]
        up = up.cpu().numpy().astype(np.float32)
        sigma = self.cfg.smoothing_sigma * max(work) / 256.0
        if sigma > 0:
            up = np.stack([cv2.GaussianBlur(m, (0, 0), sigma) for m in up])
        if work != (h, w):
            up = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in up])
        return up

    def image_score(self, amap: np.ndarray) -> float:
        """Mean of the top `score_topk` fraction of map pixels (max when the fraction is 0)."""
        flat = amap.reshape(-1)
        k = max(1, int(round(self.cfg.score_topk * flat.size)))
        return float(np.partition(flat, flat.size - k)[-k:].mean())

    # -------------------------------------------------------------- inference
    def self_calibrated(self) -> bool:
        """True when a state without references is judged per image by in-image rarity (predict then needs the
        images and the tower): zero_shot_source "self", or "auto" on a tower without text (CLIP towers keep the
        text-prompt head, the zero-shot path they were trained for)."""
        src = self.cfg.zero_shot_source
        return src == "self" or (src == "auto" and not isinstance(self.head, TextHead))

    @torch.no_grad()
    def predict(self, query_out: VisionOutput, state: ReferenceState, image_size: tuple[int, int],
                images: list[Image.Image] | None = None, tower=None) -> list[AnomalyResult]:
        """One AnomalyResult per query image; maps have size image_size (H, W). Without references and with
        `zero_shot_source: self`, each image gets its own threshold (`_self_threshold`), which needs the query
        `images` and the `tower`."""
        if len(query_out.patch_tokens) != len(self.level_dims):
            raise ValueError(f"expected {len(self.level_dims)} levels of patch tokens, got {len(query_out.patch_tokens)}")
        raw = self.raw_maps(query_out, state)  # (B, h', w') on the patch grid
        grid = tuple(raw.shape[-2:])
        maps = self.upsample(raw, tuple(image_size))
        if state.few_shot:
            medians = raw.flatten(1).median(1).values.tolist()  # ~1 when the query's surface matches the references
            return [self._result(amap, self.image_score(amap), state, "few-shot", grid, reference_median=med)
                    for amap, med in zip(maps, medians)]
        if not self.self_calibrated():
            return [self._result(amap, self.image_score(amap), state, "zero-shot", grid) for amap in maps]
        if images is None or tower is None or len(images) != len(maps):
            raise ValueError(f"zero-shot with zero_shot_source 'self' calibrates on each query image: expected "
                             f"predict(..., images=<{len(maps)} query image(s)>, tower=<the vision tower>), got "
                             f"images={'None' if images is None else len(images)}, tower={'None' if tower is None else 'set'}")
        out = []
        for img, amap in zip(images, maps):
            thr, pix, synth = self._self_threshold(tower, img, tuple(image_size))
            st = ReferenceState(banks=[], scales=[], threshold=thr, pixel_threshold=pix, n_shots=0,
                                calibration={"method": "in-image rarity, one image, no references",
                                             "rule": f"lowest score of {len(synth)} anomalies synthesized on this image",
                                             "synth_scores": [round(float(x), 4) for x in synth]})
            out.append(self._result(amap, self.image_score(amap), st, "zero-shot", grid))
        return out

    def _self_threshold(self, tower, img: Image.Image, image_size: tuple[int, int]) -> tuple[float, float, np.ndarray]:
        """(image threshold, pixel threshold, synthesized scores) for one query without references.

        `calibration_synth` anomalies are synthesized on the query itself (fixed seed: the same image always gets
        the same threshold) and scored like it. The image threshold is the lowest of their scores: on held-out
        synthetic categories the best single cut of (query score / that lowest score) was 1.0. The pixel
        threshold is the best F1 on their masks."""
        rng = random.Random(0)
        side = tower.image_size
        base = img.convert("RGB").resize((side, side), Image.BICUBIC)
        synth = [synthesize_anomaly(base, rng) for _ in range(max(2, self.cfg.calibration_synth))]
        smaps = self.upsample(self.self_map(tower.encode([s[0] for s in synth])), image_size)
        scores = np.array([self.image_score(m) for m in smaps])
        h, w = image_size
        gt = np.concatenate([cv2.resize(s[1].astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).reshape(-1)
                             for s in synth]) > 0
        return float(scores.min()), self._best_f1_threshold(smaps.reshape(-1), gt), scores

    @staticmethod
    def _best_f1_threshold(values: np.ndarray, gt: np.ndarray) -> float:
        """Map threshold with the best F1 against synthesized masks (60 quantiles between the median and the top)."""
        cand = np.quantile(values, np.linspace(0.5, 0.999, 60))
        return float(cand[int(np.argmax([_f1(values > c, gt) for c in cand]))])

    def _result(self, amap: np.ndarray, score: float, state: ReferenceState, path: str, grid: tuple[int, int],
                reference_median: float | None = None) -> AnomalyResult:
        """`grid`: the (h', w') patch grid the map was computed on; regions closer than `box_merge_cells` of its
        cells (in the map's pixels) count as one."""
        label = bool(score > state.threshold)
        mask = verdict_mask(amap, label, state.pixel_threshold, self.cfg.score_topk)
        merge_px = self.cfg.box_merge_cells * max(amap.shape[0] / grid[0], amap.shape[1] / grid[1])
        extras = {"shots": state.n_shots, "score_topk": self.cfg.score_topk, "path": path, "box_merge_px": merge_px,
                  "review_confidence": self.cfg.review_confidence,
                  "calibration": state.calibration.get("rule", state.calibration.get("method", ""))}
        mismatch = False
        if reference_median is not None:
            extras["reference_median"] = round(float(reference_median), 4)
            if self.reference_mismatch is not None:
                extras["reference_mismatch_cut"] = round(float(self.reference_mismatch), 4)
                mismatch = bool(reference_median > self.reference_mismatch)
        sigma = state.sigma
        verdict, confidence = judge(float(score), state.threshold, sigma, self.cfg.review_confidence)
        low, high = review_band(state.threshold, sigma, self.cfg.review_confidence)
        return AnomalyResult(anomaly_map=amap, pred_score=float(score), pred_label=label, pred_mask=mask,
                             boxes=self.boxes(amap, mask, merge_px), threshold=state.threshold,
                             pixel_threshold=state.pixel_threshold, extras=extras, reference_mismatch=mismatch,
                             verdict=verdict, confidence=confidence, threshold_sigma=sigma, threshold_low=low,
                             threshold_high=high)

    def boxes(self, amap: np.ndarray, mask: np.ndarray, merge_px: float = 0.0) -> list[Box]:
        """Regions of the mask (`mask_boxes`), largest first, tiny ones dropped."""
        return mask_boxes(mask, amap, self.cfg.min_box_area, merge_px)

    # -------------------------------------------------------------- batch zero-shot (mutual scoring)
    @torch.no_grad()
    def mutual_maps(self, out: VisionOutput) -> torch.Tensor:
        """(B, h', w') zero-shot maps of B >= 2 unlabeled images of one kind, no references.

        Per level, each patch's distance to its nearest patch in every other image (at most
        `mutual_max_others` of them, a fixed sample per image); the patch score is the mean of the smallest
        `mutual_frac` of these distances (robust to the other images' own defects), divided by the batch
        median so that levels are comparable and normal patches score ~1. A defect that recurs at the same
        place on more than `mutual_frac` of the images finds look-alikes and is scored as normal."""
        feats, grids, grid = self.patch_features(out)
        b = feats[0].shape[0]
        if b < 2:
            raise ValueError(f"mutual scoring needs at least 2 unlabeled images of the same kind, got {b}")
        others = []
        for i in range(b):
            rest = [j for j in range(b) if j != i]
            if len(rest) > self.cfg.mutual_max_others:
                rest = sorted(random.Random(i).sample(rest, self.cfg.mutual_max_others))
            others.append(rest)
        k = max(1, int(round(self.cfg.mutual_frac * len(others[0]))))
        maps = []
        for f, g in zip(feats, grids):
            s = torch.stack([torch.cdist(f[i].expand(len(o), -1, -1), f[o]).amin(-1)  # (n_other, N_l)
                             .topk(k, dim=0, largest=False).values.mean(0) for i, o in enumerate(others)])
            maps.append(self._to_grid(s / s.median().clamp_min(1e-6), g, grid))
        return torch.stack(maps, 1).mean(1)

    @torch.no_grad()
    def mutual_predict(self, out: VisionOutput, image_size: tuple[int, int] | list[tuple[int, int]]) -> list[AnomalyResult]:
        """One AnomalyResult per image of an unlabeled batch (`mutual_maps`). The verdict threshold splits the
        batch's log image scores in two clusters (k-means): on the 28 synthetic training categories this gave
        balanced accuracy 0.912, against 0.767 for the best single threshold fitted on them. A batch is
        assumed to hold both good and defective parts; a batch of only good parts still has an upper cluster."""
        grid_maps = self.mutual_maps(out)
        if isinstance(image_size, list):  # one (H, W) per image: each map at its own image's size
            maps = [self.upsample(grid_maps[i:i + 1], tuple(sz))[0] for i, sz in enumerate(image_size)]
        else:
            maps = list(self.upsample(grid_maps, tuple(image_size)))
        scores = np.array([self.image_score(m) for m in maps])
        thr = batch_split(scores)
        state = ReferenceState(banks=[], scales=[], threshold=thr, pixel_threshold=thr, n_shots=0,
                               calibration={"method": "mutual scoring over the unlabeled batch",
                                            "rule": "two-cluster split of this batch's log image scores"})
        return [self._result(m, sc, state, "mutual", tuple(grid_maps.shape[-2:])) for m, sc in zip(maps, scores)]

    # -------------------------------------------------------------- several parts at once (a lot)
    def lot_decide(self, results: list[AnomalyResult]) -> list[AnomalyResult]:
        """Judge the parts of one lot (same kind, inspected together) with the lot's own score distribution as well
        as the references: most parts of a lot are good, so the lower of the two clusters of its log scores
        (`batch_split`) shows how new good parts of this kind score, which one or a few references cannot. The lot
        threshold is the geometric mean of the references' threshold and the split between the lot's clusters. Lots
        smaller than LOT_MIN keep the references' verdicts."""
        if len(results) < LOT_MIN:
            return results
        scores = np.array([r.pred_score for r in results])
        t_ref = float(np.exp(np.mean(np.log([max(r.threshold, 1e-6) for r in results]))))
        split = batch_split(scores)
        t = math.sqrt(t_ref * split)
        return [relabel(r, t, r.pixel_threshold * t / max(r.threshold, 1e-6), self.cfg.review_confidence,
                        self.cfg.min_box_area, lot_size=len(results), reference_threshold=r.threshold,
                        lot_split=split, calibration=f"lot of {len(results)}: geometric mean of the references' threshold "
                        "and the split between the lot's two score clusters") for r in results]

    # -------------------------------------------------------------- references + calibration
    @torch.no_grad()
    def fit_references(self, tower, ref_images: list[Image.Image], ref_out: VisionOutput | None = None,
                       seed: int = 0) -> ReferenceState:
        """Memory bank (+ rotations/flips, coreset) and calibrated thresholds; k = 0 gives the zero-shot state."""
        k = len(ref_images)
        if k == 0 or not self.cfg.few_shot:
            if self.self_calibrated():  # the thresholds are found per query image in predict
                self._require_self_scales()
                thr, how = float("nan"), "per query image: anomalies synthesized on it (in-image rarity)"
            elif self.head is None or not self.trained:
                raise RuntimeError("zero-shot needs trained expert heads (expert.checkpoint); none are loaded. "
                                   "Give at least one reference normal image.")
            else:
                thr, how = self.zero_shot_threshold, "zero-shot threshold from training"
            return ReferenceState(banks=[torch.zeros(0, c) for c in self.level_dims], scales=[1.0] * len(self.level_dims),
                                  threshold=thr, pixel_threshold=thr, n_shots=0, calibration={"method": how})
        rng = random.Random(seed)
        size = tower.image_size
        refs = [im.convert("RGB").resize((size, size), Image.BICUBIC) for im in ref_images]
        n_views = 8 if self.cfg.augment_references else 1
        views = [dihedral_views(r)[:n_views] for r in refs]  # k x V images
        pf = [self.patch_features(tower.encode(v)) for v in views]
        encoded, grids, grid = [p[0] for p in pf], pf[0][1], pf[0][2]  # k x L x (V, N_l, C), L x grid_l, (h', w')
        L = len(self.level_dims)
        flat = [[e[lv].reshape(-1, e[lv].shape[-1]) for lv in range(L)] for e in encoded]  # k x L x (V N', C)
        banks = [self._coreset(torch.cat([f[lv] for f in flat]), encoded[0][lv].shape[1], seed) for lv in range(L)]
        state = ReferenceState(banks=banks, scales=[1.0] * L, threshold=0.0, pixel_threshold=0.0, n_shots=k)
        # pseudo-normal distances: each reference against the others (k >= 2, leave-one-out) or, with one
        # reference, each rotation/flip view against the bank of the other views (leave-view-out)
        held_out: list[list[torch.Tensor]] = []  # per pseudo-normal image: L x (N',)
        if k >= 2:
            for i in range(k):
                others = [torch.cat([flat[j][lv] for j in range(k) if j != i]) for lv in range(L)]
                held_out.append([self._distances(encoded[i][lv][:1], others[lv], grids[lv])[0] for lv in range(L)])
        else:
            for v in range(len(views[0])):
                rest = [torch.cat([encoded[0][lv][j] for j in range(len(views[0])) if j != v] or [encoded[0][lv][v]])
                        for lv in range(L)]
                held_out.append([self._distances(encoded[0][lv][v:v + 1], rest[lv], grids[lv])[0] for lv in range(L)])
        state.scales = [normal_scale(torch.cat([h[lv] for h in held_out])) for lv in range(L)]
        # the margin rule's held-out statistic is the arithmetic mean of the level maps whatever level_fusion is: its
        # margins were fitted on synthetic categories for this pairing
        normal_maps = torch.stack([torch.stack([self._to_grid(h[lv][None], grids[lv], grid)[0] / state.scales[lv]
                                                for lv in range(L)]).mean(0) for h in held_out])  # (P, h', w')
        self._calibrate(tower, state, refs, normal_maps, rng)
        if self.cfg.calibration == "null":
            groups = self._null_scores(tower, state, encoded, held_out, grids, grid, refs, rng)
            est = estimate_threshold(groups, k, self.null_model, self.cfg.target_overkill, self.cfg.review_confidence,
                                     seed=seed)
            state.threshold, state.estimate = est.threshold, est
            source = ("leave-view-out rotations/flips and camera views of the reference" if k == 1
                      else "leave-one-out: each reference against the others")
            fitted = f"fitted on {self.null_model.categories} synthetic categories" if self.null_model.fitted else "unfitted default"
            state.calibration.update(
                method=f"null distribution of normal scores ({source})",
                rule=f"median null score x {math.exp(est.offset):.3f} (new-part offset for {k} reference(s), "
                     f"{fitted}): about {self.cfg.target_overkill:.0%} of good parts above it",
                null_scores=[round(float(x), 4) for g in groups for x in g], estimate=est.to_dict())
        return state

    def _null_scores(self, tower, state: ReferenceState, encoded, held_out, grids, grid, refs, rng) -> list[np.ndarray]:
        """Image scores of new-part stand-ins, on the query's scale (same level fusion, same pooling), grouped by what
        can be resampled: with k >= 2 each reference against the others (one group per reference); with one
        reference its rotations/flips against the other views and `camera_views` camera views of it against its
        non-identity views (`camera_view`; their reflected border is not scored), one group per view."""
        size = (tower.image_size, tower.image_size)
        L = len(self.level_dims)

        def scores(per_level: list[torch.Tensor], valid: list[np.ndarray] | None = None) -> np.ndarray:
            """L x (B, N_l) distances -> (B,) image scores."""
            maps = torch.stack([self._to_grid(d, g, grid) / sc for d, g, sc in zip(per_level, grids, state.scales)], 1)
            up = self.upsample(self.fuse_levels(maps, self.cfg.level_fusion), size)
            if valid is not None:
                up = [masked_map(m, v) for m, v in zip(up, valid)]
            return np.array([self.image_score(m) for m in up])

        held = scores([torch.stack([h[lv] for h in held_out]) for lv in range(L)])  # (P,)
        if state.n_shots >= 2 or self.cfg.camera_views <= 0:
            return [np.array([x]) for x in held]
        cams = [camera_view(refs[0], rng) for _ in range(self.cfg.camera_views)]
        feats = self.patch_features(tower.encode([c[0] for c in cams]))[0]  # L x (n, N_l, C)
        views = encoded[0][0].shape[0]
        rest = [(encoded[0][lv][1:] if views > 1 else encoded[0][lv]).reshape(-1, encoded[0][lv].shape[-1])
                for lv in range(L)]  # the other rotations/flips: the identity view itself would match exactly
        cam = scores([self._distances(feats[lv], rest[lv], grids[lv]) for lv in range(L)], [c[1] for c in cams])
        return [np.array([x]) for x in np.concatenate([held, cam])]

    def _distances(self, feats: torch.Tensor, bank: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N_l, C) patches on `grid` -> (B, N_l) distance to the bank (and, with self_reference, to the
        image's own far-away patches): the same score for queries and held-out references."""
        d = nn_distance(feats.reshape(-1, feats.shape[-1]), bank, self.cfg.knn_k).view(feats.shape[0], -1)
        if self.cfg.self_reference:
            d = torch.minimum(d, self_nn_distance(feats, grid, self.cfg.self_exclude))
        return d

    def _coreset(self, bank: torch.Tensor, per_image: int, seed: int) -> torch.Tensor:
        """(M, C) bank of one level -> at most min(max_bank, bank_images x per_image) rows (greedy k-center)."""
        cap = min(self.cfg.max_bank, self.cfg.bank_images * per_image)
        if bank.shape[0] <= cap:
            return bank
        n = min(cap, max(self.cfg.max_bank // 4, int(bank.shape[0] * self.cfg.coreset_ratio)))
        if bank.shape[0] > 8 * n:  # greedy k-center is O(n M): pre-sample uniformly first
            g = torch.Generator().manual_seed(seed)
            bank = bank[torch.randperm(bank.shape[0], generator=g)[:8 * n]]
        return bank[greedy_coreset(bank, n, seed)]

    def _calibrate(self, tower, state: ReferenceState, refs: list[Image.Image], normal_maps: torch.Tensor,
                   rng: random.Random) -> None:
        """Image threshold from held-out normal scores and synthesized-anomaly scores; pixel threshold by F1.

        threshold = n * (a / n) ** 0.7 with n = the highest held-out normal score and a = the median score
        of anomalies synthesized on lightly jittered references (a >= n enforced): a geometric point between
        the two, nearer the anomalies because held-out views of the references are easier than new parts.
        """
        size = (tower.image_size, tower.image_size)
        n_synth = max(2, self.cfg.calibration_synth)
        synth = [synthesize_anomaly(mild_jitter(refs[i % len(refs)], rng), rng) for i in range(n_synth)]
        nmaps = self.upsample(normal_maps, size)
        smaps = self.upsample(self.raw_maps(tower.encode([s[0] for s in synth]), state), size)
        normal = np.array([self.image_score(m) for m in nmaps])
        anomal = np.array([self.image_score(m) for m in smaps])
        n = max(float(normal.max()), 1e-6)
        a = max(float(np.median(anomal)), n)
        margin = self.calibration_margin.get(margin_key(state.n_shots, self.calibration_margin))
        if margin:  # fitted offline on synthetic categories: new normal parts score ~margin x held-out normals
            state.threshold = float(n * margin)
            rule = f"{margin:.3f} x highest held-out normal score (margin fitted on synthetic categories)"
        else:
            state.threshold = float(n * (a / n) ** CALIBRATION_BETA)
            rule = f"geometric point {CALIBRATION_BETA} from highest held-out normal to median synthesized anomaly"
        # pixel threshold: best F1 on synthesized masks, not below the median of normal maps' maxima
        gt = np.concatenate([s[1].reshape(-1) for s in synth])
        pix = self._best_f1_threshold(smaps.reshape(-1), gt)
        state.pixel_threshold = max(pix, float(np.median([m.max() for m in nmaps])))
        state.calibration = {"method": ("leave-one-out references" if state.n_shots >= 2 else "leave-view-out rotations/flips")
                             + " + synthesized anomalies", "rule": rule,
                             "normal_scores": [round(float(x), 4) for x in normal],
                             "synth_scores": [round(float(x), 4) for x in anomal]}


def normal_scale(d: torch.Tensor) -> float:
    """Typical held-out nearest-neighbour distance of a level (its median): the unit of its map. Where most held-out
    patches match exactly (binarised or flat images: median 0), the mean is used, so the unit is never ~0."""
    med, mean = float(d.median()), float(d.mean())
    return max(med if med > 0.05 * mean else mean, 1e-6)


def margin_key(n_shots: int, margins: dict[str, float]) -> str | None:
    """The calibration margin for `n_shots` references: k1 for one (its held-out scores are leave-view-out), else
    the one fitted for the most references not above it ("k2", "k4", "k8", "k16"; checkpoints without k8 use k4 for
    every k >= 4, without k4 k2 for every k >= 2)."""
    if n_shots == 1:
        return "k1" if "k1" in margins else None
    fitted = sorted(int(k[1:]) for k in margins if k[:1] == "k" and k[1:].isdigit() and 2 <= int(k[1:]) <= n_shots)
    return f"k{fitted[-1]}" if fitted else None


def _f1(pred: np.ndarray, gt: np.ndarray) -> float:
    tp = float(np.logical_and(pred, gt).sum())
    return 2 * tp / max(float(pred.sum() + gt.sum()), 1.0)


def batch_split(scores: np.ndarray) -> float:
    """Threshold between the two k-means clusters of log image scores (midpoint of the gap between them)."""
    from sklearn.cluster import KMeans

    x = np.log(np.clip(np.asarray(scores, np.float64), 1e-6, None)).reshape(-1, 1)
    if len(x) < 2 or np.ptp(x) == 0:
        return float(np.max(scores)) if len(x) else 0.0
    lab = KMeans(2, n_init=4, random_state=0).fit_predict(x)
    hi = lab[int(np.argmax(x))]
    return float(np.exp((x[lab != hi].max() + x[lab == hi].min()) / 2))


def level_scale(tower) -> list[int]:
    """Per level of `tower`: its native stride / the finest selected stride (AnomalyExpert.level_scale)."""
    strides = tower.level_strides
    return [max(1, round(st / min(strides))) for st in strides]


def trained_expert_dir(cfg) -> Path | None:
    """The folder of cfg.expert.checkpoint (relative paths also against the repository) when it holds trained
    expert weights, else None."""
    ckpt = cfg.expert.checkpoint
    if not ckpt:
        return None
    p = Path(ckpt)
    if not p.is_absolute() and not p.exists():
        from assistant.config import REPO_ROOT

        p = REPO_ROOT / ckpt
    return p if (p / WEIGHTS_NAME).is_file() else None


def build_expert(cfg, tower) -> AnomalyExpert:
    """The expert for a full Config and its tower, with the trained heads of cfg.expert.checkpoint when present."""
    p = trained_expert_dir(cfg)
    if p is not None:
        return AnomalyExpert.from_pretrained(p, cfg.expert, tower)
    return AnomalyExpert.from_pretrained(None, cfg.expert, tower).to(tower.device)
