"""A finished LVLM run as a checkpoint folder: adapter + heads + training manifest, the trained expert the run
used, and a config.json that loads it all (`Assistant.from_pretrained(DIR)`)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path


def export(cfg, final: Path, dest: Path, manifest: dict) -> None:
    """Copy adapter + heads + manifest to a checkpoint dir and write its config.json (the run config). The
    config points the expert at `dest`, so the trained expert the run used is copied along with it (without
    it the exported checkpoint would load an untrained expert with other thresholds)."""
    from assistant.expert import CONFIG_NAME, WEIGHTS_NAME, trained_expert_dir

    dest.mkdir(parents=True, exist_ok=True)
    for f in final.iterdir():
        if f.is_file() and f.name != "README.md":  # peft's empty model-card template
            shutil.copy2(f, dest / f.name)
    src = trained_expert_dir(cfg)
    if src is not None and src.resolve() != dest.resolve():
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            if (src / name).is_file():
                shutil.copy2(src / name, dest / name)
    write_checkpoint_config(cfg, dest)
    ac = dest / "adapter_config.json"
    if ac.is_file():  # peft records the local cache path of the base LM; keep the model name instead
        a = json.loads(ac.read_text())
        a["base_model_name_or_path"] = cfg.lm.name
        ac.write_text(json.dumps(a, indent=2))


def write_checkpoint_config(cfg, dest: Path) -> None:
    """config.json of a checkpoint: the sections that define the LVLM (vision, lm, lora, lvlm); the expert keeps
    its own defaults and expert_config.json (only its checkpoint dir is set), training settings live in the
    manifest."""
    conf = cfg.to_dict()
    conf["lvlm"]["checkpoint"] = str(dest)
    slim = {k: conf[k] for k in ("vision", "lm", "lora", "lvlm")}
    slim["expert"] = {"checkpoint": str(dest), "object_name": conf["expert"]["object_name"]}
    (Path(dest) / "config.json").write_text(json.dumps(slim, indent=1))
