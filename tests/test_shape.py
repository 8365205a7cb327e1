"""The shape of a golden-template change (expert/shape.py) on drawn material: each shape from its own case."""
import cv2
import numpy as np
import pytest

from assistant.expert.shape import SHAPES, change_shape, material_masks
from assistant.wording import PCB_SHAPES, PCB_TYPES, SHAPE_PHRASES

IDENTITY = np.array([[1, 0, 0], [0, 1, 0]], np.float32)


def traces() -> np.ndarray:
    """Dark material on a bright substrate, grey in [0, 1] at 256 px: two parallel traces and a large pad."""
    g = np.full((256, 256), 0.9, np.float32)
    cv2.rectangle(g, (20, 60), (230, 70), 0.1, -1)  # trace A
    cv2.rectangle(g, (20, 90), (230, 100), 0.1, -1)  # trace B, 20 px below A
    cv2.rectangle(g, (60, 150), (200, 230), 0.1, -1)  # a pad
    return g


CASES = {  # shape -> (polarity, how the query differs from the reference, box x0, y0, x1, y1)
    "cut": ("missing", lambda g: cv2.rectangle(g, (120, 55), (126, 75), 0.9, -1), (116, 52, 130, 78)),
    "gone": ("missing", lambda g: cv2.rectangle(g, (60, 150), (200, 230), 0.9, -1), (56, 146, 204, 234)),
    "hole": ("missing", lambda g: cv2.circle(g, (130, 190), 6, 0.9, -1), (122, 182, 138, 198)),
    "bite": ("missing", lambda g: cv2.circle(g, (100, 150), 7, 0.9, -1), (92, 142, 108, 158)),
    "bridge": ("extra", lambda g: cv2.rectangle(g, (150, 70), (156, 90), 0.1, -1), (146, 68, 160, 92)),
    "isolated": ("extra", lambda g: cv2.circle(g, (40, 125), 6, 0.1, -1), (32, 117, 48, 133)),
    "protrusion": ("extra", lambda g: cv2.rectangle(g, (100, 101), (106, 112), 0.1, -1), (96, 100, 110, 116)),
}


@pytest.mark.parametrize("shape", list(CASES))
def test_each_shape_is_named_from_its_own_change(shape):
    change, draw, box = CASES[shape]
    ref = traces()
    query = ref.copy()
    draw(query)
    rm, qm = material_masks(ref, query, IDENTITY, bright=False)
    assert change_shape(rm, qm, box, change) == shape


def test_lighting_and_a_small_shift_do_not_change_the_shape():
    change, draw, box = CASES["cut"]
    ref = traces()
    query = ref.copy()
    draw(query)
    query = np.clip(0.8 * query + 0.1, 0, 1).astype(np.float32)  # a dimmer, flatter shot
    warp = np.array([[1, 0, 1.5], [0, 1, -1.0]], np.float32)  # query pixel (x, y) -> reference (x + 1.5, y - 1)
    query = cv2.warpAffine(query, warp, (256, 256), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REPLICATE)
    rm, qm = material_masks(ref, query, warp, bright=False)
    assert change_shape(rm, qm, box, change) == "cut"


def test_no_shape_for_altered_or_unchanged_regions():
    ref = traces()
    rm, qm = material_masks(ref, ref.copy(), IDENTITY, bright=False)
    assert change_shape(rm, qm, (116, 52, 130, 78), "missing") == ""  # nothing was lost
    assert change_shape(rm, qm, (116, 52, 130, 78), "altered") == ""


def test_bright_material_reverses_the_polarity_of_the_same_drawing():
    """With the substrate taken as the material, a cut trace is a bridge of the substrate between its two sides."""
    change, draw, box = CASES["cut"]
    ref = traces()
    query = ref.copy()
    draw(query)
    rm, qm = material_masks(ref, query, IDENTITY, bright=True)
    assert change_shape(rm, qm, box, "extra") == "bridge"


def test_every_shape_has_words_and_the_pcb_types_keep_their_polarity():
    assert set(SHAPE_PHRASES) == set(SHAPES)
    missing = {"cut", "gone", "hole", "bite"}
    for shape, pcb_type in PCB_SHAPES.items():
        assert PCB_TYPES[pcb_type] == ("missing" if shape in missing else "extra")
    assert set(PCB_SHAPES.values()) == set(PCB_TYPES)
