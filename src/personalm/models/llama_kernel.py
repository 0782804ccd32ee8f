"""A decode-oriented forward pass for Llama-family models over a slot-based KV cache.

Why own this: Hugging Face's forward with a DynamicCache spends ~15% of a batched decode step
concatenating the cache and runs Q/K/V and gate/up as separate small matmuls. Here the cache is
preallocated, each active sequence owns one slot (rows 0..B-1 stay contiguous so attention reads
views, not copies), Q/K/V and gate/up are fused, and every projection runs on weights prepacked for
oneDNN (packed_linear.py). `personalm bench generate` measures the end-to-end gain.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from personalm.models.packed_linear import PackedLinear

SUPPORTED_MODEL_TYPES = ("llama",)


def supports(model: torch.nn.Module) -> bool:
    """True for plain Llama models (no attention/MLP biases, no sliding window) held on the CPU
    (the kernel is CPU code; on a GPU transformers' generate runs instead)."""
    cfg = model.config
    return (
        next(model.parameters()).device.type == "cpu"
        and cfg.model_type in SUPPORTED_MODEL_TYPES
        and not getattr(cfg, "attention_bias", False)
        and not getattr(cfg, "mlp_bias", False)
        and getattr(cfg, "hidden_act", "silu") == "silu"
    )


_PARTS = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "o_proj": "o", "gate_proj": "gate_up",
          "up_proj": "gate_up", "down_proj": "down"}  # fmt: skip


class _Layer:
    def __init__(self, layer: torch.nn.Module, rows_hint: int):
        self.ln_attn = layer.input_layernorm.weight
        self.ln_mlp = layer.post_attention_layernorm.weight
        for part in ("qkv", "o", "gate_up", "down"):
            self.pack(layer, part, rows_hint)

    def pack(self, layer: torch.nn.Module, part: str, rows_hint: int) -> None:
        """Fuse and prepack one projection from the layer's current weights."""
        attn, mlp = layer.self_attn, layer.mlp
        if part == "qkv":
            weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).contiguous()
        elif part == "gate_up":
            weight = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).contiguous()
        else:
            weight = attn.o_proj.weight if part == "o" else mlp.down_proj.weight
        setattr(self, part, PackedLinear(weight, rows_hint))


PACK_ROWS_HINT = 32


_LAYER_MODULE = re.compile(r"^model\.layers\.(?P<layer>\d+)\.(?:self_attn|mlp)\.(?P<proj>\w+)$")


class LlamaWeights:
    """The fused, prepacked weights of one model: built once, shared by every cache size."""

    def __init__(self, model: torch.nn.Module):
        if not supports(model):
            raise ValueError(f"LlamaKernel does not support model_type={model.config.model_type!r}")
        inner = model.model
        self.config = model.config
        self.dtype = model.dtype
        self.rotary_emb = inner.rotary_emb
        self.embed = inner.embed_tokens.weight
        self.norm = inner.norm.weight
        self.lm_head = PackedLinear(model.lm_head.weight, PACK_ROWS_HINT)
        self.layers = [_Layer(layer, PACK_ROWS_HINT) for layer in inner.layers]

    def refresh(self, model: torch.nn.Module, modules: Iterable[str]) -> None:
        """Re-fuse and re-pack only the projections of `modules` (names as in `named_modules`,
        e.g. `model.layers.3.self_attn.q_proj`) after their weights were edited in place, as a soup
        merge does. Kernels built on these weights see the change; none may be running meanwhile."""
        stale: set[tuple[int, str]] = set()
        for name in modules:
            match = _LAYER_MODULE.match(name)
            if match is None or match["proj"] not in _PARTS:
                raise ValueError(f"module {name!r} is not a projection the kernel packs")
            stale.add((int(match["layer"]), _PARTS[match["proj"]]))
        for index, part in sorted(stale):
            self.layers[index].pack(model.model.layers[index], part, PACK_ROWS_HINT)


