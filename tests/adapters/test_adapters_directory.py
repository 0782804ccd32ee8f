"""Adapter directories: recognised, listed, and every broken one refused in one line naming its file."""

from __future__ import annotations

import json

import pytest
import torch

from personalm.adapters import (
    UnsupportedAdapter,
    is_adapter_dir,
    list_adapters,
    load_adapter,
    read_config,
    validate,
)
from personalm.errors import PersonalmError


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_base, peft_adapter):
    return peft_adapter(tiny_base(), tmp_path_factory.mktemp("good") / "adapter", 1, rank=4, alpha=8)


def broken_copy(good, tmp_path, config: bytes | None = None, weights: bytes | None = None):
    out = tmp_path / "broken"
    out.mkdir()
    for f in good.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    if config is not None:
        (out / "adapter_config.json").write_bytes(config)
    if weights is not None:
        (out / "adapter_model.safetensors").write_bytes(weights)
    return out


def test_recognise_and_list(good, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "adapter_config.json").write_text("{}")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text("{}")
    (tmp_path / "not-one").mkdir()
    (tmp_path / "a-file").write_text("x")
    assert is_adapter_dir(good) and not is_adapter_dir(tmp_path / "not-one")
    assert list(list_adapters(tmp_path)) == ["a", "b"]
    assert list_adapters(tmp_path / "missing") == {}


def test_a_good_adapter_validates_and_loads(good):
    config = validate(good)
    assert config["peft_type"] == "LORA" and config["r"] == 4
    adapter = load_adapter(good, "mine")
    assert adapter.name == "mine" and len(adapter.modules) == 2 * 7
    factors = adapter.modules["model.layers.0.self_attn.q_proj"]
    assert factors.scale == 2.0 and factors.delta_shape == (16, 16)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (b"", "adapter_config.json: empty file"),
        (b"  \n", "adapter_config.json: empty file"),
        (b"{not json", "adapter_config.json: not JSON"),
        (b"\xff\xfe\x00garbage", "adapter_config.json: not UTF-8"),
        (b"[1, 2]", "adapter_config.json: holds a JSON list"),
        (b'{"r": 4, "lora_alpha": 8}', "adapter_config.json: no 'peft_type'"),
        (b'{"peft_type": "LORA", "lora_alpha": 8}', "adapter_config.json: 'r' missing"),
        (b'{"peft_type": "LORA", "r": 0, "lora_alpha": 8}', "'r' 0 is not a positive integer"),
        (b'{"peft_type": "LORA", "r": 4, "lora_alpha": "x"}', "'lora_alpha' 'x' is not a number"),
    ],
)
def test_a_broken_config_is_one_clear_error(good, tmp_path, config, message):
    path = broken_copy(good, tmp_path, config=config)
    for check in (read_config, validate, load_adapter):
        with pytest.raises(PersonalmError, match=message) as err:
            check(path)
        assert str(path) in str(err.value) and "expected a PEFT adapter config" in str(err.value)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (b"garbage, not tensors", "adapter_model.safetensors: not a readable safetensors file"),
        (b"", "adapter_model.safetensors: not a readable safetensors file"),
        (None, "no adapter_model.safetensors"),
    ],
)
def test_broken_weights_are_one_clear_error(good, tmp_path, weights, message):
    path = broken_copy(good, tmp_path, weights=weights)
    if weights is None:
        (path / "adapter_model.safetensors").unlink()
    for check in (validate, load_adapter):
        with pytest.raises(PersonalmError, match=message):
            check(path)


def test_truncated_weights_are_caught_by_validation(good, tmp_path):
    whole = (good / "adapter_model.safetensors").read_bytes()
    path = broken_copy(good, tmp_path, weights=whole[: len(whole) - 100])
    with pytest.raises(PersonalmError, match="not a readable safetensors file"):
        validate(path)


def test_not_an_adapter_directory(tmp_path):
    with pytest.raises(PersonalmError, match="not a PEFT adapter directory"):
        validate(tmp_path)


def test_more_than_plain_lora_is_unsupported_by_our_reader(good, tmp_path):
    from safetensors.torch import save_file

    dora = broken_copy(good, tmp_path, config=json.dumps(read_config(good) | {"use_dora": True}).encode())
    with pytest.raises(UnsupportedAdapter, match="DoRA"):
        load_adapter(dora)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "adapter_config.json").write_text(json.dumps(read_config(good)))
    tensors = {"base_model.model.lm_head.modules_to_save.weight": torch.zeros(2, 2)}
    save_file(tensors, str(extra / "adapter_model.safetensors"))
    with pytest.raises(UnsupportedAdapter, match="not a LoRA factor"):
        load_adapter(extra)
    validate(extra)  # still a valid PEFT adapter: PEFT can apply it
