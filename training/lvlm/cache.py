"""Frozen features of every training sample, computed once and cached on disk in chunks (safetensors): pooled
tower tokens of the query, its references and the second-look crop, and the anomaly map with its mask and
threshold. The cache folder is keyed by everything that shapes the features, so another config builds anew."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

from assistant.expert import AnomalyResult
from assistant.lvlm import VisualInputs, image_features, resize_map
from training.checkpoint import save_tensors
from training.lvlm.data import Sample

CHUNK = 64  # samples per feature-cache file


def pseudo_result(mask: np.ndarray, rng: np.random.Generator) -> AnomalyResult:
    """A map made from the true mask (blurred, with noise): the --maps mask alternative to the expert."""
    import cv2

    amap = 0.6 + 0.1 * rng.standard_normal(mask.shape).astype(np.float32)
    amap = cv2.GaussianBlur(amap + 1.5 * mask.astype(np.float32), (0, 0), 3) if mask.size else amap
    label = bool(mask.any())
    return AnomalyResult(anomaly_map=amap.astype(np.float32), pred_score=float(amap.max()), pred_label=label,
                         pred_mask=mask.astype(bool), threshold=1.0, pixel_threshold=1.0)


class SampleEncoder:
    """One sample's cache row. The anomaly map is the real expert's (one 1-shot state per category: fits are
    slow) or, with maps "mask" or no expert, `pseudo_result` of the true mask; reference encodings are reused."""

    def __init__(self, lv, tower, expert, maps: str):
        self.lv, self.tower, self.expert, self.maps = lv, tower, expert, maps
        self.states: dict = {}  # reference paths -> the expert's fitted state
        self.encoded: dict = {}  # reference path -> tower output

    def references(self, paths: list[Path]):
        """The references' tower outputs stacked into one VisionOutput (None without references)."""
        from assistant.imaging import load_image
        from assistant.vision.base import VisionOutput

        for p in paths:
            if p not in self.encoded:
                self.encoded[p] = self.tower.encode([load_image(p)])
        outs = [self.encoded[p] for p in paths]
        if not outs:
            return None
        levels = range(len(outs[0].patch_tokens))
        return VisionOutput([torch.cat([o.patch_tokens[i] for o in outs]) for i in levels],
                            torch.cat([o.global_token for o in outs]), outs[0].grid)

    def result(self, s: Sample, img, q_out) -> AnomalyResult:
        from assistant.imaging import load_image, load_mask

        if self.maps == "expert" and self.expert is not None:
            key = tuple(str(s.root / r) for r in s.pool[:1] or s.refs[:1])
            if key not in self.states:
                self.states[key] = self.expert.fit_references(self.tower, [load_image(p) for p in key])
            # the query image too: where the reference registers (a golden sample) the aligned path runs, as served
            return self.expert.predict(q_out, self.states[key], (img.size[1], img.size[0]), images=[img],
                                       tower=self.tower)[0]
        mask = load_mask(s.root / s.mask, img.size) if s.mask else np.zeros(img.size[::-1], bool)
        return pseudo_result(mask, np.random.default_rng(int(s.id) if s.id.isdigit() else 0))

    def __call__(self, s: Sample) -> dict:
        from assistant.imaging import load_image

        img = load_image(s.root / s.image)
        q_out = self.tower.encode([img])
        result = self.result(s, img, q_out)
        r_out = self.references([s.root / r for r in s.refs])
        f = image_features(self.tower, q_out, self.lv.pool_tokens, img, result.anomaly_map, r_out,
                           self.lv.projector_levels, self.lv.second_look)
        amap, mask = resize_map(result.anomaly_map, result.pred_mask)
        dim = f.query.shape[-1]
        return {"query": f.query, "look": f.look, "global": f.global_token,
                "crop": f.crop if f.crop is not None else torch.zeros(1, dim), "refs": f.refs.reshape(-1, dim),
                "amap": amap, "mask": mask, "thr": torch.tensor(float(result.threshold)), "count": f.refs.shape[0]}


def chunk_tensors(rows: list[dict]) -> dict[str, torch.Tensor]:
    """The rows of one chunk as the tensors of its file (references concatenated, counted in ref_counts)."""
    def col(k):
        return [r[k] for r in rows]

    t = {k: torch.stack(col(k)).half() for k in ("query", "look", "global", "crop")}
    t["refs"] = torch.cat(col("refs")).half()
    t["amap"] = torch.stack(col("amap")).half()
    t["mask"] = torch.stack(col("mask")).to(torch.uint8)
    t["thr"] = torch.stack(col("thr")).float()
    t["ref_counts"] = torch.tensor(col("count"), dtype=torch.long)
    return t


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
        from tqdm import tqdm

        n = len(self.samples)
        chunks = sorted({i // CHUNK for i in indices}) if indices is not None else range(math.ceil(n / CHUNK))
        todo = [c for c in chunks if not self._path(c).is_file()]
        if not todo:
            return
        encode = SampleEncoder(self.cfg.lvlm, tower, expert, self.maps)
        bar = tqdm(total=sum(min(CHUNK, n - c * CHUNK) for c in todo), desc="caching features")
        for c in todo:
            rows = []
            for s in self.samples[c * CHUNK:(c + 1) * CHUNK]:
                rows.append(encode(s))
                bar.update(1)
            save_tensors(chunk_tensors(rows), self._path(c))
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
