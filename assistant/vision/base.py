"""Vision tower interface shared by all backbones.

encode(images) -> VisionOutput(patch_tokens: one (B, N, C_l) tensor per selected level, all on the
same (h, w) grid; global_token (B, C_g); grid (h, w)). CNN levels have different channel counts, so
levels are a list; `stacked()` gives (B, L, N, C) when the channels agree (ViTs).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from assistant.imaging import to_tensor


class WeightsNotFoundError(FileNotFoundError):
    """Model weights are missing; the message names the model, every place looked and how to provide them."""


@dataclass
class VisionOutput:
    patch_tokens: list[torch.Tensor]  # L tensors of (B, N, C_l), N = h * w
    global_token: torch.Tensor  # (B, C_g)
    grid: tuple[int, int]  # (h, w) of the patch grid

    def stacked(self) -> torch.Tensor:
        """(B, L, N, C); only when every level has the same channel count."""
        chans = {t.shape[-1] for t in self.patch_tokens}
        if len(chans) != 1:
            raise ValueError(f"levels have different channel counts {sorted(chans)}; use patch_tokens per level")
        return torch.stack(self.patch_tokens, dim=1)

    @property
    def dims(self) -> list[int]:
        return [t.shape[-1] for t in self.patch_tokens]


def cat_outputs(outs: Sequence[VisionOutput]) -> VisionOutput | None:
    """Concatenate VisionOutputs along the batch dimension (None for none)."""
    if not outs:
        return None
    levels = [torch.cat([o.patch_tokens[i] for o in outs], dim=0) for i in range(len(outs[0].patch_tokens))]
    return VisionOutput(levels, torch.cat([o.global_token for o in outs], dim=0), outs[0].grid)  # (B, N, C_l)


class VisionTower(nn.Module):
    """Base class: subclasses implement `forward(pixels) -> VisionOutput` on normalised tensors."""

    image_size: int
    mean: tuple
    std: tuple
    name: str
    source: str = ""  # where the weights came from (for doctor)

    def preprocess(self, images: list[Image.Image], size: int | None = None) -> torch.Tensor:
        """RGB PIL images -> normalised (B, 3, S, S) on the tower's device."""
        x = to_tensor(images, size or self.image_size, self.mean, self.std)
        return x.to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def train(self, mode: bool = True) -> VisionTower:
        """Towers are frozen feature extractors: always eval (BatchNorm/dropout), even inside a model in .train()."""
        return super().train(False)

    @torch.no_grad()
    def encode(self, images: list[Image.Image] | torch.Tensor) -> VisionOutput:
        x = images if isinstance(images, torch.Tensor) else self.preprocess(images)
        return self(x)

    @property
    def level_dims(self) -> list[int]:
        raise NotImplementedError

    @property
    def level_strides(self) -> list[int]:
        """Pixel stride of each selected level before resampling to the common grid (equal for ViT towers)."""
        return [1] * len(self.level_dims)

    @property
    def global_dim(self) -> int:
        raise NotImplementedError


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    return torch.device(spec)
