"""The Assistant facade and the LVLM training CLI end to end on tiny models and a tiny data_synth set."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from assistant.config import load_config
from tests.tiny import part_image as _img
from tests.tiny import perturb_trainable


def _tiny_cfg(tiny_lm_dir, *extra):
    return load_config("tiny", [f"lm.name={tiny_lm_dir}", "lvlm.checkpoint=null", "expert.checkpoint=null", *extra])


@pytest.fixture(scope="module")
def ckpt(tiny_lm_dir, tmp_path_factory):
    """A tiny checkpoint dir: config.json + perturbed heads and adapter."""
    from assistant.lvlm import build_lvlm
    from assistant.vision import build_vision_tower

    cfg = _tiny_cfg(tiny_lm_dir)
    tower = build_vision_tower(cfg.vision)
    model = build_lvlm(cfg, tower)
    perturb_trainable(model, 5)
    out = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(out)
    (out / "config.json").write_text(json.dumps(cfg.to_dict()))
    return out, model


def test_assistant_from_checkpoint_analyze_answer_stream(ckpt):
    from assistant.expert import AnomalyResult
    from assistant.lvlm import visual_inputs
    from assistant.model import Assistant

    path, trained = ckpt
    asst = Assistant.from_pretrained(str(path))
    assert asst.cfg.lvlm.checkpoint == str(path)
    ev = asst.analyze(_img(1, defect=True), [_img(2)])
    assert isinstance(ev.result, AnomalyResult) and ev.features.refs.shape[0] == 1
    assert ev.query_out.patch_tokens[0].shape[0] == 1 and ev.ref_out.patch_tokens[0].shape[0] == 1
    q = "Is there any anomaly in the image?"
    ans = asst.answer(ev, q, max_new_tokens=6)
    assert "".join(asst.stream_answer(ev, q, max_new_tokens=6)).strip() == ans
    # the loaded heads + adapter reproduce the model that was saved
    assert trained.generate([visual_inputs(ev.features, ev.result)], [q], max_new_tokens=6)[0] == ans
    follow = asst.answer(ev, "Where is it?", history=[(q, ans)], max_new_tokens=4)
    assert isinstance(follow, str)
    assert asst.answer_batch([ev, ev], [q, q], max_new_tokens=6) == [ans, ans]
    # sensitivity changes only the verdict inputs; zero-shot works without references (expert permitting)
    assert isinstance("".join(asst.stream_answer(ev, q, sensitivity=1.0, max_new_tokens=3)), str)
    # a measured flagged region: the evidence answers its type, or (lvlm.grounded off) the LM, told its looks
    import dataclasses

    from assistant.grounded import grounded_answer
    from tests.test_grounded_defects import box, desc, result

    flagged = dataclasses.replace(ev, result=result(box(desc("crack"))))
    kind = "What kind of defect is it?"
    assert asst.answer(flagged, kind) == grounded_answer(flagged.result, kind)
    asst.cfg.lvlm.grounded, asst.cfg.lvlm.evidence_looks = False, True
    told = visual_inputs(ev.features, flagged.result, looks=True)
    assert "type: crack" in told.evidence
    assert asst.answer(flagged, kind, max_new_tokens=6) == trained.generate([told], [kind], max_new_tokens=6)[0]


def test_assistant_missing_heads_is_a_clear_error(tiny_lm_dir, tmp_path):
    from assistant.model import Assistant

    with pytest.raises(FileNotFoundError, match="lvlm_heads.safetensors"):
        Assistant.from_pretrained("tiny", overrides=[f"lm.name={tiny_lm_dir}", f"lvlm.checkpoint={tmp_path}"])


def _train(argv: list[str]) -> int:
    from training import lvlm as train_lvlm

    p = argparse.ArgumentParser()
    train_lvlm.add_arguments(p)
    return train_lvlm.run(p.parse_args(argv))


def test_training_cli_runs_resumes_and_exports(tiny_lm_dir, tmp_path):
    data = tmp_path / "synth"
    subprocess.run([sys.executable, "-m", "data_synth", "build", "--source", "procedural", "--out", str(data), "--n",
                    "10", "--seed", "0", "--size", "64", "--quiet"], check=True, capture_output=True)
    out, export = tmp_path / "run", tmp_path / "export"
    common = ["--config", "tiny", "--set", f"lm.name={tiny_lm_dir}", "--set", "lvlm.checkpoint=null",
              "--set", "expert.checkpoint=null", "--set", "train.max_len=400", "--set", "train.eval_every=2",
              "--set", "train.expert_loss_weight=0.5", "--data", str(data), "--out", str(out), "--heldout", "2"]
    assert _train([*common, "--set", "train.steps=3", "--stop-after-step", "2"]) == 0
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and "heldout_answer_accuracy" in log[-1]
    assert all(r["expert_loss"] > 0 for r in log)  # BCE of the selector's verdict logit (LVLMOutput.verdict_logits)
    assert (out / "last" / "optimizer.safetensors").is_file() and (out / "last" / "lvlm_heads.safetensors").is_file()
    first = json.loads((out / "final" / "training_manifest.json").read_text())
    assert first["steps"] == 2 and first["planned_steps"] == 3 and first["stopped_early"]
    assert _train([*common, "--set", "train.steps=3", "--export", str(export)]) == 0  # resumes at step 2
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    manifest = json.loads((export / "training_manifest.json").read_text())
    assert manifest["steps"] == 3 and manifest["seed"] == 0 and manifest["train_samples"] == 8
    assert not manifest["stopped_early"] and manifest["train_seconds"] >= first["train_seconds"]
    assert {"adapter_model.safetensors", "lvlm_heads.safetensors", "config.json"} <= {p.name for p in export.iterdir()}
    from assistant.model import Assistant

    asst = Assistant.from_pretrained(str(export))
    ev = asst.analyze(_img(3, defect=True), [_img(4)])
    assert isinstance(asst.answer(ev, "Is there any anomaly?", max_new_tokens=3), str)
    # warm start from the export: a fresh run (new optimizer and schedule) that begins with its weights
    from safetensors.torch import load_file

    warm = tmp_path / "warm"
    assert _train([*common[:-4], "--out", str(warm), "--heldout", "2", "--set", "train.steps=1", "--set", "train.lr=0",
                   "--set", "train.lora_lr=0", "--init-from", str(export), "--export", str(warm / "ckpt")]) == 0
    assert json.loads((warm / "ckpt" / "training_manifest.json").read_text())["init_from"] == str(export)
    for name in ("lvlm_heads.safetensors", "adapter_model.safetensors"):  # lr 0: the weights come through unchanged
        a, b = load_file(export / name), load_file(warm / "ckpt" / name)
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), name


def test_two_launched_cpu_processes_train_as_one_group(tiny_lm_dir, tmp_path):
    """torchrun / `accelerate launch` with 2 CPU processes: one gloo group (each process a shard of every step),
    one log line per step, one export that records both processes. Before make_accelerator each process trained
    alone on the same samples and both wrote the same files."""
    import socket

    data = tmp_path / "synth"
    subprocess.run([sys.executable, "-m", "data_synth", "build", "--source", "procedural", "--out", str(data), "--n",
                    "8", "--seed", "0", "--size", "64", "--quiet"], check=True, capture_output=True)
    with socket.socket() as sock:  # a free loopback port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out, export = tmp_path / "run", tmp_path / "export"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(port), "-m", "training", "lvlm", "--config", "tiny",
                           "--set", f"lm.name={tiny_lm_dir}", "--set", "lvlm.checkpoint=null",
                           "--set", "expert.checkpoint=null", "--set", "train.max_len=400", "--set", "train.steps=2",
                           "--set", "train.eval_every=0", "--data", str(data), "--out", str(out), "--heldout", "2",
                           "--export", str(export)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 steps x 4 samples" in proc.stdout + proc.stderr  # batch_size 2 per process x 2 processes
    assert [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()] == [1, 2]
    manifest = json.loads((export / "training_manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["steps"] == 2
    assert (proc.stdout + proc.stderr).count("exported to") == 1


def test_export_carries_the_trained_expert_it_points_to(tmp_path):
    """The exported config.json sends expert.checkpoint to the export itself, so the expert files the run
    used are copied there; otherwise loading the export would silently build an untrained expert."""
    from assistant.config import load_config
    from training.lvlm import export

    src, final = tmp_path / "expert", tmp_path / "final"
    src.mkdir()
    final.mkdir()
    (src / "expert.safetensors").write_bytes(b"weights")
    (src / "expert_config.json").write_text('{"head": "PrototypeHead"}')
    (final / "lvlm_heads.safetensors").write_bytes(b"heads")
    export(load_config("tiny", [f"expert.checkpoint={src}"]), final, tmp_path / "a", {})
    assert (tmp_path / "a" / "expert.safetensors").read_bytes() == b"weights"
    assert (tmp_path / "a" / "expert_config.json").read_text() == '{"head": "PrototypeHead"}'
    assert json.loads((tmp_path / "a" / "config.json").read_text())["expert"]["checkpoint"] == str(tmp_path / "a")
    export(load_config("tiny", ["expert.checkpoint=null"]), final, tmp_path / "b", {})  # no trained expert: none
    assert not (tmp_path / "b" / "expert.safetensors").exists()


def test_training_data_errors_are_clear(tmp_path):
    from training.lvlm import load_samples

    with pytest.raises(FileNotFoundError, match="expected manifest.jsonl and conversations.json"):
        load_samples(tmp_path, 2)


def test_heldout_check_asks_the_detection_question_even_after_an_opener():
    """With --opener-ratio a conversation may open with "where?" or "is it safe to ship?" ("yes" = normal): the
    held-out check asks the first question whose reference answer states the label."""
    from pathlib import Path

    from training.lvlm import Sample, detection_question

    def sample(label, turns):
        return Sample("0", Path("."), "q.png", None, label, [], [], turns, "")

    where = ("Where is the defect located?", "There is no defect to locate; the object looks normal everywhere.")
    ship_ok = ("Is it safe to ship?", "Yes, it looks normal and is safe to ship.")
    detect_no = ("Is this part OK?", "No, the object looks normal.")
    assert detection_question(sample(0, [ship_ok, detect_no])) == "Is this part OK?"
    assert (
        detection_question(
            sample(
                1,
                [
                    ("Where is it?", "It is on the left of the image."),
                    ("Any anomalies here?", "Yes, there is an anomaly: a hole on the left of the image."),
                ],
            )
        )
        == "Any anomalies here?"
    )
    assert detection_question(sample(0, [where, detect_no])) == where[0]  # its answer already says "normal"
