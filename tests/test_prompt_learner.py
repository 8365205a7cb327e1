"""Prompt learner: map normalisation, output shapes, base prompts, sensitivity to the map, clear errors."""
import pytest
import torch

from assistant.lvlm import MAP_SIZE, PromptLearner, normalise_map


def test_normalise_map_scales_by_threshold_and_resizes():
    amap = torch.full((2, 40, 30), 2.0)
    x = normalise_map(amap, torch.tensor([2.0, 0.5]))
    assert x.shape == (2, 2, MAP_SIZE, MAP_SIZE)
    assert torch.allclose(x[0, 0], torch.ones(MAP_SIZE, MAP_SIZE))  # 2 / 2 = at the boundary
    assert torch.allclose(x[1, 0], torch.full((MAP_SIZE, MAP_SIZE), 4.0))  # 2 / 0.5 = 4, clipped at 4
    assert x[0, 1].sum() == 0 and x[1, 1].min() == 1  # no mask given: mask = map above threshold
    mask = torch.zeros(2, 40, 30, dtype=torch.bool)
    mask[:, :10] = True
    assert normalise_map(amap, 1.0, mask)[:, 1].mean() == pytest.approx(0.25, abs=0.02)


def test_normalise_map_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"expected \(B, H, W\), got shape \(40, 30\)"):
        normalise_map(torch.zeros(40, 30), 1.0)


def test_prompt_learner_shapes_and_base_prompts():
    pl = PromptLearner(hidden=32, n_prompts=9)
    x = normalise_map(torch.rand(3, 50, 50) * 2, 1.0)
    out = pl(x)
    assert out.shape == (3, 18, 32) and pl.n_tokens == 18
    assert torch.equal(out[:, :9], pl.base.unsqueeze(0).expand(3, -1, -1))  # learnable base prompts first
    assert not torch.allclose(out[0, 9:], out[1, 9:])  # map prompts depend on the map


def test_prompt_learner_sees_where_the_defect_is():
    pl = PromptLearner(hidden=16, n_prompts=2)
    a, b = torch.zeros(1, 64, 64), torch.zeros(1, 64, 64)
    a[:, :16, :16] = 3.0  # top left
    b[:, -16:, -16:] = 3.0  # bottom right
    pa, pb = pl(normalise_map(a, 1.0)), pl(normalise_map(b, 1.0))
    assert not torch.allclose(pa[:, 2:], pb[:, 2:], atol=1e-5)


def test_prompt_learner_gradients_and_errors():
    pl = PromptLearner(hidden=8, n_prompts=3)
    pl(normalise_map(torch.rand(2, 64, 64), 0.5)).sum().backward()
    assert all(p.grad is not None for p in pl.parameters())
    with pytest.raises(ValueError, match=r"expected \(B, 2, S, S\) from normalise_map, got \(2, 1, 64, 64\)"):
        pl(torch.zeros(2, 1, 64, 64))
    with pytest.raises(ValueError, match="n_prompts: expected >= 1, got 0"):
        PromptLearner(hidden=8, n_prompts=0)
