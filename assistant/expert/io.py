"""Expert checkpoints: safetensors weights plus a JSON config with the calibration fitted by training."""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path

from assistant.config import resolve_data_path
from assistant.expert.calibration import NullModel

WEIGHTS_NAME = "expert.safetensors"
CONFIG_NAME = "expert_config.json"


class ExpertCheckpointError(ValueError):
    """A trained-expert checkpoint is missing or does not match the tower; the message says why."""


def write_checkpoint(expert, out_dir: str | Path, meta: dict | None = None) -> Path:
    """An AnomalyExpert's weights (WEIGHTS_NAME, safetensors) and CONFIG_NAME: its config, the calibration fitted by
    training (zero-shot threshold, margins, null model, self scales, reference-mismatch cut) and `meta`."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in expert.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME))
    cfg = {
        "expert": asdict(expert.cfg),
        "level_dims": expert.level_dims,
        "global_dim": expert.global_dim,
        "head": type(expert.head).__name__ if expert.head is not None else None,
        "zero_shot_threshold": expert.zero_shot_threshold,
        "calibration_margin": expert.calibration_margin,
        "null_model": expert.null_model.to_dict() if expert.null_model.fitted else None,
        "self_scales": expert.self_scales,
        "reference_mismatch": expert.reference_mismatch,
        "meta": meta or expert.meta,
    }
    (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=1))
    return out


def read_checkpoint(expert, path: Path) -> None:
    """Load an expert checkpoint into `expert` (built for the tower), after checking that it fits: weights
    through safetensors (nothing unpickled), its fitted calibration from CONFIG_NAME."""
    if not (path / WEIGHTS_NAME).is_file():
        raise ExpertCheckpointError(f"expert checkpoint {path}: expected {WEIGHTS_NAME} and {CONFIG_NAME} there")
    meta = json.loads((path / CONFIG_NAME).read_text()) if (path / CONFIG_NAME).is_file() else {}
    if meta.get("level_dims") and meta["level_dims"] != expert.level_dims:
        raise ExpertCheckpointError(
            f"expert checkpoint {path} was trained for level dims {meta['level_dims']}, but the tower "
            f"gives {expert.level_dims} (check vision.name / vision.levels)")
    if meta.get("head") and expert.head is not None and meta["head"] != type(expert.head).__name__:
        raise ExpertCheckpointError(f"expert checkpoint {path} holds a {meta['head']}, the tower needs a "
                                    f"{type(expert.head).__name__}")
    from safetensors.torch import load_file

    state = load_file(str(path / WEIGHTS_NAME))
    missing, unexpected = expert.load_state_dict(state, strict=False)
    if unexpected or (expert.head is not None and missing):
        raise ExpertCheckpointError(f"expert checkpoint {path} does not match: missing {missing[:4]}, "
                                    f"unexpected {unexpected[:4]}")
    expert.trained = expert.head is not None
    expert.zero_shot_threshold = float(meta.get("zero_shot_threshold", 0.5))
    expert.calibration_margin = {k: float(v) for k, v in (meta.get("calibration_margin") or {}).items()}
    fitted = (meta.get("expert") or {}).get("level_fusion", "mean")  # checkpoints before the option: mean
    if expert.calibration_margin and fitted != expert.cfg.level_fusion:
        warnings.warn(
            f"expert checkpoint {path}: its calibration margins and reference-mismatch cut were fitted "
            f"with expert.level_fusion={fitted}, but this config uses {expert.cfg.level_fusion}; verdicts will be "
            f"miscalibrated. Set expert.level_fusion={fitted} or retrain with `python -m training expert`",
            stacklevel=2,
        )
    expert.null_model = NullModel.from_dict(meta.get("null_model"))
    expert.self_scales = [float(v) for v in meta.get("self_scales") or []]
    cut = meta.get("reference_mismatch")
    expert.reference_mismatch = float(cut) if cut is not None else None
    expert.meta = meta.get("meta", {})


def level_scale(tower) -> list[int]:
    """Per level of `tower`: its native stride / the finest selected stride (AnomalyExpert.level_scale)."""
    strides = tower.level_strides
    return [max(1, round(st / min(strides))) for st in strides]


def trained_expert_dir(cfg) -> Path | None:
    """The folder of cfg.expert.checkpoint (relative paths also against the package data) when it holds trained
    expert weights, else None."""
    ckpt = cfg.expert.checkpoint
    if not ckpt:
        return None
    p = resolve_data_path(ckpt)
    return p if (p / WEIGHTS_NAME).is_file() else None
