"""Nearest-neighbour pieces of the expert: patch aggregation, distances to a memory bank, greedy coreset,
in-image nearest distances and the unit of a level's map."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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
    """Indices of n rows chosen by greedy k-center on a random projection (PatchCore's coreset). Each step's
    squared distances come from one matrix-vector product, |z|^2 - 2 z.z_i + |z_i|^2, into preallocated buffers:
    no (M, D) temporary per step."""
    if n >= x.shape[0]:
        return torch.arange(x.shape[0])
    g = torch.Generator().manual_seed(seed)
    z = x
    if x.shape[1] > proj_dim:
        z = x @ (torch.randn(x.shape[1], proj_dim, generator=g) / math.sqrt(proj_dim)).to(x)
    z = z.contiguous()
    sq = (z * z).sum(1)  # (M,)
    idx = [int(torch.randint(x.shape[0], (1,), generator=g))]
    dmin = ((z - z[idx[0]]) ** 2).sum(1)
    d = torch.empty_like(dmin)
    for _ in range(n - 1):
        i = int(dmin.argmax())
        idx.append(i)
        torch.mv(z, z[i], out=d)
        d.mul_(-2).add_(sq).add_(sq[i])
        torch.minimum(dmin, d, out=dmin)
    return torch.tensor(idx)


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


def normal_scale(d: torch.Tensor) -> float:
    """Typical held-out nearest-neighbour distance of a level (its median): the unit of its map. Where most held-out
    patches match exactly (binarised or flat images: median 0), the mean is used, so the unit is never ~0."""
    med, mean = float(d.median()), float(d.mean())
    return max(med if med > 0.05 * mean else mean, 1e-6)
