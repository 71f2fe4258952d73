"""What `runq clients` writes, from values: a router's and a single server's models read back, and aider's own
loader accepting the files (where RUNQ_TEST_AIDER_PYTHON names a Python with aider-chat: 687 MB and about three
minutes to install, so not in the dev extras; tests/e2e/test_serve.py checks the files against aider's schema)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from launcher.view.clients import ClientModel, aider_conf, aider_metadata, aider_settings, from_args, from_props

AIDER_CHECK = Path(__file__).resolve().parents[1] / "support" / "aider_check.py"
MODELS = [
    ClientModel("deepseek-v3.1-ud-q2_k_xl", 32768, {"temperature": 0.6, "top_p": 0.95, "min_p": 0.01, "top_k": 20}),
    ClientModel("tiny", 2048, {}),
]


def test_a_routers_models_from_their_commands() -> None:
    args = ["/b/llama-server", "--ctx-size", "8192", "--temperature", "0.7", "--top-k", "20", "--jinja", "-np", "2"]
    m = from_args("m", args)
    assert m == ClientModel("m", 4096, {"temperature": 0.7, "top_k": 20.0})  # two slots share the context
    assert from_args("m", [*args, "--kv-unified"]).ctx == 8192
    assert from_args("m", ["/b/llama-server"]).ctx is None


def test_a_single_servers_model_from_props() -> None:
    props = {"default_generation_settings": {"n_ctx": 2048, "params": {"temperature": 0.699999988079071, "top_k": 30}}}
    assert from_props("a.gguf", props) == ClientModel("a.gguf", 2048, {"temperature": 0.7, "top_k": 30.0})
    assert from_props("a.gguf", {}) == ClientModel("a.gguf", None, {})


def test_the_files_say_the_planned_values() -> None:
    settings = yaml.safe_load(aider_settings(MODELS, "http://127.0.0.1:8080"))
    assert settings[0] == {
        "name": "openai/deepseek-v3.1-ud-q2_k_xl", "edit_format": "diff", "use_temperature": 0.6, "streaming": True,
        "extra_params": {"top_p": 0.95, "extra_body": {"min_p": 0.01, "top_k": 20}},
    }  # fmt: skip
    assert settings[1]["edit_format"] == "whole" and settings[1]["use_temperature"] is False
    meta = json.loads(aider_metadata(MODELS))
    assert meta["openai/tiny"]["max_input_tokens"] == 2048
    conf = yaml.safe_load(aider_conf(MODELS, "http://h:1", "/x/s.yml", "/x/m.json", None))
    assert conf["model"] == "openai/deepseek-v3.1-ud-q2_k_xl" and conf["openai-api-base"] == "http://h:1/v1"
    assert conf["openai-api-key"] == "none" and conf["model-settings-file"] == "/x/s.yml"


def test_aiders_own_loader_accepts_the_files(tmp_path: Path) -> None:
    aider = os.environ.get("RUNQ_TEST_AIDER_PYTHON")
    if not aider:
        pytest.skip("set RUNQ_TEST_AIDER_PYTHON to a Python with aider-chat to load the files with aider itself")
    (tmp_path / ".aider.model.settings.yml").write_text(aider_settings(MODELS, "http://127.0.0.1:8080"))
    (tmp_path / ".aider.model.metadata.json").write_text(aider_metadata(MODELS))
    names = [f"openai/{m.id}" for m in MODELS]
    r = subprocess.run([aider, str(AIDER_CHECK), str(tmp_path), *names], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OPENAI_API_KEY": "none", "HOME": str(tmp_path)})  # fmt: skip
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    big, tiny = seen[names[0]], seen[names[1]]
    assert big["edit_format"] == "diff" and big["use_temperature"] == 0.6 and big["max_input_tokens"] == 32768
    assert big["extra_params"] == {"top_p": 0.95, "extra_body": {"min_p": 0.01, "top_k": 20}}
    assert tiny["edit_format"] == "whole" and tiny["use_temperature"] is False and tiny["missing_keys"] == []
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / ".aider.model.settings.yml").write_text("- name: openai/x\n  context_window: 4096\n")  # not aider's
    (bad / ".aider.model.metadata.json").write_text("{}")
    r = subprocess.run([aider, str(AIDER_CHECK), str(bad), "openai/x"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OPENAI_API_KEY": "none", "HOME": str(tmp_path)})  # fmt: skip
    assert r.returncode != 0 and "context_window" in r.stderr  # the loader really checks: the check can fail
