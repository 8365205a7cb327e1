"""Evaluation plots: ROC curves and the best/worst qualitative grids (tiny generated data)."""
import numpy as np
import pytest
from PIL import Image

from assistant.evaluation.plots import Case, plot_roc, qualitative_grid


def _png(path, value, size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full((size, size, 3), 110, np.uint8)
    a[4:12, 4:12] = value
    Image.fromarray(a).save(path)


def test_roc_and_grid(tmp_path):
    p = plot_roc({"a": ([0, 1, 0, 1], [0.1, 0.9, 0.3, 0.4]), "one class": ([1, 1], [0.2, 0.3])}, tmp_path / "roc.png")
    assert p is not None and Image.open(p).size[0] > 100
    assert plot_roc({"x": ([0, 0], [0.1, 0.2])}, tmp_path / "none.png") is None
    _png(tmp_path / "q.png", 250)
    m = np.zeros((32, 32), np.uint8)
    m[4:12, 4:12] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    cases = [
        Case(str(tmp_path / "q.png"), str(tmp_path / "m.png"), np.random.rand(8, 8), 0.5, "answer\nline 2", "best"),
        Case(str(tmp_path / "q.png"), None, None, 0.0, "no map", "worst"),
    ]
    out = qualitative_grid(cases, tmp_path / "grid.png")
    assert Image.open(out).size[1] > 400  # one row per case (2 rows)
    with pytest.raises(ValueError, match="at least one case"):
        qualitative_grid([], tmp_path / "empty.png")


def test_expert_grid_on_a_tiny_folder(tmp_path):
    from assistant.config import load_config
    from assistant.evaluation.data import discover
    from assistant.evaluation.expert.baselines import KNNBaseline
    from assistant.evaluation.expert.report import expert_grid
    from assistant.evaluation.expert.runner import evaluate

    cat = tmp_path / "widget"
    for i in range(2):
        _png(cat / "train/good" / f"{i}.png", 110)
        _png(cat / "test/good" / f"{i}.png", 110)
        _png(cat / "test/spot" / f"{i}.png", 255)
    det = KNNBaseline(load_config("tiny", ["expert.zero_shot=false", "expert.checkpoint=null"]))
    cats = discover([cat])
    results = evaluate(det.expert, det.tower, cats, shots=1, seeds=[0], pixel=False)
    out = expert_grid(det.expert, det.tower, cats, results, 1, tmp_path / "qualitative.png", n=2)
    assert out is not None and out.exists()
    assert Image.open(out).size[1] > 400  # 4 rows: 2 best + 2 worst
