"""The CPU trainer's LoRA dropout: the same distribution and gradient as nn.Dropout, masks fixed by
torch's seed, and swapped into every LoRA layer of a PEFT model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from personalm.train.dropout import FastDropout, keep_mask, use_fast_dropout


def test_masks_keep_one_minus_p_of_the_elements_and_follow_torchs_seed():
    torch.manual_seed(3)
    first = keep_mask(torch.Size([512, 1000]), 0.05)
    assert first.dtype == torch.bool and first.shape == (512, 1000)
    assert abs(first.float().mean().item() - 0.95) < 0.002  # 512k draws: sd 0.0003
    torch.manual_seed(3)
    assert torch.equal(keep_mask(torch.Size([512, 1000]), 0.05), first)
    assert not torch.equal(keep_mask(torch.Size([512, 1000]), 0.05), first)
    assert keep_mask(torch.Size([7, 3]), 0.5).shape == (7, 3)  # sizes that are not a multiple of 4


def test_forward_and_backward_scale_the_kept_elements_like_nn_dropout():
    layer = FastDropout(0.2)
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(0)
    y = layer(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.8)
    grad = torch.randn(64, 33)
    y.backward(grad)
    torch.testing.assert_close(x.grad, torch.where(kept, grad / 0.8, 0.0))
    layer.eval()
    assert layer(x) is x
    assert FastDropout(0.0).train()(x) is x
    with pytest.raises(ValueError):
        FastDropout(1.0)


def test_every_lora_dropout_of_a_peft_model_is_swapped():
    from peft import LoraConfig, get_peft_model

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.Linear(8, 16, bias=False)
            self.down = nn.Linear(16, 8, bias=False)

        def forward(self, x):
            return self.down(self.up(x))

    model = get_peft_model(Tiny(), LoraConfig(r=2, lora_alpha=4, lora_dropout=0.1, target_modules=["up", "down"]))
    assert use_fast_dropout(model) == 2
    assert all(isinstance(m.lora_dropout["default"], FastDropout) for m in (model.base_model.model.up,
                                                                             model.base_model.model.down))  # fmt: skip
    model.train()
    model(torch.randn(4, 8)).sum().backward()  # trains through the swapped masks
    assert use_fast_dropout(model) == 0


def test_the_cpu_trainer_builds_its_model_with_fast_dropout_in_every_lora_layer():
    from personalm.train.frozen_base import FrozenLinear
    from personalm.train.loop import TrainConfig, build_model

    _, model = build_model(TrainConfig(data="", out="", rank=2, dropout=0.05))
    lora_layers = [m for m in model.modules() if hasattr(m, "lora_dropout")]
    assert lora_layers and all(isinstance(m.lora_dropout["default"], FastDropout) for m in lora_layers)
    assert all(isinstance(m.base_layer, FrozenLinear) for m in lora_layers)
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
