"""Dataclass configs and YAML presets.

Every field has a one-line comment. Unknown keys are an error that names the key and lists the valid
ones; `--set a.b=value` overrides any field (value parsed as YAML: numbers, bools, lists).

The presets (`configs/<name>.yaml`) and the shipped checkpoint (`checkpoints/offline-small`) are package data
inside `assistant/`, found through importlib.resources: a relative `configs/...` or `checkpoints/...` path that
does not exist from the working directory is looked up there (`resolve_data_path`), so the same paths work from
a checkout and from an installed wheel.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

DATA_ROOT = Path(resources.files("assistant"))  # the package folder, data included (wheels install unzipped)
DATA_DIRS = ("configs", "checkpoints")  # its package-data folders: relative paths under them resolve there
CONFIG_DIR = DATA_ROOT / "configs"  # YAML presets
DEFAULT_CHECKPOINT = "checkpoints/offline-small"  # the embedded default (shipped weights + config.json)
ALIGNMENTS = ("auto", "golden", "aligned", "free")  # expert.alignment's values (also per session: fit_references)


class UsageError(ValueError):
    """Options that do not go together or are out of range: `main` prints the message, no traceback."""


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and what was expected."""


@dataclass
class VisionConfig:
    name: str = "efficientnet-lite0"  # efficientnet-lite0|1|2, openclip:<model>/<pretrained>
    image_size: int = 256  # square input side in pixels (images are resized to it)
    levels: list[int] = field(default_factory=lambda: [1, 2])  # feature levels to return (0 = finest)
    weights: str | None = None  # local weights file overriding the packaged/tagged ones
    openclip_model_cfg: dict | None = None  # custom open_clip model config (tiny test models)
    device: str = "auto"  # auto|cpu|cuda|cuda:N|mps


@dataclass
class ExpertConfig:
    few_shot: bool = True  # kNN to reference-normal patches when references are given
    zero_shot: bool = True  # text prompts (CLIP) or learned prototypes (other towers)
    knn_k: int = 1  # neighbours averaged for the patch distance
    augment_references: bool = True  # add rotations/flips of references to the memory bank
    max_bank: int = 16384  # per-level bank size above which greedy coreset subsampling runs
    coreset_ratio: float = 0.25  # fraction kept by coreset subsampling when the bank is large
    bank_images: int = 16  # per-level bank at most this many images' patches (coreset above): query time stops growing
    neighbourhood: int = 1  # patch-feature neighbourhood aggregation window (1 = off; patch_pool already aggregates)
    patch_pool: int = 2  # average-pool the patch grid by this factor before the kNN (speed and robustness; 1 = off)
    smoothing_sigma: float = 4.0  # Gaussian smoothing of the upsampled map, pixels
    score_topk: float = 0.01  # image score = mean of the top fraction of map pixels
    object_name: str = "object"  # object word used in zero-shot text prompts
    zero_shot_weight: float = 0.0  # weight of the zero-shot map fused into the few-shot map (0 = kNN map only)
    checkpoint: str | None = None  # directory with trained expert heads (safetensors + config.json)
    calibration_synth: int = 8  # anomalies synthesized on references for the pixel (mask) threshold
    calibration: str = "null"  # image threshold: null (normal variation, expert/calibration.py) | margin (earlier rule)
    target_overkill: float = 0.1  # about this fraction of good parts scores above the threshold (flagged for review)
    review_confidence: float = 0.8  # verdicts less sure than this (threshold uncertainty) are "borderline"
    # a query whose typical map level lies this many times beyond the reference-mismatch cut fitted on synthetic parts
    # is "borderline": the references do not cover it
    coverage_limit: float = 1.0  # 0: off (AnomalyResult.coverage is still measured)
    camera_views: int = 8  # one reference: camera views of it scored as new-part stand-ins for the threshold
    min_box_area: float = 0.0005  # drop boxes smaller than this fraction of the image
    box_merge_cells: float = 1.0  # mask components closer than this many patch-grid cells are one region (0 = off)
    self_reference: bool = False  # also match each query patch against its own image's other patches
    self_exclude: float = 0.15  # ... leaving out those within this fraction of the grid side (the defect itself)
    zero_shot_source: str = "auto"  # one image, no reference: self (in-image rarity) | head | auto (head if CLIP text)
    zero_shot_exclude: float = 0.05  # self: neighbours within this fraction of the grid side (>= 1 step) left out
    mutual_frac: float = 0.3  # batch zero-shot (MuSc mutual scoring): mean of this fraction of the nearest others
    mutual_max_others: int = 64  # ... comparing each image with at most this many others (cost grows with their square)
    self_fusion: str = "geo"  # in-image rarity: levels fused by geometric (geo) or arithmetic (mean) mean
    level_fusion: str = "geo"  # with references: the query's per-level kNN maps fused by geo or mean (see expert)
    # golden-template inspection (expert/alignment.py, expert/golden.py)
    # golden: the user says the references are golden samples (position-aware whenever the warp is within a fixture's
    # motion) | aligned: always position-aware | free: always as a bag of patches
    alignment: str = "auto"  # auto: position-aware only when the evidence shows the same design in the same frame
    align_window: int = 1  # aligned path: query cells compared with reference cells within this many cells
    material: str = "auto"  # polarity: material is the reference's minority Otsu class (auto) | dark | bright

    def __post_init__(self):
        if self.zero_shot_source not in ("auto", "self", "head"):
            raise ConfigError("config key 'expert.zero_shot_source': expected 'auto', 'self' or 'head', "
                              f"got {self.zero_shot_source!r}")
        if self.calibration not in ("null", "margin"):
            raise ConfigError(f"config key 'expert.calibration': expected 'null' or 'margin', got {self.calibration!r}")
        if not 0.0 < self.target_overkill < 0.5:
            raise ConfigError("config key 'expert.target_overkill': expected the fraction of good parts to flag, in "
                              f"(0, 0.5), got {self.target_overkill!r}")
        if not 0.5 <= self.review_confidence < 1.0:
            raise ConfigError(f"config key 'expert.review_confidence': expected a probability in [0.5, 1), got "
                              f"{self.review_confidence!r}")
        if self.coverage_limit < 0:
            raise ConfigError(f"config key 'expert.coverage_limit': expected a number >= 0 (0: off), got "
                              f"{self.coverage_limit!r}")
        for key, allowed in (("alignment", ALIGNMENTS), ("material", ("auto", "dark", "bright"))):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"config key 'expert.{key}': expected one of {', '.join(map(repr, allowed))}, got "
                                  f"{getattr(self, key)!r}")
        if self.align_window < 0:
            raise ConfigError(f"config key 'expert.align_window': expected cells >= 0, got {self.align_window!r}")
        for key in ("self_fusion", "level_fusion"):
            if getattr(self, key) not in ("geo", "mean"):
                raise ConfigError(f"config key 'expert.{key}': expected 'geo' or 'mean', got {getattr(self, key)!r}")


