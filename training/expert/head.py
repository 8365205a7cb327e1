"""The expert's zero-shot head: its loss, its training steps on the cached features, and the held-out scores that
set its image threshold."""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training.expert.data import features


def focal_dice_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, dice_weight: float = 1.0,
                    alpha: float = 0.75) -> torch.Tensor:
    """Focal loss (soft targets) + soft dice on anomalous images; logits/target (B, N)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    w = alpha * target + (1 - alpha) * (1 - target)
    focal = (w * (1 - pt) ** gamma * ce).mean()
    has = target.sum(1) > 0
    dice = torch.zeros((), device=logits.device)
    if has.any():
        inter = (p[has] * target[has]).sum(1)
        dice = (1 - (2 * inter + 1) / (p[has].sum(1) + target[has].sum(1) + 1)).mean()
    return focal + dice_weight * dice


def train_head(expert, accelerator, tc, train: list[int], tokens, glob, grid, targets: torch.Tensor) -> list[dict]:
    """train.steps AdamW steps (cosine schedule) of the expert's head on random batches of the `train` records,
    focal + dice loss against the patch-grid `targets`; the trained head goes back into the expert (CPU).
    Returns the loss log (every train.eval_every steps and the last)."""
    head = expert.head
    opt = torch.optim.AdamW(head.parameters(), lr=tc.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, tc.steps))
    head, opt = accelerator.prepare(head, opt)
    dev = accelerator.device
    rng = random.Random(tc.seed)
    log = []
    bar = tqdm(range(tc.steps), desc="train expert head", disable=not accelerator.is_main_process)
    for step in bar:
        b = rng.sample(train, min(tc.batch_size, len(train)))
        toks = [t[b].float().to(dev) for t in tokens]
        logits, g = head(toks, glob[b].float().to(dev), grid)  # (B, N') on the head's grid
        tgt = targets[b].to(dev)
        if tuple(g) != tuple(grid):
            tgt = F.adaptive_avg_pool2d(tgt.view(-1, 1, *grid), g).flatten(1)
        loss = focal_dice_loss(logits, tgt, tc.focal_gamma, tc.dice_weight)
        opt.zero_grad()
        accelerator.backward(loss)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % max(1, tc.eval_every) == 0 or step == tc.steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 5)})
    expert.head = accelerator.unwrap_model(head).cpu()
    expert.trained = True
    return log


@torch.no_grad()
def heldout_scores(expert, tower, val: list[int], tokens, glob, grid) -> np.ndarray:
    """Image scores of the held-out records from the head's own map (zero_shot_source: head), as at inference."""
    expert.eval()
    scores = []
    for i in range(0, len(val), 32):
        maps = expert.upsample(expert.zero_shot_map(features(tokens, glob, grid, val[i:i + 32])),
                               (tower.image_size, tower.image_size))
        scores += [expert.image_score(m) for m in maps]
    return np.array(scores)
