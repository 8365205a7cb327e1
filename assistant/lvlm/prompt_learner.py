"""Prompt learner: the expert's anomaly map -> prompt embeddings in the LM's hidden size (AnomalyGPT idea).

A small conv stack reads the map (normalised by the calibrated threshold, so 1.0 = decision boundary) and the
predicted mask, and produces `n_prompts` embeddings; `n_prompts` learnable base prompts are prepended.
Output: (B, 2 * n_prompts, hidden).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from assistant.lvlm.features import MAP_SIZE


def normalise_map(anomaly_map: torch.Tensor, threshold: torch.Tensor | float, mask: torch.Tensor | None = None,
                  size: int = MAP_SIZE) -> torch.Tensor:
    """(B, H, W) map + per-image threshold (+ mask) -> (B, 2, size, size) conv input.

    Channel 0: map / threshold clipped to [0, 4] (1 = calibrated boundary); channel 1: predicted mask (0/1).
    """
    if anomaly_map.dim() != 3:
        raise ValueError(f"anomaly_map: expected (B, H, W), got shape {tuple(anomaly_map.shape)}")
    thr = torch.as_tensor(threshold, dtype=anomaly_map.dtype, device=anomaly_map.device).reshape(-1, 1, 1)
    x = (anomaly_map / thr.abs().clamp_min(1e-8)).clamp(0, 4).unsqueeze(1)  # (B, 1, H, W)
    m = (mask.to(anomaly_map.dtype).unsqueeze(1) if mask is not None else (x > 1).to(x.dtype))
    x = torch.cat([x, m], dim=1)  # (B, 2, H, W)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="area")
    return x


class PromptLearner(nn.Module):
    def __init__(self, hidden: int, n_prompts: int = 9, channels: tuple[int, ...] = (16, 32, 64),
                 bottleneck: int = 128):
        super().__init__()
        if n_prompts < 1:
            raise ValueError(f"n_prompts: expected >= 1, got {n_prompts}")
        self.hidden, self.n_prompts = hidden, n_prompts
        layers, c_in = [], 2
        for c in channels:  # each block halves the side: 64 -> 32 -> 16 -> 8
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(1, c), nn.GELU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(3)  # 3x3 cells keep coarse position information
        self.head = nn.Sequential(nn.Linear(c_in * 9, bottleneck), nn.GELU(),
                                  nn.Linear(bottleneck, n_prompts * hidden))
        self.base = nn.Parameter(torch.randn(n_prompts, hidden) * 0.02)  # learnable base prompts

    @property
    def n_tokens(self) -> int:
        return 2 * self.n_prompts

    def forward(self, map_input: torch.Tensor) -> torch.Tensor:
        """(B, 2, S, S) from `normalise_map` -> (B, 2 * n_prompts, hidden)."""
        if map_input.dim() != 4 or map_input.shape[1] != 2:
            raise ValueError(f"prompt learner input: expected (B, 2, S, S) from normalise_map, "
                             f"got {tuple(map_input.shape)}")
        b = map_input.shape[0]
        f = self.pool(self.convs(map_input)).flatten(1)  # (B, C * 9)
        prompts = self.head(f).view(b, self.n_prompts, self.hidden)  # (B, n, D)
        base = self.base.unsqueeze(0).expand(b, -1, -1).to(prompts.dtype)  # (B, n, D)
        return torch.cat([base, prompts], dim=1)  # (B, 2n, D)
