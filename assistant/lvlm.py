"""LLaVA-style composition: vision features -> projector (2-layer MLP, GELU) -> causal LM via inputs_embeds.

The first user turn is built with the LM's own chat template; single placeholder tokens (assistant.constants)
are replaced by embeddings:

    [reference-normal image tokens x k][query image tokens][look-twice tokens][prompt-learner tokens]
    [the expert's verdict in words][question]

Heads (projector, global projection, prompt learner, look-twice selector) are small nn.Modules saved as
`lvlm_heads.safetensors`; the LM carries a peft LoRA adapter saved as `adapter_model.safetensors`. Nothing
else is saved. Generation is batched with left padding; `stream` yields text chunks (TextIteratorStreamer).
"""
from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from assistant.anomaly.look_twice import LookTwice, suspicious_crop
from assistant.anomaly.prompt_learner import MAP_SIZE, PromptLearner, normalise_map
from assistant.constants import IGNORE_INDEX, IMAGE_TOKEN, LOOK_TOKEN, PROMPT_TOKEN, REF_TOKEN, SPECIAL_TOKENS
from assistant.lm import add_special_tokens, load_lm
from assistant.wording import result_evidence

HEADS_FILE = "lvlm_heads.safetensors"
HEADS_CONFIG = "lvlm_heads.json"
SYSTEM_PROMPT = "You are a visual inspection assistant. Answer truthfully from the images and the expert evidence."
# LLaVA-1.5 conversation format, used when a tokenizer ships without a chat template.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] + '\n' }}"
    "{% elif m['role'] == 'user' %}{{ 'USER: ' + m['content'] + '\n' }}"
    "{% else %}{{ 'ASSISTANT: ' + m['content'] + eos_token + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


# ----------------------------------------------------------------------------------------------- features
def pool_patch_tokens(patch_tokens: Sequence[torch.Tensor], grid: tuple[int, int], side: int,
                      levels: Sequence[int] | None = None) -> torch.Tensor:
    """Concatenate the selected levels' channels and average-pool the (h, w) grid to side x side.

    patch_tokens: L tensors (B, N, C_l) -> (B, side * side, sum C_l)."""
    toks = list(patch_tokens) if levels is None else [patch_tokens[i] for i in levels]
    x = torch.cat(toks, dim=-1)  # (B, N, C)
    b, n, c = x.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"patch tokens: expected {h}x{w}={h * w} tokens per image, got {n}")
    x = x.transpose(1, 2).reshape(b, c, h, w)
    x = F.adaptive_avg_pool2d(x.float(), side)  # (B, C, side, side)
    return x.flatten(2).transpose(1, 2)  # (B, side^2, C)


@dataclass
class ImageFeatures:
    """Pooled tower features of one query (+ its references); independent of the thresholds."""
    query: torch.Tensor  # (P, C) pooled query patch features, P = pool^2
    look: torch.Tensor  # (G, C) finer-pooled query features for the look-twice selector, G = (2 pool)^2
    global_token: torch.Tensor  # (C_g,) query global feature
    refs: torch.Tensor  # (k, P, C) pooled reference features; k may be 0
    crop: torch.Tensor | None  # (P2, C) pooled features of the zoomed suspicious crop (second look)


@dataclass
class VisualInputs(ImageFeatures):
    """ImageFeatures + the expert's map and verdict: everything the LVLM needs for one query."""
    anomaly_map: torch.Tensor = None  # (S, S) expert map resized to MAP_SIZE, raw score scale
    pred_mask: torch.Tensor = None  # (S, S) predicted mask resized to MAP_SIZE, 0/1 float
    threshold: float = 1.0  # calibrated image threshold (same scale as the map)
    evidence: str = ""  # the expert's verdict in words

    def to(self, device) -> VisualInputs:
        mv = lambda t: None if t is None else t.to(device)
        return VisualInputs(mv(self.query), mv(self.look), mv(self.global_token), mv(self.refs), mv(self.crop),
                            mv(self.anomaly_map), mv(self.pred_mask), self.threshold, self.evidence)


