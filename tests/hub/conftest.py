"""The loopback Hub and a bitconv folder to push, for every test of `bitconv push`."""

from __future__ import annotations

import pytest

from support.hub_server import TEST_TOKEN, HubServer, HubState
from support.packed_files import write_bitconv_folder

SOURCE_README = "---\nlicense: apache-2.0\nlanguage: en\n---\n# SmolLM2\nThe source card.\n"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fresh loopback Hub; HF_TOKEN and HF_ENDPOINT point at it; no saved login is visible."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN", TEST_TOKEN)
    with HubServer(HubState(tokens={TEST_TOKEN: "test-user", "hf_other_user": "other-user"})) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server
        assert server.state.unhandled == [], "the client called endpoints the test Hub does not implement"


@pytest.fixture
def folder(tmp_path):
    return write_bitconv_folder(tmp_path / "smol-1.58", readme=SOURCE_README)


