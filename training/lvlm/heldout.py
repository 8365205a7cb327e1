"""The held-out check of an LVLM run: ask each held-out conversation's detection question, parse yes/no, compare
with the sample's label."""
from __future__ import annotations

import torch

from assistant.wording import parse_verdict
from training.lvlm.cache import FeatureCache
from training.lvlm.data import Sample


def detection_question(sample: Sample) -> str:
    """The first question whose reference answer parses to the sample's label: with --opener-ratio a conversation
    may open with "where?" (no verdict) or "is it safe to ship?" (whose "yes" means normal)."""
    want = bool(sample.label)
    return next((q for q, a in sample.turns if parse_verdict(a) is want), sample.turns[0][0])


@torch.no_grad()
def heldout_accuracy(model, cache: FeatureCache, idx: list[int], batch: int = 8) -> dict:
    """Answer the detection question of held-out conversations (`detection_question`); parse yes/no; compare
    with the label."""
    was_training = model.training
    model.eval()
    correct, unparsed, answers = 0, 0, []
    for b in range(0, len(idx), batch):
        ids = idx[b:b + batch]
        vis = [cache.get(i) for i in ids]
        qs = [detection_question(cache.samples[i]) for i in ids]
        outs = model.generate(vis, qs, max_new_tokens=12)
        for i, a in zip(ids, outs):
            v = parse_verdict(a)
            unparsed += v is None
            correct += int(v is not None and v == bool(cache.samples[i].label))
            answers.append(a)
    model.train(was_training)
    return {"heldout_answer_accuracy": correct / max(1, len(idx)), "heldout_unparsed": unparsed,
            "heldout_example": answers[0] if answers else ""}