def crop_side(pool: int) -> int:
    """Tokens per side of the second-look crop (half the image grid, at least 1)."""
    return max(1, pool // 2)


@torch.no_grad()
def image_features(tower, query_out, pool: int, query_image=None, anomaly_map=None, ref_out=None,
                   levels: Sequence[int] | None = None, second_look: bool = True, index: int = 0) -> ImageFeatures:
    """ImageFeatures of image `index` of `query_out` (VisionOutput) and all images of `ref_out`.

    The second look crops `query_image` (PIL) around the maximum of `anomaly_map` and re-encodes it."""
    pt = [t[index:index + 1] for t in query_out.patch_tokens]
    q = pool_patch_tokens(pt, query_out.grid, pool, levels)[0]
    look = pool_patch_tokens(pt, query_out.grid, 2 * pool, levels)[0]
    if ref_out is not None and ref_out.patch_tokens[0].shape[0] > 0:
        refs = pool_patch_tokens(ref_out.patch_tokens, ref_out.grid, pool, levels)  # (k, P, C)
    else:
        refs = q.new_zeros((0, *q.shape))
    crop = None
    if second_look:
        if query_image is None or anomaly_map is None:
            raise ValueError("second look: the query image and its anomaly map are needed to crop the suspicious region")
        box = suspicious_crop(anomaly_map, query_image.size)
        c_out = tower.encode([query_image.crop(box)])
        crop = pool_patch_tokens(c_out.patch_tokens, c_out.grid, crop_side(pool), levels)[0].float().cpu()
    return ImageFeatures(q.float().cpu(), look.float().cpu(), query_out.global_token[index].float().cpu(),
                         refs.float().cpu(), crop)


def resize_map(anomaly_map: np.ndarray, pred_mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W) map and mask -> (MAP_SIZE, MAP_SIZE) float tensors (area resize; mask re-binarised)."""
    amap = torch.from_numpy(np.ascontiguousarray(anomaly_map, dtype=np.float32))[None, None]
    mask = torch.from_numpy(np.ascontiguousarray(pred_mask, dtype=np.float32))[None, None]
    amap = F.interpolate(amap, size=(MAP_SIZE, MAP_SIZE), mode="area")[0, 0]
    mask = F.interpolate(mask, size=(MAP_SIZE, MAP_SIZE), mode="area")[0, 0].gt(0.5).float()
    return amap, mask


def visual_inputs(feats: ImageFeatures, result, evidence: str | None = None) -> VisualInputs:
    """Combine features with an AnomalyResult (its map, mask, threshold and verdict in words)."""
    amap, mask = resize_map(result.anomaly_map, result.pred_mask)
    return VisualInputs(feats.query, feats.look, feats.global_token, feats.refs, feats.crop, amap, mask,
                        float(result.threshold), result_evidence(result) if evidence is None else evidence)


# ----------------------------------------------------------------------------------------------- modules
class Projector(nn.Module):
    """Vision features -> LM hidden size: (optional LayerNorm) Linear -> GELU -> Linear (LLaVA-1.5)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, input_norm: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim) if input_norm else nn.Identity()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class LVLMHeads(nn.Module):
    """The trainable small modules (everything but the LM and its adapter)."""

    def __init__(self, feat_dim: int, global_dim: int, hidden: int, n_prompts: int, n_look: int,
                 projector_hidden: int = 0, input_norm: bool = True):
        super().__init__()
        self.dims = {"feat_dim": feat_dim, "global_dim": global_dim, "hidden": hidden, "n_prompts": n_prompts, "n_look": n_look,
                         "projector_hidden": projector_hidden or hidden, "input_norm": input_norm}
        self.projector = Projector(feat_dim, projector_hidden or hidden, hidden, input_norm)
        self.global_proj = nn.Sequential(nn.LayerNorm(global_dim), nn.Linear(global_dim, hidden))
        self.prompt_learner = PromptLearner(hidden, n_prompts)
        self.look_twice = LookTwice(hidden, n_look)
        self.ref_type = nn.Parameter(torch.zeros(hidden))  # marks reference tokens apart from query tokens
        self.verdict = nn.Linear(hidden, 1)  # anomaly logit from the look-twice queries (optional training loss)


