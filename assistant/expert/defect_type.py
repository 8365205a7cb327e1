"""Defect-type estimate with abstention: a linear (softmax) classifier over a region's measured descriptors and,
when trained with them, the vision tower's patch tokens averaged over the region (what the region looks like to the
tower; they carry what a handful of measurements cannot, e.g. a crack's branching).

It is trained (training/defect_type.py) on the regions the expert flags in data_synth samples, each labelled with
the user-facing word of the synthesis method that made it (METHOD_TYPES). It names a type only when its top
probability clears `threshold`, fitted on held-out synthetic regions so that named types are right at least as
often as the training asked; otherwise the region is said by what was measured ("an elongated dark mark about
40 px long"). Stored beside the expert's weights as safetensors plus a JSON config; nothing is unpickled.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from assistant.expert.describe import FEATURES, Descriptor, features

# the words the assistant uses for a defect's kind
VOCABULARY = ("crack", "scratch", "hole", "dent", "stain", "missing part", "discolouration", "deformation",
              "foreign object")
# data_synth method -> vocabulary word (what a person would call what the method draws)
METHOD_TYPES = {
    "nsa": "foreign object", "cutpaste": "foreign object", "scar": "scratch", "scratch": "scratch",
    "perlin": "stain", "stain": "stain", "crack": "crack", "hole": "hole", "dent": "dent",
    "missing": "missing part", "color": "discolouration", "warp": "deformation",
}
# golden-template comparison: the change of material says the kind directly
CHANGE_TYPES = {"missing": "missing part", "extra": "foreign object"}
WEIGHTS_NAME = "defect_type.safetensors"
CONFIG_NAME = "defect_type.json"


def region_tokens(out, region: np.ndarray, index: int = 0) -> np.ndarray:
    """(sum of C_l,) float32: each tower level's patch tokens of image `index` of a VisionOutput averaged over a
    bool (H, W) region (area-weighted patch cells; the region's strongest cell when it is smaller than one)."""
    import cv2

    h, w = out.grid
    cells = cv2.resize(region.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA).reshape(-1)
    if cells.sum() <= 0:  # a region too thin for the resize: its bounding cell
        ys, xs = np.nonzero(region)
        cells = np.zeros(h * w, np.float32)
        cells[int(ys.mean() * h / region.shape[0]) * w + int(xs.mean() * w / region.shape[1])] = 1.0
    weights = torch.from_numpy(cells / cells.sum())
    return torch.cat([weights @ t[index].float().cpu() for t in out.patch_tokens]).numpy().astype(np.float32)


class TypeClassifier(nn.Module):
    """Standardised descriptor features (F,) [+ region tokens (T,)] -> probabilities over `types` (K,), softmax of
    one linear layer. `tower_dims`: the tower levels' channel counts the region tokens come from (empty: none)."""

    def __init__(self, types: tuple[str, ...] = VOCABULARY, threshold: float = 1.01, tower_dims: tuple = ()):
        super().__init__()
        self.types = tuple(types)
        self.threshold = float(threshold)  # named only at or above this top probability (above 1: never)
        self.tower_dims = tuple(int(c) for c in tower_dims)
        width = len(FEATURES) + sum(self.tower_dims)
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        self.linear = nn.Linear(width, len(self.types))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, F [+ T]) raw inputs -> (N, K) probabilities."""
        return torch.softmax(self.linear((x - self.mean) / self.std), dim=-1)

    def inputs(self, d: Descriptor, tokens: np.ndarray | None) -> np.ndarray:
        """The (F [+ T],) input of one region: its descriptor features, then its region tokens when trained with
        them (a token vector of another width is refused, naming both: another tower)."""
        if not self.tower_dims:
            return features(d)
        if tokens is None or tokens.shape != (sum(self.tower_dims),):
            raise TypeClassifierError(f"defect-type classifier: expected region tokens of {sum(self.tower_dims)} "
                                      f"channels (tower levels {list(self.tower_dims)}), got "
                                      f"{None if tokens is None else tokens.shape}; retrain it for this tower")
        return np.concatenate([features(d), tokens]).astype(np.float32)

    @torch.no_grad()
    def probabilities(self, d: Descriptor, tokens: np.ndarray | None = None) -> dict[str, float]:
        probs = self(torch.from_numpy(self.inputs(d, tokens))[None])[0]
        return {t: float(p) for t, p in zip(self.types, probs)}

    def name(self, d: Descriptor, tokens: np.ndarray | None = None) -> None:
        """Set the descriptor's type_probs, type_confidence and defect_type ("" below the threshold), in place;
        `tokens`: region_tokens of the region, needed when trained with them."""
        probs = self.probabilities(d, tokens)
        best = max(probs, key=probs.get)
        d.type_probs, d.type_confidence = probs, probs[best]
        d.defect_type = best if probs[best] >= self.threshold else ""

    def save(self, out_dir: str | Path, meta: dict | None = None) -> None:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(out / WEIGHTS_NAME))
        cfg = {"types": list(self.types), "features": list(FEATURES), "tower_dims": list(self.tower_dims),
               "threshold": self.threshold, **(meta or {})}
        (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")


class TypeClassifierError(ValueError):
    pass


def load_type_classifier(folder: str | Path) -> TypeClassifier | None:
    """The classifier stored in `folder`, or None when the folder holds none. A config whose features differ
    from this version's FEATURES is refused with a message naming both."""
    folder = Path(folder)
    if not (folder / WEIGHTS_NAME).is_file():
        return None
    from safetensors.torch import load_file

    try:
        cfg = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TypeClassifierError(f"defect-type classifier {folder}: expected a JSON {CONFIG_NAME} ({e})") from e
    if tuple(cfg.get("features", ())) != FEATURES:
        raise TypeClassifierError(f"defect-type classifier {folder}: its features {cfg.get('features')} differ "
                                  f"from this version's {list(FEATURES)}; retrain it (python -m training defect-type)")
    try:
        clf = TypeClassifier(tuple(cfg["types"]), float(cfg["threshold"]), tuple(cfg.get("tower_dims", ())))
        clf.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise TypeClassifierError(f"defect-type classifier {folder}: expected 'types' and 'threshold' in "
                                  f"{CONFIG_NAME} matching the weights in {WEIGHTS_NAME} ({e})") from e
    return clf


