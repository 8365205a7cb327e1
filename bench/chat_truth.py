"""Are chat answers truthful to the overlay? Multi-turn sessions on real images, each answer checked against
the expert result the app shows beside it (verdict, 3x3 position, area, number of regions).

    python bench/chat_truth.py --data DIR [DIR ...] [--checkpoint checkpoints/offline-small] [--per-category 10]

For each MVTec-layout category, up to --per-category test images (half normal, half anomalous, sorted, evenly
spaced) are opened in a ChatSession with one reference from train/good (random.Random(seed).sample, as in
`evaluate`), and asked, in this order, as a user of the app would:
  detect "Is there any anomaly in the image?", where "Where is it?", size "How large is it?",
  ship "Is it safe to ship?", reject "Would you reject this part?", count "How many defects are there?",
  compare "Compare it with the reference.", good "Is this part good?", usable "Can this part be used?",
  scrap "Should it be thrown away?" (the last two worded unlike any training question), type "What kind of defect
  is it?", describe "Describe it.", why "Why do you think so?".
A borderline verdict (the score within the threshold's uncertainty, or good parts that do not cover the part) must
be said once, with the first answer, and again only in the answers that explain it (detect, the accept/reject
kinds, why); a clear one never.
An answer is truthful when it agrees with the session's AnomalyResult (not with the ground truth: this measures
the language side; the expert's own accuracy is `evaluate`'s job):
  detect/where/size/count/type/describe on a normal verdict: the answer says there is no defect;
  detect: yes/no = the verdict; where: the position word = the expert's; size: the percentage = the mask's area
  as the evidence states it;
  count: the number of regions = the evidence's, in agreeing English ("There are 1 ..." / "There is 2 ..." fail);
  type: the strongest region's type when the classifier named one (else "cannot name the type"), with its
  measured form, length and position (expert/describe.py); describe: that region's form, length and position first;
  compare: on an anomalous verdict a difference at the expert's position word and nothing that calls the part
  normal, on a normal one "it matches" / "no differences" with no position;
  ship, good, usable (yes = normal), reject, scrap (yes = anomalous): nothing calling the part normal when it is
  flagged, no defect words when it is normal ("Yes, there is an anomaly" on a good part is not truthful), and either
  the leading yes/no of the question's polarity or, without one, only the fitting recommendation ("..., so I would
  reject it." / "..., so I would accept it.");
  detect and the accept/reject kinds on a borderline verdict: no decision (no leading yes/no, nothing calling the part
  normal or defective, no "I would accept/reject it") and the part held for a person to check;
  why: the score and the threshold (its figure as the evidence words it), the verdict (normal / anomalous, or on a
  borderline one no decision and the part held) and, on a flagged or borderline part, the expert's position word.
--ask KIND=QUESTION ... replaces the default questions with your own wordings, each checked as one of the kinds above.
With --first, every question is instead the first turn of the chat (the history is cleared before each): users
do not always open with "is anything wrong?".
Prints one table (truthful fraction per question, split by the expert's verdict) and writes --out JSONL.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

QUESTIONS = [("detect", "Is there any anomaly in the image?"), ("where", "Where is it?"),
             ("size", "How large is it?"), ("ship", "Is it safe to ship?"),
             ("reject", "Would you reject this part?"), ("count", "How many defects are there?"),
             ("compare", "Compare it with the reference."), ("good", "Is this part good?"),
             ("usable", "Can this part be used?"), ("scrap", "Should it be thrown away?"),
             ("type", "What kind of defect is it?"), ("describe", "Describe it."), ("why", "Why do you think so?")]
# accept/reject questions, by what "yes" means; "usable" and "scrap" are worded unlike any training question
# (data_synth ACCEPT_Q / REJECT_Q), to see whether answers stay truthful to a new wording
YES_MEANS_NORMAL = {"ship": True, "good": True, "usable": True, "reject": False, "scrap": False}
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}


KINDS = ("detect", "where", "size", "count", "compare", "type", "describe", "why", *YES_MEANS_NORMAL)
REVIEW_KINDS = ("detect", "why", *YES_MEANS_NORMAL)  # answers that say a borderline verdict themselves


def parse_ask(items: list[str]) -> list[tuple[str, str]]:
    """["scrap=Is this part scrap?", ...] -> [(kind, question), ...]; a kind the checks do not know is an error."""
    out = []
    for item in items:
        kind, sep, question = item.partition("=")
        kind, question = kind.strip(), question.strip()
        if not sep or kind not in KINDS or not question:
            raise ValueError(f"--ask: expected KIND=QUESTION with KIND one of {', '.join(KINDS)}, got {item!r}")
        out.append((kind, question))
    return out


def leading(answer: str) -> str | None:
    m = re.match(r"^\W*(yes|no)\b", answer.lower())
    return m.group(1) if m else None


def says_count(answer: str) -> int | None:
    text = answer.lower()
    if re.search(r"\bno (?:defects?|defective regions?|anomal\w*)\b|\bthere (?:are|is) no\b", text):
        return 0
    m = re.search(r"\b(\d+|one|two|three|four|five|six|seven|eight|nine)\b", text)
    if not m:
        return None
    return int(m.group(1)) if m.group(1).isdigit() else NUMBERS[m.group(1)]


def number_agrees(answer: str) -> bool:
    """False for a verb that disagrees with its count: "there are 1/one ...", "there is 2/two ..."."""
    text = answer.lower()
    many = r"(?:[2-9]|\d{2,}|two|three|four|five|six|seven|eight|nine)"
    return not (re.search(r"\bthere are (?:1|one)\b", text) or re.search(rf"\bthere is {many}\b", text))


def expected(result) -> dict:
    """Facts of the overlay, worded as the LM's evidence states them (assistant.wording)."""
    from assistant.wording import percent, result_evidence
    from assistant.wording.review import figures

    ev = result_evidence(result)
    pos = re.search(r"location: ([a-z ]+?)(?:;|\.)", ev)
    regions = re.search(r"regions: (\d+)", ev)
    from assistant.grounded import focus

    top = focus(result) if result.pred_label else None
    return {"anomalous": bool(result.pred_label), "borderline": result.verdict == "borderline",
            "position": pos.group(1) if pos else None, "region": region_facts(top, result),
            "percent": percent(result.area_fraction) if result.size else None,
            "regions": int(regions.group(1)) if regions else None, "evidence": ev,
            "threshold": figures(result.pred_score, result.threshold)[1]}


