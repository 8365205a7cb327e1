"""The processor role: system prompt, chat template, the first turn with its placeholder runs, tokenisation
with assistant-only labels, and padding into batches.

The first user turn is built with the LM's own chat template; single placeholder tokens (assistant.constants)
stand where the LVLM puts embeddings:

    [reference-normal image tokens x k][query image tokens][look-twice tokens][prompt-learner tokens]
    [the expert's verdict in words][question]
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from assistant.constants import IGNORE_INDEX, IMAGE_TOKEN, LOOK_TOKEN, PROMPT_TOKEN, REF_TOKEN, SPECIAL_TOKENS
from assistant.lvlm.features import VisualInputs

SYSTEM_PROMPT = "You are a visual inspection assistant. Answer truthfully from the images and the expert evidence."
# LLaVA-1.5 conversation format, used when a tokenizer ships without a chat template.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] + '\n' }}"
    "{% elif m['role'] == 'user' %}{{ 'USER: ' + m['content'] + '\n' }}"
    "{% else %}{{ 'ASSISTANT: ' + m['content'] + eos_token + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


class LVLMProcessor:
    """Turns conversations into token ids for an LVLM whose visual blocks take `n_image` tokens per image,
    `n_look` look-twice tokens and `n_prompt` prompt-learner tokens. The tokenizer must already hold the
    placeholder tokens (lm.add_special_tokens); it gets the fallback chat template and a pad token if missing."""

    def __init__(self, tokenizer, n_image: int, n_look: int, n_prompt: int):
        if tokenizer.chat_template is None:
            tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.n_image, self.n_look, self.n_prompt = n_image, n_look, n_prompt
        self.token_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    @property
    def suppress_ids(self) -> list[int]:
        """Placeholder ids: never generated."""
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

    def render(self, msgs: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)

    # ---- ids
    def tokenize(self, msgs: list[dict], add_generation_prompt: bool = False, max_len: int | None = None):
        """-> (input_ids (T,), labels (T,)); labels keep assistant turns only (IGNORE_INDEX elsewhere)."""
        text = self.render(msgs, add_generation_prompt)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor(enc["input_ids"], dtype=torch.long)
        labels = torch.full_like(ids, IGNORE_INDEX)
        starts = torch.tensor([o[0] for o in enc["offset_mapping"]], dtype=torch.long)
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            pre = self.render(msgs[:i], True)
            full = self.render(msgs[:i + 1], False)
            if not text.startswith(full) or not full.startswith(pre):
                raise ValueError("the chat template is not prefix-stable; cannot locate the assistant turns")
            span = (starts >= len(pre)) & (starts < len(full))
            labels[span] = ids[span]
        if max_len is not None and ids.numel() > max_len:
            last = max(int(torch.nonzero(ids == tid).max()) for tid in self.token_ids.values() if (ids == tid).any())
            if last >= max_len:
                raise ValueError(f"max_len {max_len} is shorter than the image block ({last + 1} tokens); "
                                 f"raise train.max_len")
            ids, labels = ids[:max_len], labels[:max_len]
        return ids, labels

    def collate(self, seqs: Sequence[tuple[torch.Tensor, torch.Tensor]], left: bool = False, device=None):
        """[(ids, labels)] -> ids (B, T), attention_mask (B, T), labels (B, T) on `device`; left or right padding."""
        t = max(s[0].numel() for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), t), pad, dtype=torch.long)
        labels = torch.full((len(seqs), t), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(seqs), t), dtype=torch.long)
        for i, (s, lab) in enumerate(seqs):
            n = s.numel()
            sl = slice(t - n, t) if left else slice(0, n)
            ids[i, sl], labels[i, sl], mask[i, sl] = s, lab, 1
        return ids.to(device), mask.to(device), labels.to(device)

    def prompt_ids(self, visuals: Sequence[VisualInputs], questions: Sequence[str],
                   histories: Sequence[Sequence[tuple[str, str]]] | None = None, device=None):
        """Left-padded generation prompts: (input_ids (B, T), attention_mask (B, T)) on `device`, one per
        (visual, question, earlier turns)."""
        histories = histories or [()] * len(questions)
        seqs = []
        for v, q, hist in zip(visuals, questions, histories):
            turns = [(hq, ha) for hq, ha in hist] + [(q, None)]
            seqs.append(self.tokenize(self.messages(v.refs.shape[0], v.evidence, turns), add_generation_prompt=True))
        ids, mask, _ = self.collate(seqs, left=True, device=device)
        return ids, mask
