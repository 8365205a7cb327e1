"""Where and how big, in words: the 3x3 position grid, size words, percentages, articles."""

from __future__ import annotations

import numpy as np

POSITION_WORDS = [
    ["top left", "top", "top right"],
    ["left", "center", "right"],
    ["bottom left", "bottom", "bottom right"],
]  # 3x3 grid words, indexed [row][col] from the mask centroid

SIZE_WORDS = [(0.005, "tiny"), (0.02, "small"), (0.08, "medium"), (1.01, "large")]  # area fraction upper bounds


def position_word(cy: float, cx: float) -> str:
    """Grid word of a point given as fractions (0..1) of height and width."""
    r = min(int(cy * 3), 2)
    c = min(int(cx * 3), 2)
    return POSITION_WORDS[r][c]


def position_phrase(pos: str) -> str:
    """'top left' -> 'in the top left'; 'top' -> 'at the top'; 'left' -> 'on the left'; 'center' -> 'in the center'."""
    if pos in ("top", "bottom"):
        return f"at the {pos}"
    if pos in ("left", "right"):
        return f"on the {pos}"
    return f"in the {pos}"


def size_word(area_fraction: float) -> str:
    """Size word of an area fraction (0..1) of the image."""
    for bound, word in SIZE_WORDS:
        if area_fraction < bound:
            return word
    return SIZE_WORDS[-1][1]


def mask_position(mask: np.ndarray) -> str | None:
    """Grid word of the ground-truth mask centroid (None for an empty mask)."""
    if mask is None or not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    return position_word(ys.mean() / mask.shape[0], xs.mean() / mask.shape[1])


def percent(area_fraction: float) -> str:
    """Rounded area percentage as written in every text: '0.4%', '3.2%', '12%'."""
    p = area_fraction * 100
    if p < 0.1:
        return "less than 0.1%"
    return f"{p:.1f}%" if p < 10 else f"{p:.0f}%"


def article(word: str) -> str:
    """'a' or 'an' before `word` (by its first letter)."""
    return "an" if word[:1].lower() in "aeiou" else "a"
