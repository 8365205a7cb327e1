"""The defect-type classifier reading the tower's tokens over a region (expert/defect_type.py region_tokens,
tower_dims): the pooled tokens are the region's area-weighted patch cells per level; a classifier trained with them
saves and loads its tower widths, refuses tokens of another width naming both, and names nothing without them."""
import numpy as np
import pytest
import torch

from assistant.expert.defect_type import (
    VOCABULARY,
    TypeClassifier,
    TypeClassifierError,
    fit_probabilities,
    load_type_classifier,
    region_tokens,
)
from assistant.expert.describe import FEATURES, describe_box
from assistant.expert.result import Box
from assistant.vision.base import VisionOutput
from tests.test_describe import descriptor

DIMS = (3, 5)  # two tower levels


def vision_output(batch: int = 2, grid=(4, 4)) -> VisionOutput:
    n = grid[0] * grid[1]
    toks = [torch.arange(batch * n * c, dtype=torch.float32).view(batch, n, c) for c in DIMS]
    return VisionOutput(toks, torch.zeros(batch, 2), grid)


def test_region_tokens_average_the_cells_under_the_region_per_level():
    out = vision_output()
    region = np.zeros((32, 32), bool)
    region[0:8, 8:16] = True  # exactly patch cell (0, 1) of the 4x4 grid
    got = region_tokens(out, region, index=1)
    assert got.shape == (sum(DIMS),) and got.dtype == np.float32
    want = np.concatenate([out.patch_tokens[0][1, 1].numpy(), out.patch_tokens[1][1, 1].numpy()])
    assert got == pytest.approx(want)
    region[0:8, 16:24] = True  # two cells: their mean
    two = np.concatenate([t[0, 1:3].mean(0).numpy() for t in out.patch_tokens])
    assert region_tokens(out, region, index=0) == pytest.approx(two)
    dot = np.zeros((320, 320), bool)
    dot[250, 10] = True  # thinner than a cell at any resize: its cell (3, 0)
    assert region_tokens(out, dot) == pytest.approx(np.concatenate([t[0, 12].numpy() for t in out.patch_tokens]))


def test_tower_classifier_round_trip_and_refusals(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (40, len(FEATURES) + sum(DIMS))).astype(np.float32)
    y = np.repeat([0, 3], 20)
    x[y == 3, len(FEATURES):] += 4.0  # the types differ in the tokens only
    clf = fit_probabilities(x, y, VOCABULARY, tower_dims=DIMS)
    clf.threshold = 0.5
    clf.save(tmp_path)
    back = load_type_classifier(tmp_path)
    assert back.tower_dims == DIMS
    d = descriptor()
    tokens = np.full(sum(DIMS), 4.0, np.float32)
    back.name(d, tokens)
    assert d.defect_type == VOCABULARY[3]
    assert back.probabilities(d, tokens) == pytest.approx(clf.probabilities(d, tokens), abs=1e-6)
    with pytest.raises(TypeClassifierError, match=r"8 channels \(tower levels \[3, 5\]\), got \(4,\)"):
        back.name(descriptor(), np.zeros(4, np.float32))
    with pytest.raises(TypeClassifierError, match="got None"):
        back.name(descriptor())
    plain = TypeClassifier()
    assert plain.inputs(d, None).shape == (len(FEATURES),)  # a descriptor-only classifier ignores tokens


def test_describe_box_reads_the_region_tokens_or_leaves_the_type_unestimated():
    clf = TypeClassifier(threshold=0.0, tower_dims=DIMS)
    with torch.no_grad():
        clf.linear.weight.zero_()
        clf.linear.weight[2, len(FEATURES):] = 1.0  # "hole" grows with the tokens
    img = np.full((32, 32, 3), 150, np.uint8)
    img[10:14, 10:14] = 40
    region = np.zeros((32, 32), bool)
    region[9:15, 9:15] = True
    box = Box(9, 9, 15, 15, 2.0, 0.03)
    describe_box(box, img, region, classifier=clf, out=vision_output(), index=1)
    assert box.descriptor is not None and box.descriptor.defect_type == "hole"
    describe_box(box, img, region, classifier=clf)  # no tower output: measured, type not estimated
    assert box.descriptor.defect_type == "" and box.descriptor.type_probs == {}
