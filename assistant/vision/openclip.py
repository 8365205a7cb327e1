"""open_clip tower: `openclip:<model>/<pretrained>`, any open_clip model name.

<pretrained> is an open_clip tag (`openai`, `laion2b_s32b_b82k`, ... read from the HF cache, offline-safe),
a local checkpoint file (`openclip:ViT-B-32//path/to/open_clip_model.safetensors`; safetensors preferred,
.pt/.bin are read with weights_only=True), or `none` (random init, for tests). VisionConfig.weights, when
set, overrides the tag with a local file (the tag still decides QuickGELU, e.g. for `openai`).
VisionConfig.openclip_model_cfg registers a custom model config under <model>
(configs/tiny.yaml: a 2-layer ViT with width 32).

Levels are transformer block indices (0-based); their patch tokens come from `forward_intermediates`
(class token dropped) on the (image_size / patch) grid. The global token is the projected image embedding
(not normalised). The text tower stays: `encode_text(texts) -> (T, D)` L2-normalised, and `tokenizer`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from assistant.constants import CLIP_MEAN, CLIP_STD
from assistant.vision.base import VisionOutput, VisionTower, WeightsNotFoundError


def parse_name(name: str) -> tuple[str, str]:
    """'openclip:ViT-B-32/openai' -> ('ViT-B-32', 'openai'); the part after the first '/' may be a path."""
    spec = name.removeprefix("openclip:")
    model, sep, pretrained = spec.partition("/")
    if not model or not sep or not pretrained:
        raise ValueError(f"vision.name '{name}': expected openclip:<model>/<pretrained> with pretrained a tag, "
                         f"a local checkpoint file or 'none' (e.g. openclip:ViT-L-14-336/openai)")
    return model, pretrained


def register_model_config(model: str, model_cfg: dict) -> None:
    """Make a custom open_clip model config (embed_dim, vision_cfg, text_cfg) available under `model`."""
    import open_clip

    missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(model_cfg)
    if missing:
        raise ValueError(f"vision.openclip_model_cfg for '{model}': missing keys {sorted(missing)} "
                         f"(expected embed_dim, vision_cfg, text_cfg as in open_clip's model_configs/*.json)")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{model}.json"
        path.write_text(json.dumps(model_cfg))
        open_clip.add_model_config(path)  # read now, kept in open_clip's registry


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs misses and random init on the root logger; our own messages say it better."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def _hf_cache() -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return HF_HUB_CACHE


def create_model(cfg, model_name: str, pretrained: str):
    """(open_clip model, where its weights came from) for vision.name / vision.weights: a local checkpoint file, a
    random init (`<model>/none`) or a pretrained tag from the Hugging Face cache; WeightsNotFoundError naming where
    it looked and how to provide them when they are absent (never a download attempt that hangs offline)."""
    import open_clip

    ckpt = cfg.weights or (pretrained if pretrained.lower() != "none" and _is_pathlike(pretrained) else None)
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}  # {} unless pretrained is a known tag
    # OpenAI weights were trained with QuickGELU: build the model to match the tag (also for vision.weights)
    common = {
        "force_image_size": cfg.image_size,
        "device": "cpu",
        "force_quick_gelu": bool(tag_cfg.get("quick_gelu")),
    }
    if ckpt is not None:
        path = Path(ckpt).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"open_clip weights for {model_name} not found: {path} is not a file (from "
                f"{'vision.weights' if cfg.weights else 'vision.name'}). Expected an open_clip checkpoint "
                f"(.safetensors preferred).")
        with _quiet_open_clip():
            model = open_clip.create_model(model_name, pretrained=str(path), **common)
        source = str(path)
    elif pretrained.lower() == "none":
        with _quiet_open_clip():
            model = open_clip.create_model(model_name, pretrained=None, **common)
        source = "random init"
    else:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise ValueError(f"vision.name '{cfg.name}': '{pretrained}' is neither a pretrained tag of "
                             f"{model_name} ({', '.join(tags) or 'none known'}), an existing file, nor 'none'")
        try:
            with _quiet_open_clip():
                model = open_clip.create_model(model_name, pretrained=pretrained, **common)
        except (RuntimeError, OSError) as e:  # hub/url misses surface as RuntimeError from open_clip
            where = tag_cfg.get("hf_hub") or tag_cfg.get("url") or "?"
            raise WeightsNotFoundError(
                f"open_clip weights for {model_name} / '{pretrained}' not found"
                f"{' (offline: HF_HUB_OFFLINE=1)' if os.environ.get('HF_HUB_OFFLINE') else ''}. Looked in the "
                f"Hugging Face cache {_hf_cache()} and ~/.cache/clip for {where} "
                f'({str(e).splitlines()[0].split(" Last error")[0][:240]}). '
                'Provide them: run `python -c "import open_clip; '
                f"open_clip.create_model('{model_name}', pretrained='{pretrained}')\"` on a machine with "
                f"network and copy its HF cache, or save the weights as a local file and set "
                f"--set vision.weights=/path/to/{model_name}.safetensors"
            ) from None
        source = f"open_clip:{pretrained} ({tag_cfg.get('hf_hub') or tag_cfg.get('url', '')})"
    return model, source


class OpenCLIPTower(VisionTower):
    def __init__(self, cfg):
        super().__init__()
        import open_clip

        self.name = cfg.name
        self.image_size = cfg.image_size
        self.levels = list(cfg.levels)
        model_name, pretrained = parse_name(cfg.name)
        if cfg.openclip_model_cfg:
            register_model_config(model_name, cfg.openclip_model_cfg)
        elif model_name not in open_clip.list_models():
            raise ValueError(f"vision.name '{cfg.name}': unknown open_clip model '{model_name}'; known models "
                             f"include {', '.join(open_clip.list_models()[:8])}, ... (open_clip.list_models()), "
                             f"or give vision.openclip_model_cfg")
        layers = (open_clip.get_model_config(model_name) or {}).get("vision_cfg", {}).get("layers")
        if isinstance(layers, int):  # check levels before building (and maybe loading) a large model
            self._check_levels(layers)
        t0 = time.perf_counter()
        self.model, self.source = create_model(cfg, model_name, pretrained)
        self.load_time = time.perf_counter() - t0
        self.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name, context_length=self.model.context_length)
        pre = getattr(self.model.visual, "preprocess_cfg", None) or {}
        self.mean = tuple(pre.get("mean", CLIP_MEAN))
        self.std = tuple(pre.get("std", CLIP_STD))
        visual = self.model.visual
        if not hasattr(visual, "transformer"):
            raise ValueError(f"{self.name}: only ViT open_clip towers are supported (got {type(visual).__name__})")
        self._check_levels(len(visual.transformer.resblocks))
        self._width = visual.transformer.width

    def _check_levels(self, n_blocks: int) -> None:
        if not self.levels or any(lv not in range(n_blocks) for lv in self.levels):
            raise ValueError(f"vision.levels for {self.name}: expected block indices in 0..{n_blocks - 1}, "
                             f"got {self.levels}")

    @property
    def level_dims(self) -> list[int]:
        return [self._width] * len(self.levels)

    @property
    def global_dim(self) -> int:
        return self.model.visual.output_dim

    def forward(self, pixels: torch.Tensor) -> VisionOutput:
        out = self.model.visual.forward_intermediates(pixels, indices=self.levels, output_fmt="NCHW")
        feats = out["image_intermediates"]  # L x (B, C, h, w)
        h, w = feats[0].shape[-2:]
        tokens = [f.flatten(2).transpose(1, 2) for f in feats]  # (B, C, h, w) -> (B, N, C)
        return VisionOutput(patch_tokens=tokens, global_token=out["image_features"], grid=(h, w))  # global (B, D)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(T, D) L2-normalised text embeddings in the image-embedding space."""
        if isinstance(texts, str) or not texts:
            raise ValueError(f"encode_text: expected a non-empty list of strings, got {texts!r}")
        ids = self.tokenizer(list(texts)).to(self.device)  # (T, context_length)
        return F.normalize(self.model.encode_text(ids), dim=-1)


def _is_pathlike(s: str) -> bool:
    return s.startswith(("/", "./", "../", "~")) or Path(s).suffix in (".safetensors", ".pt", ".pth", ".bin") \
        or Path(s).expanduser().is_file()
