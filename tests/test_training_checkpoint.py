"""training/checkpoint.py, shared by the expert and LVLM trainers: atomic tensor files, save/resume of the
optimizer state, the run log and the data record."""
import json

import torch

from training.checkpoint import (
    OPTIM_FILE,
    STATE_FILE,
    build_settings,
    data_info,
    load_state,
    log_records,
    save_state,
    save_tensors,
)
from training.lvlm.data import split_samples


class _Model(torch.nn.Linear):
    def save_pretrained(self, path):
        path.mkdir(parents=True, exist_ok=True)
        save_tensors(dict(self.state_dict()), path / "weights.safetensors")


def test_save_state_round_trips_the_optimizer_and_replaces_the_folder(tmp_path):
    torch.manual_seed(0)
    model = _Model(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    last = tmp_path / "last"
    last.mkdir()
    (last / "stale.txt").write_text("from an earlier save")
    save_state(model, opt, 7, last, {"loss": 1.5})
    assert {p.name for p in last.iterdir()} == {"weights.safetensors", OPTIM_FILE, STATE_FILE}
    assert not (tmp_path / "last.tmp").exists()
    fresh = torch.optim.AdamW(_Model(3, 2).parameters(), lr=0.1)
    meta = load_state(fresh, last)
    assert meta["step"] == 7 and meta["loss"] == 1.5
    a, b = opt.state_dict()["state"], fresh.state_dict()["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k]["exp_avg"], b[k]["exp_avg"]) for k in a)


def test_save_tensors_leaves_no_temporary_file(tmp_path):
    save_tensors({"x": torch.arange(4)}, tmp_path / "cache.safetensors", metadata={"key": "abc"})
    assert [p.name for p in tmp_path.iterdir()] == ["cache.safetensors"]


def test_log_records_and_data_record(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)))
    assert [r["step"] for r in log_records(log, 2)] == [1, 2]
    assert log_records(tmp_path / "none.jsonl", 5) == []
    good, bad, none = tmp_path / "good", tmp_path / "bad", tmp_path / "none"
    for d in (good, bad, none):
        d.mkdir()
    (good / "build.json").write_text('{"settings": {"seed": 3}}')
    (bad / "build.json").write_text("{not json")
    assert build_settings(good) == {"settings": {"seed": 3}} and build_settings(bad) is None
    assert data_info([good, none]) == [{"folder": "good", "build": {"settings": {"seed": 3}}},
                                       {"folder": "none", "build": None}]


def test_split_samples_keeps_the_first_samples_and_holds_out_a_fixed_few():
    use, held, train = split_samples(10, 4, 2, seed=0)
    assert use == list(range(6)) and len(held) == 2 and sorted(held + train) == use
    assert split_samples(10, 4, 2, seed=0) == (use, held, train)
    assert split_samples(10, 0, 3, seed=1)[0] == list(range(10))
