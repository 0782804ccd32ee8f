"""A local Hugging Face causal LM (the embedded default, any model directory), optionally with a LoRA
adapter merged into its weights through the adapter layer."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from personalm.adapters import merge_into, validate
from personalm.devices import autocast, describe, resolve_device
from personalm.errors import PersonalmError
from personalm.models.base import (
    Generation,
    ProgressCallback,
    Prompt,
    SamplingParams,
    TextModel,
    TokenScores,
    apply_stop,
    occurrences,
)
from personalm.models.batching import ContinuousBatcher, DecodeRequest, DecodeResult
from personalm.models.hf import encode_prompt, logits_at, transformers_offline
from personalm.models.llama_kernel import LlamaKernel, LlamaWeights, supports
from personalm.models.sampling import row_generator

DEFAULT_MAX_BATCH = 64
KV_CACHE_BUDGET_BYTES = 3 * 2**30
SCORE_TOKEN_BUDGET = 8192


def weights_digest(path: Path, contents: bool = False) -> str:
    """Identity of a model directory: its JSON files, and its weight files by name and size or, with
    `contents`, by their bytes. Adapters need the bytes: two snapshots of one training run have the
    same config and the same file sizes, and must never share generation-cache entries."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix in {".json", ".safetensors", ".bin"}):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
            elif contents:
                with f.open("rb") as stream:
                    h.update(hashlib.file_digest(stream, "sha256").digest())
    return h.hexdigest()[:16]


