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
import hashlib
import json
import math
import os
import platform
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from assistant.constants import IMAGE_TOKEN
from assistant.expert import AnomalyResult
from assistant.lvlm import LVLM, VisualInputs, build_lvlm, image_features, resize_map
from assistant.wording import SUSPICION, evidence_text

STATE_FILE = "trainer_state.json"
OPTIM_FILE = "optimizer.safetensors"
CHUNK = 64  # samples per feature-cache file


@dataclass
class Sample:
    id: str  # manifest id
    root: Path  # data folder
    image: str  # image path relative to root
    mask: str | None  # mask path relative to root (anomalous samples)
    label: int  # 1 = anomalous
    refs: list[str]  # reference normal paths relative to root (the conversation's k-shot)
    pool: list[str]  # the category's reference pool
    turns: list[tuple[str, str]]  # (question, answer) pairs
    evidence: str  # the verdict in words


def add_arguments(p: argparse.ArgumentParser) -> None:
    from assistant.cli_args import add_config_arguments

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


# ----------------------------------------------------------------------------------------------- data
def load_samples(root: str | Path, max_refs: int) -> list[Sample]:
    """Join manifest.jsonl and conversations.json of one data_synth folder."""
    root = Path(root)
    man, conv = root / "manifest.jsonl", root / "conversations.json"
    if not man.is_file() or not conv.is_file():
        raise FileNotFoundError(f"{root}: expected manifest.jsonl and conversations.json from `python -m data_synth build`")
    recs = {}
    for line in man.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            recs[r["id"]] = r
    out = []
    for c in json.loads(conv.read_text()):
        r = recs.get(c["id"])
        if r is None:
            raise ValueError(f"{conv}: conversation {c['id']} has no manifest record")
        msgs = c["conversations"]
        turns = []
        for i in range(0, len(msgs) - 1, 2):
            if msgs[i]["from"] != "human" or msgs[i + 1]["from"] != "gpt":
                raise ValueError(f"{conv}: conversation {c['id']} is not human/gpt alternating at turn {i}")
            turns.append((msgs[i]["value"].replace(IMAGE_TOKEN, "").strip(), msgs[i + 1]["value"].strip()))
        label = int(r["label"])
        ev = evidence_text(bool(label), SUSPICION.get(r.get("severity") or "", "suspicious"), r.get("position"),
                           r.get("size"), r.get("area_fraction"), r.get("n_components") or None)
        out.append(Sample(c["id"], root, r["image"], r.get("mask"), label, list(c.get("references", []))[:max_refs],
                          list(r.get("references", [])), turns, ev))
    return out


def _pseudo_result(mask: np.ndarray, rng: np.random.Generator) -> AnomalyResult:
    """A map made from the true mask (blurred, with noise): the --maps mask alternative to the expert."""
    import cv2

    amap = 0.6 + 0.1 * rng.standard_normal(mask.shape).astype(np.float32)
    amap = cv2.GaussianBlur(amap + 1.5 * mask.astype(np.float32), (0, 0), 3) if mask.size else amap
    label = bool(mask.any())
    return AnomalyResult(anomaly_map=amap.astype(np.float32), pred_score=float(amap.max()), pred_label=label,
                         pred_mask=mask.astype(bool), threshold=1.0, pixel_threshold=1.0)


