"""Defect-type estimate with abstention: a linear (softmax) classifier over a region's measured descriptors.

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


class TypeClassifier(nn.Module):
    """Standardised descriptor features (F,) -> probabilities over `types` (K,), softmax of one linear layer."""

    def __init__(self, types: tuple[str, ...] = VOCABULARY, threshold: float = 1.01):
        super().__init__()
        self.types = tuple(types)
        self.threshold = float(threshold)  # named only at or above this top probability (above 1: never)
        self.register_buffer("mean", torch.zeros(len(FEATURES)))
        self.register_buffer("std", torch.ones(len(FEATURES)))
        self.linear = nn.Linear(len(FEATURES), len(self.types))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, F) raw features -> (N, K) probabilities."""
        return torch.softmax(self.linear((x - self.mean) / self.std), dim=-1)

    @torch.no_grad()
    def probabilities(self, d: Descriptor) -> dict[str, float]:
        probs = self(torch.from_numpy(features(d))[None])[0]
        return {t: float(p) for t, p in zip(self.types, probs)}

    def name(self, d: Descriptor) -> None:
        """Set the descriptor's type_probs, type_confidence and defect_type ("" below the threshold), in place."""
        probs = self.probabilities(d)
        best = max(probs, key=probs.get)
        d.type_probs, d.type_confidence = probs, probs[best]
        d.defect_type = best if probs[best] >= self.threshold else ""

    def save(self, out_dir: str | Path, meta: dict | None = None) -> None:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(out / WEIGHTS_NAME))
        cfg = {"types": list(self.types), "features": list(FEATURES), "threshold": self.threshold, **(meta or {})}
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
        clf = TypeClassifier(tuple(cfg["types"]), float(cfg["threshold"]))
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


def fit_probabilities(x: np.ndarray, y: np.ndarray, types: tuple[str, ...], c: float = 1.0) -> TypeClassifier:
    """A TypeClassifier with the weights of a multinomial logistic regression (scikit-learn, class-balanced) fitted
    on (N, F) features and (N,) indices into `types`; the threshold is set by the caller."""
    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(0), x.std(0) + 1e-6
    lr = LogisticRegression(C=c, max_iter=2000, class_weight="balanced").fit((x - mean) / std, y)
    clf = TypeClassifier(types)
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
