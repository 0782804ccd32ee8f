"""Device choice: names, auto, an absent device as one clear error, and the CLI's --device."""

from __future__ import annotations

import json

import pytest
import torch

from personalm.devices import DEVICE_ENV, autocast_dtype, check_device_name, describe, resolve_device
from personalm.errors import PersonalmError


@pytest.mark.parametrize("name", ["auto", "cpu", "CPU", "cuda", "cuda:1", "mps", " cuda:0 "])
def test_known_names_pass_the_check(name):
    assert check_device_name(name) == name.strip().lower()


@pytest.mark.parametrize("name", ["gpu", "tpu", "cuda:", "cuda:x", "cpu:0", ""])
def test_unknown_names_are_one_clear_error(name):
    with pytest.raises(PersonalmError, match="expected auto, cpu, cuda, cuda:N or mps"):
        check_device_name(name)


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device() == torch.device("cpu") == resolve_device("auto")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device() == torch.device("cuda", 0)


def test_environment_chooses_when_no_name_is_given(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert resolve_device() == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "gpu")
    with pytest.raises(PersonalmError, match=DEVICE_ENV):
        resolve_device()


def test_a_named_device_that_is_absent_fails_instead_of_falling_back(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(PersonalmError, match="no CUDA GPU is visible"):
        resolve_device("cuda")
    with pytest.raises(PersonalmError, match="MPS backend is not available"):
        resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(PersonalmError, match=r"only 1 CUDA GPU\(s\) visible"):
        resolve_device("cuda:1")


def test_cpu_computes_in_fp32():
    assert autocast_dtype(torch.device("cpu")) is None
    assert describe(torch.device("cpu")) == {"device": "cpu", "device_name": "cpu", "compute_dtype": "float32"}


def test_cli_device_option(cli, monkeypatch, embedded_model):
    monkeypatch.delenv(DEVICE_ENV, raising=False)  # restored after: --device sets it for the command's models
    line = cli.one_error_line(cli.invoke("--device", "tpu", "models", "list"))
    assert "expected auto, cpu, cuda, cuda:N or mps" in line
    if not torch.cuda.is_available():
        assert "no CUDA GPU is visible" in cli.one_error_line(cli.invoke("--device", "cuda", "models", "info"))
    result = cli.invoke("--device", "cpu", "models", "info")
    assert result.returncode == 0, str(result)
    info = json.loads(result.stdout)
    assert (info["device"], info["compute_dtype"], info["engine"]) == ("cpu", "float32", "llama-kernel")