def region_facts(box, result) -> dict | None:
    """The strongest flagged region's measured facts (expert/describe.py) as the answers word them."""
    if box is None or box.descriptor is None:
        return None
    from assistant.wording.defects import FORM_NOUNS, length_words
    from assistant.wording.review import region_position

    d = box.descriptor
    return {"type": d.defect_type, "form": FORM_NOUNS[d.form], "length": length_words(d).rsplit(" ", 1)[0],
            "position": region_position(box, result)}


def says_region(kind: str, answer: str, region: dict | None) -> bool:
    """type: the named type (or, unnamed, that it cannot be named) with the region's measured form, length and
    position; describe: the strongest region's form, length and position first."""
    from assistant.wording import parse_position
    from assistant.wording.defects import type_words_in

    if region is None:
        return False
    said = answer.split(".")[0] if kind == "describe" else answer
    measured = region["form"] in said and region["length"] in said and parse_position(said) == region["position"]
    if kind == "describe":
        return measured
    named = type_words_in(answer.split(":")[0])
    if region["type"]:
        return named[:1] == [region["type"]] and measured
    return "cannot name the type" in answer and measured


def says_same(answer: str) -> bool:
    """A comparison that finds no difference ("It matches the reference: no differences ...")."""
    from assistant.wording import parse_position

    text = answer.lower()
    same = re.search(
        r"\bmatch(?:es)?\b|\bno differences?\b|\blooks? like a normal\b|\bidentical\b|\bthe same as\b", text
    )
    return bool(same) and parse_position(answer) is None


