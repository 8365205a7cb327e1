"""Thresholds refined by labels (expert/labels.py) and the feedback simulation's draw (evaluation/expert/feedback)."""
import math

import numpy as np
import pytest

from assistant.evaluation.data.items import EvalCategory, EvalItem
from assistant.evaluation.expert.feedback import feedback_split
from assistant.expert.labels import ScoreModel, label_threshold, least_cost, leave_one_out, update

PRIOR = ScoreModel(mean=0.0, sd=0.1)  # log scores of new good parts before labels: median score 1.0


def test_update_moves_the_prior_towards_the_labels_by_their_weight():
    g = update(PRIOR, np.log(np.array([1.5, 1.5])))  # two labels worth as much as the prior
    assert g.mean == pytest.approx(math.log(1.5) / 2, rel=1e-6)
    assert update(PRIOR, np.zeros(0)) == PRIOR


def test_least_cost_lies_between_and_a_dearer_miss_lowers_it():
    good, bad = ScoreModel(0.0, 0.1), ScoreModel(1.0, 0.2)
    even = least_cost(good, bad, 1.0)
    dear = least_cost(good, bad, 5.0)
    assert 0.0 < dear < even < 1.0


def test_good_labels_only_give_the_quantile_of_the_updated_model():
    thr, g, b = label_threshold(PRIOR, 0.1, np.array([1.0, 1.0]), np.zeros(0), 5.0, 0.1)
    assert b is None and thr == pytest.approx(math.exp(g.mean + 1.2816 * g.sd), rel=1e-3)


def test_defect_labels_pull_the_threshold_down_to_catch_them():
    """A prior placing the threshold above where these defects score: the labels move it below them."""
    wide = ScoreModel(0.0, 0.3)
    good, bad = np.array([1.0, 1.02]), np.array([1.25, 1.3])
    prior_thr, _, _ = label_threshold(wide, 0.3, good, np.zeros(0), 1.0, 0.1)
    assert prior_thr > bad.min()
    thr, _, b = label_threshold(wide, 0.3, good, bad, 1.0, 0.1)
    assert b is not None and good.max() < thr < bad.min()
    assert label_threshold(wide, 0.3, good, bad, 5.0, 0.1)[0] < thr  # a dearer miss: lower still


def test_defects_scoring_like_good_parts_cannot_place_a_threshold():
    good = np.array([1.0, 1.05])
    thr, _, b = label_threshold(PRIOR, 0.1, good, np.array([0.8, 0.85]), 5.0, 0.1)
    assert b is not None and thr == label_threshold(PRIOR, 0.1, good, np.zeros(0), 5.0, 0.1)[0]


def test_leave_one_out_counts_each_label_judged_by_the_others():
    overkill, miss = leave_one_out(PRIOR, 0.1, np.array([1.0, 1.01, 3.0]), np.array([2.0, 2.2]), 1.0, 0.1)
    assert overkill == pytest.approx(1 / 3)  # the good part scoring 3.0 is rejected by the others' threshold
    assert miss == 0.0
    assert leave_one_out(PRIOR, 0.1, np.zeros(0), np.zeros(0), 5.0, 0.1) == (None, None)


def _cat(n_normal: int, n_bad: int) -> EvalCategory:
    items = [EvalItem(f"n{i}.png", 0, None, "c") for i in range(n_normal)]
    items += [EvalItem(f"a{i}.png", 1, None, "c") for i in range(n_bad)]
    return EvalCategory("c", "root", ["g.png"], items, False)


def test_feedback_split_is_seeded_disjoint_and_checked():
    cat = _cat(6, 5)
    g, d, rest = feedback_split(cat, 2, 2, seed=0)
    assert (g, d, rest) == feedback_split(cat, 2, 2, seed=0)
    assert len(g) == 2 and len(d) == 2 and len(rest) == 7 and not (set(g) | set(d)) & set(rest)
    assert all(cat.items[i].label == 0 for i in g) and all(cat.items[i].label == 1 for i in d)
    assert feedback_split(cat, 2, 2, seed=1) != (g, d, rest)
    with pytest.raises(ValueError, match="needs more than 2 normal and 5 anomalous"):
        feedback_split(cat, 2, 5, seed=0)


