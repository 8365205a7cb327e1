"""Tiny random models for tests: a sentencepiece tokenizer trained in the test session + a tiny Llama.

    from tests.tiny import build_tiny_tokenizer, build_tiny_lm, TINY_LLAMA
    tok_dir = build_tiny_tokenizer(tmp_path / "tok")            # tokenizer.json + chat template
    model_dir = build_tiny_lm(tmp_path / "lm", tok_dir)          # random LlamaForCausalLM + tokenizer (safetensors)

Fixtures (session-scoped, registered in tests/conftest.py): `tiny_tokenizer_dir`, `tiny_tokenizer`,
`tiny_lm_dir`, `tiny_lm` (model, tokenizer). `tiny_tokenizer_dir` also sets INSPECTION_ASSISTANT_TINY_TOKENIZER
so `load_lm` with lm.name=tiny (configs/tiny.yaml) finds it without an explicit tokenizer_dir.
"""
from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

from assistant.lvlm.lm import CHATML_TEMPLATE
from assistant.wording import POSITION_WORDS, SIZE_WORDS

# Same fields as configs/tiny.yaml lm.tiny_cfg: hidden 32, 2 layers.
TINY_LLAMA = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 512}
TINY_VOCAB = 1000  # sentencepiece BPE vocab size upper bound (256 byte-fallback pieces + merges)
CHAT_MARKERS = ["<|im_start|>", "<|im_end|>"]  # ChatML markers, single pieces
CHAT_TEMPLATE = CHATML_TEMPLATE  # the SmolLM2 format, without a default system prompt

OBJECTS = ["bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal nut", "pill", "screw",
           "tile", "toothbrush", "transistor", "wood", "zipper", "part", "object", "fabric", "surface"]
DEFECTS = ["scratch", "crack", "hole", "stain", "dent", "contamination", "missing part", "bent lead", "cut",
           "fold", "color defect", "broken edge", "print error", "squeeze", "thread", "glue", "rough spot"]
QUESTIONS = ["Is anything wrong?", "Where is the defect?", "How big is it?", "Compare with the reference.",
             "Is this part good?", "What kind of defect is it?", "How severe is it?", "Describe the image."]


def generate_corpus(n: int = 600, seed: int = 0) -> list[str]:
    """Sentences with the words used in inspection questions and answers."""
    rng = random.Random(seed)
    positions = [w for row in POSITION_WORDS for w in row]
    sizes = [w for _, w in SIZE_WORDS]
    lines = list(QUESTIONS)
    for _ in range(n):
        obj, defect = rng.choice(OBJECTS), rng.choice(DEFECTS)
        pos, size = rng.choice(positions), rng.choice(sizes)
        score = rng.randint(0, 100)
        lines.append(rng.choice([
            f"Yes, there is a {size} {defect} at the {pos} of the {obj}.",
            f"No, the {obj} looks normal. No defect was found.",
            f"The anomaly score is {score} percent; the {obj} is {'defective' if score > 50 else 'good'}.",
            f"Compared with the reference image, the {obj} has a {defect} in the {pos} region.",
            f"The {defect} covers a {size} area, so the severity is {rng.choice(['low', 'medium', 'high'])}.",
            f"user: {rng.choice(QUESTIONS)} assistant: The {obj} has a {defect}.",
            f"system: You are a visual inspection assistant. The image shows a {obj}.",
        ]))
    return lines


def _merges(vocab: dict[str, int], skip: set[str]) -> list[tuple[str, str]]:
    """BPE merges from a sentencepiece BPE vocab: pieces in id order, every split into two known pieces."""
    merges = []
    for piece, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        if piece in skip or len(piece) < 2:
            continue
        splits = [(piece[:i], piece[i:]) for i in range(1, len(piece))
                  if piece[:i] in vocab and piece[i:] in vocab and piece[:i] not in skip and piece[i:] not in skip]
        merges.extend(sorted(splits, key=lambda lr: (vocab[lr[0]], vocab[lr[1]])))
    return merges


def build_tiny_tokenizer(out_dir: str | os.PathLike, vocab_size: int = TINY_VOCAB, seed: int = 0) -> Path:
    """Train a sentencepiece BPE model on a generated corpus, wrap it as a transformers Llama tokenizer
    with a ChatML chat template, save it to `out_dir` and return the path."""
    import sentencepiece as spm
    from transformers import AddedToken, LlamaTokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(generate_corpus(seed=seed)), model_writer=buf, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity", split_digits=True,
        user_defined_symbols=CHAT_MARKERS, unk_id=0, bos_id=1, eos_id=2, pad_id=3, pad_piece="<pad>",
        hard_vocab_limit=False, minloglevel=2, num_threads=1,
    )
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    special = {p for p, i in vocab.items() if sp.is_control(i) or sp.is_unknown(i) or p in CHAT_MARKERS}
    tok = LlamaTokenizer(vocab=vocab, merges=_merges(vocab, special), unk_token="<unk>", bos_token="<s>",
                         eos_token="<|im_end|>", pad_token="<pad>", add_prefix_space=True)
    tok.add_special_tokens({"additional_special_tokens": [AddedToken(m, special=True, normalized=False)
                                                          for m in CHAT_MARKERS]})
    tok.chat_template = CHAT_TEMPLATE
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    return out


def build_tiny_lm(out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike, seed: int = 0, **overrides) -> Path:
    """Random tiny LlamaForCausalLM sized to the tokenizer, saved with it (safetensors + config.json)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    cfg = LlamaConfig(**{**TINY_LLAMA, **overrides}, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    path = build_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))
    os.environ["INSPECTION_ASSISTANT_TINY_TOKENIZER"] = str(path)  # lets load_lm(name="tiny") find it
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"), tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir):
    """(model, tokenizer) loaded from tiny_lm_dir; eval mode, CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval(), AutoTokenizer.from_pretrained(tiny_lm_dir)


def perturb_trainable(model, seed: int) -> None:
    """Make an LVLM's adapters and heads non-trivial (LoRA B starts at zero), deterministically in `seed`."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n or n.startswith("heads."):
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


def part_image(seed: int, defect: bool = False):
    """A 32 px test part: one fixed texture plus per-seed noise; `defect` adds a dark square at the top right."""
    import numpy as np
    from PIL import Image

    base = (np.random.default_rng(0).random((32, 32, 3)) * 60 + 100).astype(np.uint8)
    img = base + np.random.default_rng(seed).integers(0, 6, base.shape, dtype=np.uint8)
    if defect:
        img[2:10, 22:30] = 10
    return Image.fromarray(img)