@dataclass
class LMConfig:
    name: str = "smollm2-135m-instruct"  # HF id, local dir, smollm2-135m-instruct, or tiny
    cache_dir: str | None = None  # where de-quantised weights are cached (default: user cache dir)
    dtype: str = "float32"  # float32|bfloat16|float16
    load_in_4bit: bool = False  # bitsandbytes 4-bit (CUDA only)
    tiny_cfg: dict | None = None  # LlamaConfig kwargs for tiny random test models
    max_new_tokens: int = 64  # default generation length
    temperature: float = 0.0  # 0 = greedy decoding


@dataclass
class LoRAConfig:
    enabled: bool = True  # wrap the LM with peft LoRA
    r: int = 8  # LoRA rank
    alpha: int = 16  # LoRA scaling numerator
    dropout: float = 0.05  # LoRA dropout
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])  # LM modules


@dataclass
class LVLMConfig:
    projector_hidden: int = 0  # projector MLP hidden size (0 = LM hidden size)
    n_prompts: int = 9  # prompt-learner tokens from the anomaly map (plus as many base prompts)
    n_look_twice: int = 4  # suspicious query tokens from the look-twice selector
    second_look: bool = True  # re-encode a zoomed crop of the most suspicious region
    pool_tokens: int = 4  # image tokens per side after pooling the patch grid (4 -> 16 tokens)
    projector_levels: list[int] | None = None  # indices into vision.levels fed to the projector (None = all)
    checkpoint: str | None = None  # directory with adapters + heads
    evidence_changes: bool = False  # evidence also says an aligned region's change ("golden sample: missing (cut)")
    evidence_looks: bool = False  # evidence also says the strongest region's look and type ("looks: ...; type: crack")
    grounded: bool = True  # questions the evidence answers in fixed words (grounded.py) skip the LM; false: LM only


@dataclass
class TrainConfig:
    seed: int = 0  # random seed
    lr: float = 1e-3  # learning rate of heads
    lora_lr: float = 2e-4  # learning rate of LoRA adapters
    batch_size: int = 8  # samples per step
    grad_accum: int = 1  # gradient accumulation steps
    steps: int = 500  # optimizer steps
    max_len: int = 160  # max tokens per training sequence
    eval_every: int = 100  # held-out evaluation period (steps)
    save_every: int = 100  # checkpoint period (steps)
    out_dir: str = "runs/train"  # output directory
    focal_gamma: float = 2.0  # focal loss gamma (expert training)
    dice_weight: float = 1.0  # dice loss weight (expert training)
    expert_loss_weight: float = 0.0  # optional expert loss during LVLM training


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # bind address
    port: int = 7860  # port
    concurrency_limit: int = 2  # concurrent requests per event
    max_pixels: int = 40_000_000  # images above this pixel count are rejected (decompression bombs)
    max_upload_mb: float = 50.0  # upload size limit


