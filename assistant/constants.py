"""Special tokens, ignore index and other shared constants (one place, as in LLaVA)."""

IGNORE_INDEX = -100  # label value ignored by the LM loss
IMAGE_TOKEN = "<image>"  # placeholder replaced by query-image embeddings
REF_TOKEN = "<ref>"  # placeholder replaced by reference-normal image embeddings
LOOK_TOKEN = "<look>"  # placeholder replaced by look-twice tokens
PROMPT_TOKEN = "<anomaly>"  # placeholder replaced by prompt-learner embeddings
SPECIAL_TOKENS = [IMAGE_TOKEN, REF_TOKEN, LOOK_TOKEN, PROMPT_TOKEN]

POSITION_WORDS = [
    ["top left", "top", "top right"],
    ["left", "center", "right"],
    ["bottom left", "bottom", "bottom right"],
]  # 3x3 grid words, indexed [row][col] from the mask centroid

SIZE_WORDS = [(0.005, "tiny"), (0.02, "small"), (0.08, "medium"), (1.01, "large")]  # area fraction upper bounds

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
    for bound, word in SIZE_WORDS:
        if area_fraction < bound:
            return word
    return SIZE_WORDS[-1][1]
