"""LLaVA-style composition: vision features -> projector (2-layer MLP, GELU) -> causal LM via inputs_embeds.

The heads (projector, global projection, prompt learner, look-twice selector, verdict logit) are small
nn.Modules; the LM carries a peft LoRA adapter. `LVLM.forward` returns an `LVLMOutput` (loss, logits and the
selector's verdict logit). The LVLM owns an `LVLMProcessor` (prompts, template, tokenisation); generation,
streaming and checkpoint IO are the functions of generation.py and loading.py, exposed as methods here.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from assistant.constants import IGNORE_INDEX, IMAGE_TOKEN, LOOK_TOKEN, PROMPT_TOKEN, REF_TOKEN
from assistant.lvlm.features import VisualInputs, crop_side
from assistant.lvlm.generation import generate_text, generation_kwargs, stream_text
from assistant.lvlm.lm import add_special_tokens
from assistant.lvlm.loading import (
    ADAPTER_FILE,
    load_adapter,
    load_heads,
    load_language_model,
    save_checkpoint,
    wrap_lora,
)
from assistant.lvlm.look_twice import LookTwice
from assistant.lvlm.processing import LVLMProcessor
from assistant.lvlm.prompt_learner import PromptLearner, normalise_map


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
        self.dims = {"feat_dim": feat_dim, "global_dim": global_dim, "hidden": hidden, "n_prompts": n_prompts,
                     "n_look": n_look, "projector_hidden": projector_hidden or hidden, "input_norm": input_norm}
        self.projector = Projector(feat_dim, projector_hidden or hidden, hidden, input_norm)
        self.global_proj = nn.Sequential(nn.LayerNorm(global_dim), nn.Linear(global_dim, hidden))
        self.prompt_learner = PromptLearner(hidden, n_prompts)
        self.look_twice = LookTwice(hidden, n_look)
        self.ref_type = nn.Parameter(torch.zeros(hidden))  # marks reference tokens apart from query tokens
        self.verdict = nn.Linear(hidden, 1)  # anomaly logit from the look-twice queries (optional training loss)


# ----------------------------------------------------------------------------------------------- outputs
@dataclass
class VisualEmbeddings:
    """The heads' output for a batch of VisualInputs."""
    tokens: list[dict[str, torch.Tensor]]  # per sample: {placeholder token: (n, D) embeddings}, sequence order
    verdict_logits: torch.Tensor  # (B,) the look-twice selector's anomaly logit


@dataclass
class LVLMOutput:
    """What LVLM.forward returns (the shape of HF's LlavaCausalLMOutputWithPast)."""
    logits: torch.Tensor  # (B, T, V); with labels only at the K positions whose next token is supervised: (B, K, V)
    verdict_logits: torch.Tensor | None  # (B,) the look-twice selector's anomaly logit (training's expert loss)
    loss: torch.Tensor | None = None  # mean cross-entropy over supervised tokens; None without labels
    past_key_values: object = None  # the LM's cache (None with labels)