def decision_truthful(answer: str, bad: bool, yes_means_normal: bool) -> bool:
    """An accept/reject answer: nothing contradicting the verdict (normal words on a flagged part, defect words on
    a normal one), and either a leading yes/no of the question's polarity or, with no leading yes/no, only the
    recommendation that fits the verdict ("..., so I would reject it." / "..., so I would accept it.")."""
    text = answer.lower()
    if re.search(
        r"looks? normal|no defects?|no anomal" if bad else r"anomal|defect|damage|crack|scratch|missing", text
    ):
        return False
    lead = leading(answer)
    if lead is not None:
        return lead == ("no" if bad == yes_means_normal else "yes")
    said = set(re.findall(r"\b(reject|accept)", text))
    return said == {"reject" if bad else "accept"}


def holds_for_review(answer: str) -> bool:
    """A detection or accept/reject answer on a borderline verdict: no decision (no leading yes/no, nothing calling
    the part normal or defective, no "I would accept/reject it"), and the part held for a person to check."""
    text = answer.lower()
    decided = re.search(r"looks? normal|\bno (?:defects?|anomal\w*)\b|\bis (?:defective|normal|anomalous)\b|"
                        r"\bthere is an? (?:\w+ )?(?:defect|anomaly)\b|\bi would (?:accept|reject)\b|"
                        r"\bsafe to ship\b", text)
    return leading(answer) is None and not decided and bool(re.search(r"\bhold\b|\bperson\b[^.]*\bcheck", text))


def why_truthful(answer: str, fact: dict) -> bool:
    """'Why do you think so?': the score against the threshold (its figure), the verdict (a borderline one held for a
    person, deciding nothing), and on a flagged or borderline part the expert's position word when it has one."""
    from assistant.wording import parse_position

    text = answer.lower()
    if not ("score" in text and "threshold" in text and fact["threshold"] in answer):
        return False
    if fact["borderline"]:
        said = holds_for_review(answer)
    elif fact["anomalous"]:
        said = bool(re.search(r"\banomalous\b|\bdefective\b", text)) and not re.search(r"\bnormal\b", text)
    else:
        return bool(re.search(r"\bnormal\b", text)) and not re.search(r"\banomalous\b|\bdefective\b", text)
    return said and (fact["position"] is None or parse_position(answer) == fact["position"])


def says_borderline_once(answer: str, fact: dict, first: bool, kind: str = "") -> bool:
    """A borderline verdict is said once with the first answer about the image (assistant.chat.borderline_note, or the
    answer itself), again only by the answers that explain it (REVIEW_KINDS), and never for a clear one."""
    return answer.lower().count("borderline") == int(fact["borderline"] and (first or kind in REVIEW_KINDS))


def truthful(kind: str, answer: str, fact: dict) -> bool:
    from assistant.wording import parse_position, parse_verdict

    bad = fact["anomalous"]
    verdict = parse_verdict(answer)
    if kind == "why":
        return why_truthful(answer, fact)
    if fact["borderline"] and (kind in YES_MEANS_NORMAL or kind == "detect"):  # no decision: held for a person
        return holds_for_review(answer)
    if kind in YES_MEANS_NORMAL:
        return decision_truthful(answer, bad, YES_MEANS_NORMAL[kind])
    if kind == "compare":
        if not bad:
            return says_same(answer)
        return (verdict is not False and not says_same(answer) and fact["position"] is not None
                and parse_position(answer) == fact["position"])
    if kind == "detect":
        return verdict is bad
    if not bad:  # where / size / count / type / describe on a normal part: nothing to locate, measure or count
        return verdict is False or says_count(answer) == 0
    if kind in ("type", "describe"):
        return says_region(kind, answer, fact["region"])
    if kind == "where":
        return fact["position"] is not None and parse_position(answer) == fact["position"]
    if kind == "size":
        return fact["percent"] is not None and fact["percent"] in answer
    if kind == "count":
        return says_count(answer) == (fact["regions"] or 1) and number_agrees(answer)
    raise ValueError(kind)


