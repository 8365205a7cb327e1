"""Stage 1 of training: the anomaly expert's zero-shot head and its calibration, on synthesized anomalies with
the vision tower frozen.

data.py (manifest records, cached tower features, patch-grid targets) -> head.py (loss, head training, held-out
scores) -> calibration.py (self scales, margins, null model, reference-mismatch cut) -> loop.py (`add_arguments`,
`run`, --calibrate-only). `python -m training expert ...` calls `add_arguments` and `run`.
"""
from training.expert.calibration import MARGIN_SHOTS, NULL_SHOTS, fit_margins, fit_null
from training.expert.data import encode_cached, grid_masks, indices_by_category, read_manifest
from training.expert.head import focal_dice_loss, heldout_scores, train_head
from training.expert.loop import add_arguments, calibrate_only, run

__all__ = ["MARGIN_SHOTS", "NULL_SHOTS", "add_arguments", "calibrate_only", "encode_cached",
           "fit_margins", "fit_null", "focal_dice_loss", "grid_masks", "heldout_scores",
           "indices_by_category", "read_manifest", "run", "train_head"]
