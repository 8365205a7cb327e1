"""Special tokens, ignore index and other shared constants (one place, as in LLaVA)."""

IGNORE_INDEX = -100  # label value ignored by the LM loss
IMAGE_TOKEN = "<image>"  # placeholder replaced by query-image embeddings
REF_TOKEN = "<ref>"  # placeholder replaced by reference-normal image embeddings
LOOK_TOKEN = "<look>"  # placeholder replaced by look-twice tokens
PROMPT_TOKEN = "<anomaly>"  # placeholder replaced by prompt-learner embeddings
SPECIAL_TOKENS = [IMAGE_TOKEN, REF_TOKEN, LOOK_TOKEN, PROMPT_TOKEN]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


