"""Anomaly expert: multi-level patch tokens -> anomaly map, score, verdict, mask, boxes.

Paths, fused into one map:
- few-shot: per-level memory bank of reference-normal patch features (neighbourhood-averaged, references
  augmented with the 8 rotations/flips, greedy coreset when large); nearest-neighbour distance per query
  patch, divided by the level's normal distance scale so levels are comparable;
- zero-shot, CLIP towers: prompt ensemble of normal/abnormal state phrases x templates, per-level linear
  adapters mapping patch tokens into the text space (AnomalyGPT style);
- zero-shot, towers without text (EfficientNet): learned normal/abnormal prototypes shifted by the image's
  own global feature (Anomaly-OV's look-back idea), trained on synthesized anomalies (training/expert/);
- zero-shot, one image, towers without text (`zero_shot_source: auto` or `self`): in-image rarity. Each patch's
  distance to its nearest patch of the same image outside its 3x3 neighbourhood, per level divided by the
  typical distance on normal training images. The verdict threshold is found on the image itself: the lowest
  score of anomalies synthesized on it (a query scores above it only where it holds something rarer than a
  light defect);
- zero-shot over a batch of unlabeled images of one kind (`mutual_predict`, MuSc's mutual scoring): every
  image is scored against the others; a defect is rare across parts, a normal patch has look-alikes in most.
The verdict threshold is never set by hand: `fit_references` calibrates it from the references' own
scores (leave-one-out, or leave-view-out over the rotations/flips when k = 1) and from anomalies it synthesizes on
the references; with k = 0 it uses the threshold stored with the trained heads.

The module holds only weights; everything per session lives in `ReferenceState`.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from assistant.config import ExpertConfig, resolve_data_path
from assistant.expert.calibration import NullModel, batch_split, coverage_ratio, judge, review_band
from assistant.expert.defect_type import TypeClassifier, load_type_classifier
from assistant.expert.golden_compare import golden_results
from assistant.expert.heads import PrototypeHead, TextHead, prompt_text_features
from assistant.expert.io import level_scale, read_checkpoint, trained_expert_dir, write_checkpoint
from assistant.expert.knn import aggregate, nn_distance, self_nn_distance
from assistant.expert.postprocess import describe_results, image_score, mask_boxes, relabel, upsample, verdict_mask
from assistant.expert.references import ReferenceState, fit_references, self_threshold
from assistant.expert.result import AnomalyResult, Box
from assistant.vision.base import VisionOutput

LOT_MIN = 6  # parts inspected together from which the lot's own score distribution joins the verdict


class AnomalyExpert(nn.Module):
    def __init__(self, cfg: ExpertConfig, level_dims: list[int], global_dim: int, text_encoder=None):
        super().__init__()
        self.cfg = cfg
        self.level_dims = list(level_dims)
        self.global_dim = int(global_dim)
        self.head: nn.Module | None = None
        self.set_type_classifier(None)
        if cfg.zero_shot:
            if text_encoder is not None:
                self.head = TextHead(self.level_dims, prompt_text_features(text_encoder, cfg.object_name))
            else:
                self.head = PrototypeHead(self.level_dims, self.global_dim)
        self.trained = False  # True once heads were loaded/trained; untrained heads are not used for maps
        self.zero_shot_threshold = 0.5  # image-score threshold of the zero-shot path (set by training)
        self.meta: dict = {}  # training manifest loaded with the checkpoint
        self.calibration_margin: dict[str, float] = {}  # fitted on synthetic categories by training (k1 ... k16)
        self.null_model = NullModel()  # new-part offsets above the references' null scores (fitted by training)
        self.self_scales: list[float] = []  # per level: median in-image nearest distance on normal training images
        # with references: median of the normalised kNN map above which the references do not show this part
        # (fitted on synthetic categories by training: 1% of same-kind parts lie above it); None = no check
        self.reference_mismatch: float | None = None
        # per level: native stride / finest stride (a stride-32 level on a stride-8 grid is 4x upsampled);
        # the kNN of a coarse level runs on its native grid, not on interpolated copies (set from the tower)
        self.level_scale: list[int] = [1] * len(self.level_dims)

    # -------------------------------------------------------------- checkpoint
    def save_pretrained(self, out_dir: str | Path, meta: dict | None = None) -> Path:
        """Weights (safetensors) and config.json with the fitted calibration (`io.write_checkpoint`)."""
        return write_checkpoint(self, out_dir, meta)

    @classmethod
    def from_pretrained(cls, ckpt_dir: str | Path | None, cfg: ExpertConfig, tower) -> AnomalyExpert:
        """Build for `tower` and load trained heads from ckpt_dir (when it holds expert weights;
        `io.read_checkpoint`)."""
        expert = cls(cfg, tower.level_dims, tower.global_dim, text_encoder=getattr(tower, "encode_text", None))
        expert.level_scale = level_scale(tower)
        if ckpt_dir is None:
            return expert
        path = resolve_data_path(ckpt_dir)  # checkpoints/... also from the package data
        read_checkpoint(expert, path)
        expert.set_type_classifier(load_type_classifier(path))
        return expert.to(tower.device)

    def set_type_classifier(self, clf: TypeClassifier | None) -> None:
        """The defect-type classifier that names each region's kind; kept outside the module tree (a plain
        attribute) so the expert's own weights and checkpoints do not change with it. It runs on the CPU."""
        object.__setattr__(self, "type_classifier", clf)

    # -------------------------------------------------------------- maps
    def patch_features(self, out: VisionOutput) -> tuple[list[torch.Tensor], list[tuple[int, int]], tuple[int, int]]:
        """kNN features: (L x (B, N_l, C_l), L x grid_l, common grid). Every level is average-pooled by
        `patch_pool`, a coarse level further down to its native resolution (level_scale), then
        neighbourhood-averaged; maps are fused on the common grid (the grid pooled by `patch_pool`)."""
        grid = out.grid
        b = out.patch_tokens[0].shape[0]
        p = self.cfg.patch_pool if self.cfg.patch_pool > 1 and min(grid) >= 2 * self.cfg.patch_pool else 1
        common = (math.ceil(grid[0] / p), math.ceil(grid[1] / p))
        feats, grids = [], []
        for t, scale in zip(out.patch_tokens, self.level_scale):
            pool = max(p, scale) if min(grid) >= 2 * max(p, scale) else p
            t = t.float()
            if pool > 1:
                t = F.avg_pool2d(t.transpose(1, 2).reshape(b, -1, *grid), pool, ceil_mode=True)
                g = tuple(t.shape[-2:])
                t = t.flatten(2).transpose(1, 2)
            else:
                g = tuple(grid)
            feats.append(aggregate(t, g, self.cfg.neighbourhood))
            grids.append(g)
        return feats, grids, common

    @staticmethod
    def to_grid(d: torch.Tensor, grid_l: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
        """(B, N_l) per-patch values on grid_l -> (B, h, w) on the common grid (bilinear when coarser)."""
        m = d.reshape(-1, 1, *grid_l)
        if tuple(grid_l) != tuple(grid):
            m = F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
        return m[:, 0]

    def few_shot_maps(self, out: VisionOutput, state: ReferenceState) -> torch.Tensor:
        """(B, L, h', w') per-level nearest-neighbour distance divided by the level's normal scale."""
        feats, grids, grid = self.patch_features(out)
        maps = []
        for f, g, bank, s in zip(feats, grids, state.banks, state.scales):
            maps.append(self.to_grid(self.distances(f, bank.to(f.device), g), g, grid) / s)
        return torch.stack(maps, 1)

    @staticmethod
    def fuse_levels(maps: torch.Tensor, how: str) -> torch.Tensor:
        """(B, L, h', w') per-level maps, each ~1 on ordinary patches -> (B, h', w'). "geo": the geometric mean, so
        a patch must stand out at every stride and one level's stray response (the stride-32 level reacting to a
        neighbouring object, the stride-8 level to texture noise) counts less; "mean": the arithmetic mean."""
        if how == "geo":
            return maps.clamp_min(1e-3).log().mean(1).exp()
        return maps.mean(1)

    def zero_shot_map(self, out: VisionOutput) -> torch.Tensor | None:
        """(B, h, w) anomaly probability from the trained zero-shot head, or None."""
        if self.head is None or not self.trained:
            return None
        tokens = [t.float() for t in out.patch_tokens]
        logits, grid = self.head(tokens, out.global_token.float(), out.grid)
        return torch.sigmoid(logits).view(-1, *grid)

    def self_level_distances(
        self, out: VisionOutput
    ) -> tuple[list[torch.Tensor], list[tuple[int, int]], tuple[int, int]]:
        """Per level (B, N_l) distance of each kNN feature to its nearest patch of the same image outside its
        neighbourhood (`zero_shot_exclude`); inf where a grid is too small to leave anything out."""
        feats, grids, grid = self.patch_features(out)
        return [self_nn_distance(f, g, self.cfg.zero_shot_exclude) for f, g in zip(feats, grids)], grids, grid

    def require_self_scales(self) -> None:
        if len(self.self_scales) != len(self.level_dims):
            raise RuntimeError("zero-shot (zero_shot_source: self) needs the per-level scales stored by "
                               "`python -m training expert`; this expert has none. Retrain it, give a reference "
                               "normal image, or set expert.zero_shot_source=head")

    def self_map(self, out: VisionOutput) -> torch.Tensor:
        """(B, h', w') single-image zero-shot map: in-image rarity, each level divided by its typical value on
        normal training images (self_scales), so ~1 on ordinary patches. The scales are constants, not this
        image's own median: a part with many defects, or a busy one, must not rescale itself.

        Levels are fused by their geometric mean (`self_fusion: geo`): a patch must be rare at every stride, so
        one level's stray response counts less."""
        self.require_self_scales()
        dists, grids, grid = self.self_level_distances(out)
        maps = torch.stack([self.to_grid(torch.nan_to_num(d / s, posinf=1.0), g, grid)
                            for d, g, s in zip(dists, grids, self.self_scales)], 1)  # (B, L, h', w')
        return self.fuse_levels(maps, self.cfg.self_fusion)

    def raw_maps(self, out: VisionOutput, state: ReferenceState) -> torch.Tensor:
        """(B, h, w) fused map on the patch grid: normalised kNN distance, weighted with the zero-shot map."""
        if not (state.few_shot and self.cfg.few_shot) and self.self_calibrated():
            return self.self_map(out)
        zs = self.zero_shot_map(out) if self.cfg.zero_shot else None
        if state.few_shot and self.cfg.few_shot:
            fs = self.fuse_levels(self.few_shot_maps(out, state), self.cfg.level_fusion)  # (B, h', w'), ~1 normal
            if zs is not None and self.cfg.zero_shot_weight > 0:
                if zs.shape[-2:] != fs.shape[-2:]:
                    zs = F.interpolate(zs.unsqueeze(1), size=fs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
                fs = fs * (1.0 + self.cfg.zero_shot_weight * (zs - 0.5))
            return fs
        if zs is None:
            raise RuntimeError("no reference images and no trained zero-shot head: give at least one reference "
                               "normal image or set expert.checkpoint to a trained expert")
        return zs

    def upsample(self, maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """(B, h, w) -> (B, H, W) float32 smoothed map (`postprocess.upsample`)."""
        return upsample(maps, size, self.cfg.smoothing_sigma)

    def image_score(self, amap: np.ndarray) -> float:
        """Mean of the top `score_topk` fraction of map pixels (`postprocess.image_score`)."""
        return image_score(amap, self.cfg.score_topk)

    # -------------------------------------------------------------- inference
    def self_calibrated(self) -> bool:
        """True when a state without references is judged per image by in-image rarity (predict then needs the
        images and the tower): zero_shot_source "self", or "auto" on a tower without text (CLIP towers keep the
        text-prompt head, the zero-shot path they were trained for)."""
        src = self.cfg.zero_shot_source
        return src == "self" or (src == "auto" and not isinstance(self.head, TextHead))

    @torch.no_grad()
    def predict(self, query_out: VisionOutput, state: ReferenceState, image_size: tuple[int, int],
                images: list[Image.Image] | None = None, tower=None) -> list[AnomalyResult]:
        """One AnomalyResult per query image; maps have size image_size (H, W). Without references and with
        `zero_shot_source: self`, each image gets its own threshold (`references.self_threshold`), which needs the query
        `images` and the `tower`."""
        if len(query_out.patch_tokens) != len(self.level_dims):
            raise ValueError(
                f"expected {len(self.level_dims)} levels of patch tokens, got {len(query_out.patch_tokens)}"
            )
        raw = self.raw_maps(query_out, state)  # (B, h', w') on the patch grid
        grid = tuple(raw.shape[-2:])
        maps = self.upsample(raw, tuple(image_size))
        if state.few_shot:
            medians = raw.flatten(1).median(1).values.tolist()  # ~1 when the query's surface matches the references
            results = [self._result(amap, self.image_score(amap), state, "few-shot", grid, reference_median=med)
                       for amap, med in zip(maps, medians)]
            # golden-template inspection: the aligned path where a reference registers (expert.alignment)
            return describe_results(golden_results(self, state, query_out, raw, results, images, image_size,
                                                   self._result), images, self.type_classifier, query_out)
        if not self.self_calibrated():
            return describe_results([self._result(amap, self.image_score(amap), state, "zero-shot", grid)
                                     for amap in maps], images, self.type_classifier, query_out)
        if images is None or tower is None or len(images) != len(maps):
            raise ValueError(
                f"zero-shot with zero_shot_source 'self' calibrates on each query image: expected "
                f"predict(..., images=<{len(maps)} query image(s)>, tower=<the vision tower>), got "
                f"images={'None' if images is None else len(images)}, tower={'None' if tower is None else 'set'}"
            )
        out = []
        for img, amap in zip(images, maps):
            thr, pix, synth = self_threshold(self, tower, img, tuple(image_size))
            st = ReferenceState(
                banks=[],
                scales=[],
                threshold=thr,
                pixel_threshold=pix,
                n_shots=0,
                calibration={
                    "method": "in-image rarity, one image, no references",
                    "rule": f"lowest score of {len(synth)} anomalies synthesized on this image",
                    "synth_scores": [round(float(x), 4) for x in synth],
                },
            )
            out.append(self._result(amap, self.image_score(amap), st, "zero-shot", grid))
        return describe_results(out, images, self.type_classifier, query_out)

    def _result(self, amap: np.ndarray, score: float, state: ReferenceState, path: str, grid: tuple[int, int],
                reference_median: float | None = None) -> AnomalyResult:
        """`grid`: the (h', w') patch grid the map was computed on; regions closer than `box_merge_cells` of its
        cells (in the map's pixels) count as one."""
        label = bool(score > state.threshold)
        mask = verdict_mask(amap, label, state.pixel_threshold, self.cfg.score_topk)
        merge_px = self.cfg.box_merge_cells * max(amap.shape[0] / grid[0], amap.shape[1] / grid[1])
        coverage = coverage_ratio(reference_median, self.reference_mismatch)  # > 1: reference_mismatch
        cut = None if coverage is None else round(float(self.reference_mismatch), 4)
        sigma = state.sigma
        verdict, confidence = judge(float(score), state.threshold, sigma, self.cfg.review_confidence)
        low, high = review_band(state.threshold, sigma, self.cfg.review_confidence)
        reason = ""  # a borderline verdict without one: "threshold" (AnomalyResult.__post_init__)
        if path != "aligned" and coverage is not None and 0 < self.cfg.coverage_limit < coverage:
            verdict, reason = "borderline", "coverage"  # the references cannot speak for this part: a person decides
        return AnomalyResult(anomaly_map=amap, pred_score=float(score), pred_label=label, pred_mask=mask,
                             boxes=self.boxes(amap, mask, merge_px), threshold=state.threshold,
                             pixel_threshold=state.pixel_threshold, reference_mismatch=bool(coverage and coverage > 1),
                             verdict=verdict, confidence=confidence, threshold_sigma=sigma, threshold_low=low,
                             threshold_high=high, path=path, shots=state.n_shots,
                             calibration=state.calibration.get("rule", state.calibration.get("method", "")),
                             score_topk=self.cfg.score_topk, box_merge_px=merge_px,
                             review_confidence=self.cfg.review_confidence, reference_mismatch_cut=cut,
                             reference_median=None if reference_median is None else round(float(reference_median), 4),
                             review_reason=reason, coverage=coverage)

    def boxes(self, amap: np.ndarray, mask: np.ndarray, merge_px: float = 0.0) -> list[Box]:
        """Regions of the mask (`mask_boxes`), largest first, tiny ones dropped."""
        return mask_boxes(mask, amap, self.cfg.min_box_area, merge_px)

    # -------------------------------------------------------------- batch zero-shot (mutual scoring)
    @torch.no_grad()
    def mutual_maps(self, out: VisionOutput) -> torch.Tensor:
        """(B, h', w') zero-shot maps of B >= 2 unlabeled images of one kind, no references.

        Per level, each patch's distance to its nearest patch in every other image (at most
        `mutual_max_others` of them, a fixed sample per image); the patch score is the mean of the smallest
        `mutual_frac` of these distances (robust to the other images' own defects), divided by the batch
        median so that levels are comparable and normal patches score ~1. A defect that recurs at the same
        place on more than `mutual_frac` of the images finds look-alikes and is scored as normal."""
        feats, grids, grid = self.patch_features(out)
        b = feats[0].shape[0]
        if b < 2:
            raise ValueError(f"mutual scoring needs at least 2 unlabeled images of the same kind, got {b}")
        others = []
        for i in range(b):
            rest = [j for j in range(b) if j != i]
            if len(rest) > self.cfg.mutual_max_others:
                rest = sorted(random.Random(i).sample(rest, self.cfg.mutual_max_others))
            others.append(rest)
        k = max(1, int(round(self.cfg.mutual_frac * len(others[0]))))
        maps = []
        for f, g in zip(feats, grids):
            s = torch.stack([torch.cdist(f[i].expand(len(o), -1, -1), f[o]).amin(-1)  # (n_other, N_l)
                             .topk(k, dim=0, largest=False).values.mean(0) for i, o in enumerate(others)])
            maps.append(self.to_grid(s / s.median().clamp_min(1e-6), g, grid))
        return torch.stack(maps, 1).mean(1)

    @torch.no_grad()
    def mutual_predict(
        self, out: VisionOutput, image_size: tuple[int, int] | list[tuple[int, int]]
    ) -> list[AnomalyResult]:
        """One AnomalyResult per image of an unlabeled batch (`mutual_maps`). The verdict threshold splits the
        batch's log image scores in two clusters (k-means), which adapts to each batch where a single fitted
        threshold cannot (docs/results.md). A batch is assumed to hold both good and defective parts; a batch of
        only good parts still has an upper cluster."""
        grid_maps = self.mutual_maps(out)
        if isinstance(image_size, list):  # one (H, W) per image: each map at its own image's size
            maps = [self.upsample(grid_maps[i:i + 1], tuple(sz))[0] for i, sz in enumerate(image_size)]
        else:
            maps = list(self.upsample(grid_maps, tuple(image_size)))
        scores = np.array([self.image_score(m) for m in maps])
        thr = batch_split(scores)
        state = ReferenceState(banks=[], scales=[], threshold=thr, pixel_threshold=thr, n_shots=0,
                               calibration={"method": "mutual scoring over the unlabeled batch",
                                            "rule": "two-cluster split of this batch's log image scores"})
        return [self._result(m, sc, state, "mutual", tuple(grid_maps.shape[-2:])) for m, sc in zip(maps, scores)]

    # -------------------------------------------------------------- several parts at once (a lot)
    def lot_decide(self, results: list[AnomalyResult]) -> list[AnomalyResult]:
        """Judge the parts of one lot (same kind, inspected together) with the lot's own score distribution as well
        as the references: most parts of a lot are good, so the lower of the two clusters of its log scores
        (`batch_split`) shows how new good parts of this kind score, which one or a few references cannot. Each part's
        lot threshold is the geometric mean of its references' threshold and the split between the lot's clusters,
        both taken on the decision statistic (score over its own threshold), so parts judged on the aligned and the
        free path, whose scores lie on different scales, form one lot. Lots smaller than LOT_MIN keep the
        references' verdicts."""
        if len(results) < LOT_MIN:
            return results
        ratio = batch_split(np.array([r.pred_score / max(r.threshold, 1e-6) for r in results]))  # in threshold units
        return [relabel(r, r.threshold * math.sqrt(ratio), r.pixel_threshold * math.sqrt(ratio),
                        self.cfg.review_confidence, self.cfg.min_box_area, lot_size=len(results),
                        reference_threshold=r.threshold, lot_split=r.threshold * ratio,
                        calibration=f"lot of {len(results)}: geometric mean of the references' threshold and the "
                                    "split between the lot's two score clusters")
                for r in results]

    # -------------------------------------------------------------- references + calibration
    def fit_references(self, tower, ref_images: list[Image.Image], ref_out: VisionOutput | None = None,
                       seed: int = 0, alignment: str | None = None) -> ReferenceState:
        """Memory bank (+ rotations/flips, coreset) and calibrated thresholds; k = 0 gives the zero-shot state
        (`references.fit_references`). `alignment`: this session's comparison mode (None: expert.alignment)."""
        return fit_references(self, tower, ref_images, ref_out, seed, alignment)

    def distances(self, feats: torch.Tensor, bank: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N_l, C) patches on `grid` -> (B, N_l) distance to the bank (and, with self_reference, to the
        image's own far-away patches): the same score for queries and held-out references."""
        d = nn_distance(feats.reshape(-1, feats.shape[-1]), bank, self.cfg.knn_k).view(feats.shape[0], -1)
        if self.cfg.self_reference:
            d = torch.minimum(d, self_nn_distance(feats, grid, self.cfg.self_exclude))
        return d


def build_expert(cfg, tower) -> AnomalyExpert:
    """The expert for a full Config and its tower, with the trained heads of cfg.expert.checkpoint when present."""
    p = trained_expert_dir(cfg)
    if p is not None:
        return AnomalyExpert.from_pretrained(p, cfg.expert, tower)
    return AnomalyExpert.from_pretrained(None, cfg.expert, tower).to(tower.device)


def load_expert(cfg) -> tuple:
    """(tower, expert) for a full Config: the tower of cfg.vision, the expert (eval mode) with the trained heads of
    cfg.expert.checkpoint when present. The one loader of the detector: detect, evaluation, bench, Assistant."""
    from assistant.vision import build_vision_tower

    tower = build_vision_tower(cfg.vision)
    return tower, build_expert(cfg, tower).eval()
