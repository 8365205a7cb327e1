"""`python -m training lvlm --config C --data SYNTH_DIR [...]`: train the LVLM heads and the LoRA adapter.

Data: folders written by `python -m data_synth build` (manifest.jsonl + conversations.json, LLaVA format with
"references"). Per sample the frozen parts run once and are cached (OUT/cache, safetensors): pooled tower
features of the query, its references and the second-look crop, and the expert's anomaly map. The verdict in
words given to the LM is the ground truth of the synthesized sample (what a correct expert would say), so the
LM learns to state the evidence faithfully; the map comes from the real expert (or the mask with --maps mask).

Loss: LM cross-entropy on assistant turns only (IGNORE_INDEX elsewhere) + optional BCE of the selector's
verdict logit (train.expert_loss_weight). AdamW with two learning rates (heads, LoRA), warmup + cosine,
gradient accumulation, periodic held-out answer accuracy, checkpoints in OUT/last (adapter, heads, optimizer
state, all safetensors) and automatic resume. Runs on CPU and under `accelerate launch` unchanged.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from assistant.config import add_config_arguments, resolve_data_path
from assistant.lvlm import LVLM, build_lvlm
from training.checkpoint import STATE_FILE, build_settings, load_state, log_records, save_state
from training.lvlm.cache import FeatureCache
from training.lvlm.data import Sample, batch_order, encode_sample, load_samples, split_samples
from training.lvlm.export import export
from training.lvlm.heldout import heldout_accuracy


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--data", nargs="+", required=True, metavar="SYNTH_DIR", help="data_synth output folder(s)")
    p.add_argument("--out", default=None, help="run folder (default: train.out_dir); resumes from OUT/last")
    p.add_argument("--export", default=None, metavar="DIR", help="also write the final adapter + heads + config here")
    p.add_argument("--heldout", type=int, default=32, help="samples kept out of training for the answer accuracy")
    p.add_argument("--max-samples", type=int, default=0, help="use at most this many training samples (0 = all)")
    p.add_argument("--max-refs", type=int, default=2, help="cap on reference images per conversation")
    p.add_argument("--maps", choices=["expert", "mask"], default="expert",
                   help="anomaly maps for the prompt learner: the real expert (default) or the blurred true mask")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop (and save) after this much training time")
    p.add_argument("--stop-after-step", type=int, default=0,
                   help="stop (and save, export) once this step of the train.steps schedule is done (0 = run it all)")
    p.add_argument("--no-resume", action="store_true", help="start fresh even when OUT/last exists")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="warm start: load adapter + heads from this checkpoint before step 1 (not a resume: "
                        "fresh optimizer and schedule)")
    p.add_argument("--cache", default=None, metavar="DIR", help="feature cache folder (default: OUT/cache)")
    p.add_argument("--log-every", type=int, default=1, help="steps between log lines")


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


@dataclass
class Run:
    """What a training run works with, once set up."""
    cfg: object  # the run's Config (its lm.dtype is the one exported for inference)
    args: argparse.Namespace  # the command line
    accelerator: object  # accelerate.Accelerator
    samples: list[Sample]  # every sample of --data
    held: list[int]  # held-out sample indices (answer accuracy)
    train_idx: list[int]  # training sample indices
    cache: FeatureCache  # frozen features of the used samples
    model: torch.nn.Module  # the LVLM as prepared by accelerate (DDP-wrapped when launched)
    optimizer: torch.optim.Optimizer  # AdamW, one group for the heads and one for LoRA
    n_trainable: int  # trainable parameters
    t_cache: float  # seconds spent before training (data, tower, feature cache)

    @property
    def core(self) -> LVLM:
        return self.accelerator.unwrap_model(self.model)

    @property
    def out(self) -> Path:
        return Path(self.args.out or self.cfg.train.out_dir)


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    rec: dict = field(default_factory=lambda: {"loss": None})  # the latest log record
    seconds_before: float = 0.0  # training time of earlier (resumed) sessions
    trained_s: float = 0.0  # training time as of the last saved state: what a resume continues from, and the manifest's
    stopped_early: bool = False  # stopped before train.steps (--stop-after-step, --max-minutes)


def run(args) -> int:
    from assistant.config import load_config

    cfg = load_config(args.config, args.overrides)
    tc = cfg.train
    out = Path(args.out or tc.out_dir)
    accelerator = _accelerator(cfg)
    random.seed(tc.seed)
    np.random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    t_start = time.time()
    samples = [s for d in args.data for s in load_samples(d, args.max_refs, cfg.lvlm.evidence_changes,
                                                              cfg.lvlm.evidence_looks)]
    if len(samples) <= args.heldout:
        raise ValueError(f"{len(samples)} samples in {args.data}: need more than --heldout {args.heldout}")
    use, held, train_idx = split_samples(len(samples), args.max_samples, args.heldout, tc.seed)
    tower, cache = build_cache(cfg, args, accelerator, samples, use, out)
    t_cache = time.time() - t_start
    model = build_model(cfg, tower, args.init_from, accelerator)
    optimizer, n_trainable = make_optimizer(model, tc)
    progress = resume(model, optimizer, out, args.no_resume, accelerator)
    model, optimizer = accelerator.prepare(model, optimizer)
    r = Run(cfg, args, accelerator, samples, held, train_idx, cache, model, optimizer, n_trainable, t_cache)
    train(r, progress)
    if accelerator.is_main_process:
        finish(r, progress)
    return 0


def _accelerator(cfg):
    from accelerate.utils import DistributedDataParallelKwargs

    from training import make_accelerator

    # the verdict head only gets gradients with train.expert_loss_weight > 0: let DDP skip unused parameters
    return make_accelerator(cfg.vision.device, gradient_accumulation_steps=cfg.train.grad_accum,
                            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def build_cache(cfg, args, accelerator, samples: list[Sample], use: list[int], out: Path):
    """(vision tower, feature cache with the chunks of the `use`d samples built by the main process)."""
    from assistant.vision import build_vision_tower

    if accelerator.device.type == "cuda" and cfg.vision.device == "auto":
        cfg.vision.device = "cuda"
    tower = build_vision_tower(cfg.vision)
    cache = FeatureCache(cfg, samples, Path(args.cache) if args.cache else out / "cache", args.maps)
    if accelerator.is_main_process:
        expert = None
        if args.maps == "expert":
            from assistant.expert import build_expert

            expert = build_expert(cfg, tower).eval()
        cache.build(tower, expert, use)
    accelerator.wait_for_everyone()
    return tower, cache


def build_model(cfg, tower, init_from: str | None, accelerator) -> LVLM:
    """The LVLM to train (heads + adapter of a warm start, if any), in training mode with trainable heads."""
    build_cfg = cfg
    if accelerator.device.type == "cpu" and cfg.lm.dtype != "float32" and not cfg.lm.load_in_4bit:
        # CPU training keeps float32 weights (bf16 updates lose the small LoRA steps); the exported config
        # keeps the run's lm.dtype for inference
        build_cfg = dataclasses.replace(cfg, lm=dataclasses.replace(cfg.lm, dtype="float32"))
        accelerator.print(f"training on CPU in float32 (lm.dtype={cfg.lm.dtype} is kept for inference)")
    # a relative checkpoints/... path also resolves to the shipped checkpoint (package data)
    model = build_lvlm(build_cfg, tower, checkpoint=resolve_data_path(init_from) if init_from else None)
    if init_from:
        accelerator.print(f"initialised from {init_from}")
    if getattr(model.lm, "is_loaded_in_4bit", False):
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(model.lm, use_gradient_checkpointing=True)
    model.train()
    for p in model.heads.parameters():
        p.requires_grad_(True)
    return model


def make_optimizer(model: LVLM, tc) -> tuple[torch.optim.Optimizer, int]:
    """AdamW with train.lr for the heads and train.lora_lr for the adapter; the number of trainable parameters."""
    lora_params = [p for n, p in model.lm.named_parameters() if p.requires_grad]
    groups = [{"params": list(model.heads.parameters()), "lr": tc.lr, "base_lr": tc.lr}]
    if lora_params:
        groups.append({"params": lora_params, "lr": tc.lora_lr, "base_lr": tc.lora_lr})
    return torch.optim.AdamW(groups, weight_decay=0.0), sum(p.numel() for g in groups for p in g["params"])


def resume(model: LVLM, optimizer, out: Path, no_resume: bool, accelerator) -> Progress:
    """Continue from OUT/last when it holds a saved state (weights, optimizer, step, training time, the last
    held-out figures); otherwise start a fresh log."""
    last, log_path = out / "last", out / "log.jsonl"
    if (last / STATE_FILE).is_file() and not no_resume:
        model.load_heads(last)
        if hasattr(model.lm, "peft_config"):
            model.load_adapter(last)
        meta = load_state(optimizer, last)
        step = int(meta["step"])
        logged = log_records(log_path, step)
        seconds = float(meta.get("train_seconds") or (logged[-1]["seconds"] if logged else 0.0))
        held_logged = [r for r in logged if "heldout_answer_accuracy" in r]
        rec = {"loss": meta.get("loss"), **({k: v for k, v in held_logged[-1].items() if k.startswith("heldout")}
                                           if held_logged else {}),
               **{k: v for k, v in meta.items() if k.startswith("heldout")}}
        accelerator.print(f"resumed from {last} at step {step}")
        return Progress(step, rec, seconds, seconds)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
    return Progress()


def train(r: Run, p: Progress) -> None:
    """Steps p.step + 1 .. train.steps (or --stop-after-step), each over grad_accum micro-batches per process."""
    from tqdm import tqdm

    tc, acc = r.cfg.train, r.accelerator
    world, rank = acc.num_processes, acc.process_index
    per_step = tc.batch_size * tc.grad_accum * world
    order = batch_order(len(r.train_idx), tc.seed, tc.steps * per_step)
    warmup = max(1, tc.steps // 20)
    acc.print(f"{len(r.train_idx)} training samples, {len(r.held)} held out; {r.n_trainable} trainable parameters; "
              f"{tc.steps} steps x {per_step} samples; feature cache {r.cache.dir} ({r.t_cache:.0f} s)")
    bar = tqdm(total=tc.steps, initial=p.step, desc="lvlm", disable=not acc.is_main_process)
    t_train = time.time()
    stop_at = min(tc.steps, r.args.stop_after_step) if r.args.stop_after_step else tc.steps
    p.stopped_early = stop_at < tc.steps
    while p.step < stop_at:
        for g in r.optimizer.param_groups:
            g["lr"] = g["base_lr"] * lr_factor(p.step, tc.steps, warmup)
        starts = [p.step * per_step + micro * tc.batch_size * world + rank * tc.batch_size
                  for micro in range(tc.grad_accum)]
        losses, aux_losses, ntok = train_step(r, [[r.train_idx[order[j]] for j in range(b, b + tc.batch_size)]
                                                  for b in starts])
        p.step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses):.3f}")
        p.rec = {"step": p.step, "loss": float(np.mean(losses)), "lr_heads": r.optimizer.param_groups[0]["lr"],
                 "tokens": ntok, "seconds": round(p.seconds_before + time.time() - t_train, 1)}
        if aux_losses:
            p.rec["expert_loss"] = float(np.mean(aux_losses))
        if record_step(r, p, stop_at, t_train):
            p.stopped_early = True
            acc.print(f"stopping at step {p.step}: --max-minutes {r.args.max_minutes} reached")
            break
    bar.close()


def train_step(r: Run, batches: list[list[int]]) -> tuple[list[float], list[float], int]:
    """One optimizer step accumulated over micro-batches of sample indices: (LM losses, selector losses, tokens)."""
    tc, acc, core = r.cfg.train, r.accelerator, r.core
    losses, aux_losses, ntok = [], [], 0
    for idx in batches:
        vis = [r.cache.get(i) for i in idx]
        seqs = [encode_sample(core, v, r.samples[i], tc.max_len) for v, i in zip(vis, idx)]
        ids, mask, labels = core.collate(seqs)
        ntok += int(mask.sum())
        with acc.accumulate(r.model):
            outp = r.model(ids, mask, vis, labels=labels, output_verdict=tc.expert_loss_weight > 0)
            loss = outp.loss
            if tc.expert_loss_weight > 0:
                target = torch.tensor([float(r.samples[i].label) for i in idx], device=loss.device)
                aux = torch.nn.functional.binary_cross_entropy_with_logits(outp.verdict_logits, target)
                aux_losses.append(aux.item())
                loss = loss + tc.expert_loss_weight * aux
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_([q for g in r.optimizer.param_groups for q in g["params"]], 1.0)
            r.optimizer.step()
            r.optimizer.zero_grad()
        losses.append(outp.loss.item())
    return losses, aux_losses, ntok


def record_step(r: Run, p: Progress, stop_at: int, t_train: float) -> bool:
    """Held-out check, log line and OUT/last as the schedule asks (main process); True once --max-minutes is up."""
    tc, args, main = r.cfg.train, r.args, r.accelerator.is_main_process
    if main and (tc.eval_every and p.step % tc.eval_every == 0 or p.step == stop_at):
        p.rec.update(heldout_accuracy(r.core, r.cache, r.held))
        r.accelerator.print(json.dumps(p.rec))
    if main and (p.step % args.log_every == 0 or "heldout_answer_accuracy" in p.rec):
        with (r.out / "log.jsonl").open("a") as f:
            f.write(json.dumps(p.rec) + "\n")
    over_time = args.max_minutes and (time.time() - t_train) / 60 > args.max_minutes
    if main and (tc.save_every and p.step % tc.save_every == 0 or p.step == stop_at or over_time):
        p.trained_s = round(p.seconds_before + time.time() - t_train, 1)  # through this step and its held-out eval
        extra = {k: v for k, v in p.rec.items() if k.startswith(("loss", "heldout"))}
        save_state(r.core, r.optimizer, p.step, r.out / "last", {**extra, "train_seconds": p.trained_s})
    return bool(over_time)


def finish(r: Run, p: Progress) -> None:
    """OUT/final: adapter + heads + training_manifest.json; a copy as a checkpoint folder with --export."""
    final = r.out / "final"
    r.core.save_pretrained(final)
    manifest = training_manifest(r, p)
    (final / "training_manifest.json").write_text(json.dumps(manifest, indent=1))
    if r.args.export:
        export(r.cfg, final, Path(r.args.export), manifest)
        r.accelerator.print(f"exported to {r.args.export}")
    r.accelerator.print(json.dumps({k: manifest[k] for k in ("steps", "final_loss", "heldout", "train_seconds")}))


def training_manifest(r: Run, p: Progress) -> dict:
    """What the run did: command, data and their builds, schedule, sizes, time, host and the final figures."""
    args, tc = r.args, r.cfg.train
    return {
        "command": "python -m training " + " ".join(sys.argv[1:]), "init_from": args.init_from,
        "config": args.config, "overrides": args.overrides, "data": [str(d) for d in args.data],
        "data_builds": [build_settings(d) or {} for d in args.data], "seed": tc.seed, "steps": p.step,
        "planned_steps": tc.steps, "stopped_early": p.stopped_early, "batch_size": tc.batch_size,
        "grad_accum": tc.grad_accum, "processes": r.accelerator.num_processes, "train_samples": len(r.train_idx),
        "heldout_samples": len(r.held), "maps": args.maps, "max_refs": args.max_refs,
        "trainable_parameters": r.n_trainable, "cache_seconds": round(r.t_cache, 1),
        "train_seconds": p.trained_s, "device": str(r.accelerator.device),
        "host": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
        "final_loss": p.rec["loss"], "heldout": {k: v for k, v in p.rec.items() if k.startswith("heldout")},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
