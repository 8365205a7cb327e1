"""GPU-only paths on tiny random models: bitsandbytes 4-bit loading, 4-bit LoRA training through the CLI, and the
assistant on CUDA against the CPU. Skipped where no GPU is visible (CI, and `make test`, which hides GPUs); run them
on a GPU machine with

    CUDA_VISIBLE_DEVICES=0 python -m pytest tests/test_cuda.py
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.tiny import part_image as _img
from tests.tiny import perturb_trainable

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _prompt_ids(tok, device):
    return tok("Is anything wrong with the part?", return_tensors="pt").input_ids.to(device)


def test_4bit_lm_is_quantized_on_the_gpu_and_close_to_full_precision(tiny_lm_dir):
    bnb = pytest.importorskip("bitsandbytes")
    from assistant.config import LMConfig
    from assistant.lvlm.lm import load_lm

    q4, tok = load_lm(LMConfig(name=str(tiny_lm_dir), load_in_4bit=True, dtype="bfloat16"))
    full, _ = load_lm(LMConfig(name=str(tiny_lm_dir), dtype="bfloat16"))
    full = full.cuda()
    assert q4.load_info.quantized_4bit
    linear4 = [n for n, m in q4.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 2 * 7, linear4  # 2 layers x (q, k, v, o, gate, up, down); lm_head stays full
    assert next(q4.parameters()).device.type == "cuda"
    ids = _prompt_ids(tok, "cuda")
    with torch.no_grad():
        a, b = q4(input_ids=ids).logits.float(), full(input_ids=ids).logits.float()
    corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
    print(f"4-bit vs bf16 logits correlation {corr:.4f}")
    assert corr > 0.9  # NF4 keeps the function; a broken quantization would not correlate
    out = q4.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]


def test_4bit_lora_training_cli_on_the_gpu_lowers_the_loss_and_exports(tiny_lm_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    import argparse

    from training import lvlm as train_lvlm

    data = tmp_path / "synth"
    subprocess.run([sys.executable, "-m", "data_synth", "build", "--source", "procedural", "--out", str(data), "--n",
                    "12", "--seed", "0", "--size", "64", "--quiet"], check=True, capture_output=True)
    out, export = tmp_path / "run", tmp_path / "export"
    p = argparse.ArgumentParser()
    train_lvlm.add_arguments(p)
    args = p.parse_args(["--config", "tiny", "--set", f"lm.name={tiny_lm_dir}", "--set", "lvlm.checkpoint=null",
                         "--set", "expert.checkpoint=null", "--set", "vision.device=auto",
                         "--set", "lm.load_in_4bit=true", "--set", "lm.dtype=bfloat16",
                         "--set", "train.max_len=400", "--set", "train.steps=16", "--set", "train.lr=3e-3",
                         "--set", "train.lora_lr=3e-3", "--set", "train.eval_every=16",
                         "--data", str(data), "--out", str(out), "--heldout", "2", "--export", str(export)])
    assert train_lvlm.run(args) == 0
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log]
    print("4-bit GPU training losses", [round(x, 3) for x in losses])
    assert len(losses) == 16 and np.mean(losses[-4:]) < np.mean(losses[:4])
    assert {"adapter_model.safetensors", "lvlm_heads.safetensors", "config.json"} <= {p.name for p in export.iterdir()}

    from assistant.model import Assistant

    asst = Assistant.from_pretrained(str(export), overrides=["lm.load_in_4bit=true"], device="cuda")
    assert asst.lvlm.lm.is_loaded_in_4bit and asst.tower.device.type == "cuda"
    ev = asst.analyze(_img(3, defect=True), [_img(4)])
    assert ev.result.anomaly_map.shape == (32, 32)
    answer = asst.answer(ev, "Is there any anomaly in the image?", max_new_tokens=6)
    assert isinstance(answer, str)


@pytest.fixture
def no_tf32():
    """float32 convolutions and matmuls in full precision on the GPU (cuDNN uses TF32 by default)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def test_assistant_on_cuda_matches_cpu(tiny_lm_dir, tmp_path, no_tf32):
    """Same checkpoint, float32 on both: the expert's map and score and the greedy answer agree."""
    from assistant.config import load_config
    from assistant.lvlm import build_lvlm
    from assistant.model import Assistant
    from assistant.vision import build_vision_tower

    cfg = load_config("tiny", [f"lm.name={tiny_lm_dir}", "lvlm.checkpoint=null", "expert.checkpoint=null"])
    model = build_lvlm(cfg, build_vision_tower(cfg.vision))
    perturb_trainable(model, 5)
    model.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))

    runs = {}
    for device in ("cpu", "cuda"):
        asst = Assistant.from_pretrained(str(tmp_path), device=device)
        assert next(asst.lvlm.parameters()).device.type == device
        ev = asst.analyze(_img(1, defect=True), [_img(2)])
        q = "Is there any anomaly in the image?"
        runs[device] = (ev.result, asst.answer(ev, q, max_new_tokens=8))
    (rc, ac), (rg, ag) = runs["cpu"], runs["cuda"]
    mc, mg = torch.from_numpy(rc.anomaly_map), torch.from_numpy(rg.anomaly_map)
    assert torch.allclose(mc, mg, rtol=1e-3, atol=1e-3 * float(mc.abs().max()))
    assert float(rc.pred_score) == pytest.approx(float(rg.pred_score), rel=1e-3)
    assert bool(rc.pred_label) == bool(rg.pred_label)
    assert ac == ag
