"""The LVLM in the Hugging Face LLaVA shape: vision features + the expert's evidence -> a causal LM that answers.

    features.py        image-processor role: pooled tower features, second-look crop, evidence inputs
    look_twice.py      LookTwice: the suspicious-token selector
    prompt_learner.py  PromptLearner: the expert's map -> prompt embeddings
    processing.py      LVLMProcessor: system prompt, chat template, tokenise / collate
    generation.py      batched generation and streaming from input embeddings
    lm.py              causal LM loading (packaged SmolLM2 GGUF, HF ids and dirs, tiny test models)
    loading.py         LoRA, the LLaVA mapping, checkpoint IO (safetensors + json, never pickle)
    modeling.py        Projector, LVLMHeads, LVLMOutput, LVLM, build_lvlm
"""
from assistant.lvlm.features import (
    MAP_SIZE,
    ImageFeatures,
    VisualInputs,
    crop_side,
    image_features,
    pool_patch_tokens,
    resize_map,
    suspicious_crop,
    visual_inputs,
)
from assistant.lvlm.generation import generate_text, generation_kwargs, stream_text
from assistant.lvlm.lm import WeightsNotFoundError, add_special_tokens, load_lm
from assistant.lvlm.loading import (
    ADAPTER_FILE,
    HEADS_CONFIG,
    HEADS_FILE,
    llava_parts,
    load_language_model,
    load_llava,
    wrap_lora,
)
from assistant.lvlm.look_twice import LookTwice
from assistant.lvlm.modeling import (
    LVLM,
    LVLMHeads,
    LVLMOutput,
    Projector,
    VisualEmbeddings,
    build_lvlm,
    feature_dims,
)
from assistant.lvlm.processing import FALLBACK_CHAT_TEMPLATE, SYSTEM_PROMPT, LVLMProcessor
from assistant.lvlm.prompt_learner import PromptLearner, normalise_map

__all__ = [
    "ADAPTER_FILE", "FALLBACK_CHAT_TEMPLATE", "HEADS_CONFIG", "HEADS_FILE", "LVLM", "MAP_SIZE", "SYSTEM_PROMPT",
    "ImageFeatures", "LVLMHeads", "LVLMOutput", "LVLMProcessor", "LookTwice", "Projector", "PromptLearner",
    "VisualEmbeddings", "VisualInputs", "WeightsNotFoundError", "add_special_tokens", "build_lvlm", "crop_side",
    "feature_dims", "generate_text", "generation_kwargs", "image_features", "llava_parts", "load_language_model",
    "load_llava", "load_lm", "normalise_map", "pool_patch_tokens", "resize_map", "stream_text", "suspicious_crop",
    "visual_inputs", "wrap_lora",
]
