"""Config dataclasses, presets, overrides, typo errors and the CLI's --set / --help."""
import dataclasses
import subprocess
import sys

import pytest

from assistant import cli
from assistant.config import (
    CONFIG_DIR,
    Config,
    ConfigError,
    LMConfig,
    VisionConfig,
    config_from_dict,
    load_config,
    save_config,
)


@pytest.mark.parametrize("preset", ["offline-small", "tiny", "clip-llava"])
def test_presets_load(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, Config)
    assert load_config(CONFIG_DIR / f"{preset}.yaml") == cfg


def test_preset_contents():
    small, tiny, big = load_config("offline-small"), load_config("tiny"), load_config("clip-llava")
    assert small.vision.name == "efficientnet-lite0" and small.lm.name == "smollm2-135m-instruct"
    assert tiny.vision.name.startswith("openclip:") and tiny.lm.name == "tiny" and tiny.vision.image_size == 32
    assert tiny.lm.tiny_cfg["hidden_size"] == 32 and tiny.lm.tiny_cfg["num_hidden_layers"] == 2
    assert big.vision.name == "openclip:ViT-L-14-336/openai" and big.lm.load_in_4bit


def test_offline_small_preset_tells_the_shipped_adapter_what_it_was_trained_on():
    """`--config offline-small` loads the shipped adapter (lvlm.checkpoint), so its evidence words must be the ones
    that adapter was trained with (the checkpoint's config.json), or the LM reads a sentence it never saw."""
    import json

    from assistant.config import resolve_data_path

    shipped = json.loads((resolve_data_path("checkpoints/offline-small") / "config.json").read_text())["lvlm"]
    small = load_config("offline-small").lvlm
    assert small.checkpoint == "checkpoints/offline-small"
    for key in ("evidence_changes", "evidence_looks", "projector_levels", "n_prompts", "pool_tokens"):
        assert getattr(small, key) == shipped.get(key, getattr(type(small)(), key)), key


def test_defaults_are_the_embedded_default():
    assert Config().vision.name == "efficientnet-lite0" and Config().lm.name == "smollm2-135m-instruct"


def test_every_field_has_a_comment():
    import inspect

    import assistant.config as mod

    for cls in (mod.VisionConfig, mod.ExpertConfig, mod.LMConfig, mod.LoRAConfig, mod.LVLMConfig,
                mod.TrainConfig, mod.ServeConfig, mod.Config):
        body = inspect.getsource(cls)
        for f in dataclasses.fields(cls):
            line = next(ln for ln in body.splitlines() if ln.strip().startswith(f"{f.name}:"))
            assert "#" in line, f"{cls.__name__}.{f.name} has no comment"


def test_typo_key_in_file_is_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("vision:\n  nmae: efficientnet-lite0\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "'vision.nmae'" in msg and "did you mean 'vision.name'" in msg and "image_size" in msg


def test_retired_key_of_an_older_checkpoint_is_ignored():
    cfg = config_from_dict({"expert": {"mask_quantile": 0.5, "score_topk": 0.02}})
    assert cfg.expert.score_topk == 0.02 and not hasattr(cfg.expert, "mask_quantile")
    with pytest.raises(ConfigError, match="'vision.mask_quantile'"):  # retired only where it lived
        config_from_dict({"vision": {"mask_quantile": 0.5}})


def test_typo_section_is_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("vison:\n  name: x\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'vison' \(did you mean 'vision'\?\)"):
        load_config(p)


def test_set_overrides_any_field():
    cfg = load_config("offline-small", ["expert.knn_k=3", "vision.levels=[0, 3]", "lm.temperature=0.7",
                                        "train.lr=1e-3", "lm.cache_dir=/tmp/x", "expert.object_name=2024",
                                        "lora.enabled=false", "lm.tiny_cfg={hidden_size: 8}"])
    assert cfg.expert.knn_k == 3 and cfg.vision.levels == [0, 3] and cfg.lm.temperature == 0.7
    assert cfg.train.lr == 1e-3 and cfg.lm.cache_dir == "/tmp/x" and cfg.expert.object_name == "2024"
    assert cfg.lora.enabled is False and cfg.lm.tiny_cfg == {"hidden_size": 8}
    assert load_config("offline-small", ["lm.cache_dir="]).lm.cache_dir is None


def test_set_typo_is_named():
    with pytest.raises(ConfigError, match=r"unknown config key 'expert.knn_kk' \(did you mean 'expert.knn_k'\?\)"):
        load_config("offline-small", ["expert.knn_kk=3"])


@pytest.mark.parametrize(("override", "pattern"), [
    ("expert.knn_k=abc", r"'expert.knn_k': expected int, got str 'abc'"),
    ("expert.knn_k=2.5", r"'expert.knn_k': expected int, got float"),
    ("lora.enabled=3", r"'lora.enabled': expected bool, got int"),
    ("vision.levels=1", r"'vision.levels': expected a list"),
    ("vision.levels=[a]", r"'vision.levels\[0\]': expected int"),
    ("vision=3", r"config section 'vision.': expected a mapping"),
    ("expert.knn_k", r"expected the form section.key=value"),
])
def test_bad_values_are_named(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match=r"config 'nope' not found.*offline-small.*tiny"):
        load_config("nope")


def test_invalid_yaml(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("vision: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_save_roundtrip(tmp_path):
    cfg = load_config("tiny", ["expert.knn_k=5"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


def test_checkpoint_config_json_wrapper(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"config": {"lm": {"name": "tiny"}}, "step": 3}))
    assert load_config(tmp_path).lm.name == "tiny"


def test_sections_are_typed():
    cfg = Config()
    assert isinstance(cfg.vision, VisionConfig) and isinstance(cfg.lm, LMConfig)


# ---------------------------------------------------------------- CLI

def test_cli_set_typo_fails_naming_the_key(capsys):
    rc = cli.main(["doctor", "--config", "tiny", "--set", "lm.nmae=tiny"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown config key 'lm.nmae'" in err and "did you mean 'lm.name'" in err


def test_cli_config_file_typo_fails_naming_the_key(tmp_path, capsys):
    p = tmp_path / "typo.yaml"
    p.write_text("expert:\n  knn: 3\n")
    rc = cli.main(["doctor", "--config", str(p)])
    assert rc == 2 and "unknown config key 'expert.knn'" in capsys.readouterr().err


def test_cli_help_lists_commands():
    from pathlib import Path

    script = Path(sys.executable).parent / "inspection-assistant"  # console script from `pip install -e .`
    assert script.is_file(), f"{script} missing: the package is not installed in this environment"
    for cmd in ([sys.executable, "-m", "assistant", "--help"], [str(script), "--help"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr
        for name in cli.COMMANDS:
            assert f"    {name} " in out.stdout, (name, out.stdout)
