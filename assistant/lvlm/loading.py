"""Loading and saving the LVLM's weights: the language model (plain, or split out of an HF LLaVA checkpoint),
its peft LoRA adapter, and the small heads.

A checkpoint directory holds only what training changes, all safetensors (nothing is ever unpickled):
- `adapter_model.safetensors` + `adapter_config.json`: the LoRA adapter (peft's own format, without the
  embedding layers);
- `lvlm_heads.safetensors` + `lvlm_heads.json`: the heads' state dict and the dimensions they were built with.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from assistant.lvlm.lm import load_lm

HEADS_FILE = "lvlm_heads.safetensors"
HEADS_CONFIG = "lvlm_heads.json"
ADAPTER_FILE = "adapter_model.safetensors"


# ----------------------------------------------------------------------------------------------- LoRA
def wrap_lora(lm, lora_cfg):
    """peft LoRA around `lm` on those of lora_cfg.target_modules the LM has (clear error when none)."""
    from peft import LoraConfig, get_peft_model

    names = {n.split(".")[-1] for n, _ in lm.named_modules()}
    targets = [t for t in lora_cfg.target_modules if t in names]
    if not targets:
        raise ValueError(f"lora.target_modules {lora_cfg.target_modules}: none found in the LM "
                         f"(has e.g. {sorted(names)[:12]})")
    cfg = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout, target_modules=targets,
                     task_type="CAUSAL_LM")
    return get_peft_model(lm, cfg)


# ----------------------------------------------------------------------------------------------- checkpoint IO
def save_checkpoint(lm, heads: nn.Module, out_dir: str | Path) -> None:
    """Adapter (peft, safetensors, without embedding layers) + heads (safetensors + json of `heads.dims`)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(lm, "peft_config"):
        lm.save_pretrained(out, save_embedding_layers=False, safe_serialization=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in heads.state_dict().items()}
    save_file(state, out / HEADS_FILE)
    (out / HEADS_CONFIG).write_text(json.dumps(heads.dims, indent=1))


def load_heads(heads: nn.Module, ckpt_dir: str | Path, device) -> None:
    """Load `HEADS_FILE` into `heads`; a shape or key mismatch names the tensors."""
    from safetensors.torch import load_file

    path = Path(ckpt_dir) / HEADS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"LVLM heads not found: expected {path}")
    state = load_file(path, device=str(device))
    own = heads.state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{path} does not fit this config: {'; '.join(bad[:4])}")
    missing, unexpected = heads.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: missing {missing[:4]}, unexpected {unexpected[:4]}")


def load_adapter(lm, ckpt_dir: str | Path, device) -> None:
    """Load adapter weights saved by save_checkpoint into the (already LoRA-wrapped) LM."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(ckpt_dir) / ADAPTER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"LoRA adapter not found: expected {path}")
    if not hasattr(lm, "peft_config"):
        raise ValueError(f"{path} holds a LoRA adapter but lora.enabled is false in the config")
    res = set_peft_model_state_dict(lm, load_file(path, device=str(device)))
    unexpected = getattr(res, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"{path}: adapter keys do not fit this LM (e.g. {unexpected[:3]})")


# ----------------------------------------------------------------------------------------------- the LM
def load_language_model(cfg):
    """(causal LM, tokenizer, projector state or None). LLaVA checkpoints are split into their LM and projector."""
    name = cfg.lm.name
    if _is_llava(name):
        return load_llava(cfg)
    if cfg.lm.load_in_4bit and not torch.cuda.is_available():
        warnings.warn("lm.load_in_4bit needs CUDA (bitsandbytes); no GPU here, loading in "
                      f"{cfg.lm.dtype} instead", stacklevel=2)
        cfg.lm.load_in_4bit = False
    lm, tok = load_lm(cfg.lm)
    return lm, tok, None


def _is_llava(name: str) -> bool:
    p = Path(name)
    if p.is_dir() and (p / "config.json").is_file():
        try:
            return json.loads((p / "config.json").read_text()).get("model_type") == "llava"
        except ValueError:
            return False
    return "llava" in name.lower()


def llava_parts(llava) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """LlavaForConditionalGeneration -> (LlamaForCausalLM-like causal LM sharing its weights, projector state
    for `Projector(input_norm=False)`)."""
    from transformers import AutoModelForCausalLM

    text_cfg = llava.config.text_config
    lm = AutoModelForCausalLM.from_config(text_cfg, dtype=llava.dtype)
    lm.model = llava.model.language_model  # share modules, no copy
    lm.lm_head = llava.lm_head
    pj = llava.model.multi_modal_projector
    proj = {"fc1.weight": pj.linear_1.weight, "fc2.weight": pj.linear_2.weight}
    if pj.linear_1.bias is not None:
        proj.update({"fc1.bias": pj.linear_1.bias, "fc2.bias": pj.linear_2.bias})
    return lm, {k: v.detach() for k, v in proj.items()}


def load_llava(cfg):
    """Load an HF LLaVA checkpoint (id or dir), 4-bit on CUDA when asked; clear error offline.
    -> (causal LM, tokenizer, projector state)."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    name = cfg.lm.name
    kw = {"dtype": getattr(torch, cfg.lm.dtype)}
    if cfg.lm.load_in_4bit:
        if torch.cuda.is_available():
            from transformers import BitsAndBytesConfig

            kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=kw["dtype"],
                                                           bnb_4bit_quant_type="nf4")
            kw["device_map"] = "auto"
        else:
            warnings.warn(f"lm.load_in_4bit needs CUDA (bitsandbytes); loading {name} in {cfg.lm.dtype} on CPU",
                          stacklevel=2)
    try:
        llava = LlavaForConditionalGeneration.from_pretrained(name, **kw)
        tok = AutoTokenizer.from_pretrained(name)
    except OSError as e:
        raise FileNotFoundError(
            f"LLaVA weights '{name}' not found (looked in the local directory '{name}' and the Hugging Face cache; "
            f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). Download it with "
            f"`huggingface-cli download {name}` on a connected machine or set lm.name to a local copy. ({e})"
        ) from None
    lm, proj = llava_parts(llava)
    return lm, tok, proj
