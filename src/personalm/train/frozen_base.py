"""The frozen base layers under LoRA, run faster (fp32) or smaller (int8).

LoRA never updates the base weights, so each base Linear only needs two matmuls per step: the
forward `x @ W.T` and, for the gradient flowing to earlier layers, `grad @ W`. Both run here on
weights packed once for oneDNN (`models/packed_linear.py`), which on this CPU is far faster than
autograd's MKL path at training shapes; `personalm bench train` measures the end-to-end gain.

The int8 option keeps each base weight as int8 with one fp32 scale per output row (4x smaller):
the forward runs fbgemm's dynamic-quantized int8 GEMM (activations quantized per tensor on the fly,
about 2% relative error at this model's widths), the backward uses the dequantized weight.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from personalm.models.packed_linear import PackedLinear

TRAIN_ROWS_HINT = 2048


class _FrozenMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, layer: FrozenLinear) -> Tensor:
        ctx.layer = layer
        return layer.matmul(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.layer.matmul_transposed(grad), None


class FrozenLinear(nn.Module):
    """A bias-free frozen Linear with hand-written forward/backward matmuls."""

    def __init__(self, weight: Tensor, quant: str = "fp32"):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.quant = quant
        weight = weight.detach().float().contiguous()
        if quant == "int8":
            scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
            q = torch.quantize_per_channel(
                weight, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8
            )
            self._packed_int8 = torch.ops.quantized.linear_prepack(q, None)
            self.register_buffer("int8_weight", q.int_repr(), persistent=False)
            self.register_buffer("scale", scale, persistent=False)
        elif quant == "fp32":
            self.forward_op = PackedLinear(weight, TRAIN_ROWS_HINT)
            self.backward_op = PackedLinear(weight.t().contiguous(), TRAIN_ROWS_HINT)
        else:
            raise ValueError(f"quant must be fp32 or int8, not {quant!r}")

    @property
    def weight(self) -> Tensor:
        """The (dequantized) weight, for code that inspects base layers."""
        if self.quant == "int8":
            return self.int8_weight.float() * self.scale[:, None]
        return self.forward_op.weight

    def matmul(self, x: Tensor) -> Tensor:
        if self.quant == "int8":
            return torch.ops.quantized.linear_dynamic(x.contiguous(), self._packed_int8)
        return self.forward_op(x)

    def matmul_transposed(self, grad: Tensor) -> Tensor:
        if self.quant == "int8":
            return grad @ self.weight
        return self.backward_op(grad.contiguous())

    def forward(self, x: Tensor) -> Tensor:
        return _FrozenMatmul.apply(x, self)


def freeze_base_layers(model: nn.Module, quant: str) -> int:
    """Swap every frozen, bias-free Linear (LoRA base layers, the output head) for a FrozenLinear."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child.bias is None and not child.weight.requires_grad:
                setattr(parent, name, FrozenLinear(child.weight, quant))
                swapped += 1
    return swapped
