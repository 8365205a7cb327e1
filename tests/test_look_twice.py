"""Look-twice selector: shapes, which tokens are picked, the zoom crop box, and the verdict in words."""
import numpy as np
import pytest
import torch

from assistant.expert import AnomalyResult, Box
from assistant.lvlm import LookTwice, suspicious_crop
from assistant.wording import evidence_text, percent, result_evidence


def test_output_shape_and_global_token_last():
    lt = LookTwice(dim=16, n_queries=4)
    tokens, sig, glob = torch.randn(2, 64, 16), torch.rand(2, 64), torch.randn(2, 16)
    out = lt(tokens, sig, glob)
    assert out.shape == (2, 5, 16) and lt.n_tokens == 5
    assert torch.equal(out[:, -1], glob)


def test_selects_the_most_significant_tokens():
    lt = LookTwice(dim=8, n_queries=2)
    sig = torch.zeros(1, 64)
    sig[0, [5, 9, 40, 41, 50, 63]] = torch.tensor([4.0, 3.5, 3.0, 2.5, 2.0, 1.5])
    idx = lt.select(sig)  # (1, Q, g)
    assert idx.shape[:2] == (1, 2)
    picked = idx.flatten().tolist()  # most suspicious first; the first query pools the top group
    assert picked[:6] == [5, 9, 40, 41, 50, 63]


def test_queries_follow_the_suspicious_region():
    """With the (zero-initialised) attention output, queries are the weighted mean of the top tokens."""
    torch.manual_seed(0)
    lt = LookTwice(dim=8, n_queries=1)
    tokens = torch.randn(1, 16, 8)
    sig = torch.zeros(1, 16)
    sig[0, 3] = 4.0
    a = lt(tokens, sig, torch.zeros(1, 8))
    sig2 = torch.zeros(1, 16)
    sig2[0, 12] = 4.0
    b = lt(tokens, sig2, torch.zeros(1, 8))
    assert not torch.allclose(a[:, 0], b[:, 0])


def test_shape_errors_are_clear():
    lt = LookTwice(dim=8, n_queries=2)
    with pytest.raises(ValueError, match=r"got \(1, 10, 8\), \(1, 9\), \(1, 8\)"):
        lt(torch.zeros(1, 10, 8), torch.zeros(1, 9), torch.zeros(1, 8))
    with pytest.raises(ValueError, match="n_queries: expected >= 1"):
        LookTwice(dim=8, n_queries=0)


def test_suspicious_crop_contains_the_maximum_and_stays_inside():
    amap = np.zeros((32, 32), np.float32)
    amap[2, 30] = 5.0  # near the top-right corner
    x0, y0, x1, y1 = suspicious_crop(amap, (200, 100))  # image W=200, H=100
    assert (x1 - x0, y1 - y0) == (100, 50)
    assert 0 <= x0 and x1 <= 200 and 0 <= y0 and y1 <= 100
    cx, cy = (30 + 0.5) / 32 * 200, (2 + 0.5) / 32 * 100
    assert x0 <= cx < x1 and y0 <= cy < y1
    with pytest.raises(ValueError, match="non-empty"):
        suspicious_crop(np.zeros((0, 4)), (10, 10))


def _result(mask: np.ndarray, score: float, thr: float = 1.0) -> AnomalyResult:
    amap = mask.astype(np.float32) * 2
    boxes = [Box(0, 0, 1, 1, 2.0, float(mask.mean()))] if mask.any() else []
    return AnomalyResult(anomaly_map=amap, pred_score=score, pred_label=score > thr, pred_mask=mask & (score > thr),
                         boxes=boxes, threshold=thr)


def test_evidence_words_state_verdict_location_and_size():
    assert evidence_text(False) == "Expert evidence: no suspicious features."
    mask = np.zeros((100, 100), bool)
    mask[5:15, 80:95] = True  # top right, 1.5% -> small
    text = result_evidence(_result(mask, 2.0))
    assert text == ("Expert evidence: highly suspicious features; location: top right; size: small, about 1.5% of "
                    "the image; regions: 1.")
    assert "slightly suspicious" in result_evidence(_result(mask, 1.1))
    assert result_evidence(_result(mask, 0.5)) == "Expert evidence: no suspicious features."
    assert percent(0.0004) == "less than 0.1%" and percent(0.123) == "12%"


def test_evidence_location_falls_back_to_the_map_maximum():
    amap = np.zeros((90, 90), np.float32)
    amap[80, 5] = 3.0  # bottom left
    res = AnomalyResult(anomaly_map=amap, pred_score=3.0, pred_label=True, pred_mask=np.zeros_like(amap, bool),
                        threshold=1.0)
    assert "location: bottom left" in result_evidence(res) and "size" not in result_evidence(res)