class FeatureCache:
    """Frozen features per sample, built once in chunks of CHUNK samples (an interrupted build resumes)."""

    def __init__(self, cfg, samples: list[Sample], cache_dir: Path, maps: str):
        self.cfg, self.samples, self.maps = cfg, samples, maps
        lv = cfg.lvlm
        ident = json.dumps({"vision": cfg.vision.__dict__, "expert": cfg.expert.__dict__, "pool": lv.pool_tokens,
                            "levels": lv.projector_levels, "second_look": lv.second_look, "maps": maps,
                            "ids": [(str(s.root), s.id, s.refs) for s in samples]}, sort_keys=True, default=str)
        self.dir = cache_dir / hashlib.sha1(ident.encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        self._chunks: dict[int, dict] = {}

    def _path(self, c: int) -> Path:
        return self.dir / f"chunk_{c:05d}.safetensors"

    def build(self, tower, expert=None, indices: list[int] | None = None) -> None:
        """Build the missing chunks that hold `indices` (default: all samples)."""
        from safetensors.torch import save_file
        from tqdm import tqdm

        from assistant.imaging import load_image, load_mask

        chunks = sorted({i // CHUNK for i in indices}) if indices is not None else range(math.ceil(len(self.samples) / CHUNK))
        todo = [c for c in chunks if not self._path(c).is_file()]
        if not todo:
            return
        lv = self.cfg.lvlm
        states: dict = {}
        ref_cache: dict = {}

        def encode_refs(paths: list[Path]):
            outs = []
            for p in paths:
                if p not in ref_cache:
                    ref_cache[p] = (load_image(p), tower.encode([load_image(p)]))
                outs.append(ref_cache[p][1])
            if not outs:
                return None
            from assistant.vision.base import VisionOutput

            return VisionOutput([torch.cat([o.patch_tokens[i] for o in outs]) for i in range(len(outs[0].patch_tokens))],
                                torch.cat([o.global_token for o in outs]), outs[0].grid)

        bar = tqdm(total=sum(min(CHUNK, len(self.samples) - c * CHUNK) for c in todo), desc="caching features")
        for c in todo:
            chunk = self.samples[c * CHUNK:(c + 1) * CHUNK]
            rows: dict[str, list] = {k: [] for k in ("query", "look", "global", "crop", "refs", "amap", "mask", "thr")}
            counts = []
            for s in chunk:
                img = load_image(s.root / s.image)
                q_out = tower.encode([img])
                if self.maps == "expert" and expert is not None:
                    key_refs = s.pool[:1] or s.refs[:1]  # one 1-shot state per category (fits are slow)
                    key = tuple(str(s.root / r) for r in key_refs)
                    if key not in states:
                        states[key] = expert.fit_references(tower, [load_image(p) for p in key])
                    result = expert.predict(q_out, states[key], (img.size[1], img.size[0]))[0]
                else:
                    mask = load_mask(s.root / s.mask, img.size) if s.mask else np.zeros(img.size[::-1], bool)
                    result = _pseudo_result(mask, np.random.default_rng(int(s.id) if s.id.isdigit() else 0))
                r_out = encode_refs([s.root / r for r in s.refs])
                f = image_features(tower, q_out, lv.pool_tokens, img, result.anomaly_map, r_out, lv.projector_levels,
                                   lv.second_look)
                amap, mask = resize_map(result.anomaly_map, result.pred_mask)
                rows["query"].append(f.query)
                rows["look"].append(f.look)
                rows["global"].append(f.global_token)
                rows["crop"].append(f.crop if f.crop is not None else torch.zeros(1, f.query.shape[-1]))
                rows["refs"].append(f.refs.reshape(-1, f.query.shape[-1]))
                rows["amap"].append(amap)
                rows["mask"].append(mask)
                rows["thr"].append(torch.tensor(float(result.threshold)))
                counts.append(f.refs.shape[0])
                bar.update(1)
            tensors = {k: torch.stack(v).half() if k not in ("mask", "thr", "refs") else None for k, v in rows.items()}
            tensors["mask"] = torch.stack(rows["mask"]).to(torch.uint8)
            tensors["thr"] = torch.stack(rows["thr"]).float()
            tensors["refs"] = torch.cat(rows["refs"]).half()
            tensors["ref_counts"] = torch.tensor(counts, dtype=torch.long)
            tmp = self._path(c).with_suffix(".tmp")
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
            os.replace(tmp, self._path(c))
        bar.close()

    def get(self, i: int) -> VisualInputs:
        from safetensors.torch import load_file

        c, j = divmod(i, CHUNK)
        if c not in self._chunks:
            self._chunks[c] = load_file(str(self._path(c)))
        t = self._chunks[c]
        counts = t["ref_counts"]
        p = t["query"].shape[1]
        r0 = int(counts[:j].sum()) * p
        k = int(counts[j])
        s = self.samples[i]
        return VisualInputs(t["query"][j].float(), t["look"][j].float(), t["global"][j].float(),
                            t["refs"][r0:r0 + k * p].float().view(k, p, t["query"].shape[-1]),
                            t["crop"][j].float() if self.cfg.lvlm.second_look else None,
                            t["amap"][j].float(), t["mask"][j].float(), float(t["thr"][j]), s.evidence)


# ----------------------------------------------------------------------------------------------- batches
def encode_sample(model: LVLM, vis: VisualInputs, s: Sample, max_len: int):
    """(ids, labels) of the conversation, dropping trailing turns until it fits max_len."""
    turns = list(s.turns)
    while True:
        ids, _ = model.tokenize(model.messages(vis.refs.shape[0], vis.evidence, turns))
        if ids.numel() <= max_len or len(turns) == 1:
            return model.tokenize(model.messages(vis.refs.shape[0], vis.evidence, turns), max_len=max_len)
        turns = turns[:-1]


def batch_order(n: int, seed: int, total: int) -> list[int]:
    """Deterministic sample order over epochs (each epoch a fresh permutation)."""
    rng = np.random.default_rng(seed)
    out: list[int] = []
    while len(out) < total:
        out.extend(rng.permutation(n).tolist())
    return out[:total]


# ----------------------------------------------------------------------------------------------- checkpoints
def save_state(model: LVLM, optimizer, step: int, out: Path, extra: dict) -> None:
    from safetensors.torch import save_file

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    sd = optimizer.state_dict()
    tensors = {f"{pid}.{k}": v.detach().cpu().contiguous() for pid, st in sd["state"].items() for k, v in st.items()
               if torch.is_tensor(v)}
    save_file(tensors, str(tmp / OPTIM_FILE))
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, "param_groups": sd["param_groups"], **extra}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def load_state(model: LVLM, optimizer, ckpt: Path) -> dict:
    from safetensors.torch import load_file

    model.load_heads(ckpt)
    if hasattr(model.lm, "peft_config"):
        model.load_adapter(ckpt)
    meta = json.loads((ckpt / STATE_FILE).read_text())
    flat = load_file(str(ckpt / OPTIM_FILE))
    state: dict[int, dict] = {}
    for key, v in flat.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


# ----------------------------------------------------------------------------------------------- evaluation
def detection_question(sample: Sample) -> str:
    """The first question whose reference answer parses to the sample's label: with --opener-ratio a conversation
    may open with "where?" (no verdict) or "is it safe to ship?" (whose "yes" means normal)."""
    from assistant.wording import parse_verdict

    want = bool(sample.label)
    return next((q for q, a in sample.turns if parse_verdict(a) is want), sample.turns[0][0])


@torch.no_grad()
def heldout_accuracy(model: LVLM, cache: FeatureCache, idx: list[int], batch: int = 8) -> dict:
    """Answer the detection question of held-out conversations (`detection_question`); parse yes/no; compare
    with the label."""
    from assistant.wording import parse_verdict

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


# ----------------------------------------------------------------------------------------------- main
def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def run(args) -> int:
    from tqdm import tqdm

    from assistant.config import load_config
    from assistant.vision.base import build_vision_tower
    from training import make_accelerator

    cfg = load_config(args.config, args.overrides)
    tc = cfg.train
    out = Path(args.out or tc.out_dir)
    from accelerate.utils import DistributedDataParallelKwargs

    # the verdict head only gets gradients with train.expert_loss_weight > 0: let DDP skip unused parameters
    accelerator = make_accelerator(cfg.vision.device, gradient_accumulation_steps=tc.grad_accum,
                                   kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    random.seed(tc.seed)
    np.random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    t_start = time.time()

    samples = [s for d in args.data for s in load_samples(d, args.max_refs)]
    if len(samples) <= args.heldout:
        raise ValueError(f"{len(samples)} samples in {args.data}: need more than --heldout {args.heldout}")
    use = list(range(min(len(samples), args.max_samples + args.heldout) if args.max_samples else len(samples)))
    order = list(use)  # the first samples in file order (cache chunks are built only for these)
    random.Random(tc.seed).shuffle(order)
    held, train_idx = sorted(order[:args.heldout]), order[args.heldout:]

    cfg.vision.device = "cuda" if accelerator.device.type == "cuda" and cfg.vision.device == "auto" else cfg.vision.device
    tower = build_vision_tower(cfg.vision)
    cache = FeatureCache(cfg, samples, Path(args.cache) if args.cache else out / "cache", args.maps)
    if accelerator.is_main_process:
        expert = None
        if args.maps == "expert":
            from assistant.expert import build_expert

            expert = build_expert(cfg, tower).eval()
        cache.build(tower, expert, use)
    accelerator.wait_for_everyone()
    t_cache = time.time() - t_start

    build_cfg = cfg
    if accelerator.device.type == "cpu" and cfg.lm.dtype != "float32" and not cfg.lm.load_in_4bit:
        # CPU training keeps float32 weights (bf16 updates lose the small LoRA steps); the exported config
        # keeps the run's lm.dtype for inference
        build_cfg = dataclasses.replace(cfg, lm=dataclasses.replace(cfg.lm, dtype="float32"))
        accelerator.print(f"training on CPU in float32 (lm.dtype={cfg.lm.dtype} is kept for inference)")
    model = build_lvlm(build_cfg, tower, checkpoint=args.init_from)  # heads + adapter of a warm start, if any
    if args.init_from:
        accelerator.print(f"initialised from {args.init_from}")
    lm = model.lm
    if getattr(lm, "is_loaded_in_4bit", False):
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(lm, use_gradient_checkpointing=True)
    model.train()
    for p in model.heads.parameters():
        p.requires_grad_(True)
    lora_params = [p for n, p in model.lm.named_parameters() if p.requires_grad]
    groups = [{"params": list(model.heads.parameters()), "lr": tc.lr, "base_lr": tc.lr}]
    if lora_params:
        groups.append({"params": lora_params, "lr": tc.lora_lr, "base_lr": tc.lora_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    n_trainable = sum(p.numel() for g in groups for p in g["params"])

    step, log_path = 0, out / "log.jsonl"
    last = out / "last"
    rec: dict = {"loss": None}
    seconds_before = 0.0  # training time of earlier (resumed) sessions
    # training time as of the last saved state: what a resume continues from, and what the manifest reports
    trained_s = 0.0
    if (last / STATE_FILE).is_file() and not args.no_resume:
        meta = load_state(model, optimizer, last)
        logged = _log_records(log_path, int(meta["step"]))
        step = int(meta["step"])
        seconds_before = trained_s = float(meta.get("train_seconds") or (logged[-1]["seconds"] if logged else 0.0))
        held_logged = [r for r in logged if "heldout_answer_accuracy" in r]
        rec = {"loss": meta.get("loss"), **({k: v for k, v in held_logged[-1].items() if k.startswith("heldout")}
                                           if held_logged else {}),
               **{k: v for k, v in meta.items() if k.startswith("heldout")}}
        accelerator.print(f"resumed from {last} at step {step}")
    elif accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
    model, optimizer = accelerator.prepare(model, optimizer)
    core: LVLM = accelerator.unwrap_model(model)

    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = tc.batch_size * tc.grad_accum * world
    order = batch_order(len(train_idx), tc.seed, tc.steps * per_step)
    warmup = max(1, tc.steps // 20)
    accelerator.print(f"{len(train_idx)} training samples, {len(held)} held out; {n_trainable} trainable parameters; "
                      f"{tc.steps} steps x {per_step} samples; feature cache {cache.dir} ({t_cache:.0f} s)")
    bar = tqdm(total=tc.steps, initial=step, desc="lvlm", disable=not accelerator.is_main_process)
    t_train, stopped_early = time.time(), False
    stop_at = min(tc.steps, args.stop_after_step) if args.stop_after_step else tc.steps
    stopped_early = stop_at < tc.steps
    while step < stop_at:
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * lr_factor(step, tc.steps, warmup)
        losses, aux_losses, ntok = [], [], 0
        for micro in range(tc.grad_accum):
            base = step * per_step + micro * tc.batch_size * world + rank * tc.batch_size
            idx = [train_idx[order[j]] for j in range(base, base + tc.batch_size)]
            vis = [cache.get(i) for i in idx]
            seqs = [encode_sample(core, v, samples[i], tc.max_len) for v, i in zip(vis, idx)]
            ids, mask, labels = core.collate(seqs)
            ntok += int(mask.sum())
            with accelerator.accumulate(model):
                outp = model(ids, mask, vis, labels=labels)
                loss = outp.loss
                if tc.expert_loss_weight > 0:
                    target = torch.tensor([float(samples[i].label) for i in idx], device=loss.device)
                    aux = torch.nn.functional.binary_cross_entropy_with_logits(core.last_verdict_logits, target)
                    aux_losses.append(aux.item())
                    loss = loss + tc.expert_loss_weight * aux
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
                optimizer.step()
                optimizer.zero_grad()
            losses.append(outp.loss.item())
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses):.3f}")
        rec = {"step": step, "loss": float(np.mean(losses)), "lr_heads": optimizer.param_groups[0]["lr"],
               "tokens": ntok, "seconds": round(seconds_before + time.time() - t_train, 1)}
        if aux_losses:
            rec["expert_loss"] = float(np.mean(aux_losses))
        if accelerator.is_main_process and (tc.eval_every and step % tc.eval_every == 0 or step == stop_at):
            rec.update(heldout_accuracy(core, cache, held))
            accelerator.print(json.dumps(rec))
        if accelerator.is_main_process and (step % args.log_every == 0 or "heldout_answer_accuracy" in rec):
            with log_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
        over_time = args.max_minutes and (time.time() - t_train) / 60 > args.max_minutes
        if accelerator.is_main_process and (tc.save_every and step % tc.save_every == 0 or step == stop_at or over_time):
            trained_s = round(seconds_before + time.time() - t_train, 1)  # through this step and its held-out eval
            save_state(core, optimizer, step, last, {**{k: v for k, v in rec.items() if k.startswith(("loss", "heldout"))},
                                                     "train_seconds": trained_s})
        if over_time:
            stopped_early = True
            accelerator.print(f"stopping at step {step}: --max-minutes {args.max_minutes} reached")
            break
    bar.close()
    if accelerator.is_main_process:
        final = out / "final"
        core.save_pretrained(final)
        manifest = {
            "command": "python -m training " + " ".join(sys.argv[1:]), "init_from": args.init_from,
            "config": args.config, "overrides": args.overrides, "data": [str(d) for d in args.data],
            "data_builds": [_build_info(d) for d in args.data], "seed": tc.seed, "steps": step,
            "planned_steps": tc.steps, "stopped_early": stopped_early, "batch_size": tc.batch_size,
            "grad_accum": tc.grad_accum, "processes": world, "train_samples": len(train_idx),
            "heldout_samples": len(held), "maps": args.maps, "max_refs": args.max_refs,
            "trainable_parameters": n_trainable, "cache_seconds": round(t_cache, 1),
            "train_seconds": trained_s, "device": str(accelerator.device),
            "host": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
            "final_loss": rec["loss"], "heldout": {k: v for k, v in rec.items() if k.startswith("heldout")},
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (final / "training_manifest.json").write_text(json.dumps(manifest, indent=1))
        if args.export:
            export(cfg, final, Path(args.export), manifest)
            accelerator.print(f"exported to {args.export}")
        accelerator.print(json.dumps({k: manifest[k] for k in ("steps", "final_loss", "heldout", "train_seconds")}))
    return 0


def _log_records(path: Path, upto: int) -> list[dict]:
    """Log lines of steps <= upto (a resumed run may have logged steps after its last checkpoint)."""
    if not path.is_file():
        return []
    recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r for r in recs if r.get("step", 0) <= upto]


def _build_info(d) -> dict:
    p = Path(d) / "build.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except ValueError:
        return {}


def export(cfg, final: Path, dest: Path, manifest: dict) -> None:
    """Copy adapter + heads + manifest to a checkpoint dir and write its config.json (the run config). The
    config points the expert at `dest`, so the trained expert the run used is copied along with it (without
    it the exported checkpoint would load an untrained expert with other thresholds)."""
    from assistant.expert import CONFIG_NAME, WEIGHTS_NAME, trained_expert_dir

    dest.mkdir(parents=True, exist_ok=True)
    for f in final.iterdir():
        if f.is_file() and f.name != "README.md":  # peft's empty model-card template
            shutil.copy2(f, dest / f.name)
    src = trained_expert_dir(cfg)
    if src is not None and src.resolve() != dest.resolve():
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            if (src / name).is_file():
                shutil.copy2(src / name, dest / name)
    write_checkpoint_config(cfg, dest)
    ac = dest / "adapter_config.json"
    if ac.is_file():  # peft records the local cache path of the base LM; keep the model name instead
        a = json.loads(ac.read_text())
        a["base_model_name_or_path"] = cfg.lm.name
        ac.write_text(json.dumps(a, indent=2))


def write_checkpoint_config(cfg, dest: Path) -> None:
    """config.json of a checkpoint: the sections that define the LVLM (vision, lm, lora, lvlm); the expert keeps
    its own defaults and expert_config.json (only its checkpoint dir is set), training settings live in the manifest."""
    conf = cfg.to_dict()
    conf["lvlm"]["checkpoint"] = str(dest)
    slim = {k: conf[k] for k in ("vision", "lm", "lora", "lvlm")}
    slim["expert"] = {"checkpoint": str(dest), "object_name": conf["expert"]["object_name"]}
    (Path(dest) / "config.json").write_text(json.dumps(slim, indent=1))


if __name__ == "__main__":  # `python -m training.lvlm ...` (same as `python -m training lvlm ...`)
    _p = argparse.ArgumentParser(prog="python -m training lvlm")
    add_arguments(_p)
    sys.exit(run(_p.parse_args()))
