"""Answer-level runner: end to end on a generated MMAD set with a fake answerer; resume after a crash,
shards + merge, and metric values against scikit-learn and hand-computed cases."""
import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from qa_fixtures import BatchFakeAnswerer, FakeAnswerer, make_mmad

from assistant.evaluation import cli as evaluate_cli
from assistant.evaluation.answers.report import category_metrics
from assistant.evaluation.answers.store import StoreError


def _args(*argv):
    p = argparse.ArgumentParser()
    evaluate_cli.add_arguments(p)
    return p.parse_args(list(argv))


def _run_jsonl(tmp_path, root, lines: list[dict], answerer) -> tuple[list[dict], Path]:
    """`evaluate --jsonl` over `lines` with a fake answerer: (the answer records, the output folder)."""
    q = tmp_path / "q.jsonl"
    q.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out"
    args = _args("--jsonl", str(q), "--data-root", str(root), "--out", str(out), "--config", "fake", "--no-plots")
    assert evaluate_cli.run(args, answerer=answerer) == 0
    return [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()], out


@pytest.fixture(scope="module")
def mmad(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmad")
    return root, make_mmad(root)


def _run(mmad, out, *extra, answerer=None):
    root, path = mmad
    args = _args("--mmad", str(path), "--data-root", str(root), "--out", str(out), "--config", "fake", *extra)
    return evaluate_cli.run(args, answerer=answerer or FakeAnswerer())


@pytest.fixture(scope="module")
def full_run(mmad, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    assert _run(mmad, out) == 0
    return out


def _keys(path):
    return [json.loads(x)["key"] for x in path.read_text().splitlines()]


def test_end_to_end_report(full_run):
    out = full_run
    for name in ("answers.jsonl", "report.json", "report.md", "report.csv", "roc.png", "qualitative.png", "run.json"):
        assert (out / name).exists(), name
    recs = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert len(recs) == 2 * (3 * 2 + 3 * 3) and len(set(_keys(out / "answers.jsonl"))) == len(recs)
    rep = json.loads((out / "report.json").read_text())
    mm = rep["mmad"]
    assert set(mm["per_type"]) == {"Anomaly Detection", "Defect Localization", "Object Classification"}
    # recompute the balanced detection accuracy of one category by hand from the records
    det = [r for r in recs if r["category"] == "DS/bottle" and r["qtype"] == "Anomaly Detection"]
    normal = np.mean([r["parsed"] == r["gold"] for r in det if r["label"] == 0])
    anomalous = np.mean([r["parsed"] == r["gold"] for r in det if r["label"] == 1])
    assert mm["table"]["DS/bottle"]["Anomaly Detection"] == pytest.approx((normal + anomalous) / 2)
    assert mm["average"] == pytest.approx(np.mean(list(mm["per_type"].values())))
    det_all = [r for r in recs if r["qtype"] == "Anomaly Detection"]  # one dataset "DS": balanced over all images
    ds = np.mean([np.mean([r["correct"] for r in det_all if r["label"] == lab]) for lab in (0, 1)])
    assert mm["per_dataset"]["DS"]["Anomaly Detection"] == pytest.approx(ds)
    cat = rep["categories"]["DS/bottle"]
    assert cat["n_normal"] == 3 and cat["n_anomalous"] == 3 and cat["n_questions"] == 15
    assert cat["mmad_anomaly_detection"] == pytest.approx(mm["table"]["DS/bottle"]["Anomaly Detection"])
    assert 0.0 < cat["answer_accuracy"] < 1.0  # the fake answerer is wrong on purpose sometimes
    md = (out / "report.md").read_text()
    assert "| DS/bottle |" in md and "Anomaly Detection" in md
    csv_rows = (out / "report.csv").read_text().splitlines()
    assert csv_rows[0].startswith("category,") and csv_rows[-1].startswith("mean,") and len(csv_rows) == 4


def test_resume_after_crash_equals_uninterrupted(mmad, full_run, tmp_path):
    class Crash(FakeAnswerer):
        def answer(self, evidence, question):
            if self.answered == 12:
                raise KeyboardInterrupt  # killed while generating the 5th image's answers
            return super().answer(evidence, question)

    with pytest.raises(KeyboardInterrupt):
        _run(mmad, tmp_path, answerer=Crash())
    assert len(_keys(tmp_path / "answers.jsonl")) == 11  # the 4 finished images (3 + 3 + 3 + 2 questions)
    _run(mmad, tmp_path, "--max-questions", "3")  # stops in the middle of an image's questions
    assert len(_keys(tmp_path / "answers.jsonl")) == 14
    with open(tmp_path / "answers.jsonl", "a") as f:
        f.write('{"key": "s0/DS/bottle/test/good/002.png#0", "respo')  # torn write of a killed process
    again = FakeAnswerer()
    assert _run(mmad, tmp_path, answerer=again) == 0
    keys = _keys(tmp_path / "answers.jsonl")
    assert len(keys) == len(set(keys)) == 30
    assert (tmp_path / "answers.jsonl").read_text() == (full_run / "answers.jsonl").read_text()
    assert (tmp_path / "report.json").read_text() == (full_run / "report.json").read_text()
    assert (tmp_path / "report.csv").read_text() == (full_run / "report.csv").read_text()
    # a finished run restarted answers nothing new
    idle = FakeAnswerer()
    _run(mmad, tmp_path, answerer=idle)
    assert idle.answered == 0 and idle.analyzed == 0


def test_two_shards_merged_equal_one_run(mmad, full_run, tmp_path):
    a, b = FakeAnswerer(), FakeAnswerer()
    _run(mmad, tmp_path, "--num-chunks", "2", "--chunk-idx", "0", answerer=a)
    with pytest.raises(StoreError, match=r"missing chunk\(s\) \[1\]"):
        evaluate_cli.run(_args("--merge", "--out", str(tmp_path)))
    _run(mmad, tmp_path, "--num-chunks", "2", "--chunk-idx", "1", answerer=b)
    assert a.analyzed + b.analyzed == 12 and a.answered + b.answered == 30 and min(a.answered, b.answered) > 0
    assert evaluate_cli.run(_args("--merge", "--out", str(tmp_path))) == 0
    assert (tmp_path / "answers.jsonl").read_text() == (full_run / "answers.jsonl").read_text()
    assert (tmp_path / "report.json").read_text() == (full_run / "report.json").read_text()


def test_batched_answers_equal_single_answers(mmad, full_run, tmp_path):
    fake = BatchFakeAnswerer()
    _run(mmad, tmp_path, "--no-plots", answerer=fake)
    assert fake.batches == 12  # one batch per image
    assert (tmp_path / "answers.jsonl").read_text() == (full_run / "answers.jsonl").read_text()


def test_out_folder_of_another_run_is_refused(mmad, full_run):
    with pytest.raises(ValueError, match="different run.*shots: 1 vs 2"):
        _run(mmad, full_run, "--shots", "2")


def test_seeds_with_shuffled_options_give_mean_and_std(mmad, tmp_path):
    _run(mmad, tmp_path, "--seeds", "0,1", "--shuffle-options", "--no-plots")
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["seeds"] == [0, 1] and "std" in rep["mmad"]
    recs = [json.loads(x) for x in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert len(recs) == 60 and {r["seed"] for r in recs} == {0, 1}
    for r in recs:  # shuffling keeps the gold option text
        assert r["options"][r["gold"]] in ("Yes.", "No.", "Top left.") or r["qtype"] == "Object Classification"
    assert set(rep["categories"]["DS/bottle"]["std"]) >= {"answer_accuracy", "image_auroc"}


def test_category_metrics_against_sklearn_and_hand():
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels, scores = [0, 0, 1, 1, 0], [0.1, 0.4, 0.35, 0.8, 0.2]
    recs = []
    for i, (lab, sc) in enumerate(zip(labels, scores)):
        recs.append({"key": f"i{i}#0", "image": f"i{i}", "category": "c", "qtype": "Anomaly Detection", "label": lab,
                     "pred_score": sc, "pred_label": sc > 0.3, "gold": "A" if lab else "B",
                     "parsed": "A" if lab or i == 0 else "B", "expert_choice": "A" if sc > 0.3 else "B",
                     "correct": (lab == 1) or i != 0})
        recs.append(
            {
                "key": f"i{i}#1",
                "image": f"i{i}",
                "category": "c",
                "qtype": "Object Classification",
                "label": lab,
                "pred_score": sc,
                "pred_label": sc > 0.3,
                "gold": "A",
                "parsed": None,
                "correct": False,
            }
        )
    m = category_metrics(recs)
    assert m["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert m["image_auroc"] == pytest.approx(5 / 6)  # 5 of the 6 (anomalous, normal) pairs ordered right
    assert m["image_ap"] == pytest.approx(average_precision_score(labels, scores))
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1.0) / 2)  # 0.4 > 0.3 is one false alarm
    assert m["answer_balanced_accuracy"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert m["answer_accuracy"] == pytest.approx(4 / 10)
    assert m["unparsed_rate"] == pytest.approx(0.5)
    assert m["consistency"] == pytest.approx(np.mean([p == e for p, e in zip("ABAAB", "BAAAB")]))


def test_two_launched_processes_equal_one_run(mmad, full_run, tmp_path):
    """`accelerate launch`/torchrun with 2 processes: one shard each, merged by the main process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root, path = mmad
    script = tmp_path / "launch.py"
    script.write_text(
        "import argparse, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from qa_fixtures import FakeAnswerer\n"
        "from assistant.evaluation import cli as evaluate_cli\n"
        "p = argparse.ArgumentParser(); evaluate_cli.add_arguments(p)\n"
        f"a = p.parse_args(['--mmad', {str(path)!r}, '--data-root', {str(root)!r}, '--out', {str(tmp_path / 'o')!r},"
        " '--config', 'fake'] + sys.argv[1:])\n"
        "sys.exit(evaluate_cli.run(a, answerer=FakeAnswerer()))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    import socket

    with socket.socket() as s:  # a free loopback port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    def launch(*extra):
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                               "127.0.0.1", "--master_port", str(port), str(script), *extra],
                              check=False, env=env, capture_output=True, text=True, timeout=180)

    out = tmp_path / "o"
    proc = launch("--max-questions", "5")  # both processes stop early: no hang at the barrier, no report yet
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (out / "answers.jsonl").exists() and "still unanswered" in proc.stderr
    proc = launch()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["answers.0-of-2.jsonl", "answers.1-of-2.jsonl"]
    assert (out / "answers.jsonl").read_text() == (full_run / "answers.jsonl").read_text()
    assert (out / "report.json").read_text() == (full_run / "report.json").read_text()


def test_jsonl_questions_end_to_end(mmad, tmp_path):
    root, _ = mmad
    lines = []
    for cat in ("bottle", "screw"):
        for kind, n in (("good", 3), ("crack", 3)):
            for i in range(n):
                img = f"DS/{cat}/test/{kind}/{i:03d}.png"
                lines.append(
                    {
                        "image": img,
                        "references": [f"DS/{cat}/train/good/000.png"],
                        "label": int(kind != "good"),
                        "question": "Is this part defective?",
                        "answer": "no" if kind == "good" else "yes",
                        "category": cat,
                    }
                )
                lines.append({"image": img, "question": "What kind of object is this?", "category": cat,
                              "options": {"A": cat, "B": "cable"}, "answer": "A", "type": "Object Classification"})
    recs, out = _run_jsonl(tmp_path, root, lines, FakeAnswerer())
    yn = [r for r in recs if r["question"] == "Is this part defective?"]
    assert len(yn) == 12 and all(r["parsed"] in ("yes", "no") and r["correct"] for r in yn)  # fake expert is right
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["categories"]) == {"bottle", "screw"} and rep["n_questions"] == 24
    oc = [r["correct"] for r in recs if r["category"] == "bottle"]
    assert rep["categories"]["bottle"]["answer_accuracy"] == pytest.approx(np.mean(oc))
    assert rep["mmad"]["per_type"]["Object Classification"] == pytest.approx(
        np.mean([np.mean([r["correct"] for r in recs if r["category"] == c and r["qtype"] == "Object Classification"])
                 for c in ("bottle", "screw")]))


def test_baseline_detector_beside_the_assistant(mmad, tmp_path):
    from assistant.expert import AnomalyResult

    def blind(image, references):  # a baseline that calls everything anomalous
        z = np.zeros((32, 32), np.float32)
        return AnomalyResult(anomaly_map=z, pred_score=0.5, pred_label=True, pred_mask=z > 0, threshold=0.1)

    root, path = mmad
    args = _args("--mmad", str(path), "--data-root", str(root), "--out", str(tmp_path), "--config", "fake")
    assert evaluate_cli.run(args, answerer=FakeAnswerer(), baseline=blind) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    cat = rep["categories"]["DS/bottle"]
    assert cat["baseline_answer_balanced_accuracy"] == pytest.approx(0.5)  # all normals wrong, all anomalies right
    assert cat["baseline_image_auroc"] == pytest.approx(0.5)  # constant score
    assert "baseline_answer_balanced_accuracy" in (tmp_path / "report.md").read_text()


def test_cli_errors_name_the_problem(mmad, tmp_path):
    root, path = mmad
    with pytest.raises(ValueError, match="exactly one of --mmad FILE or --jsonl FILE"):
        evaluate_cli.run(
            _args("--mmad", str(path), "--jsonl", str(path), "--out", str(tmp_path)), answerer=FakeAnswerer()
        )
    with pytest.raises(ValueError, match="--mmad needs --data-root"):
        evaluate_cli.run(_args("--mmad", str(path), "--out", str(tmp_path)), answerer=FakeAnswerer())
    with pytest.raises(FileNotFoundError, match="run.json not found: nothing to merge"):
        evaluate_cli.run(_args("--merge", "--out", str(tmp_path / "none")))
    args = _args("--mmad", str(path), "--data-root", str(root), "--out", str(tmp_path))
    args.data = ["somewhere"]
    with pytest.raises(ValueError, match="not both"):
        evaluate_cli.run(args, answerer=FakeAnswerer())


def test_tiny_assistant_end_to_end_resumes_identically(tiny_lm_dir, tmp_path):
    """The real Assistant facade (tiny random models): built by the runner, batched answers, stop + resume."""
    small = make_mmad(tmp_path / "data", n_good=1, n_bad=1, categories=("bottle",))
    common = ["--mmad", str(small), "--data-root", str(tmp_path / "data"), "--config", "tiny", "--no-plots",
              "--set", f"lm.name={tiny_lm_dir}", "--set", "lvlm.checkpoint=null", "--set", "expert.checkpoint=null"]
    assert evaluate_cli.run(_args(*common, "--out", str(tmp_path / "a"))) == 0
    assert evaluate_cli.run(_args(*common, "--out", str(tmp_path / "b"), "--max-questions", "3")) == 0
    assert len(_keys(tmp_path / "b" / "answers.jsonl")) == 3
    assert evaluate_cli.run(_args(*common, "--out", str(tmp_path / "b"))) == 0
    recs = [json.loads(x) for x in (tmp_path / "a" / "answers.jsonl").read_text().splitlines()]
    assert len(recs) == 5 and all(isinstance(r["response"], str) for r in recs)
    assert (tmp_path / "a" / "answers.jsonl").read_text() == (tmp_path / "b" / "answers.jsonl").read_text()
    assert (tmp_path / "a" / "report.json").read_text() == (tmp_path / "b" / "report.json").read_text()


class HoldingAnswerer(FakeAnswerer):
    """Holds the first image of each kind for a person (a borderline answer whose reasons contain a "no")."""

    def answer(self, evidence, question: str) -> str:
        if question.startswith("Is there any anomaly") and evidence.image.endswith("000.png"):
            return ("It is borderline: I cannot decide with confidence whether to accept or reject this part, so I "
                    "would hold it for a person to check. No region of it stands out.")
        if question.startswith("Is there any anomaly"):
            return "Yes." if evidence.result.pred_label else "No."
        return super().answer(evidence, question)


def test_jsonl_detection_answers_held_for_review_are_counted_on_their_own(mmad, tmp_path):
    """A free-text Anomaly Detection answer that holds the part is graded wrong (not read as its reasons' "no"), and
    the report gives the share held and the balanced accuracy of the decided answers."""
    root, _ = mmad
    lines = [{"image": f"DS/bottle/test/{kind}/{i:03d}.png", "references": ["DS/bottle/train/good/000.png"],
              "label": int(kind != "good"), "question": "Is there any anomaly in the image?",
              "answer": "no" if kind == "good" else "yes", "category": "bottle", "type": "Anomaly Detection"}
             for kind in ("good", "crack") for i in range(3)]
    recs, out = _run_jsonl(tmp_path, root, lines, HoldingAnswerer())
    held = [r for r in recs if r["held"]]
    assert len(held) == 2 and all(r["parsed"] is None and r["correct"] is False for r in held)
    assert all(r["correct"] for r in recs if not r["held"])  # the fake expert is right on the others
    cat = json.loads((out / "report.json").read_text())["categories"]["bottle"]
    assert cat["answer_review_rate"] == pytest.approx(2 / 6)
    assert cat["answer_balanced_accuracy_decided"] == 1.0
    assert cat["answer_balanced_accuracy"] == pytest.approx(2 / 3) and cat["unparsed_rate"] == 0.0
    md = (out / "report.md").read_text()
    assert "answer_review_rate" in md and "held for a person" in md