@dataclass
class Config:
    vision: VisionConfig = field(default_factory=VisionConfig)  # vision tower
    expert: ExpertConfig = field(default_factory=ExpertConfig)  # anomaly expert
    lm: LMConfig = field(default_factory=LMConfig)  # language model
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # LoRA adapters
    lvlm: LVLMConfig = field(default_factory=LVLMConfig)  # LLaVA-style composition
    train: TrainConfig = field(default_factory=TrainConfig)  # training
    serve: ServeConfig = field(default_factory=ServeConfig)  # app / API

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_type(value: Any, tp: Any, key: str) -> Any:
    """Coerce/validate a YAML value against a field type; raise ConfigError naming the key."""
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin is None and tp in (int, float, str, bool):
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. --set expert.object_name=2024
        if tp is bool and not isinstance(value, bool) or tp is not bool and isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected {tp.__name__}, got {type(value).__name__} {value!r}")
        if not isinstance(value, tp):
            raise ConfigError(f"config key '{key}': expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {type(value).__name__} {value!r}")
        return [_check_type(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {type(value).__name__} {value!r}")
        return value
    if args and type(None) in args:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(value, inner[0], key)
    return value


# keys older checkpoints carry that no longer do anything: read and ignored so those checkpoints still load
RETIRED_KEYS = frozenset({"expert.mask_quantile"})


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or 'root'}': expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if full in RETIRED_KEYS:
            continue
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{full}'{hint}; valid keys here: {', '.join(valid)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, f"{full}.")
        else:
            kwargs[key] = _check_type(value, tp, full)
    return cls(**kwargs)


def config_from_dict(data: dict) -> Config:
    return _build(Config, data or {}, "")


def resolve_data_path(path: str | Path) -> Path:
    """`path` itself when it exists (absolute, or from the working directory) or lies outside the package-data
    folders; else the same relative path in the package data (`checkpoints/offline-small`, `configs/tiny.yaml`)
    when it is there; else `path` as given (so errors name what was asked for)."""
    p = Path(path)
    if p.is_absolute() or p.exists() or not p.parts or p.parts[0] not in DATA_DIRS:
        return p
    shipped = DATA_ROOT / p
    return shipped if shipped.exists() else p


def resolve_model(config: str | None) -> str:
    """A --config value -> what Assistant.from_pretrained gets: package-data paths resolved (resolve_data_path);
    by default the shipped checkpoint dir, or the offline-small preset while that dir has no config.json."""
    if config is None:
        ckpt = resolve_data_path(DEFAULT_CHECKPOINT)
        return str(ckpt) if (ckpt / "config.json").is_file() else "offline-small"
    resolved = resolve_data_path(config)
    return config if resolved == Path(config) else str(resolved)


def resolve_config_path(path: str | Path) -> Path:
    """Accept a file path, a checkpoint dir or a preset name (offline-small, tiny, clip-llava)."""
    p = resolve_data_path(path)
    if p.is_file():
        return p
    if p.is_dir() and (p / "config.json").is_file():
        return p / "config.json"
    preset = CONFIG_DIR / f"{path}.yaml"
    if preset.is_file():
        return preset
    presets = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(
        f"config '{path}' not found: expected a YAML file, a checkpoint dir, or a preset ({', '.join(presets)})"
    )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML/JSON config (or preset name) and apply `a.b=value` overrides."""
    data: dict = {}
    if path is not None:
        p = resolve_config_path(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if "config" in data and isinstance(data["config"], dict) and set(data) - set(Config.__dataclass_fields__):
            data = data["config"]  # checkpoint config.json wraps the run config
    for ov in overrides or []:
        apply_override(data, ov)
    return config_from_dict(data)


def apply_override(data: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override '{override}': expected the form section.key=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{override}': '{part}' is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def add_config_arguments(parser, default: str | None = "offline-small") -> None:
    """The --config / --set flags shared by the commands and the trainers (`parser`: an argparse parser)."""
    parser.add_argument("--config", default=default,
                        help="YAML file, checkpoint dir or preset name (offline-small, tiny, clip-llava)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=VALUE",
                        help="override any config field, e.g. --set expert.knn_k=3 (repeatable)")


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
