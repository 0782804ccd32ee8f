"""`vllm:MODEL`: without the vllm package (CI, this machine) one clear line, before any model loads."""

from __future__ import annotations

import importlib.util

import pytest

from personalm.errors import PersonalmError
from personalm.models.registry import load_model

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")


def test_vllm_absent_is_one_clear_error():
    with pytest.raises(PersonalmError, match=r"runs on vLLM, which is not installed here \(pip install vllm"):
        load_model("vllm:default")


def test_cli_names_vllm_and_the_alternatives(cli, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    line = cli.one_error_line(cli.invoke("generate", str(prompts), "-m", "vllm:default", "--no-cache"))
    assert "vLLM" in line and "openai:MODEL@URL" in line
