"""The Assistant facade: vision tower + anomaly expert + LVLM, loaded from a checkpoint dir or a preset.

    asst = Assistant.from_pretrained("checkpoints/offline-small")
    ev = asst.analyze("part.png", references=["good.png"])     # images encoded once; ev.result = AnomalyResult
    for chunk in asst.stream_answer(ev, "Is there any anomaly?"):
        print(chunk, end="")
    asst.answer(ev, "Where is it?", history=[("Is there any anomaly?", "Yes, ...")])

The Assistant holds weights only; everything about one image lives in the Evidence it returns.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from assistant.config import Config, load_config, resolve_data_path
from assistant.expert import AnomalyResult
from assistant.grounded import grounded_answer
from assistant.imaging import ImageInput, load_image
from assistant.lvlm import HEADS_FILE, LVLM, ImageFeatures, build_lvlm, image_features, visual_inputs
from assistant.vision.base import VisionOutput


@dataclass
class Evidence:
    """One query (+ references) analysed once: tower outputs, the expert's state and result, LVLM features."""
    query: Image.Image  # RGB query image
    references: list[Image.Image]  # RGB reference normals (may be empty)
    query_out: VisionOutput  # tower output of the query, batch 1
    ref_out: VisionOutput | None  # tower outputs of the references, batch k (None when k = 0)
    state: object  # the expert's ReferenceState for these references
    result: AnomalyResult  # the expert's result (replace it to change sensitivity)
    features: ImageFeatures  # pooled LVLM features incl. the second-look crop
    timings: dict = field(default_factory=dict)  # seconds per stage

    @property
    def images(self) -> list[Image.Image]:
        return [self.query, *self.references]


def _resolve(path: str | None) -> Path | None:
    """Relative checkpoint paths are tried against the working dir, then the package data (resolve_data_path)."""
    return resolve_data_path(path) if path else None