def test_fit_labels_joins_good_images_to_the_references_and_records_the_fit():
    from test_golden import _expert, board, shifted, to_pil

    from assistant.config import load_config
    from assistant.expert.labels import fit_labels
    from assistant.vision.efficientnet import EfficientNetTower

    tower = EfficientNetTower(load_config("offline-small", ["vision.image_size=64", "vision.device=cpu"]).vision,
                              pretrained=False).eval()
    expert = _expert(tower, "free")
    refs = [to_pil(board(64))]
    good = [to_pil(shifted(board(64), 1.0, 0.5)), to_pil(shifted(board(64), -0.5, 1.0))]
    bad = [to_pil(board(64, missing=True)), to_pil(board(64, extra=True))]
    state, cal = fit_labels(expert, tower, refs, good, bad, seed=0, cost_ratio=5.0)
    assert state.n_shots == 3 and state.threshold == cal.threshold == state.estimate.threshold
    assert len(cal.good_scores) == 2 and len(cal.defective_scores) == 2
    assert cal.n_good == 2 and cal.n_defective == 2
    assert state.calibration["labels"]["threshold"] == pytest.approx(cal.threshold, abs=1e-5)
    assert cal.loo_overkill is not None and cal.loo_miss is not None
    with pytest.raises(ValueError, match="cost_ratio"):
        fit_labels(expert, tower, refs, good, bad, cost_ratio=0.0)


def test_profiles_default_to_the_labels_cost_ratio():
    from assistant.expert.labels import DEFAULT_COST_RATIO
    from assistant.profile import DEFAULT_COST_RATIO as PROFILE_DEFAULT

    assert PROFILE_DEFAULT == DEFAULT_COST_RATIO == 1.0


def test_add_label_continues_a_fit_without_refitting():
    from test_golden import _expert, board, shifted, to_pil

    from assistant.config import load_config
    from assistant.expert.labels import add_label, fit_labels, label_threshold, prior_models
    from assistant.vision.efficientnet import EfficientNetTower

    tower = EfficientNetTower(load_config("offline-small", ["vision.image_size=64", "vision.device=cpu"]).vision,
                              pretrained=False).eval()
    expert = _expert(tower, "free")
    refs, good = [to_pil(board(64))], [to_pil(shifted(board(64), 1.0, 0.5))]
    state, cal = fit_labels(expert, tower, refs, good, [to_pil(board(64, missing=True))], seed=0)
    banks = [b.shape[0] for b in state.banks]
    bad_state, bad_cal = add_label(expert, tower, state, to_pil(board(64, extra=True)), "defective")
    assert bad_cal.n_defective == 2 and bad_cal.good_scores == cal.good_scores and bad_state.n_shots == 2
    assert [b.shape[0] for b in bad_state.banks] == banks and cal.n_defective == 1  # the input state is untouched
    prior, spread = prior_models(bad_state.estimate, expert.null_model, 2, expert.cfg.target_overkill)
    want = label_threshold(prior, spread, np.array(bad_cal.good_scores), np.array(bad_cal.defective_scores),
                           bad_cal.cost_ratio, expert.cfg.target_overkill)[0]
    assert bad_state.threshold == pytest.approx(want, rel=1e-3)
    good_state, good_cal = add_label(expert, tower, bad_state, to_pil(shifted(board(64), -1.0, 0.0)), "good")
    assert good_state.n_shots == 3 and good_cal.n_good == 2 and len(good_cal.good_scores) == 2
    grown = [b.shape[0] - n for b, n in zip(good_state.banks, banks)]
    assert all(g > 0 for g in grown) and "without refitting" in good_cal.method
    with pytest.raises(ValueError, match="continues a labelled fit"):
        add_label(expert, tower, expert.fit_references(tower, refs), refs[0], "good")
