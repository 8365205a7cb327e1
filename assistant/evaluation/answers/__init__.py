"""Answer-level evaluation: the assistant's answers, graded, with the expert's verdicts beside them.

    runner.py     the one runner (units of questions about one image; resume, max_questions)
    folder.py     MVTec-layout folders: "Is there any anomaly in the image?" + "Where is it?" (`--mode vqa`)
    questions.py  MMAD / JSONL question files: grading, shards, merge (`--mmad`, `--jsonl`, `--merge`)
    store.py      crash-safe answers.jsonl, run.json, sharding and shard merging
    report.py     report.json / report.md / report.csv / roc.png / qualitative.png of answer runs, report_vqa.md
"""
