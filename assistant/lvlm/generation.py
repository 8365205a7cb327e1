"""Generation from prepared input embeddings: batched (left-padded) answers, and a stream of text chunks.

The LVLM builds `inputs_embeds` (placeholders replaced by visual embeddings) and hands them here; these
functions only drive the causal LM's `generate` and decode. Placeholder ids are suppressed, so the LM never
emits them.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import torch


def generation_kwargs(lm_cfg, tokenizer, suppress_ids: Sequence[int], max_new_tokens: int | None = None,
                      temperature: float | None = None, **extra) -> dict:
    """`generate` kwargs: greedy when the temperature is 0 (LMConfig default), else nucleus sampling;
    `extra` overrides any of them."""
    mnt = max_new_tokens or lm_cfg.max_new_tokens
    temp = lm_cfg.temperature if temperature is None else temperature
    kw = {"max_new_tokens": mnt, "pad_token_id": tokenizer.pad_token_id, "suppress_tokens": list(suppress_ids),
          "eos_token_id": tokenizer.eos_token_id, "do_sample": temp > 0}
    if temp > 0:
        kw.update(temperature=temp, top_p=0.9)
    else:
        kw.update(temperature=None, top_p=None, top_k=None)
    return {**kw, **extra}


@torch.no_grad()
def generate_text(lm, tokenizer, embeds: torch.Tensor, attention_mask: torch.Tensor, gen_kwargs: dict) -> list[str]:
    """(B, T, D) left-padded embeddings -> B answers (stripped)."""
    out = lm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **gen_kwargs)
    return [s.strip() for s in tokenizer.batch_decode(out, skip_special_tokens=True)]


def stream_text(lm, tokenizer, embeds: torch.Tensor, attention_mask: torch.Tensor,
                gen_kwargs: dict) -> Iterator[str]:
    """Yield text chunks of one answer ((1, T, D) embeddings) as they are generated; leading whitespace of the
    answer is dropped. The LM runs in a worker thread; an error there is raised here."""
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
    errors: list[BaseException] = []

    def work():
        try:
            with torch.no_grad():
                lm.generate(inputs_embeds=embeds, attention_mask=attention_mask, streamer=streamer, **gen_kwargs)
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