def name_by_change(d: Descriptor, change: str) -> None:
    """An aligned region that is clearly missing or extra material: its type is that change (probability 1)."""
    kind = CHANGE_TYPES.get(change)
    if kind:
        d.defect_type, d.type_confidence, d.type_probs = kind, 1.0, {kind: 1.0}


def fit_probabilities(x: np.ndarray, y: np.ndarray, types: tuple[str, ...], c: float = 1.0,
                      tower_dims: tuple = ()) -> TypeClassifier:
    """A TypeClassifier with the weights of a multinomial logistic regression (scikit-learn, class-balanced) fitted
    on (N, F [+ T]) inputs and (N,) indices into `types`; the threshold is set by the caller."""
    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(0), x.std(0) + 1e-6
    lr = LogisticRegression(C=c, max_iter=2000, class_weight="balanced").fit((x - mean) / std, y)
    clf = TypeClassifier(types, tower_dims=tower_dims)
    w = np.zeros((len(types), x.shape[1]), np.float32)
    b = np.full(len(types), -30.0, np.float32)  # a type absent from the training data is never likely
    if len(lr.classes_) == 2:  # binary: one row of weights for the second class against the first
        w[lr.classes_[1]], b[lr.classes_] = lr.coef_[0], (0.0, float(lr.intercept_[0]))
    else:
        w[lr.classes_], b[lr.classes_] = lr.coef_, lr.intercept_
    with torch.no_grad():
        clf.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        clf.std.copy_(torch.from_numpy(std.astype(np.float32)))
        clf.linear.weight.copy_(torch.from_numpy(w))
        clf.linear.bias.copy_(torch.from_numpy(b))
    return clf
