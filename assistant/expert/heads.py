"""Zero-shot heads of the expert: learned normal/abnormal prototypes (towers without text) and CLIP text prompts."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Prompt ensemble for CLIP towers (WinCLIP/AnomalyGPT style state phrases x templates).
NORMAL_STATES = ["{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                 "{} without damage"]
ABNORMAL_STATES = ["damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage",
                   "{} with a scratch", "{} with a crack", "{} with a hole"]
TEMPLATES = ["a photo of a {}.", "a cropped photo of the {}.", "a close-up photo of a {}.", "a bright photo of a {}.",
             "a dark photo of the {}.", "a photo of the {} for visual inspection.",
             "a photo of a {} for anomaly detection.", "a blurry photo of the {}."]


def self_distances(
    tokens: torch.Tensor, grid: tuple[int, int], fracs=(0.0, 0.03, 0.1), exclude: int = 1
) -> torch.Tensor:
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
