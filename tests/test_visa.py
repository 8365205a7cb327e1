"""VisA split-CSV loader and the plain kNN baseline (tiny config)."""
import numpy as np
import pytest
from PIL import Image

from assistant.evaluation.data import DatasetError, discover
from assistant.evaluation.data.visa import is_visa_root, load_visa


def _visa(root, rows):
    (root / "split_csv").mkdir(parents=True)
    lines = ["object,split,label,image,mask"]
    for obj, split, label, img, mask in rows:
        p = root / img
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 120 if label == "normal" else 250, np.uint8)).save(p)
        if mask:
            (root / mask).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.eye(32, dtype=np.uint8) * 3).save(root / mask)  # VisA masks hold small class ids
        lines.append(f"{obj},{split},{label},{img},{mask}")
    (root / "split_csv" / "1cls.csv").write_text("\n".join(lines) + "\n")


ROWS = [("candle", "train", "normal", "candle/Data/Images/Normal/0001.JPG", ""),
        ("candle", "train", "normal", "candle/Data/Images/Normal/0000.JPG", ""),
        ("candle", "test", "normal", "candle/Data/Images/Normal/0002.JPG", ""),
        ("candle", "test", "anomaly", "candle/Data/Images/Anomaly/000.JPG", "candle/Data/Masks/Anomaly/000.png"),
        ("pcb1", "train", "normal", "pcb1/Data/Images/Normal/0000.JPG", ""),
        ("pcb1", "test", "anomaly", "pcb1/Data/Images/Anomaly/000.JPG", "")]


def test_load_visa(tmp_path):
    _visa(tmp_path, ROWS)
    assert is_visa_root(tmp_path)
    cats = load_visa(tmp_path)
    assert [c.name for c in cats] == ["candle", "pcb1"]
    candle = cats[0]
    assert [p.split("/")[-1] for p in candle.train_good] == ["0000.JPG", "0001.JPG"]
    assert (candle.n_normal, candle.n_anomalous, candle.has_masks) == (1, 1, True)
    anomalous = next(it for it in candle.items if it.label == 1)
    assert anomalous.mask.endswith("Masks/Anomaly/000.png") and anomalous.category == "candle"
    assert cats[1].has_masks is False  # an anomaly without a mask: image metrics only
    assert [c.name for c in load_visa(tmp_path, categories=["pcb1"])] == ["pcb1"]
    assert [c.name for c in discover([tmp_path])] == ["candle", "pcb1"]  # --data ROOT works for VisA too


def test_visa_errors(tmp_path):
    with pytest.raises(DatasetError, match="split_csv/1cls.csv"):
        load_visa(tmp_path)
    _visa(tmp_path, ROWS)
    with pytest.raises(DatasetError, match=r"no rows for object\(s\) \['fryum'\]"):
        load_visa(tmp_path, categories=["fryum"])
    (tmp_path / ROWS[0][3]).unlink()
    with pytest.raises(DatasetError, match=r"1cls.csv:2: image .*0001.JPG not found"):
        load_visa(tmp_path)
    (tmp_path / "split_csv" / "1cls.csv").write_text("object,image\ncandle,x.png\n")
    with pytest.raises(DatasetError, match=r"missing \['split', 'label', 'mask'\]"):
        load_visa(tmp_path)


def test_knn_baseline_flags_a_bright_defect(tmp_path):
    from assistant.evaluation.expert.baselines import KNN_OVERRIDES, build_knn_baseline

    rng = np.random.default_rng(0)
    good = (rng.random((32, 32, 3)) * 30 + 100).astype(np.uint8)
    bad = good.copy()
    bad[4:20, 4:20] = 255
    Image.fromarray(good).save(tmp_path / "ref.png")
    Image.fromarray(np.roll(good, 1, axis=1)).save(tmp_path / "ok.png")
    Image.fromarray(bad).save(tmp_path / "bad.png")
    det = build_knn_baseline("tiny")
    assert (
        det.cfg.expert.zero_shot is False
        and det.cfg.expert.neighbourhood == 1
        and "expert.score_topk=0" in KNN_OVERRIDES
    )
    r_ok = det(str(tmp_path / "ok.png"), [str(tmp_path / "ref.png")])
    r_bad = det(str(tmp_path / "bad.png"), [str(tmp_path / "ref.png")])
    assert r_bad.anomaly_map.shape == (32, 32)
    assert r_bad.pred_score > r_ok.pred_score
    assert r_bad.pred_score == pytest.approx(float(r_bad.anomaly_map.max()), rel=1e-5)  # max of the map
    with pytest.raises(ValueError, match="needs reference images"):
        det(str(tmp_path / "ok.png"), [])