class Assistant:
    def __init__(self, cfg: Config, tower, expert, lvlm: LVLM | None, source: str | None = None):
        self.cfg, self.tower, self.expert, self.lvlm = cfg, tower, expert, lvlm
        self.source = source  # the checkpoint dir, preset or YAML file it was loaded from (a profile records it)

    @classmethod
    def from_pretrained(cls, path_or_preset: str | Path = "offline-small", overrides: Sequence[str] = (),
                        device: str | None = None, load_lvlm: bool = True) -> Assistant:
        """A checkpoint dir (config.json + lvlm/expert weights) or a preset name / YAML file."""
        p = resolve_data_path(path_or_preset)
        overrides = list(overrides)
        if device:
            overrides.append(f"vision.device={device}")
        cfg = load_config(path_or_preset, overrides)
        if p.is_dir() and (p / "config.json").is_file():  # a checkpoint dir: its own weights win
            if (p / HEADS_FILE).is_file() and not any(o.startswith("lvlm.checkpoint=") for o in overrides):
                cfg.lvlm.checkpoint = str(p)
            if (p / "expert.safetensors").is_file() and not any(o.startswith("expert.checkpoint=") for o in overrides):
                cfg.expert.checkpoint = str(p)
        from assistant.expert import load_expert

        t0 = time.perf_counter()
        tower, expert = load_expert(cfg)
        lvlm = None
        if load_lvlm:
            ckpt = _resolve(cfg.lvlm.checkpoint)
            if ckpt is not None and not (ckpt / HEADS_FILE).is_file():
                raise FileNotFoundError(f"lvlm.checkpoint {ckpt}: expected {HEADS_FILE} there (train one with "
                                        f"`python -m training lvlm`, or set lvlm.checkpoint=null for untrained heads)")
            lvlm = build_lvlm(cfg, tower, checkpoint=ckpt, merge_lora=True)  # inference only: fold the adapter in
            if tower.device.type != "cpu" and lvlm.device.type == "cpu":  # follow the tower onto the GPU
                lvlm.to(tower.device)  # (4-bit LMs are placed on the GPU when loaded and never get here)
        asst = cls(cfg, tower, expert, lvlm, source=str(path_or_preset))
        asst.load_time = time.perf_counter() - t0
        return asst

    # ------------------------------------------------------------------ evidence
    @torch.no_grad()
    def analyze(self, query: ImageInput, references: Sequence[ImageInput] = (), seed: int = 0,
                golden: bool = False) -> Evidence:
        """Encode the query and references once, run the expert, prepare the LVLM features. `golden`: the user
        says the references are golden samples of this design in the same fixture (alignment "golden")."""
        t0 = time.perf_counter()
        q = load_image(query, self.cfg.serve.max_pixels)
        refs = [load_image(r, self.cfg.serve.max_pixels) for r in references]
        q_out = self.tower.encode([q])
        r_out = self.tower.encode(refs) if refs else None
        t1 = time.perf_counter()
        ev = self.evidence_from_features(q, q_out, refs, r_out, seed=seed, golden=golden)
        ev.timings = {"encode": t1 - t0, **ev.timings}
        return ev

    @torch.no_grad()
    def evidence_from_features(self, query: Image.Image, query_out: VisionOutput, references: Sequence[Image.Image],
                               ref_out: VisionOutput | None, seed: int = 0, state=None,
                               map_size: tuple[int, int] | None = None, golden: bool = False) -> Evidence:
        """Evidence from already-encoded images (chat sessions cache the tower outputs); pass the expert's
        ReferenceState to skip re-fitting the same references (it keeps its own alignment mode). map_size (H, W)
        defaults to the image size. `golden`: the references are golden samples (fitted with alignment "golden";
        False: the config's expert.alignment)."""
        t0 = time.perf_counter()
        if state is None:
            state = self.expert.fit_references(self.tower, list(references), ref_out, seed=seed,
                                               alignment="golden" if golden else None)
        t1 = time.perf_counter()
        result = self.expert.predict(query_out, state, map_size or (query.size[1], query.size[0]),
                                     images=[query], tower=self.tower)[0]
        t2 = time.perf_counter()
        feats = None
        if self.lvlm is not None:
            lv = self.cfg.lvlm
            feats = image_features(self.tower, query_out, lv.pool_tokens, query, result.anomaly_map, ref_out,
                                   lv.projector_levels, lv.second_look)
        t3 = time.perf_counter()
        return Evidence(query, list(references), query_out, ref_out, state, result, feats,
                        {"fit_references": t1 - t0, "expert": t2 - t1, "lvlm_features": t3 - t2})

    # ------------------------------------------------------------------ answers
    def _result(self, evidence: Evidence, sensitivity: float) -> AnomalyResult:
        if not sensitivity:
            return evidence.result
        from assistant.expert import apply_sensitivity

        return apply_sensitivity(evidence.result, sensitivity, self.cfg.expert.min_box_area)

    def _grounded(self, result: AnomalyResult, question: str, history) -> str | None:
        """The evidence's own answer (grounded.py), or None for the LM; every question goes to the LM when
        lvlm.grounded is off (to measure what the LM says by itself)."""
        return grounded_answer(result, question, history) if self.cfg.lvlm.grounded else None

    def _visual_inputs(self, evidence: Evidence, result: AnomalyResult):
        """The LM's visual inputs: the features and the result, with the evidence words the config asks for."""
        lv = self.cfg.lvlm
        return visual_inputs(evidence.features, result, changes=lv.evidence_changes, looks=lv.evidence_looks)

    def _need_lvlm(self) -> LVLM:
        if self.lvlm is None:
            raise RuntimeError("this Assistant was loaded with load_lvlm=False: it can detect but not answer")
        return self.lvlm

    def stream_answer(self, evidence: Evidence, question: str, history: Sequence[tuple[str, str]] = (),
                      sensitivity: float = 0.0, max_new_tokens: int | None = None, **generate_kwargs) -> Iterator[str]:
        """Yield the answer in text chunks as the LM generates them (at once when the evidence answers it:
        grounded.py)."""
        lvlm = self._need_lvlm()
        result = self._result(evidence, sensitivity)
        said = self._grounded(result, question, history)
        if said is not None:
            yield said
            return
        vis = self._visual_inputs(evidence, result)
        yield from lvlm.stream(vis, question, list(history), max_new_tokens=max_new_tokens, **generate_kwargs)

    def answer(self, evidence: Evidence, question: str, history: Sequence[tuple[str, str]] = (),
               sensitivity: float = 0.0, max_new_tokens: int | None = None, **generate_kwargs) -> str:
        lvlm = self._need_lvlm()
        result = self._result(evidence, sensitivity)
        said = self._grounded(result, question, history)
        if said is not None:
            return said
        vis = self._visual_inputs(evidence, result)
        return lvlm.generate([vis], [question], [list(history)], max_new_tokens=max_new_tokens, **generate_kwargs)[0]

    def answer_batch(self, evidences: Sequence[Evidence], questions: Sequence[str],
                     histories: Sequence[Sequence[tuple[str, str]]] | None = None,
                     max_new_tokens: int | None = None) -> list[str]:
        """Batched (left-padded) answers, one per evidence/question; those the evidence answers (grounded.py) are
        not generated."""
        lvlm = self._need_lvlm()
        histories = list(histories) if histories is not None else [[] for _ in questions]
        out = [self._grounded(e.result, q, h) for e, q, h in zip(evidences, questions, histories)]
        todo = [i for i, a in enumerate(out) if a is None]
        if todo:
            vis = [self._visual_inputs(evidences[i], evidences[i].result) for i in todo]
            said = lvlm.generate(vis, [questions[i] for i in todo], [histories[i] for i in todo],
                                 max_new_tokens=max_new_tokens)
            for i, a in zip(todo, said):
                out[i] = a
        return out
