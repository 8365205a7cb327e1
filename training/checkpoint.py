"""Files the trainers share: atomic tensor files, the resumable state of a run (model files + optimizer state),
its log, and the record of the data it trained on (folder names and build settings, never machine paths).

The expert trainer writes its feature cache and data record here; the LVLM trainer also its feature-cache chunks,
OUT/last (save_state / load_state) and log.jsonl.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

STATE_FILE = "trainer_state.json"  # step, optimizer param groups and the caller's extra fields
OPTIM_FILE = "optimizer.safetensors"  # optimizer state tensors, keyed "<param id>.<name>"


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors file written whole or not at all (a killed run leaves no torn file behind)."""
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def save_state(model, optimizer, step: int, out: Path, extra: dict) -> None:
    """`out` (e.g. OUT/last) replaced as a whole by: the model's files (`model.save_pretrained`), the optimizer
    state and STATE_FILE with `step` and `extra`."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    sd = optimizer.state_dict()
    tensors = {f"{pid}.{k}": v.detach().cpu() for pid, st in sd["state"].items() for k, v in st.items()
               if torch.is_tensor(v)}
    save_tensors(tensors, tmp / OPTIM_FILE)
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, "param_groups": sd["param_groups"], **extra}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def load_state(optimizer, ckpt: Path) -> dict:
    """Restore the optimizer saved by `save_state` in `ckpt` and return its STATE_FILE record (the model's
    weights are the caller's to load)."""
    from safetensors.torch import load_file

    meta = json.loads((ckpt / STATE_FILE).read_text())
    flat = load_file(str(ckpt / OPTIM_FILE))
    state: dict[int, dict] = {}
    for key, v in flat.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


def log_records(path: Path, upto: int) -> list[dict]:
    """Log lines of steps <= upto (a resumed run may have logged steps after its last checkpoint)."""
    if not path.is_file():
        return []
    recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r for r in recs if r.get("step", 0) <= upto]


def build_settings(folder: str | Path) -> dict | None:
    """The build.json of a data_synth folder (None when it has none or it does not parse)."""
    p = Path(folder) / "build.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except ValueError:
        return None


def data_info(folders) -> list[dict]:
    """Folder names and their build settings, never machine paths."""
    return [{"folder": Path(d).name, "build": build_settings(d)} for d in folders]
