"""Answer-level evaluation on MVTec-layout folders (`evaluate --mode vqa --data DIR ... --shots K --seeds 0,1,2`).

For every test image (k references drawn per seed as in the expert evaluation) the assistant is asked
"Is there any anomaly in the image?" and then, as a follow-up, "Where is it?". Answers are parsed into a
yes/no verdict and a 3x3 position word; on a borderline result the detection answer holds the part for a
person ("It is borderline: ... hold it for a person to check"): it is recorded as held (`answer_held`), neither
yes nor no, and reported on its own (report.answer_metrics). Each image of a category and seed is one unit of
the answer runner (two records, keys `category|seed|image|detect` and `...|where`), answered in batches of images
that share the seed's references; OUT/answers.jsonl resumes where a stopped run ended. The metrics
(report.answer_metrics) are added to every category of OUT/report.json (created or merged) and written to
OUT/report_vqa.md.
"""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from assistant.evaluation.answers.report import answer_metrics, summarise
from assistant.evaluation.answers.runner import Unit, run_units
from assistant.evaluation.answers.store import check_run_file, read_answers
from assistant.evaluation.data.items import EvalCategory, EvalItem, sample_references, skip_reason
from assistant.imaging import load_image, load_mask
from assistant.wording import (
    DETECT_QUESTION,
    WHERE_QUESTION,
    held_answer,
    mask_position,
    parse_position,
    parse_verdict,
)


def record_base(category: str, seed: int, image: str) -> str:
    return f"{category}|{seed}|{image}|"


def folder_units(categories: list[EvalCategory], seeds: list[int]) -> list[Unit]:
    """One unit per (category, seed, test image), in that order; a category's images of one seed share a batch."""
    units = []
    for cat in categories:
        for seed in seeds:
            for it in cat.items:
                base = record_base(cat.name, seed, it.image)
                units.append(Unit(seed, it.image, [base + "detect", base + "where"], [it], batch=(cat.name, seed)))
    return units


class FolderAsker:
    """Asks the two questions about a batch of one category's images under one seed's references (drawn with
    sample_references and fitted once per category and seed; each image is encoded once for all seeds)."""

    def __init__(self, assistant, categories: list[EvalCategory], shots: int, max_new_tokens: int = 32):
        self.assistant, self.shots, self.max_new_tokens = assistant, shots, max_new_tokens
        self.categories = {c.name: c for c in categories}
        self.refs_for: tuple | None = None  # (category, seed) of the fitted references below
        self.refs = None  # (paths, images, features, ReferenceState)
        self.images: dict[str, tuple] = {}  # image path -> (image, features, gt position), current category only

    def references(self, cat: EvalCategory, seed: int) -> tuple:
        if self.refs_for != (cat.name, seed):
            if self.refs_for is None or self.refs_for[0] != cat.name:
                self.images = {}
            tower = self.assistant.tower
            paths = sample_references(cat.train_good, self.shots, seed)
            refs = [load_image(p) for p in paths]
            r_out = tower.encode(refs) if refs else None
            state = self.assistant.expert.fit_references(tower, refs, r_out, seed=seed)
            self.refs_for, self.refs = (cat.name, seed), (paths, refs, r_out, state)
        return self.refs

    def image(self, it: EvalItem) -> tuple:
        if it.image not in self.images:
            img = load_image(it.image)
            gt_pos = mask_position(load_mask(it.mask)) if (it.label and it.mask) else None
            self.images[it.image] = (img, self.assistant.tower.encode([img]), gt_pos)
        return self.images[it.image]

    def __call__(self, units: list[Unit]) -> list[list[dict]]:
        name, seed = units[0].batch
        cat, asst = self.categories[name], self.assistant
        paths, refs, r_out, state = self.references(cat, seed)
        side = asst.tower.image_size  # maps at the tower's size, as in the expert evaluation
        seen = [self.image(u.items[0]) for u in units]
        evs = [asst.evidence_from_features(img, q_out, refs, r_out, seed=seed, state=state, map_size=(side, side))
               for img, q_out, _ in seen]
        n = len(units)
        a1 = asst.answer_batch(evs, [DETECT_QUESTION] * n, max_new_tokens=self.max_new_tokens)
        a2 = asst.answer_batch(evs, [WHERE_QUESTION] * n, [[(DETECT_QUESTION, a)] for a in a1],
                               max_new_tokens=self.max_new_tokens)
        return [records(name, seed, paths, u.items[0], ev.result, gt_pos, x1, x2)
                for u, ev, (_, _, gt_pos), x1, x2 in zip(units, evs, seen, a1, a2)]


def records(category: str, seed: int, ref_paths: list[str], it: EvalItem, res, gt_pos: str | None, detect: str,
            where: str) -> list[dict]:
    """The two answer records of one image: the detection answer, then the follow-up's."""
    rec = {"category": category, "seed": seed, "image": it.image, "references": ref_paths,
           "gt_label": int(it.label), "defect": it.defect, "pred_label": bool(res.pred_label),
           "expert_verdict": res.verdict, "expert_score": float(res.pred_score), "threshold": float(res.threshold),
           "expert_position": res.position, "gt_position": gt_pos,
           "answer_label": parse_verdict(detect), "answer_held": held_answer(detect),
           "answer_position": parse_position(where)}
    base = record_base(category, seed, it.image)
    return [{**rec, "key": base + "detect", "question": DETECT_QUESTION, "answer": detect,
             "parsed_label": rec["answer_label"]},
            {**rec, "key": base + "where", "question": WHERE_QUESTION, "answer": where,
             "parsed_position": rec["answer_position"]}]


def evaluate_vqa(assistant, categories: list[EvalCategory], shots: int, seeds, out_dir: str | Path,
                 batch_size: int = 8, max_new_tokens: int = 32, settings: dict | None = None,
                 max_questions: int | None = None, progress: bool = True) -> dict | None:
    """Run the two questions on every test image of every category and seed; returns {category: summary}, or
    None when stopped at `max_questions` (rerun to continue).

    Answers go to OUT/answers.jsonl (one fsynced line per answer): a run that was stopped resumes where it
    stopped, answering only images not yet answered. `settings` (shots, config, checkpoint) are kept in
    OUT/run.json and must match on resume (store.check_run_file)."""
    out, seeds = Path(out_dir), list(seeds)
    path = out / "answers.jsonl"
    check_run_file(out, {"mode": "vqa", "shots": shots, "max_new_tokens": max_new_tokens, **(settings or {})})
    done = sum(r["question"] == WHERE_QUESTION for r in read_answers(path)) if path.is_file() else 0
    if done:
        print(f"resuming: {done} image(s) already answered in {path}")
    cats = []
    for cat in categories:
        reason = skip_reason(cat, shots)
        if reason:  # as in the expert evaluation: noted, and the other categories still run
            tqdm.write(reason)
        else:
            cats.append(cat)
    ask = FolderAsker(assistant, cats, shots, max_new_tokens)
    stats = run_units(folder_units(cats, seeds), ask, path, batch_size, max_questions, progress, desc="vqa")
    if max_questions is not None and stats.answered >= max_questions:
        return None
    answers = {(r["category"], r["seed"], r["image"]): r for r in read_answers(path) if r["question"] == WHERE_QUESTION}
    return {cat.name: {**summarise([answer_metrics([answers[(cat.name, s, it.image)] for it in cat.items])
                                    for s in seeds]), "n_normal": cat.n_normal, "n_anomalous": cat.n_anomalous}
            for cat in cats}
