"""`inspection-assistant doctor` on the tiny config: both rows, the table columns, exit code."""
from assistant import cli


def test_doctor_tiny(tiny_tokenizer_dir, capsys):
    rc = cli.main(["doctor", "--config", "tiny", "--max-new-tokens", "3"])
    out = capsys.readouterr().out
    assert rc == 0, out
    header = next(line for line in out.splitlines() if line.startswith("component"))
    for col in ("source", "device", "dtype", "load s", "forward s", "cache path"):
        assert col in header
    assert "openclip:tiny/none" in out and "random init" in out
    assert "vision: coffee -> 2 levels x (1, 16, 32), grid (4, 4)" in out
    assert "lm: 3 tokens:" in out and "total" in out


def test_doctor_reports_failures_in_the_table(monkeypatch, capsys):
    monkeypatch.delenv("INSPECTION_ASSISTANT_TINY_TOKENIZER", raising=False)
    rc = cli.main(["doctor", "--config", "tiny", "--max-new-tokens", "2"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "lm: FAILED: WeightsNotFoundError: lm.name=tiny needs a tokenizer directory" in out
    assert "vision: coffee ->" in out  # the vision row still ran
