"""Evaluation data: every source of test images and questions.

    items.py          EvalItem, EvalCategory, DatasetError; skip_reason, sample_references (the k-shot draw)
    mvtec.py          MVTec-layout folders (and VisA roots) -> EvalCategory: discover, load_mvtec_category
    visa.py           VisA in its original layout (split_csv/1cls.csv)
    jsonl.py          QAItem and the generic JSONL question file
    mmad.py           MMAD questions (mmad.json), prompts, option parsing for detectors, per-type scores
    mvtec_to_mmad.py  MMAD-style questions written for your own MVTec-layout folders
"""
from assistant.evaluation.data.items import (
           DatasetError,
           EvalCategory,
           EvalItem,
           sample_references,
           skip_reason,
)
from assistant.evaluation.data.mvtec import discover, load_mvtec_category

__all__ = ["DatasetError", "EvalCategory", "EvalItem", "discover", "load_mvtec_category", "sample_references",
           "skip_reason"]