def pick_items(cat, n: int) -> list:
    goods = [it for it in cat.items if not it.label]
    bads = [it for it in cat.items if it.label]

    def spaced(xs, k):
        return [xs[round(i * (len(xs) - 1) / max(k - 1, 1))] for i in range(min(k, len(xs)))] if xs and k else []

    return spaced(goods, n // 2) + spaced(bads, n - n // 2)


def print_table(rows: list[dict], questions: list[tuple[str, str]]) -> None:
    """Truthful fraction (answers) per question, split by the expert's verdict."""
    print("| question | expert: anomalous | expert: normal | of these, borderline | all |")
    print("|---|---|---|---|---|")
    for kind, q in questions + [("all", "all questions")]:
        sel = [r for r in rows if kind == "all" or (r["kind"], r["question"]) == (kind, q)]
        cells = []
        for part in ([r for r in sel if r["expert_anomalous"]], [r for r in sel if not r["expert_anomalous"]],
                     [r for r in sel if r["expert_borderline"]], sel):
            cells.append(f"{sum(r['truthful'] for r in part) / len(part):.3f} ({len(part)})" if part else "-")
        print(f"| {q} | " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", required=True, help="MVTec-layout category folders (or roots)")
    p.add_argument("--checkpoint", default="checkpoints/offline-small")
    p.add_argument("--per-category", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="reference draw (random.Random(seed).sample of train/good)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="JSONL of every question, answer and check")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--first", action="store_true", help="ask every question as the first turn (history cleared)")
    p.add_argument("--ask", nargs="+", default=None, metavar="KIND=QUESTION",
                   help="your own questions instead of the default ones, each checked as KIND: "
                        + ", ".join(KINDS) + " (e.g. 'scrap=Is this part scrap?')")
    args = p.parse_args(argv)
    try:
        questions = parse_ask(args.ask) if args.ask else QUESTIONS
    except ValueError as e:
        p.error(str(e))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from assistant.chat import ChatSession
    from assistant.evaluation.data import discover, sample_references
    from assistant.model import Assistant

    asst = Assistant.from_pretrained(args.checkpoint, overrides=args.overrides)
    rows: list[dict] = []
    t0 = time.perf_counter()
    for cat in discover(args.data):
        refs = sample_references(cat.train_good, 1, args.seed) if cat.train_good else []
        for it in pick_items(cat, args.per_category):
            session = ChatSession(asst, it.image, references=refs)
            fact = expected(session.result)
            for i, (kind, q) in enumerate(questions):
                if args.first:
                    session.history = []  # same image, references and result; no earlier turn
                answer = "".join(session.ask(q)).strip()
                rows.append({"category": cat.name, "image": it.image, "kind": kind, "question": q, "answer": answer,
                             "expert_anomalous": fact["anomalous"], "expert_borderline": fact["borderline"],
                             "evidence": fact["evidence"],
                             "truthful": truthful(kind, answer, fact) and says_borderline_once(answer, fact, i == 0,
                                                                                               kind)})
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    n_img = len(rows) // len(questions)
    order = "each question as the first turn" if args.first else "questions in this order in one chat"
    print(
        f"\nchat truthfulness: {args.checkpoint} {' '.join(args.overrides)}; {n_img} sessions ({order}), 1 reference, "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print_table(rows, questions)
    wrong = [r for r in rows if not r["truthful"]]
    for r in wrong[:12]:
        name = f"{Path(r['image']).parent.name}/{Path(r['image']).name}"
        print(f"- {name} [{r['evidence']}] {r['question']} -> {r['answer']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