# ----------------------------------------------------------------------------------------------- the LVLM
class LVLM(nn.Module):
    def __init__(self, cfg, lm, tokenizer, feat_dim: int, global_dim: int, input_norm: bool = True):
        """cfg: Config; lm: a causal LM (plain or peft-wrapped); feat_dim: projector input channels."""
        super().__init__()
        self.cfg = cfg
        lv = cfg.lvlm
        self.pool = lv.pool_tokens
        self.second_look = lv.second_look
        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        add_special_tokens(base, tokenizer)  # placeholders (idempotent; their rows are never read)
        hidden = base.get_input_embeddings().weight.shape[1]
        if cfg.lora.enabled and not hasattr(lm, "peft_config"):
            lm = wrap_lora(lm, cfg.lora)
        self.lm = lm
        self.heads = LVLMHeads(feat_dim, global_dim, hidden, lv.n_prompts, lv.n_look_twice, lv.projector_hidden,
                               input_norm)
        self.heads.to(base.get_input_embeddings().weight.device)
        self.processor = LVLMProcessor(tokenizer, self.n_image, self.n_look, self.n_prompt)

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

    # ---- text (the processor's, on this model's device)
    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def messages(self, n_refs: int, evidence: str, turns: Sequence[tuple[str, str | None]]) -> list[dict]:
        return self.processor.messages(n_refs, evidence, turns)

    def tokenize(self, msgs: list[dict], add_generation_prompt: bool = False, max_len: int | None = None):
        return self.processor.tokenize(msgs, add_generation_prompt, max_len)

    def collate(self, seqs: Sequence[tuple[torch.Tensor, torch.Tensor]], left: bool = False):
        return self.processor.collate(seqs, left, device=self.device)

    # ---- embeddings
    def visual_embeddings(self, visuals: Sequence[VisualInputs]) -> VisualEmbeddings:
        """Per sample {placeholder token: (n, D) embeddings} and the selector's verdict logits (B,)."""
        h, dev = self.heads, self.device
        vs = [v.to(dev) for v in visuals]
        q = h.projector(torch.stack([v.query for v in vs]))  # (B, P, D)
        look = h.projector(torch.stack([v.look for v in vs]))  # (B, G, D)
        glob = h.global_proj(torch.stack([v.global_token for v in vs]))  # (B, D)
        thr = torch.tensor([v.threshold for v in vs], device=dev)
        amap = torch.stack([v.anomaly_map for v in vs])  # (B, S, S)
        mask = torch.stack([v.pred_mask for v in vs])
        map_in = normalise_map(amap, thr, mask)  # (B, 2, S, S)
        sig = F.adaptive_avg_pool2d(map_in[:, :1], 2 * self.pool).flatten(1)  # (B, G) significance, look grid
        lt = h.look_twice(look, sig, glob)  # (B, Q + 1, D)
        verdict = h.verdict(lt[:, :-1].mean(1)).squeeze(-1)  # (B,)
        if self.second_look:
            if any(v.crop is None for v in vs):
                raise ValueError("second_look is on but a sample has no crop features")
            lt = torch.cat([lt, h.projector(torch.stack([v.crop for v in vs]))], dim=1)  # (B, Q + 1 + P2, D)
        prompts = h.prompt_learner(map_in)  # (B, 2n, D)
        counts = [v.refs.shape[0] for v in vs]
        refs = torch.cat([v.refs for v in vs]) if sum(counts) else None  # (sum k, P, C)
        refs = h.projector(refs) + h.ref_type if refs is not None else None  # (sum k, P, D)
        tokens, r0 = [], 0
        for i in range(len(vs)):
            r = refs[r0:r0 + counts[i]].reshape(-1, q.shape[-1]) if counts[i] else q.new_zeros((0, q.shape[-1]))
            r0 += counts[i]
            tokens.append({REF_TOKEN: r, IMAGE_TOKEN: q[i], LOOK_TOKEN: lt[i], PROMPT_TOKEN: prompts[i]})
        return VisualEmbeddings(tokens, verdict)

    def merge_embeddings(self, input_ids: torch.Tensor, visual: VisualEmbeddings) -> torch.Tensor:
        """(B, T) ids -> (B, T, D) embeddings with every placeholder run replaced by its visual embeddings."""
        if input_ids.shape[0] != len(visual.tokens):
            raise ValueError(f"{input_ids.shape[0]} sequences but {len(visual.tokens)} visual inputs")
        embeds = self.lm.get_input_embeddings()(input_ids).clone()  # (B, T, D)
        token_ids = self.processor.token_ids
        for b, fd in enumerate(visual.tokens):
            for tok, f in fd.items():
                pos = input_ids[b] == token_ids[tok]
                n = int(pos.sum())
                if n != f.shape[0]:
                    raise ValueError(f"sample {b}: the sequence has {n} '{tok}' tokens but {f.shape[0]} feature "
                                     f"vectors came for them")
                embeds[b, pos] = f.to(embeds.dtype)
        return embeds

    def embed(self, input_ids: torch.Tensor, visuals: Sequence[VisualInputs]) -> torch.Tensor:
        """(B, T) ids -> (B, T, D) embeddings with every placeholder run replaced by its features."""
        return self.merge_embeddings(input_ids, self.visual_embeddings(visuals))

    def forward(self, input_ids, attention_mask, visuals, labels=None, output_verdict: bool = True) -> LVLMOutput:
        """With labels, `.loss` is the mean cross-entropy over supervised tokens, computing logits only at
        positions whose next token is supervised (most of the sequence is image and prompt).
        output_verdict=False leaves `.verdict_logits` None: under DistributedDataParallel every returned tensor
        must take part in the loss, so training asks for the verdict logit only when its loss uses it."""
        visual = self.visual_embeddings(visuals)
        embeds = self.merge_embeddings(input_ids, visual)
        verdict = visual.verdict_logits if output_verdict else None
        if labels is None:
            out = self.lm(inputs_embeds=embeds, attention_mask=attention_mask)
            return LVLMOutput(out.logits, verdict, past_key_values=out.past_key_values)
        target = labels[:, 1:]  # (B, T - 1): position t predicts token t + 1
        keep = (target != IGNORE_INDEX).any(0).nonzero().squeeze(1)  # (K,)
        if keep.numel() == 0:
            raise ValueError("no supervised tokens in the batch (every label is IGNORE_INDEX)")
        out = self.lm(inputs_embeds=embeds, attention_mask=attention_mask, logits_to_keep=keep)
        logits = out.logits.float()  # (B, K, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target[:, keep].reshape(-1),
                               ignore_index=IGNORE_INDEX)
        return LVLMOutput(out.logits, verdict, loss=loss)

    # ---- generation
    def prompt_batch(self, visuals: Sequence[VisualInputs], questions: Sequence[str],
                     histories: Sequence[Sequence[tuple[str, str]]] | None = None):
        """Left-padded generation inputs: (inputs_embeds (B, T, D), attention_mask (B, T))."""
        ids, mask = self.processor.prompt_ids(visuals, questions, histories, device=self.device)
        return self.embed(ids, visuals), mask

    def _generation_kwargs(self, max_new_tokens, temperature, extra: dict) -> dict:
        return generation_kwargs(self.cfg.lm, self.tokenizer, self.processor.suppress_ids, max_new_tokens,
                                 temperature, **extra)

    @torch.no_grad()
    def generate(self, visuals: Sequence[VisualInputs], questions: Sequence[str],
                 histories: Sequence[Sequence[tuple[str, str]]] | None = None, max_new_tokens: int | None = None,
                 temperature: float | None = None, **generate_kwargs) -> list[str]:
        """Batched greedy (or sampled) answers, one per (visual, question, history); extra kwargs go to generate."""
        embeds, mask = self.prompt_batch(visuals, questions, histories)
        kw = self._generation_kwargs(max_new_tokens, temperature, generate_kwargs)
        return generate_text(self.lm, self.tokenizer, embeds, mask, kw)

    def stream(self, visual: VisualInputs, question: str, history: Sequence[tuple[str, str]] = (),
               max_new_tokens: int | None = None, temperature: float | None = None,
               **generate_kwargs) -> Iterator[str]:
        """Yield text chunks of the answer as they are generated; extra kwargs go to generate."""
        with torch.no_grad():
            embeds, mask = self.prompt_batch([visual], [question], [history])
        kw = self._generation_kwargs(max_new_tokens, temperature, generate_kwargs)
        yield from stream_text(self.lm, self.tokenizer, embeds, mask, kw)

    # ---- save / load (loading.py)
    def save_pretrained(self, out_dir: str | Path) -> None:
        """Adapter (peft, safetensors, without embedding layers) + heads (safetensors + json)."""
        save_checkpoint(self.lm, self.heads, out_dir)

    def load_heads(self, ckpt_dir: str | Path) -> None:
        load_heads(self.heads, ckpt_dir, self.device)

    def load_adapter(self, ckpt_dir: str | Path) -> None:
        """Load adapter weights saved by save_pretrained into the (already wrapped) LM."""
        load_adapter(self.lm, ckpt_dir, self.device)


# ----------------------------------------------------------------------------------------------- building
def feature_dims(tower, levels: Sequence[int] | None) -> int:
    """Projector input channels: the sum of the selected tower levels' channels (all levels when None)."""
    dims = tower.level_dims
    return sum(dims[i] for i in levels) if levels is not None else sum(dims)


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
        if (ckpt / ADAPTER_FILE).is_file():
            model.load_adapter(ckpt)
        elif cfg.lora.enabled:
            warnings.warn(f"{ckpt} has no LoRA adapter; using the LM without one", stacklevel=2)
    if merge_lora and hasattr(model.lm, "merge_and_unload") and not getattr(model.lm, "is_loaded_in_4bit", False):
        model.lm = model.lm.merge_and_unload()
    return model.eval()