class LlamaKernel:
    """Prefill and single-token decode for up to `slots` sequences of at most `max_len` tokens."""

    def __init__(self, model: torch.nn.Module | LlamaWeights, slots: int, max_len: int):
        weights = model if isinstance(model, LlamaWeights) else LlamaWeights(model)
        cfg = weights.config
        self.weights = weights
        self.dtype = weights.dtype
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        self.hidden = cfg.hidden_size
        self.max_len = max_len
        self.slots = slots
        self.embed, self.norm, self.lm_head, self.layers = weights.embed, weights.norm, weights.lm_head, weights.layers
        self.cos, self.sin = self._rope_tables(weights.rotary_emb, max_len)
        shape = (slots, self.n_kv, max_len, self.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=self.dtype) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, dtype=self.dtype) for _ in self.layers]

    @staticmethod
    def cache_bytes_per_slot(model: torch.nn.Module, max_len: int) -> int:
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        itemsize = torch.finfo(model.dtype).bits // 8
        return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * max_len * head_dim * itemsize

    def _rope_tables(self, rotary_emb: torch.nn.Module, max_len: int) -> tuple[Tensor, Tensor]:
        """Reuse the model's own rotary module so every rope scaling variant stays exact."""
        positions = torch.arange(max_len).unsqueeze(0)
        probe = torch.zeros(1, 1, self.head_dim, dtype=self.dtype)
        cos, sin = rotary_emb(probe, positions)
        return cos[0].to(self.dtype), sin[0].to(self.dtype)

    @staticmethod
    def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _split_qkv(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        hd = self.head_dim
        q, k, v = qkv.split([self.n_heads * hd, self.n_kv * hd, self.n_kv * hd], dim=-1)
        return (
            q.unflatten(-1, (self.n_heads, hd)),
            k.unflatten(-1, (self.n_kv, hd)),
            v.unflatten(-1, (self.n_kv, hd)),
        )

    def _mlp(self, layer: _Layer, h: Tensor) -> Tensor:
        a = F.rms_norm(h, (self.hidden,), layer.ln_mlp, self.eps)
        gate, up = layer.gate_up(a).chunk(2, dim=-1)
        return h + layer.down(F.silu(gate) * up)

    @torch.inference_mode()
    def prefill(self, first_slot: int, sequences: list[list[int]], offset: int = 0) -> Tensor:
        """Run prompts into slots first_slot.. and return the next-token logits [n, V].

        With offset > 0 the slots already hold `offset` tokens of cache (a shared prefix copied in
        by `load_prefix`) and the sequences continue from there.
        """
        n = len(sequences)
        length = max(len(s) for s in sequences)
        end = offset + length
        ids = torch.zeros(n, length, dtype=torch.long)
        for i, seq in enumerate(sequences):
            ids[i, : len(seq)] = torch.tensor(seq)
        cos, sin = self.cos[offset:end, None, :], self.sin[offset:end, None, :]
        # Right padding: causal attention keeps real positions blind to the pads after them.
        causal = None
        if offset:
            causal = torch.arange(end)[None, :] <= torch.arange(offset, end)[:, None]
        rows = slice(first_slot, first_slot + n)
        h = F.embedding(ids, self.embed)
        for layer, kc, vc in zip(self.layers, self.k_cache, self.v_cache, strict=True):
            a = F.rms_norm(h, (self.hidden,), layer.ln_attn, self.eps)
            q, k, v = self._split_qkv(layer.qkv(a))
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            kc[rows, :, offset:end] = k
            vc[rows, :, offset:end] = v
            if offset:
                k, v = kc[rows, :, :end], vc[rows, :, :end]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=causal, is_causal=causal is None, enable_gqa=True)
            h = h + layer.o(o.transpose(1, 2).flatten(2))
            h = self._mlp(layer, h)
        last = torch.tensor([len(s) - 1 for s in sequences])
        h_last = F.rms_norm(h[torch.arange(n), last], (self.hidden,), self.norm, self.eps)
        return self.lm_head(h_last)

    def save_prefix(self, slot: int, length: int) -> list[tuple[Tensor, Tensor]]:
        """A copy of one slot's first `length` cached tokens, to seed other slots with."""
        return [
            (kc[slot, :, :length].clone(), vc[slot, :, :length].clone())
            for kc, vc in zip(self.k_cache, self.v_cache, strict=True)
        ]

    def load_prefix(self, prefix: list[tuple[Tensor, Tensor]], first_slot: int, count: int) -> None:
        length = prefix[0][0].shape[1]
        for (k, v), kc, vc in zip(prefix, self.k_cache, self.v_cache, strict=True):
            kc[first_slot : first_slot + count, :, :length] = k
            vc[first_slot : first_slot + count, :, :length] = v

    @torch.inference_mode()
    def decode(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """One token for each of the first B slots, at the given positions; logits [B, V]."""
        b = tokens.shape[0]
        span = int(positions.max()) + 1
        rows = torch.arange(b)
        cos, sin = self.cos[positions][:, None, :], self.sin[positions][:, None, :]
        future = torch.arange(span)[None, :] > positions[:, None]
        mask = torch.zeros(b, span, dtype=self.dtype).masked_fill_(future, float("-inf"))[:, None, None, :]
        groups = self.n_heads // self.n_kv
        scale = self.head_dim**-0.5
        h = F.embedding(tokens, self.embed)
        for layer, kc, vc in zip(self.layers, self.k_cache, self.v_cache, strict=True):
            a = F.rms_norm(h, (self.hidden,), layer.ln_attn, self.eps)
            q, k, v = self._split_qkv(layer.qkv(a))
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            kc[rows, :, positions] = k
            vc[rows, :, positions] = v
            # Grouped-query attention without expanding K/V: view Q as [B, kv_heads, group, hd].
            qg = q.view(b, self.n_kv, groups, self.head_dim)
            scores = torch.matmul(qg, kc[:b, :, :span].transpose(-1, -2)) * scale + mask
            o = torch.matmul(scores.softmax(dim=-1), vc[:b, :, :span])
            h = h + layer.o(o.reshape(b, -1))
            h = self._mlp(layer, h)
        return self.lm_head(F.rms_norm(h, (self.hidden,), self.norm, self.eps))

    def move_slot(self, source: int, target: int, length: int) -> None:
        """Copy one sequence's cache to another slot (keeps active slots contiguous)."""
        for kc, vc in zip(self.k_cache, self.v_cache, strict=True):
            kc[target, :, :length] = kc[source, :, :length]
            vc[target, :, :length] = vc[source, :, :length]
