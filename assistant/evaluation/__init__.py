"""Evaluation: `python -m assistant evaluate ...` (cli.py, the only command module here).

    data/      test images and questions: MVTec-layout folders, VisA, MMAD, JSONL
    expert/    expert-level: runner, metrics, report, kNN baseline
    answers/   answer-level: one runner for folder VQA, MMAD and JSONL questions; answer store; reports
    plots.py   ROC curves and the best/worst qualitative grid
"""