def wrap_lora(lm, lora_cfg):
    from peft import LoraConfig, get_peft_model

    names = {n.split(".")[-1] for n, _ in lm.named_modules()}
    targets = [t for t in lora_cfg.target_modules if t in names]
    if not targets:
        raise ValueError(f"lora.target_modules {lora_cfg.target_modules}: none found in the LM (has e.g. {sorted(names)[:12]})")
    cfg = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout, target_modules=targets,
                     task_type="CAUSAL_LM")
    return get_peft_model(lm, cfg)


# ----------------------------------------------------------------------------------------------- the LVLM
class LVLM(nn.Module):
    def __init__(self, cfg, lm, tokenizer, feat_dim: int, global_dim: int, input_norm: bool = True):
        """cfg: Config; lm: a causal LM (plain or peft-wrapped); feat_dim: projector input channels."""
        super().__init__()
        self.cfg = cfg
        lv = cfg.lvlm
        self.pool = lv.pool_tokens
        self.second_look = lv.second_look
        if tokenizer.chat_template is None:
            tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        add_special_tokens(base, tokenizer)  # placeholders (idempotent; their rows are never read)
        self.tokenizer = tokenizer
        self.token_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        hidden = base.get_input_embeddings().weight.shape[1]
        if cfg.lora.enabled and not hasattr(lm, "peft_config"):
            lm = wrap_lora(lm, cfg.lora)
        self.lm = lm
        self.heads = LVLMHeads(feat_dim, global_dim, hidden, lv.n_prompts, lv.n_look_twice, lv.projector_hidden,
                               input_norm)
        self.heads.to(base.get_input_embeddings().weight.device)

    # ---- counts
    @property
    def n_image(self) -> int:
        return self.pool * self.pool

    @property
    def n_look(self) -> int:
        return self.heads.look_twice.n_tokens + (crop_side(self.pool) ** 2 if self.second_look else 0)

    @property
    def n_prompt(self) -> int:
        return self.heads.prompt_learner.n_tokens

    @property
    def device(self) -> torch.device:
        return self.heads.ref_type.device

    @property
    def suppress_ids(self) -> list[int]:
        return list(self.token_ids.values())

    # ---- text
    def first_turn(self, n_refs: int, evidence: str, question: str) -> str:
        """User text of the first turn with the placeholder runs (counts match the features)."""
        parts = [f"Normal reference {i + 1}: {REF_TOKEN * self.n_image}\n" for i in range(n_refs)]
        parts.append(f"Query image: {IMAGE_TOKEN * self.n_image}\n")
        parts.append(f"Closer look: {LOOK_TOKEN * self.n_look}\n")
        parts.append(f"Anomaly map: {PROMPT_TOKEN * self.n_prompt}\n")
        question = question.replace("<image>", "").strip()
        return "".join(parts) + f"{evidence}\n{question}"

    def messages(self, n_refs: int, evidence: str, turns: Sequence[tuple[str, str | None]]) -> list[dict]:
        """turns: [(question, answer or None), ...]; the images and evidence go into the first user turn."""
        if not turns:
            raise ValueError("a conversation needs at least one question")
        msgs = [{"role": "system", "content": SYSTEM_PROMPT}]
        for i, (q, a) in enumerate(turns):
            msgs.append({"role": "user", "content": self.first_turn(n_refs, evidence, q) if i == 0 else q.strip()})
            if a is not None:
                msgs.append({"role": "assistant", "content": a.strip()})
        return msgs

    def _render(self, msgs, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)

    def tokenize(self, msgs: list[dict], add_generation_prompt: bool = False, max_len: int | None = None):
        """-> (input_ids (T,), labels (T,)); labels keep assistant turns only (IGNORE_INDEX elsewhere)."""
        text = self._render(msgs, add_generation_prompt)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor(enc["input_ids"], dtype=torch.long)
        labels = torch.full_like(ids, IGNORE_INDEX)
        starts = torch.tensor([o[0] for o in enc["offset_mapping"]], dtype=torch.long)
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            pre = self._render(msgs[:i], True)
            full = self._render(msgs[:i + 1], False)
            if not text.startswith(full) or not full.startswith(pre):
                raise ValueError("the chat template is not prefix-stable; cannot locate the assistant turns")
            span = (starts >= len(pre)) & (starts < len(full))
            labels[span] = ids[span]
        if max_len is not None and ids.numel() > max_len:
            last = max(int(torch.nonzero(ids == tid).max()) for tid in self.token_ids.values() if (ids == tid).any())
            if last >= max_len:
                raise ValueError(f"max_len {max_len} is shorter than the image block ({last + 1} tokens); raise train.max_len")
            ids, labels = ids[:max_len], labels[:max_len]
        return ids, labels

    # ---- embeddings
    def visual_embeddings(self, visuals: Sequence[VisualInputs]) -> list[dict[str, torch.Tensor]]:
        """Per sample: {placeholder token: (n, D) embeddings} in sequence order. Sets `self.last_verdict_logits`
        (B,): the selector's anomaly logit, used by the optional expert loss in training."""
        h, dev = self.heads, self.device
        vs = [v.to(dev) for v in visuals]
        b = len(vs)
        q = h.projector(torch.stack([v.query for v in vs]))  # (B, P, D)
        look = h.projector(torch.stack([v.look for v in vs]))  # (B, G, D)
        glob = h.global_proj(torch.stack([v.global_token for v in vs]))  # (B, D)
        thr = torch.tensor([v.threshold for v in vs], device=dev)
        amap = torch.stack([v.anomaly_map for v in vs])  # (B, S, S)
        mask = torch.stack([v.pred_mask for v in vs])
        map_in = normalise_map(amap, thr, mask)  # (B, 2, S, S)
        g = 2 * self.pool
        sig = F.adaptive_avg_pool2d(map_in[:, :1], g).flatten(1)  # (B, G) significance on the look grid
        lt = h.look_twice(look, sig, glob)  # (B, Q + 1, D)
        self.last_verdict_logits = h.verdict(lt[:, :-1].mean(1)).squeeze(-1)  # (B,)
        if self.second_look:
            if any(v.crop is None for v in vs):
                raise ValueError("second_look is on but a sample has no crop features")
            lt = torch.cat([lt, h.projector(torch.stack([v.crop for v in vs]))], dim=1)  # (B, Q + 1 + P2, D)
        prompts = h.prompt_learner(map_in)  # (B, 2n, D)
        counts = [v.refs.shape[0] for v in vs]
        refs = torch.cat([v.refs for v in vs]) if sum(counts) else None  # (sum k, P, D)
        refs = h.projector(refs) + h.ref_type if refs is not None else None
        out, r0 = [], 0
        for i in range(b):
            r = refs[r0:r0 + counts[i]].reshape(-1, q.shape[-1]) if counts[i] else q.new_zeros((0, q.shape[-1]))
            r0 += counts[i]
            out.append({REF_TOKEN: r, IMAGE_TOKEN: q[i], LOOK_TOKEN: lt[i], PROMPT_TOKEN: prompts[i]})
        return out

    def embed(self, input_ids: torch.Tensor, visuals: Sequence[VisualInputs]) -> torch.Tensor:
        """(B, T) ids -> (B, T, D) embeddings with every placeholder run replaced by its features."""
        if input_ids.shape[0] != len(visuals):
            raise ValueError(f"{input_ids.shape[0]} sequences but {len(visuals)} visual inputs")
        emb_layer = self.lm.get_input_embeddings()
        embeds = emb_layer(input_ids).clone()  # (B, T, D)
        feats = self.visual_embeddings(visuals)
        for b, fd in enumerate(feats):
            for tok, f in fd.items():
                pos = input_ids[b] == self.token_ids[tok]
                n = int(pos.sum())
                if n != f.shape[0]:
                    raise ValueError(f"sample {b}: the sequence has {n} '{tok}' tokens but {f.shape[0]} feature vectors "
                                     f"came for them")
                embeds[b, pos] = f.to(embeds.dtype)
        return embeds

    def forward(self, input_ids, attention_mask, visuals, labels=None):
        """LM output; with labels, `.loss` is the mean cross-entropy over supervised tokens, computing logits only
        at positions whose next token is supervised (most of the sequence is image and prompt)."""
        embeds = self.embed(input_ids, visuals)
        if labels is None:
            return self.lm(inputs_embeds=embeds, attention_mask=attention_mask)
        target = labels[:, 1:]  # (B, T - 1): position t predicts token t + 1
        keep = (target != IGNORE_INDEX).any(0).nonzero().squeeze(1)  # (K,)
        if keep.numel() == 0:
            raise ValueError("no supervised tokens in the batch (every label is IGNORE_INDEX)")
        out = self.lm(inputs_embeds=embeds, attention_mask=attention_mask, logits_to_keep=keep)
        logits = out.logits.float()  # (B, K, V)
        out.loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target[:, keep].reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        return out

    # ---- batching
    def collate(self, seqs: Sequence[tuple[torch.Tensor, torch.Tensor]], left: bool = False):
        """[(ids, labels)] -> ids (B, T), attention_mask (B, T), labels (B, T); left or right padding."""
        t = max(s[0].numel() for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), t), pad, dtype=torch.long)
        labels = torch.full((len(seqs), t), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(seqs), t), dtype=torch.long)
        for i, (s, lab) in enumerate(seqs):
            n = s.numel()
            sl = slice(t - n, t) if left else slice(0, n)
            ids[i, sl], labels[i, sl], mask[i, sl] = s, lab, 1
        return ids.to(self.device), mask.to(self.device), labels.to(self.device)

    def prompt_batch(self, visuals: Sequence[VisualInputs], questions: Sequence[str],
                     histories: Sequence[Sequence[tuple[str, str]]] | None = None):
        """Left-padded generation inputs: (inputs_embeds (B, T, D), attention_mask (B, T))."""
        histories = histories or [()] * len(questions)
        seqs = []
        for v, q, hist in zip(visuals, questions, histories):
            turns = [(hq, ha) for hq, ha in hist] + [(q, None)]
            seqs.append(self.tokenize(self.messages(v.refs.shape[0], v.evidence, turns), add_generation_prompt=True))
        ids, mask, _ = self.collate(seqs, left=True)
        return self.embed(ids, visuals), mask

    def _gen_kwargs(self, max_new_tokens, temperature, **extra):
        mnt = max_new_tokens or self.cfg.lm.max_new_tokens
        temp = self.cfg.lm.temperature if temperature is None else temperature
        kw = {"max_new_tokens": mnt, "pad_token_id": self.tokenizer.pad_token_id, "suppress_tokens": self.suppress_ids,
                  "eos_token_id": self.tokenizer.eos_token_id, "do_sample": temp > 0}
        if temp > 0:
            kw.update(temperature=temp, top_p=0.9)
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        return {**kw, **extra}

    @torch.no_grad()
    def generate(self, visuals: Sequence[VisualInputs], questions: Sequence[str],
                 histories: Sequence[Sequence[tuple[str, str]]] | None = None, max_new_tokens: int | None = None,
                 temperature: float | None = None, **generate_kwargs) -> list[str]:
        """Batched greedy (or sampled) answers, one per (visual, question, history); extra kwargs go to generate."""
        embeds, mask = self.prompt_batch(visuals, questions, histories)
        kw = self._gen_kwargs(max_new_tokens, temperature, **generate_kwargs)
        out = self.lm.generate(inputs_embeds=embeds, attention_mask=mask, **kw)
        return [s.strip() for s in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def stream(self, visual: VisualInputs, question: str, history: Sequence[tuple[str, str]] = (),
               max_new_tokens: int | None = None, temperature: float | None = None, **generate_kwargs) -> Iterator[str]:
        """Yield text chunks of the answer as they are generated; extra kwargs go to generate."""
        from transformers import TextIteratorStreamer

        with torch.no_grad():
            embeds, mask = self.prompt_batch([visual], [question], [history])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
        kw = self._gen_kwargs(max_new_tokens, temperature, **generate_kwargs)
        errors: list[BaseException] = []

        def work():
            try:
                with torch.no_grad():
                    self.lm.generate(inputs_embeds=embeds, attention_mask=mask, streamer=streamer, **kw)
            except BaseException as e:  # noqa: BLE001 -- surfaced in the caller's thread
                errors.append(e)
                streamer.end()

        th = threading.Thread(target=work, daemon=True)
        th.start()
        first = True
        for chunk in streamer:
            if first:
                chunk, first = chunk.lstrip(), not chunk.strip()
            if chunk:
                yield chunk
        th.join()
        if errors:
            raise errors[0]

    # ---- save / load
    def save_pretrained(self, out_dir: str | Path) -> None:
        """Adapter (peft, safetensors, without embedding layers) + heads (safetensors + json)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if hasattr(self.lm, "peft_config"):
            self.lm.save_pretrained(out, save_embedding_layers=False, safe_serialization=True)
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.heads.state_dict().items()}
        save_file(state, out / HEADS_FILE)
        (out / HEADS_CONFIG).write_text(json.dumps(self.heads.dims, indent=1))

    def load_heads(self, ckpt_dir: str | Path) -> None:
        from safetensors.torch import load_file

        path = Path(ckpt_dir) / HEADS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"LVLM heads not found: expected {path}")
        state = load_file(path, device=str(self.device))
        own = self.heads.state_dict()
        bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
               if k in own and own[k].shape != v.shape]
        if bad:
            raise ValueError(f"{path} does not fit this config: {'; '.join(bad[:4])}")
        missing, unexpected = self.heads.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: missing {missing[:4]}, unexpected {unexpected[:4]}")

    def load_adapter(self, ckpt_dir: str | Path) -> None:
        """Load adapter weights saved by save_pretrained into the (already wrapped) LM."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(ckpt_dir) / "adapter_model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"LoRA adapter not found: expected {path}")
        if not hasattr(self.lm, "peft_config"):
            raise ValueError(f"{path} holds a LoRA adapter but lora.enabled is false in the config")
        res = set_peft_model_state_dict(self.lm, load_file(path, device=str(self.device)))
        unexpected = getattr(res, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{path}: adapter keys do not fit this LM (e.g. {unexpected[:3]})")


# ----------------------------------------------------------------------------------------------- building
def feature_dims(tower, levels: Sequence[int] | None) -> int:
    dims = tower.level_dims
    return sum(dims[i] for i in levels) if levels is not None else sum(dims)


def load_language_model(cfg):
    """(causal LM, tokenizer, projector state or None). LLaVA checkpoints are split into their LM and projector."""
    name = cfg.lm.name
    if _is_llava(name):
        return load_llava(cfg)
    if cfg.lm.load_in_4bit and not torch.cuda.is_available():
        warnings.warn("lm.load_in_4bit needs CUDA (bitsandbytes); no GPU here, loading in "
                      f"{cfg.lm.dtype} instead", stacklevel=2)
        cfg.lm.load_in_4bit = False
    lm, tok = load_lm(cfg.lm)
    return lm, tok, None


def _is_llava(name: str) -> bool:
    p = Path(name)
    if p.is_dir() and (p / "config.json").is_file():
        try:
            return json.loads((p / "config.json").read_text()).get("model_type") == "llava"
        except ValueError:
            return False
    return "llava" in name.lower()


def llava_parts(llava) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """LlavaForConditionalGeneration -> (LlamaForCausalLM-like causal LM sharing its weights, projector state
    for `Projector(input_norm=False)`)."""
    from transformers import AutoModelForCausalLM

    text_cfg = llava.config.text_config
    lm = AutoModelForCausalLM.from_config(text_cfg, dtype=llava.dtype)
    lm.model = llava.model.language_model  # share modules, no copy
    lm.lm_head = llava.lm_head
    pj = llava.model.multi_modal_projector
    proj = {"fc1.weight": pj.linear_1.weight, "fc2.weight": pj.linear_2.weight}
    if pj.linear_1.bias is not None:
        proj.update({"fc1.bias": pj.linear_1.bias, "fc2.bias": pj.linear_2.bias})
    return lm, {k: v.detach() for k, v in proj.items()}


def load_llava(cfg):
    """Load an HF LLaVA checkpoint (id or dir), 4-bit on CUDA when asked; clear error offline."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    name = cfg.lm.name
    kw = {"dtype": getattr(torch, cfg.lm.dtype)}
    if cfg.lm.load_in_4bit:
        if torch.cuda.is_available():
            from transformers import BitsAndBytesConfig

            kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=kw["dtype"],
                                                           bnb_4bit_quant_type="nf4")
            kw["device_map"] = "auto"
        else:
            warnings.warn(f"lm.load_in_4bit needs CUDA (bitsandbytes); loading {name} in {cfg.lm.dtype} on CPU",
                          stacklevel=2)
    try:
        llava = LlavaForConditionalGeneration.from_pretrained(name, **kw)
        tok = AutoTokenizer.from_pretrained(name)
    except OSError as e:
        raise FileNotFoundError(
            f"LLaVA weights '{name}' not found (looked in the local directory '{name}' and the Hugging Face cache; "
            f"HF_HUB_OFFLINE={__import__('os').environ.get('HF_HUB_OFFLINE', '0')}). Download it with "
            f"`huggingface-cli download {name}` on a connected machine or set lm.name to a local copy. ({e})"
        ) from None
    lm, proj = llava_parts(llava)
    return lm, tok, proj


def build_lvlm(cfg, tower, lm=None, tokenizer=None, checkpoint: str | Path | None = None,
               merge_lora: bool = False) -> LVLM:
    """LVLM for `cfg` and `tower`; loads the LM unless given, then adapter + heads from `checkpoint`.
    merge_lora folds the adapter into the LM weights (faster inference; the model can no longer be saved)."""
    proj_state = None
    if lm is None:
        lm, tokenizer, proj_state = load_language_model(cfg)
    feat_dim = feature_dims(tower, cfg.lvlm.projector_levels)
    model = LVLM(cfg, lm, tokenizer, feat_dim, tower.global_dim, input_norm=proj_state is None)
    if proj_state is not None:
        model.heads.projector.load_state_dict({k: v.float() for k, v in proj_state.items()}, strict=False)
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        model.load_heads(ckpt)
        if (ckpt / "adapter_model.safetensors").is_file():
            model.load_adapter(ckpt)
        elif cfg.lora.enabled:
            warnings.warn(f"{ckpt} has no LoRA adapter; using the LM without one", stacklevel=2)
    if merge_lora and hasattr(model.lm, "merge_and_unload") and not getattr(model.lm, "is_loaded_in_4bit", False):
        model.lm = model.lm.merge_and_unload()
    return model.eval()
