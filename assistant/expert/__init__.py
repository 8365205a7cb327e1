"""The anomaly expert: patch tokens of a vision tower -> anomaly map, score, three-way verdict, mask, boxes.

    knn.py          aggregation, nearest-neighbour distance, greedy coreset, in-image distance
    heads.py        zero-shot heads (learned prototypes; CLIP text prompts)
    calibration.py  views, synthetic defects for calibration, null-distribution thresholds, margins, verdicts
    references.py   ReferenceState and fit_references (memory bank + thresholds from reference normals)
    alignment.py    registration of a reference onto the query
    golden.py       golden templates: position-aware and pixel comparison, their calibration
    golden_compare.py  which path a query takes (alignment modes) and the aligned results
    postprocess.py  upsampling, image score, masks, boxes, re-labelling at another threshold (sensitivity)
    model.py        AnomalyExpert: fit_references / predict / mutual_predict / lot_decide; build_expert, load_expert
    io.py           checkpoints (safetensors + config.json)
    result.py       AnomalyResult, Box
"""
from assistant.expert.calibration import (
                                          batch_split,
                                          dihedral_views,
                                          margin_key,
                                          mild_jitter,
                                          synthesize_anomaly,
)
from assistant.expert.heads import PrototypeHead, TextHead, self_distances
from assistant.expert.io import (
                                          CONFIG_NAME,
                                          WEIGHTS_NAME,
                                          ExpertCheckpointError,
                                          level_scale,
                                          trained_expert_dir,
)
from assistant.expert.knn import aggregate, greedy_coreset, nn_distance, normal_scale, self_nn_distance
from assistant.expert.model import LOT_MIN, AnomalyExpert, build_expert, load_expert
from assistant.expert.postprocess import (
                                          SENSITIVITY_RANGE,
                                          SMOOTH_SIDE,
                                          apply_sensitivity,
                                          mask_boxes,
                                          relabel,
                                          verdict_mask,
)
from assistant.expert.references import ReferenceState
from assistant.expert.result import AnomalyResult, Box

__all__ = [
    "CONFIG_NAME",
    "LOT_MIN",
    "SENSITIVITY_RANGE",
    "SMOOTH_SIDE",
    "WEIGHTS_NAME",
    "AnomalyExpert",
    "AnomalyResult",
    "Box",
    "ExpertCheckpointError",
    "PrototypeHead",
    "ReferenceState",
    "TextHead",
    "aggregate",
    "batch_split",
    "build_expert",
    "dihedral_views",
    "greedy_coreset",
    "level_scale",
    "load_expert",
    "margin_key",
    "mask_boxes",
    "mild_jitter",
    "nn_distance",
    "normal_scale",
    "relabel",
    "apply_sensitivity",
    "self_distances",
    "self_nn_distance",
    "synthesize_anomaly",
    "trained_expert_dir",
    "verdict_mask",
]
