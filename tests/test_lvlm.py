"""LVLM composition on tiny random models: sequence assembly, placeholder replacement, padding, LoRA round trip,
generation/streaming, the LLaVA mapping and a loss that goes down."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from assistant.config import load_config
from assistant.constants import IGNORE_INDEX, IMAGE_TOKEN, LOOK_TOKEN, PROMPT_TOKEN, REF_TOKEN
from assistant.expert import AnomalyResult
from assistant.lvlm import LVLM, LVLMOutput, build_lvlm, image_features, pool_patch_tokens, visual_inputs
from tests.tiny import perturb_trainable


def tiny_cfg(**over):
    cfg = load_config("tiny", [f"{k}={v}" for k, v in over.items()])
    return cfg


def make_image(seed: int = 0, size: tuple[int, int] = (40, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def make_result(h: int = 48, w: int = 40, anomalous: bool = True) -> AnomalyResult:
    m = np.zeros((h, w), bool)
    if anomalous:
        m[4:14, 24:36] = True  # top right
    amap = (np.random.default_rng(1).random((h, w)) * 0.5 + 2.0 * m).astype(np.float32)
    return AnomalyResult(anomaly_map=amap, pred_score=float(amap.max()), pred_label=anomalous, pred_mask=m,
                         threshold=1.0, pixel_threshold=1.0)


@pytest.fixture(scope="module")
def tower():
    from assistant.vision import build_vision_tower

    return build_vision_tower(tiny_cfg().vision)


@pytest.fixture()
def model(tiny_lm_dir, tower):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = tiny_cfg()
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    return build_lvlm(cfg, tower, lm=lm, tokenizer=tok)


def visuals(model: LVLM, tower, n_refs: int = 2, anomalous: bool = True):
    img = make_image()
    res = make_result(anomalous=anomalous)
    refs = [make_image(s) for s in range(1, n_refs + 1)]
    r_out = tower.encode(refs) if refs else None
    feats = image_features(tower, tower.encode([img]), model.pool, img, res.anomaly_map, r_out)
    return visual_inputs(feats, res)


def test_pool_patch_tokens_shapes_and_error():
    toks = [torch.randn(2, 16, 3), torch.randn(2, 16, 5)]
    out = pool_patch_tokens(toks, (4, 4), 2)
    assert out.shape == (2, 4, 8)
    assert torch.allclose(out[0, 0, :3], toks[0][0].view(4, 4, 3)[:2, :2].mean((0, 1)), atol=1e-6)
    with pytest.raises(ValueError, match="expected 5x5=25 tokens per image, got 16"):
        pool_patch_tokens(toks, (5, 5), 2)


def test_sequence_counts_masks_and_ignore_index(model, tower):
    v = visuals(model, tower, n_refs=2)
    turns = [("Is there any anomaly?", "Yes, at the top right."), ("How big?", "It is small.")]
    ids, labels = model.tokenize(model.messages(2, v.evidence, turns))
    def count(t):
        return int((ids == model.processor.token_ids[t]).sum())

    assert count(REF_TOKEN) == 2 * model.n_image == v.refs.shape[0] * v.refs.shape[1]
    assert count(IMAGE_TOKEN) == model.n_image == v.query.shape[0]
    assert count(LOOK_TOKEN) == model.n_look == model.cfg.lvlm.n_look_twice + 1 + 1  # queries + global + crop
    assert count(PROMPT_TOKEN) == model.n_prompt == 2 * model.cfg.lvlm.n_prompts
    supervised = model.tokenizer.decode(ids[labels != IGNORE_INDEX])
    assert "Yes, at the top right." in supervised and "It is small." in supervised
    assert "anomaly?" not in supervised and "How big" not in supervised  # user turns are not supervised
    assert (labels[labels != IGNORE_INDEX] == ids[labels != IGNORE_INDEX]).all()
    placeholder = torch.isin(ids, torch.tensor(model.processor.suppress_ids))
    assert (labels[placeholder] == IGNORE_INDEX).all()
    # the evidence sentence is in the prompt
    assert "Expert evidence: slightly suspicious features; location: top right" in model.tokenizer.decode(ids) or \
        "location: top right" in model.tokenizer.decode(ids)
    _, mask, batch_labels = model.collate([(ids, labels), (ids[:50], labels[:50])])
    assert mask.sum(1).tolist() == [ids.numel(), 50]
    assert (batch_labels[1, 50:] == IGNORE_INDEX).all()
    left_ids, left_mask, _ = model.collate([(ids, labels), (ids[:50], labels[:50])], left=True)
    assert left_mask[1, :ids.numel() - 50].sum() == 0 and left_ids[1, -1] == ids[49]


def test_placeholders_replaced_by_features(model, tower):
    v = visuals(model, tower, n_refs=1)
    ids, _ = model.tokenize(model.messages(1, v.evidence, [("Any defect?", None)]), add_generation_prompt=True)
    with torch.no_grad():
        emb = model.embed(ids[None], [v])[0]
        expected = model.heads.projector(v.query)
    pos = ids == model.processor.token_ids[IMAGE_TOKEN]
    assert torch.allclose(emb[pos], expected, atol=1e-6)
    text_pos = ~torch.isin(ids, torch.tensor(model.processor.suppress_ids))
    assert torch.equal(emb[text_pos], model.lm.get_input_embeddings()(ids)[text_pos])


def test_count_mismatch_names_counts(model, tower):
    v = visuals(model, tower, n_refs=2)
    ids, _ = model.tokenize(model.messages(1, v.evidence, [("Any defect?", None)]), add_generation_prompt=True)
    with pytest.raises(ValueError, match=rf"{model.n_image} '<ref>' tokens but {2 * model.n_image} feature vectors"):
        model.embed(ids[None], [v])
    with pytest.raises(ValueError, match="1 sequences but 2 visual inputs"):
        model.embed(ids[None], [v, v])


def test_left_padded_batch_equals_single(model, tower):
    v2, v0 = visuals(model, tower, n_refs=2), visuals(model, tower, n_refs=0, anomalous=False)
    with torch.no_grad():
        e, m = model.prompt_batch([v2, v0], ["Is there any anomaly?", "Where?"])
        batched = model.lm(inputs_embeds=e, attention_mask=m).logits[:, -1]
        e0, m0 = model.prompt_batch([v0], ["Where?"])
        single = model.lm(inputs_embeds=e0, attention_mask=m0).logits[:, -1]
    assert m[1].sum() < m[0].sum()  # the zero-shot prompt is shorter, hence padded
    assert torch.allclose(batched[1], single[0], atol=1e-4)
    outs = model.generate([v2, v0], ["Is there any anomaly?", "Where?"], max_new_tokens=5)
    assert len(outs) == 2 and all(isinstance(o, str) for o in outs)
    assert outs[1] == model.generate([v0], ["Where?"], max_new_tokens=5)[0]


def test_stream_equals_generate(model, tower):
    v = visuals(model, tower, n_refs=1)
    streamed = "".join(model.stream(v, "Is there any anomaly?", max_new_tokens=6))
    assert streamed.strip() == model.generate([v], ["Is there any anomaly?"], max_new_tokens=6)[0]


def _perturb(model: LVLM) -> None:
    perturb_trainable(model, 3)


def test_lora_save_load_round_trip(model, tower, tiny_lm_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _perturb(model)
    v = visuals(model, tower, n_refs=1)
    with torch.no_grad():
        e, m = model.prompt_batch([v], ["Is there any anomaly?"])
        before = model.lm(inputs_embeds=e, attention_mask=m).logits
    model.save_pretrained(tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert "adapter_model.safetensors" in files and "lvlm_heads.safetensors" in files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    base_bytes = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_lm_dir).parameters()) * 4
    assert (tmp_path / "ckpt" / "adapter_model.safetensors").stat().st_size < base_bytes / 4  # adapters only
    fresh = build_lvlm(model.cfg, tower, lm=AutoModelForCausalLM.from_pretrained(tiny_lm_dir),
                       tokenizer=AutoTokenizer.from_pretrained(tiny_lm_dir), checkpoint=tmp_path / "ckpt")
    with torch.no_grad():
        e2, m2 = fresh.prompt_batch([v], ["Is there any anomaly?"])
        after = fresh.lm(inputs_embeds=e2, attention_mask=m2).logits
    assert torch.equal(e, e2)
    assert torch.allclose(before, after, atol=1e-6)
    assert fresh.generate([v], ["Where?"], max_new_tokens=6) == model.generate([v], ["Where?"], max_new_tokens=6)


def test_heads_checkpoint_mismatch_is_clear(model, tower, tiny_lm_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model.save_pretrained(tmp_path / "ckpt")
    cfg = tiny_cfg(**{"lvlm.n_prompts": 3})
    with pytest.raises(ValueError, match="does not fit this config"):
        build_lvlm(cfg, tower, lm=AutoModelForCausalLM.from_pretrained(tiny_lm_dir),
                   tokenizer=AutoTokenizer.from_pretrained(tiny_lm_dir), checkpoint=tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="lvlm_heads.safetensors"):
        model.load_heads(tmp_path / "nowhere")


def test_loss_on_supervised_positions_equals_full_loss(model, tower):
    vs = [visuals(model, tower, n_refs=1), visuals(model, tower, n_refs=0, anomalous=False)]
    turns = [[("Any anomaly?", "Yes, at the top right."), ("Size?", "Small.")], [("Any anomaly?", "No.")]]
    ids, mask, labels = model.collate([model.tokenize(model.messages(v.refs.shape[0], v.evidence, t))
                                       for v, t in zip(vs, turns)])
    with torch.no_grad():
        ours = model(ids, mask, vs, labels=labels).loss
        full = model.lm(inputs_embeds=model.embed(ids, vs), attention_mask=mask, labels=labels).loss
    assert torch.allclose(ours, full, atol=1e-5)
    with pytest.raises(ValueError, match="no supervised tokens"):
        model(ids, mask, vs, labels=torch.full_like(labels, IGNORE_INDEX))


def test_forward_returns_typed_output_with_the_verdict_logit(model, tower):
    """LVLMOutput carries the selector's verdict logit (B,), differentiable into the verdict head; the model keeps
    no per-call state."""
    vs = [visuals(model, tower, n_refs=1), visuals(model, tower, n_refs=0, anomalous=False)]
    turns = [[("Any anomaly?", "Yes.")], [("Any anomaly?", "No.")]]
    ids, mask, labels = model.collate([model.tokenize(model.messages(v.refs.shape[0], v.evidence, t))
                                       for v, t in zip(vs, turns)])
    out = model(ids, mask, vs, labels=labels)
    assert isinstance(out, LVLMOutput) and out.loss.dim() == 0 and out.verdict_logits.shape == (2,)
    with torch.no_grad():
        assert torch.allclose(out.verdict_logits, model.visual_embeddings(vs).verdict_logits)
        plain = model(ids, mask, vs)
    assert plain.loss is None and plain.logits.shape[:2] == ids.shape
    assert torch.allclose(plain.verdict_logits, out.verdict_logits)
    out.verdict_logits.sum().backward()
    assert model.heads.verdict.weight.grad is not None and model.heads.verdict.weight.grad.abs().sum() > 0
    assert not hasattr(model, "last_verdict_logits")
    with torch.no_grad():
        assert model(ids, mask, vs, labels=labels, output_verdict=False).verdict_logits is None


def test_training_steps_lower_the_loss(model, tower):
    """A few AdamW steps on a fixed tiny batch (heads + LoRA only) lower the LM loss on the answers."""
    vs = [visuals(model, tower, n_refs=1), visuals(model, tower, n_refs=0, anomalous=False)]
    turns = [[("Is there any anomaly?", "Yes, there is a crack at the top right.")],
             [("Is there any anomaly?", "No, the part looks normal.")]]
    seqs = [model.tokenize(model.messages(v.refs.shape[0], v.evidence, t)) for v, t in zip(vs, turns)]
    ids, mask, labels = model.collate(seqs)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(
        ("lora_" in n or n.startswith("heads.")) for n, p in model.named_parameters() if p.requires_grad
    )
    opt = torch.optim.AdamW(params, lr=2e-2)
    losses = []
    for _ in range(20):
        loss = model(ids, mask, vs, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2 and losses[-1] == pytest.approx(min(losses), abs=0.05), losses


def test_llava_mapping_matches_llava_modules():
    """Tiny random LlavaForConditionalGeneration: our causal LM and projector reproduce its LM and projector."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from assistant.lvlm import Projector, llava_parts

    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=120, max_position_embeddings=128)
    vision = CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8)
    llava = LlavaForConditionalGeneration(
        LlavaConfig(vision_config=vision, text_config=text, image_token_index=119)
    ).eval()
    lm, proj = llava_parts(llava)
    pj = Projector(24, 32, 32, input_norm=False)
    pj.load_state_dict(proj)
    x = torch.randn(3, 24)
    assert torch.allclose(pj(x), llava.model.multi_modal_projector(x), atol=1e-6)
    ids = torch.randint(0, 110, (2, 9))
    with torch.no_grad():
        ours = lm(input_ids=ids).logits
        theirs = llava(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_4bit_request_on_cpu_warns_and_loads(tiny_tokenizer_dir):
    from assistant.lvlm import load_language_model

    cfg = tiny_cfg(**{"lm.load_in_4bit": True})
    with pytest.warns(UserWarning, match="CUDA"):
        lm, _, proj = load_language_model(cfg)
    assert proj is None and lm.get_input_embeddings().weight.dtype == torch.float32


def test_llava_checkpoint_dir_loads_into_the_composition(tiny_tokenizer_dir, tmp_path):
    """A saved (tiny random) LLaVA dir: its LM and projector land in the LVLM; the projector has no extra norm."""
    from types import SimpleNamespace

    from transformers import (
        AutoTokenizer,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=512)
    vision = CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8)
    llava = LlavaForConditionalGeneration(
        LlavaConfig(vision_config=vision, text_config=text, image_token_index=0)
    ).eval()
    llava.save_pretrained(tmp_path / "llava")
    tok.save_pretrained(tmp_path / "llava")
    cfg = tiny_cfg(**{"lm.name": str(tmp_path / "llava"), "lvlm.projector_levels": "[1]"})
    tower = SimpleNamespace(level_dims=[16, 24], global_dim=24)  # only the 24-d level feeds the projector
    model = build_lvlm(cfg, tower)
    x = torch.randn(5, 24)
    with torch.no_grad():
        assert torch.allclose(model.heads.projector(x), llava.model.multi_modal_projector(x), atol=1e-5)
        ids = torch.randint(5, len(tok) - 10, (1, 7))
        ours = model.lm(input_ids=ids).logits[..., :len(tok)]  # placeholders were appended to the vocab
        assert torch.allclose(ours, llava(input_ids=ids).logits, atol=1e-5)
