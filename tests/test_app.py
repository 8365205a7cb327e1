"""The Gradio app launched in-process, driven by gradio_client (tiny models, loopback only)."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from assistant import app, profile_fit
from assistant.chat import ChatSession, image_fingerprint
from assistant.profile import Profile
from tests.test_chat import part_image, speaking_tiny_assistant

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_PIXELS = 200 * 200  # small upload limit so the "huge image" case is cheap


@pytest.fixture(scope="module")
def assistant(tiny_tokenizer_dir):
    a = speaking_tiny_assistant()
    a.cfg.serve.max_pixels = MAX_PIXELS
    return a


@pytest.fixture(scope="module")
def server(assistant, tmp_path_factory):
    example_dir = tmp_path_factory.mktemp("examples")
    demo = app.build_demo(assistant, example_dir)
    _, url, _ = app.launch(demo, assistant.cfg, example_dir, prevent_thread_lock=True, quiet=True,
                           server_name="127.0.0.1", server_port=None, show_error=True)
    yield url, example_dir
    demo.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    paths = {}
    for name, img in {"query": part_image(21, defect=(6, 28)), "ref": part_image(22)}.items():
        paths[name] = d / f"{name}.png"
        img.save(paths[name])
    (d / "notes.png").write_text("this is text, not a picture")
    paths["text"] = d / "notes.png"
    (d / "empty.png").write_bytes(b"")
    paths["empty"] = d / "empty.png"
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(d / "huge.png")  # 90k px > MAX_PIXELS
    paths["huge"] = d / "huge.png"
    paths["truncated"] = d / "truncated.png"
    paths["truncated"].write_bytes(paths["query"].read_bytes()[:200])
    return paths


def test_api_ask_follow_up_and_bad_uploads(server, images, assistant):
    url, _ = server
    client = Client(url, verbose=False)
    answer, result = client.predict(handle_file(images["query"]), [handle_file(images["ref"])],
                                    "Is there any anomaly?", 0.0, api_name="/inspect")
    expected = ChatSession(assistant, images["query"], [images["ref"]])
    assert answer.startswith("scratch scratch") and answer == expected.answer("Is there any anomaly?")
    assert result["query"]["sha1"] == image_fingerprint(expected.query) and result["references"] == 1
    assert result["pred_score"] == pytest.approx(expected.result.pred_score, rel=1e-5)
    assert result["verdict"] in ("normal", "borderline", "anomalous") and result["map_shape"] == [48, 48]
    # follow-up: no image, same client -> same session
    answer2, result2 = client.predict(None, [], "Where is it?", 0.0, api_name="/inspect")
    assert answer2.startswith("scratch scratch") and result2["query"] == result["query"]
    # sensitivity moves the threshold relative to the calibrated one
    _, loose = client.predict(None, [], "Is there any anomaly?", 1.0, api_name="/inspect")
    assert loose["threshold"] == pytest.approx(result["threshold"] / 2, rel=1e-5)
    assert loose["extras"]["calibrated_threshold"] == pytest.approx(result["threshold"], rel=1e-5)
    for key, message in [("text", "not a recognised image format"), ("empty", "empty"),
                         ("huge", "exceeds the limit"), ("truncated", "corrupt or truncated")]:
        with pytest.raises(AppError, match=message):
            client.predict(handle_file(images[key]), [], "Is there any anomaly?", 0.0, api_name="/inspect")
    # the server keeps working, and the failed uploads did not replace the session's image
    _, result3 = client.predict(None, [], "How large is it?", 0.0, api_name="/inspect")
    assert result3["query"] == result["query"]
    fresh = Client(url, verbose=False)
    with pytest.raises(AppError, match="no image"):
        fresh.predict(None, [], "Where is it?", 0.0, api_name="/inspect")


def test_api_judges_with_a_named_profile_kept_loaded_per_client(server, images, assistant, tmp_path, monkeypatch):
    """/inspect's optional fifth input: a profile's images and threshold judge the part; the client's loaded profile
    is reused until the stored one changes; a bad or unknown name is a bad request and the app keeps serving."""
    from tests.test_profile import save, texture  # textures do not register: the profile's threshold is in force

    url, _ = server
    monkeypatch.setenv("INSPECTION_ASSISTANT_HOME", str(tmp_path / "home"))
    query, part = save(tmp_path, [5, 6], defect=True)
    profile = Profile.create("washer", [texture(1), texture(2)], config="tiny")
    profile_fit.refit(profile, assistant.expert, assistant.tower, save=True)
    threshold = profile.calibration()["threshold"]
    loads = []
    activate = profile_fit.activate
    monkeypatch.setattr(profile_fit, "activate", lambda *a, **kw: loads.append(1) or activate(*a, **kw))
    client = Client(url, verbose=False)

    def ask(image, question, name="washer", refs=()):
        return client.predict(handle_file(image) if image else None, [handle_file(r) for r in refs], question, 0.0,
                              name, api_name="/inspect")

    _, first = ask(query, "Is there any anomaly?")
    assert first["references"] == 2 and first["threshold"] == pytest.approx(threshold, abs=1e-4) and len(loads) == 1
    _, again = ask(None, "Where is it?")  # a follow-up, then a new image: the loaded profile is reused
    _, other = ask(part, "Is there any anomaly?")
    assert again["query"] == first["query"] and other["references"] == 2 and len(loads) == 1
    profile.add(good=[texture(3)])  # the stored profile changed (as by another session's label): loaded again
    _, labelled = ask(None, "Is there any anomaly?")
    assert labelled["references"] == 3 and labelled["query"] == other["query"] and len(loads) == 2
    _, plain = ask(query, "Is there any anomaly?", name="", refs=[images["ref"]])  # no profile: as before
    assert plain["references"] == 1 and len(loads) == 2
    _, back = ask(None, "Where is it?")  # naming it on a follow-up judges the last image with it, still loaded
    assert back["references"] == 3 and back["query"] == first["query"] and len(loads) == 2
    for name, refs, message in [("../evil", (), "bad request: profile name: expected 1 to 64"),
                                ("nope", (), "bad request: no profile named 'nope'"),
                                ("washer", [images["ref"]], "bad request: profile 'washer' brings its own references")]:
        with pytest.raises(AppError, match=message):
            ask(part, "Is there any anomaly?", name=name, refs=refs)
    _, after = ask(None, "How large is it?", name="")  # still serving; the client's session is unchanged
    assert after["query"] == first["query"] and after["references"] == 3


def test_api_golden_is_an_optional_last_input(server, images):
    """/inspect's `golden` (after the profile's name, default False): the references are golden samples; a follow-up
    that does not say it keeps how the image was judged."""
    url, _ = server
    client = Client(url, verbose=False)
    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/inspect"]["parameters"]
    assert [p["parameter_name"] for p in params][-2:] == ["profile", "golden"] and params[-1]["parameter_has_default"]
    args = (handle_file(images["query"]), [handle_file(images["ref"])], "Is there any anomaly?", 0.0)
    _, plain = client.predict(*args, api_name="/inspect")
    _, golden = client.predict(*args, "", True, api_name="/inspect")
    assert plain["golden"] is False and golden["golden"] is True and golden["alignment_reason"]
    _, follow = client.predict(None, [], "Where is it?", 0.0, api_name="/inspect")
    assert follow["golden"] is True and follow["query"] == golden["query"]


def _chat(client, text, path=None, refs=()):
    message = {"text": text, "files": [handle_file(path)] if path else []}
    gallery = [{"image": handle_file(r), "caption": None} for r in refs]
    return client.predict(message, [], gallery, 0.0, api_name="/chat")


def test_ui_chat_endpoint_streams_evidence_and_reports_bad_uploads(server, images):
    url, _ = server
    client = Client(url, verbose=False)
    chat, _, overlay, mask, badge, details, comparison = _chat(client, "Is there any anomaly?", images["query"],
                                                               [images["ref"]])
    assert [m["role"] for m in chat] == ["user", "user", "assistant"]
    assert chat[0]["content"][0]["type"] == "file"
    assert "ANOMALOUS" in badge or "NORMAL" in badge
    assert chat[-1]["content"][0]["text"].startswith("scratch scratch")
    assert Image.open(overlay).size == (256, 256) and Image.open(mask).size == (48, 48)  # small images enlarged
    assert details["query"]["width"] == 48
    assert "Compared " in badge  # how the reference was compared: aligned or as a bag of patches
    # the golden-sample panel (an update: visibility and pictures): three captioned pictures for an aligned result,
    # hidden and empty otherwise
    aligned = details["alignment"] == "aligned"
    assert comparison["visible"] is aligned and len(comparison.get("value") or []) == (3 if aligned else 0)
    job = client.submit(
        {"text": "Where is it?", "files": []},
        [],
        [{"image": handle_file(images["ref"]), "caption": None}],
        0.0,
        api_name="/chat",
    )
    job.result()
    assert len(job.outputs()) >= 2  # evidence first, then streamed text, then the final value
    for key, message in [("text", "not a recognised image format"), ("empty", "empty (0 bytes)"),
                         ("huge", "exceeds the limit")]:
        chat, *_ = _chat(client, "hi", images[key], [images["ref"]])
        reply = chat[-1]["content"][0]["text"]
        assert (
            f"could not use {images[key].name}" in reply and message in reply and str(images[key].parent) not in reply
        )
    chat, *_ = _chat(client, "How large is it?")  # the earlier good image is still the session's image
    assert chat[-1]["role"] == "assistant" and "upload a photo" not in chat[-1]["content"][0]["text"]
    chat, *_ = _chat(Client(url, verbose=False), "Where is it?")
    assert "upload a photo of the part first" in chat[-1]["content"][0]["text"]


def test_eight_concurrent_clients_get_their_own_results(server, assistant, tmp_path):
    url, _ = server
    paths, expected = [], []
    ref = tmp_path / "ref.png"
    part_image(30).save(ref)
    for i in range(8):
        p = tmp_path / f"q{i}.png"
        part_image(100 + i, defect=((i * 5) % 40, (i * 11) % 40)).save(p)
        paths.append(p)
        s = ChatSession(assistant, p, [ref])
        expected.append((image_fingerprint(s.query), s.result.pred_score))
    assert len({e[0] for e in expected}) == 8
    got, errors = {}, []
    barrier = threading.Barrier(8)

    def worker(i):
        try:
            client = Client(url, verbose=False)
            barrier.wait(timeout=60)
            _, first = client.predict(handle_file(paths[i]), [handle_file(ref)], "Is there any anomaly?", 0.0,
                                      api_name="/inspect")
            _, second = client.predict(None, [], "Where is it?", 0.0, api_name="/inspect")
            got[i] = (first, second)
        except Exception as e:  # noqa: BLE001 - surfaced by the assert below
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors
    for i, (first, second) in got.items():
        sha, score = expected[i]
        assert first["query"]["sha1"] == sha and second["query"]["sha1"] == sha, f"client {i} got another image"
        assert first["pred_score"] == pytest.approx(score, rel=1e-5)
    assert len(got) == 8


def test_serve_command_prints_url_and_serves_the_page(tiny_tokenizer_dir):
    """`python -m assistant serve` (what `make demo` runs), here on the tiny preset and a free port."""
    import os
    import signal
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, INSPECTION_ASSISTANT_TINY_TOKENIZER=str(tiny_tokenizer_dir), OMP_NUM_THREADS="1",
               GRADIO_SERVER_PORT=str(port))  # as a Gradio deployment sets it
    # a test run started in the background inherits SIGINT as ignored; the server must see Ctrl+C as a user would
    proc = subprocess.Popen([sys.executable, "-m", "assistant", "serve", "--config", "tiny"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        from tests.serving import wait_for_url

        url, lines = wait_for_url(proc, 180)
        assert url == f"http://127.0.0.1:{port}/", "".join(lines)
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "Inspection assistant" in page
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl+C: about 2 s here
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("serve did not stop within 60 s of Ctrl+C; last output:\n" + proc.stdout.read()[-2000:])
    assert proc.returncode == 0


def test_serve_binds_flags_then_gradio_environment_then_config():
    from assistant.app import bind_address
    from assistant.cli import UsageError

    env = {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "8123"}
    assert bind_address(None, None, "127.0.0.1", 7860, {}) == ("127.0.0.1", 7860)
    assert bind_address(None, None, "127.0.0.1", 7860, env) == ("0.0.0.0", 8123)
    assert bind_address("10.0.0.2", 9000, "127.0.0.1", 7860, env) == ("10.0.0.2", 9000)
    with pytest.raises(UsageError, match="GRADIO_SERVER_PORT: expected a port number"):
        bind_address(None, None, "127.0.0.1", 7860, {"GRADIO_SERVER_PORT": "eighty"})


def test_verdict_badge_cautions_a_zero_shot_verdict():
    """With no reference the badge says the verdict is zero-shot and asks for a good part; with one it does not."""
    summary = {"pred_label": True, "pred_score": 0.8, "threshold": 0.5, "size": "small", "position": "center",
               "references": 0, "extras": {}}
    badge = app.verdict_badge(summary)
    assert "ANOMALOUS" in badge and "zero-shot-caution" in badge and "Add a photo of a good part" in badge
    assert "zero-shot-caution" not in app.verdict_badge({**summary, "references": 1})


def test_verdict_badge_cautions_a_reference_of_another_part():
    """A result flagged reference_mismatch gets a caution naming the statistic and its cut; others do not."""
    summary = {"pred_label": True, "pred_score": 4.6, "threshold": 3.4, "size": "large", "position": "center",
               "references": 1, "reference_mismatch": True,
               "extras": {"reference_median": 3.4, "reference_mismatch_cut": 2.365}}
    badge = app.verdict_badge(summary)
    assert "reference-caution" in badge and "same part, view and lighting" in badge and "cut 2.37" in badge
    assert "reference-caution" not in app.verdict_badge({**summary, "reference_mismatch": False})
    held = app.verdict_badge({**summary, "verdict": "borderline", "review_reason": "coverage"})
    assert "BORDERLINE (the good part(s) differ from this one almost everywhere)" in held
    assert "add 3-5 good parts or inspect the lot" in held and "reference-caution" not in held  # said once


def test_verdict_badge_says_what_the_strongest_region_looks_like():
    """A flagged part's badge carries its strongest measured region in words; a normal one does not."""
    from assistant.expert.describe import Descriptor

    d = Descriptor(area_px=300, length_px=40.0, width_px=8.0, elongation=5.0, form="line", orientation="diagonal",
                   centroid=(0.2, 0.2), core_px=60, core_width_px=2.0, core_elongation=20.0, count=1, tone="darker",
                   contrast=-20.0, chroma=1.0, colour="", edge="sharp", edge_px=1.5, type_confidence=0.4,
                   type_probs={"scratch": 0.4, "crack": 0.3})
    summary = {"pred_label": True, "pred_score": 0.8, "threshold": 0.5, "size": "small", "position": "center",
               "references": 1, "extras": {},
               "boxes": [{"score": 0.7, "descriptor": d.to_dict()}, {"score": 0.9}]}
    badge = app.verdict_badge(summary)
    assert "Strongest region: a dark thin line about 40 px long, running diagonally" in badge
    assert "type not named (closest scratch, 40%)" in badge
    assert "region-note" not in app.verdict_badge({**summary, "pred_label": False})
