"""Expert-level evaluation: anomaly maps and verdicts on labelled folders.

    runner.py     k-shot reference draws over seeds, one encode per test image (evaluate, evaluate_category)
    metrics.py    image and pixel metrics (AUROC, AP, F1-max, AUPRO) and the one balanced accuracy
    report.py     report.json / report.md / report.csv / roc.png, and the best/worst grid (qualitative.png)
    baselines.py  the plain nearest-neighbour detector (`--baseline knn`) beside ours
"""