class LocalModel(TextModel):
    """Generation runs on the Llama kernel with continuous batching when the architecture allows,
    otherwise on transformers' own batched `generate`. Scoring always uses the HF forward."""

    def __init__(
        self,
        path: str | Path,
        *,
        adapter: str | Path | None = None,
        name: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
    ):
        transformers = transformers_offline()
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise PersonalmError(f"{self.path}: not a Hugging Face model directory (no config.json)")
        self.adapter = Path(adapter) if adapter else None
        if self.adapter is not None:
            validate(self.adapter)  # before the base loads: a broken adapter fails in a moment
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype).eval()
        if self.adapter is not None:
            self.model = merge_into(self.model, self.adapter).eval()  # inference then costs what the base costs
        if self.device.type != "cpu":
            self.model = self.model.to(self.device)
        self.max_batch = max_batch
        self.name = name or self.path.name
        digest = weights_digest(self.path)
        if self.adapter is not None:
            digest += "+" + weights_digest(self.adapter, contents=True)
        self.model_id = f"local:{self.name}@{digest}"
        if self.device.type != "cpu":  # other kernels, other numbers: never share the CPU's cached outputs
            self.model_id += f"~{self.device.type}"
        self.eos_ids = self._eos_ids()
        self._kernel: LlamaKernel | None = None
        self._weights: LlamaWeights | None = None

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = self.model.generation_config.eos_token_id
        ids.update(configured if isinstance(configured, list) else [configured])
        return {i for i in ids if i is not None}

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    def info(self) -> dict[str, Any]:
        cfg = self.model.config
        return super().info() | {
            "path": str(self.path),
            "adapter": str(self.adapter) if self.adapter else None,
            "architecture": cfg.model_type,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "context_length": self.context_length,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            **describe(self.device),
            "engine": "llama-kernel" if supports(self.model) else "transformers-generate",
            "chat_template": self.tokenizer.chat_template is not None,
        }

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Chats go through the model's chat template with the assistant turn opened."""
        return encode_prompt(self.tokenizer, prompt, self.name)

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams | None = None,
        progress: ProgressCallback | None = None,
    ) -> list[Generation]:
        params = params or SamplingParams()
        if not prompts:
            return []
        requests = self._requests(prompts, params)
        if supports(self.model):
            results = self._generate_kernel(requests, params, progress)
        else:
            results = self._generate_transformers(requests, params, progress)
        out = []
        for request, result in zip(requests, results, strict=True):
            text, hit = apply_stop(self.decode_ids(result.token_ids), params.stop)
            reason = "stop" if hit else result.finish_reason
            out.append(Generation(text, reason, len(request.prompt_ids), len(result.token_ids)))
        return out

    def _requests(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[DecodeRequest]:
        requests = []
        for prompt, (key, occurrence) in zip(prompts, occurrences(prompts), strict=True):
            ids = self.encode_prompt(prompt)
            if len(ids) >= self.context_length:
                raise PersonalmError(
                    f"prompt of {len(ids)} tokens does not fit the context of {self.context_length} tokens"
                )
            generator = None if params.greedy else row_generator(params.seed, key, occurrence)
            requests.append(DecodeRequest(ids, generator, params))
        return requests

    def kernel_weights(self) -> LlamaWeights:
        """The fused, prepacked weights for the Llama kernel, built once per loaded model."""
        if self._weights is None:
            self._weights = LlamaWeights(self.model)
        return self._weights

    def weights_changed(self) -> None:
        """Forget the packed kernel weights (and the kernel holding them) after the HF weights were
        edited in place (soups)."""
        self.free_kernel()

    def free_kernel(self) -> None:
        """Drop the decode kernel's KV cache and packed weights (about 1.5 GiB for the embedded model
        at full batch) when only scoring follows; the next `generate` rebuilds them."""
        self._kernel = None
        self._weights = None

    def slots_for(self, max_len: int, wanted: int) -> int:
        """How many sequences of `max_len` tokens fit the KV cache budget (at most `wanted`)."""
        per_slot = LlamaKernel.cache_bytes_per_slot(self.model, max_len)
        return max(1, min(wanted, KV_CACHE_BUDGET_BYTES // per_slot))

    def decode_ids(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _generate_kernel(self, requests, params, progress) -> list[DecodeResult]:
        longest = max(len(r.prompt_ids) for r in requests)
        max_len = min(longest + params.max_tokens, self.context_length)
        slots = self.slots_for(max_len, min(self.max_batch, len(requests)))
        kernel = self._kernel
        if kernel is None or kernel.slots < slots or kernel.max_len < max_len:
            self._kernel = None  # free the old cache before allocating the new one
            kernel = self._kernel = LlamaKernel(self.kernel_weights(), slots, max_len)
        return ContinuousBatcher(kernel, self.eos_ids, self.decode_ids).run(requests, progress)

    @torch.inference_mode()
    def _generate_transformers(self, requests, params, progress) -> list[DecodeResult]:
        """Any other architecture: transformers' batched generate with left padding."""
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else min(self.eos_ids)
        results: list[DecodeResult] = []
        for start in range(0, len(requests), self.max_batch):
            chunk = requests[start : start + self.max_batch]
            width = max(len(r.prompt_ids) for r in chunk)
            ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in chunk], device=self.device)
            mask = torch.tensor(
                [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in chunk], device=self.device
            )
            if not params.greedy:
                torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=chunk[0].generator)))
            with autocast(self.device):
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=params.max_tokens,
                    do_sample=not params.greedy,
                    temperature=params.temperature if not params.greedy else None,
                    top_p=params.top_p if not params.greedy else None,
                    top_k=params.top_k if not params.greedy else None,
                    pad_token_id=pad,
                    eos_token_id=sorted(self.eos_ids),
                )
            for row in out[:, width:].tolist():
                cut = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
                results.append(DecodeResult(row[:cut], "length" if cut is None else "stop"))
            if progress:
                progress(len(chunk))
        return results

    def score(self, contexts: Sequence[Prompt], continuations: Sequence[str]) -> list[TokenScores]:
        if len(contexts) != len(continuations):
            raise ValueError("contexts and continuations must have the same length")
        pairs = []
        for context, continuation in zip(contexts, continuations, strict=True):
            ctx = self.encode_prompt(context)
            cont = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            if len(ctx) + len(cont) > self.context_length:
                raise PersonalmError(
                    f"context + continuation of {len(ctx) + len(cont)} tokens exceed the context "
                    f"of {self.context_length} tokens"
                )
            pairs.append((ctx, cont))
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        scores: list[TokenScores | None] = [None] * len(pairs)
        batch: list[int] = []
        for i in order:
            width = len(pairs[i][0]) + len(pairs[i][1])
            if batch and width * (len(batch) + 1) > SCORE_TOKEN_BUDGET:
                self._score_batch([pairs[j] for j in batch], batch, scores)
                batch = []
            batch.append(i)
        if batch:
            self._score_batch([pairs[j] for j in batch], batch, scores)
        return [s for s in scores if s is not None]

    @torch.inference_mode()
    def _score_batch(self, pairs, indices, scores) -> None:
        width = max(len(c) + len(t) for c, t in pairs)
        ids = torch.zeros(len(pairs), width, dtype=torch.long)
        mask = torch.zeros(len(pairs), width, dtype=torch.long)
        positions = torch.zeros(len(pairs), width, dtype=torch.bool)  # those that predict a continuation token
        for row, (ctx, cont) in enumerate(pairs):
            seq = ctx + cont
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            positions[row, len(ctx) - 1 : len(seq) - 1] = True
        logits = logits_at(self.model, ids, mask, positions).float().cpu()
        start = 0
        for (_, cont), index in zip(pairs, indices, strict=True):
            # one continuation's softmax at a time: a softmax over every row would double peak memory
            rows = F.log_softmax(logits[start : start + len(cont)].float(), dim=-1)
            values = rows[torch.arange(len(cont)), torch.tensor(cont, dtype=torch.long)].tolist()
            start += len(cont)
            tokens = self.tokenizer.convert_ids_to_tokens(cont)
            scores[index] = TokenScores(
                tokens=[self.tokenizer.convert_tokens_to_string([t]) for t in tokens], logprobs=values
            )
