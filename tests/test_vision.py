"""Vision towers on tiny inputs: EfficientNet-Lite (random init, 32 px) and the tiny open_clip ViT."""
import numpy as np
import pytest
import torch
from PIL import Image

from assistant.config import VisionConfig, load_config
from assistant.constants import CLIP_MEAN
from assistant.vision import VisionOutput, WeightsNotFoundError, build_vision_tower
from assistant.vision.efficientnet import EfficientNetTower


def _images(n=2, size=40, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)) for _ in range(n)]


# ---------------------------------------------------------------- EfficientNet-Lite

@pytest.fixture(scope="module")
def effnet():
    return EfficientNetTower(
        VisionConfig(name="efficientnet-lite0", image_size=32, levels=[1, 2]), pretrained=False
    ).eval()


def test_efficientnet_shapes(effnet):
    out = effnet.encode(_images(2))
    assert isinstance(out, VisionOutput)
    assert out.grid == (4, 4)  # stride 8 at 32 px
    assert [tuple(t.shape) for t in out.patch_tokens] == [(2, 16, 40), (2, 16, 112)]  # lite0 channels
    assert effnet.level_dims == [40, 112] and out.dims == [40, 112]
    assert out.global_token.shape == (2, effnet.global_dim) == (2, 1280)
    with pytest.raises(ValueError, match="different channel counts"):
        out.stacked()
    assert effnet.source == "random init"


@pytest.mark.parametrize(("levels", "grid"), [([0], (8, 8)), ([2, 3], (2, 2)), ([0, 1, 2, 3], (8, 8))])
def test_efficientnet_levels(levels, grid):
    tower = EfficientNetTower(VisionConfig(name="efficientnet-lite0", image_size=32, levels=levels), pretrained=False)
    out = tower.encode(_images(1))
    assert out.grid == grid and len(out.patch_tokens) == len(levels)
    assert all(t.shape[1] == grid[0] * grid[1] for t in out.patch_tokens)


def test_efficientnet_bad_levels():
    with pytest.raises(ValueError, match=r"expected a non-empty subset of 0..3, got \[4\]"):
        EfficientNetTower(VisionConfig(name="efficientnet-lite0", image_size=32, levels=[4]), pretrained=False)


def test_efficientnet_missing_weights_file(tmp_path):
    cfg = VisionConfig(name="efficientnet-lite0", image_size=32, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsNotFoundError, match="missing.pth"):
        EfficientNetTower(cfg)


def test_efficientnet_batch_independent(effnet):
    imgs = _images(2)
    both, one = effnet.encode(imgs), effnet.encode(imgs[:1])
    torch.testing.assert_close(both.patch_tokens[0][:1], one.patch_tokens[0], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- open_clip tiny

@pytest.fixture(scope="module")
def clip_tower():
    return build_vision_tower(load_config("tiny").vision)


def test_openclip_tiny_shapes(clip_tower):
    out = clip_tower.encode(_images(3))
    assert out.grid == (4, 4)  # 32 px / patch 8
    assert out.stacked().shape == (3, 2, 16, 32)  # (B, L, N, C)
    assert clip_tower.level_dims == [32, 32] and clip_tower.global_dim == 32
    assert out.global_token.shape == (3, 32)
    assert clip_tower.mean == CLIP_MEAN and clip_tower.source == "random init"
    assert not any(p.requires_grad for p in clip_tower.parameters())
    assert not torch.equal(out.patch_tokens[0], out.patch_tokens[1])  # two different blocks


def test_openclip_encode_text(clip_tower):
    emb = clip_tower.encode_text(["a photo of a flawless object", "a photo of a damaged object"])
    assert emb.shape == (2, 32)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(emb[0], emb[1])
    assert clip_tower.tokenizer(["x"]).shape == (1, 16)  # context length of the tiny config
    with pytest.raises(ValueError, match="non-empty list of strings"):
        clip_tower.encode_text("not a list")


def test_openclip_bad_level():
    cfg = load_config("tiny", ["vision.levels=[0, 2]"]).vision
    with pytest.raises(ValueError, match=r"block indices in 0..1, got \[0, 2\]"):
        build_vision_tower(cfg)


def test_openclip_bad_name():
    with pytest.raises(ValueError, match="expected openclip:<model>/<pretrained>"):
        build_vision_tower(VisionConfig(name="openclip:ViT-B-32"))
    with pytest.raises(ValueError, match="unknown open_clip model 'NoSuchNet'"):
        build_vision_tower(VisionConfig(name="openclip:NoSuchNet/none"))
    with pytest.raises(ValueError, match="'nosuchtag' is neither a pretrained tag of ViT-B-32"):
        build_vision_tower(VisionConfig(name="openclip:ViT-B-32/nosuchtag"))


def test_openclip_local_safetensors_roundtrip(clip_tower, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip_tower.model.state_dict().items()}, path)
    base = load_config("tiny").vision
    for cfg in (load_config("tiny", [f"vision.name=openclip:tiny/{path}"]).vision,
                load_config("tiny", [f"vision.weights={path}"]).vision):
        cfg.openclip_model_cfg = base.openclip_model_cfg
        tower = build_vision_tower(cfg)
        assert tower.source == str(path)
        x = clip_tower.preprocess(_images(1))
        torch.testing.assert_close(tower(x).patch_tokens[1], clip_tower(x).patch_tokens[1])


def test_openclip_missing_local_file(tmp_path):
    cfg = load_config("tiny", [f"vision.weights={tmp_path / 'nope.safetensors'}"]).vision
    with pytest.raises(WeightsNotFoundError, match=r"open_clip weights for tiny not found: .*nope\.safetensors"):
        build_vision_tower(cfg)


def test_openclip_missing_tag_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))  # an empty HF cache, whatever this machine has
    with pytest.raises(WeightsNotFoundError) as e:
        build_vision_tower(VisionConfig(name="openclip:ViT-B-32/openai", image_size=224, levels=[3]))
    msg = str(e.value)
    assert "ViT-B-32" in msg and "'openai'" in msg and "vision.weights" in msg and str(tmp_path) in msg


def test_openclip_tag_decides_quick_gelu(clip_tower, tmp_path, monkeypatch):
    """OpenAI CLIP weights need QuickGELU; a tag that says so builds the model with it, also from a local file."""
    import open_clip
    from open_clip.transformer import QuickGELU
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in clip_tower.model.state_dict().items()}, path)
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda m, t: {"quick_gelu": True} if t == "openai" else {})
    cfg = load_config("tiny", ["vision.name=openclip:tiny/openai", f"vision.weights={path}"]).vision
    tower = build_vision_tower(cfg)
    assert any(isinstance(m, QuickGELU) for m in tower.modules())
    assert not any(isinstance(m, QuickGELU) for m in clip_tower.modules())
