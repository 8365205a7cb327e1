"""Submit -> first streamed token through the running app (gradio_client, the UI's /chat endpoint).

    inspection-assistant serve &                      # or make demo
    python bench/app_speed.py --url http://127.0.0.1:7860/ [--image Q --reference R] [--repeats 3]

Per repeat: a new session uploads the query + reference and asks "Is there any anomaly?" (first question:
includes encoding and the expert), then asks the follow-ups "Where is it?" and "How large is it?" (no image:
cached features). The time to the first streamed update whose assistant text is non-empty is measured on the
client. Prints one table (median) with the follow-up target of 1 s.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def _text(update) -> str:
    chat = update[0] if isinstance(update, (list, tuple)) else None
    if not chat or chat[-1].get("role") != "assistant":
        return ""
    content = chat[-1].get("content")
    if isinstance(content, list):
        return "".join(c.get("text", "") for c in content if isinstance(c, dict))
    return str(content or "")


def ask(client, text: str, image=None, refs=()) -> tuple[float, float, str]:
    """(s to first non-empty streamed answer text, s to the end, final answer)."""
    from gradio_client import handle_file

    message = {"text": text, "files": [handle_file(image)] if image else []}
    gallery = [{"image": handle_file(r), "caption": None} for r in refs]
    t0 = time.perf_counter()
    job = client.submit(message, [], gallery, 0.0, api_name="/chat")
    first, seen = None, 0
    while not job.done() or seen < len(job.outputs()):
        outs = job.outputs()
        for upd in outs[seen:]:
            if first is None and _text(upd).strip() and _text(upd) != "…":
                first = time.perf_counter() - t0
        seen = len(outs)
        time.sleep(0.005)
    final = _text(job.result())
    return (first if first is not None else float("nan")), time.perf_counter() - t0, final


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:7860/")
    p.add_argument("--image", default=None)
    p.add_argument("--reference", action="append", default=[])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    from gradio_client import Client

    if args.image:
        query, refs = args.image, args.reference
    else:  # the chat_speed bench pair, written to files
        import tempfile

        from bench.chat_speed import default_images

        q, r = default_images()
        tmp = Path(tempfile.mkdtemp())
        q.save(tmp / "query.png")
        r.save(tmp / "reference.png")
        query, refs = str(tmp / "query.png"), [str(tmp / "reference.png")]
    rows: dict[str, list[float]] = {"first question: first token (s)": [], "follow-up: first token (s)": [],
                                    "follow-up: whole answer (s)": []}
    answers = []
    for _ in range(args.repeats):
        client = Client(args.url, verbose=False)  # a new session each repeat
        f, _, a = ask(client, "Is there any anomaly?", query, refs)
        rows["first question: first token (s)"].append(f)
        answers.append(("Is there any anomaly?", a))
        for q in ("Where is it?", "How large is it?"):
            f, t, a = ask(client, q, None, refs)
            rows["follow-up: first token (s)"].append(f)
            rows["follow-up: whole answer (s)"].append(t)
            answers.append((q, a))
    print(f"\napp speed: {args.url}, median of {len(rows['follow-up: first token (s)'])} follow-ups "
          f"({args.repeats} sessions)")
    print("| metric | seconds | target | ok |")
    print("|---|---|---|---|")
    for name, vals in rows.items():
        val = statistics.median(vals)
        target = 1.0 if name == "follow-up: first token (s)" else None
        ok = "" if target is None else ("yes" if val <= target else "NO")
        print(f"| {name} | {val:.3f} | {'' if target is None else f'{target:.2f}'} | {ok} |")
    for q, a in answers[:3]:
        print(f"Q: {q}\nA: {a}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
