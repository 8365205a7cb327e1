"""`inspection-assistant doctor`: load the configured vision tower and LM, run one forward each, print a table.

Vision: classify scikit-image's `coffee` photo (EfficientNet: ImageNet top-1, 967 = espresso) or encode it
(open_clip). LM: greedy-generate a few tokens for a short chat prompt. The first run of the embedded default
converts the packaged SmolLM2 GGUF into the safetensors cache (about half a minute); later runs read the cache.
Exit code 0 when every component worked, 1 otherwise (the failing row says why).
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

from assistant.config import add_config_arguments

ESPRESSO = 967  # ImageNet class of scikit-image's coffee photo


@dataclass
class Row:
    component: str  # "vision" / "lm"
    name: str  # model name from the config
    source: str = "-"  # weights file or directory
    device: str = "-"
    dtype: str = "-"
    load_s: float = float("nan")  # seconds to build/load
    forward_s: float = float("nan")  # seconds for one forward / generation
    cache: str = "-"  # cache path (LM safetensors cache)
    result: str = ""  # what the forward produced, or the error


def add_arguments(p) -> None:
    add_config_arguments(p)
    p.add_argument("--prompt", default="Is a scratch on a metal part a defect? Answer in one sentence.",
                   help="chat prompt for the LM check")
    p.add_argument("--max-new-tokens", type=int, default=12, help="tokens generated in the LM check")


def _vision_row(cfg) -> Row:
    import torch
    from skimage import data

    from assistant.imaging import load_image
    from assistant.vision import build_vision_tower

    row = Row("vision", cfg.vision.name)
    t0 = time.perf_counter()
    tower = build_vision_tower(cfg.vision)
    row.load_s = time.perf_counter() - t0
    p = next(tower.parameters())
    row.source, row.device, row.dtype = tower.source, str(p.device), str(p.dtype).replace("torch.", "")
    img = load_image(data.coffee())
    t0 = time.perf_counter()
    with torch.no_grad():
        if hasattr(tower, "classify"):
            logits = tower.classify(tower.preprocess([img], size=224))  # ImageNet head at its native 224 px
            top = int(logits.argmax(-1)[0])
            row.result = f"coffee -> ImageNet class {top}" + (
                " (espresso) OK" if top == ESPRESSO else " (expected 967)"
            )
            ok = top == ESPRESSO or tower.source == "random init"
        else:
            out = tower.encode([img])
            row.result = (
                f"coffee -> {len(out.patch_tokens)} levels x {tuple(out.patch_tokens[0].shape)}, grid {out.grid}"
            )
            ok = True
    row.forward_s = time.perf_counter() - t0
    if not ok:
        raise RuntimeError(row.result)
    return row


def _lm_row(cfg, prompt: str, max_new_tokens: int) -> Row:
    import torch

    from assistant.lvlm.lm import load_lm
    from assistant.vision.base import resolve_device

    row = Row("lm", cfg.lm.name)
    t0 = time.perf_counter()
    model, tok = load_lm(cfg.lm)
    info = model.load_info
    if not info.quantized_4bit:  # 4-bit models are placed by bitsandbytes already
        model.to(resolve_device(cfg.vision.device))
    row.load_s = time.perf_counter() - t0
    p = next(model.parameters())
    row.source, row.cache = info.source, info.cache_path or "-"
    row.device, row.dtype = str(p.device), str(p.dtype).replace("torch.", "")
    if info.converted:
        row.source += " (converted from GGUF now)"
    enc = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True).to(p.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    row.forward_s = time.perf_counter() - t0
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    row.result = f"{out.shape[1] - enc['input_ids'].shape[1]} tokens: {text!r}"
    if not text and cfg.lm.name != "tiny":  # random tiny LMs may well emit only whitespace
        raise RuntimeError("the LM generated no text")
    return row


def _print_table(rows: list[Row]) -> None:
    cols = ["component", "name", "source", "device", "dtype", "load s", "forward s", "cache path"]
    data = [[r.component, r.name, r.source, r.device, r.dtype, f"{r.load_s:.2f}", f"{r.forward_s:.2f}", r.cache]
            for r in rows]
    widths = [max(len(c), *(len(d[i]) for d in data)) for i, c in enumerate(cols)]
    line = "  ".join("-" * w for w in widths)
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print(line)
    for d in data:
        print("  ".join(x.ljust(w) for x, w in zip(d, widths)))
    print()
    for r in rows:
        print(f"{r.component}: {r.result}")


def run(args) -> int:
    t_start = time.perf_counter()
    import torch
    import transformers

    from assistant.config import load_config

    cfg = load_config(args.config, args.overrides)
    transformers.utils.logging.disable_progress_bar()  # the table is the output
    print(f"python {platform.python_version()}  torch {torch.__version__}  transformers {transformers.__version__}  "
          f"threads {torch.get_num_threads()}  cuda {torch.cuda.is_available()}  "
          f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')}  config {args.config}")
    rows, failed = [], False
    for fn, name, extra in ((_vision_row, cfg.vision.name, ()),
                            (_lm_row, cfg.lm.name, (args.prompt, args.max_new_tokens))):
        try:
            rows.append(fn(cfg, *extra))
        except Exception as e:  # noqa: BLE001 -- doctor reports every failure in its row and carries on
            failed = True
            rows.append(Row("vision" if fn is _vision_row else "lm", name, result=f"FAILED: {type(e).__name__}: {e}"))
    print()
    _print_table(rows)
    print(
        f"\ntotal {time.perf_counter() - t_start:.1f} s (process CPU {time.process_time():.1f} s; "
        "a much larger wall time means the CPU is shared)"
    )
    return 1 if failed else 0
