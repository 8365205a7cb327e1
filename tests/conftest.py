"""Test setup: CPU forced, no network, small threads."""
import os
import socket

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    """Only loopback connections are allowed in tests."""
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
        raise RuntimeError(f"tests must not touch the network (tried to connect to {address})")
    return _real_connect(self, address)


socket.socket.connect = _guarded_connect


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Tiny random LM + sentencepiece tokenizer fixtures (session-scoped), see tests/tiny.py.
from tests.tiny import tiny_lm, tiny_lm_dir, tiny_tokenizer, tiny_tokenizer_dir  # noqa: E402, F401
