"""data_synth: normal-image sources, anomaly synthesis with exact masks, truthful texts and conversations.

    from data_synth import synthesize, METHODS, SynthResult, SynthConfig
    res = synthesize(image_rgb_uint8, "nsa", np.random.default_rng(0), other=another_normal)
    res.image, res.mask, res.meta  # (H, W, 3) uint8, (H, W) bool, dict (defect_type, bbox, position, ...)
    many = synthesize_many([ref1, ref2], 8, rng)  # e.g. anomalies on a user's references for calibration
"""
from data_synth.synth import (
    BLENDING_METHODS,
    DEFECT_TYPES,
    METHODS,
    SynthConfig,
    SynthError,
    SynthResult,
    foreground_mask,
    mask_stats,
    synthesize,
    synthesize_many,
)

__all__ = ["BLENDING_METHODS", "DEFECT_TYPES", "METHODS", "SynthConfig", "SynthError", "SynthResult",
           "foreground_mask", "mask_stats", "synthesize", "synthesize_many"]
